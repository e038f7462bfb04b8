"""CORS for ``BROKER_ALLOWED_ORIGINS``: exact origins only, no credentials (the JWT travels in
``Authorization``, never a cookie). Installed only when origins are configured; with none, no
cross-origin request is allowed and preflights get the router's 405.

Starlette's ``CORSMiddleware`` does the work; this only gives a refused preflight the broker's
JSON error shape instead of a plain-text body.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from .errors import InvalidRequest, render
from .logs import request_id_var

ALLOW_METHODS = ("GET", "POST")
ALLOW_HEADERS = ("Authorization", "Content-Type", "X-Request-ID")
EXPOSE_HEADERS = (
    "X-Request-ID",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
)


class CORS(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        failures = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        message = (
            f"This cross-origin request is not allowed ({failures}): the broker accepts the "
            "origins in BROKER_ALLOWED_ORIGINS, methods GET and POST, and the headers "
            "Authorization, Content-Type and X-Request-ID."
        )
        rendered = render(InvalidRequest(message, headers={"Vary": "Origin"}), request_id_var.get())
        answer = Response(rendered.body, status_code=rendered.status)
        answer.raw_headers = rendered.headers
        return answer


def cors_options(origins: tuple[str, ...]) -> dict[str, Any]:
    """The CORS layer's settings for these exact origins (the edge builds it when there are any)."""
    return {
        "allow_origins": list(origins),
        "allow_methods": list(ALLOW_METHODS),
        "allow_headers": list(ALLOW_HEADERS),
        "expose_headers": list(EXPOSE_HEADERS),
        "allow_credentials": False,
        "max_age": 600,
    }
