"""The OpenAI ChatKit sessions API: create and cancel, with a deadline, retries and error mapping.

All calls share the app's one ``aiohttp.ClientSession`` (SPEC §8-9). Upstream error bodies
are logged with their ``x-request-id`` for the operator and never forwarded to the browser.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from ...errors import (
    BrokerError,
    UpstreamAuthFailed,
    UpstreamDetail,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamWorkflowNotFound,
)
from ...httpread import read_capped
from ...settings import Settings
from ..base import CreatedSession

log = logging.getLogger("broker.upstream")

MAX_BODY_BYTES = 1024 * 1024
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_UNAVAILABLE_STATUSES = frozenset({429, 503})
BETA_HEADER = ("OpenAI-Beta", "chatkit_beta=v1")


@dataclass(frozen=True)
class UpstreamConfig:
    base_url: str
    api_key: str
    organization: str | None = None
    project: str | None = None
    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.25

    @classmethod
    def from_settings(cls, settings: Settings, *, timeout: float | None = None) -> UpstreamConfig:
        """The upstream part of the broker's settings (live mode: the key is set)."""
        assert settings.openai_api_key is not None
        return cls(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            organization=settings.openai_organization,
            project=settings.openai_project,
            timeout=settings.upstream_timeout if timeout is None else timeout,
            retries=settings.upstream_retries,
        )


def api_headers(config: UpstreamConfig) -> dict[str, str]:
    """Who is calling OpenAI: the key, and the organization and project when set.

    Public so that ``doctor``'s ``GET /models`` asks exactly as the service's calls do.
    """
    headers = {"Authorization": f"Bearer {config.api_key}"}
    if config.organization:
        headers["OpenAI-Organization"] = config.organization
    if config.project:
        headers["OpenAI-Project"] = config.project
    return headers


class _Retryable(Exception):
    def __init__(self, error: BrokerError, retry_after: float | None = None) -> None:
        self.error = error
        self.retry_after = retry_after


class HostedSessions:
    """Creates and cancels hosted ChatKit sessions (``POST /chatkit/sessions``)."""

    def __init__(
        self,
        config: UpstreamConfig,
        http: Callable[[], aiohttp.ClientSession],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self._c = config
        self._http = http
        self._clock = clock
        self._sleep = sleep
        self._observe = observe
        # built once, not per request
        self._headers = {
            **api_headers(config),
            "Content-Type": "application/json",
            BETA_HEADER[0]: BETA_HEADER[1],
        }
        self._create_url = f"{config.base_url}/chatkit/sessions"

    async def create(self, body: Mapping[str, Any], *, workflow_label: str) -> CreatedSession:
        """Mint a session; raises a ``BrokerError`` subclass naming what went wrong."""
        data = await self._call(
            self._create_url, json.dumps(body).encode(), "create", workflow_label
        )
        secret, expires_at, session_id = (
            data.get(k) for k in ("client_secret", "expires_at", "id")
        )
        if not isinstance(secret, str) or not secret:
            log.error("upstream 200 without client_secret for workflow %s", workflow_label)
            raise UpstreamError("OpenAI answered without a client_secret; see the broker log.")
        if not isinstance(expires_at, int) or isinstance(expires_at, bool):
            expires_at = int(time.time()) + 600
        return CreatedSession(secret, expires_at, session_id if isinstance(session_id, str) else "")

    async def cancel(self, session_id: str) -> bool:
        """Cancel a session. True when cancelled or already unknown upstream (404)."""
        url = f"{self._create_url}/{session_id}/cancel"
        try:
            await self._call(url, b"", "cancel", session_id, not_found_ok=True)
        except _NotFound:
            log.info("session %s was already unknown upstream; counted as cancelled", session_id)
        return True

    async def _call(
        self, url: str, payload: bytes, op: str, what: str, *, not_found_ok: bool = False
    ) -> dict[str, Any]:
        deadline = self._clock() + self._c.timeout
        attempt = 0
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise UpstreamTimeout(
                    f"OpenAI did not answer within {self._c.timeout:g} s (BROKER_UPSTREAM_TIMEOUT)."
                )
            started = self._clock()
            # aiohttp's own total timeout, per attempt, covering connect, head and body:
            # one timer, not a second asyncio.timeout around the session's default one.
            # Never rounded up to a whole second (aiohttp's ceil_threshold), so a
            # 504 comes at the deadline.
            timeout = aiohttp.ClientTimeout(total=remaining, ceil_threshold=math.inf)
            try:
                try:
                    return await self._attempt(url, payload, op, what, not_found_ok, timeout)
                finally:  # the attempt's own latency; back-off below is not upstream time
                    if self._observe is not None:
                        self._observe(op, self._clock() - started)
            except TimeoutError:
                raise UpstreamTimeout(
                    f"OpenAI did not answer within {self._c.timeout:g} s (BROKER_UPSTREAM_TIMEOUT)."
                ) from None
            except _Retryable as retryable:
                # Only the error is kept, and raised outside this handler: the attempt's
                # traceback holds its frame with a body of up to 1 MiB, and raising here chained
                # it as the error's __context__, a cycle (error → context → traceback → frame →
                # error) that ``serve``'s collector settings keep for a long time.
                failure, delay = retryable.error, retryable.retry_after
            if delay is None:
                delay = self._c.backoff * (2**attempt) * (0.5 + random.random())
            if attempt >= self._c.retries or self._clock() + delay >= deadline:
                try:
                    raise failure
                finally:
                    del failure
            attempt += 1
            log.info("retrying upstream (%s) in %.2f s, attempt %d", what, delay, attempt + 1)
            await self._sleep(delay)

    async def _attempt(
        self,
        url: str,
        payload: bytes,
        op: str,
        what: str,
        not_found_ok: bool,
        timeout: aiohttp.ClientTimeout,
    ) -> dict[str, Any]:
        label = f"{op} {what}"
        try:
            async with self._http().post(
                url, data=payload, headers=self._headers, allow_redirects=False, timeout=timeout
            ) as resp:
                headers = resp.headers
                length = resp.content_length
                if length is not None and length > MAX_BODY_BYTES:
                    body = b""
                    too_large = True
                else:  # a known length is read in one call unless decoding changes the size
                    if "Content-Encoding" in headers:
                        length = None
                    body = await read_capped(resp.content, MAX_BODY_BYTES, length)
                    too_large = len(body) > MAX_BODY_BYTES
                status, request_id = resp.status, headers.get("x-request-id", "-")
                retry_after = _retry_after(headers.get("Retry-After"))
                location = headers.get("Location", "")
        except TimeoutError:  # the deadline (aiohttp's timeouts are ClientConnectionErrors too)
            raise
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            log.warning("upstream connection failed (%s): %s", label, type(exc).__name__)
            raise _Retryable(
                UpstreamUnavailable(
                    "Could not reach OpenAI (connection refused or reset); try again shortly."
                )
            ) from None
        except aiohttp.ClientError as exc:  # not valid HTTP, too many redirects, ...
            log.error("upstream %s answered with invalid HTTP: %s", label, type(exc).__name__)
            raise UpstreamError(
                "OpenAI's answer could not be read as HTTP; see the broker log."
            ) from None

        if too_large:
            log.error(
                "upstream %s answered %d with a body over 1 MiB (x-request-id %s)",
                label,
                status,
                request_id,
            )
            raise UpstreamError(
                "OpenAI answered with an unexpectedly large body; see the broker log."
            )
        if 200 <= status < 300:
            try:
                data = json.loads(body) if body else {}
            except (ValueError, UnicodeDecodeError):
                data = None
            if not isinstance(data, dict):
                log.error(
                    "upstream %s answered %d with a non-JSON body (x-request-id %s)",
                    label,
                    status,
                    request_id,
                )
                raise UpstreamError(
                    "OpenAI answered with a body that is not JSON; see the broker log."
                )
            return data

        if 300 <= status < 400:
            log.error(
                "upstream %s answered %d, a redirect to %r (x-request-id %s); not followed",
                label,
                status,
                location[:200],
                request_id,
            )
            raise UpstreamError(
                f"OpenAI answered with a redirect (HTTP {status}), which the broker does not "
                "follow: check OPENAI_BASE_URL."
            )
        detail = _error_detail(body)
        log.warning(
            "upstream %s answered %d (x-request-id %s): %s", label, status, request_id, detail
        )
        upstream = UpstreamDetail(status, detail, request_id)
        if status in (401, 403):
            raise UpstreamAuthFailed(
                f"OpenAI refused the broker's API key (HTTP {status}): check CHATKIT_OPENAI_API_KEY / "
                "OPENAI_API_KEY and that the key has access to ChatKit.",
                upstream=upstream,
            )
        if status == 404:
            if not_found_ok:
                raise _NotFound()
            raise UpstreamWorkflowNotFound(
                f"OpenAI says the workflow for {what} was not found. Since 2026-11-30 OpenAI no "
                "longer runs Agent Builder workflows: serve it as a gateway or agent workflow "
                "('chatkit-broker migrate', docs/migrating.md). Otherwise the API key belongs to "
                "another project than the workflow (check CHATKIT_OPENAI_API_KEY, or a stray shell "
                "OPENAI_API_KEY), or the workflow is not published. Run 'chatkit-broker doctor'.",
                upstream=upstream,
            )
        if status in RETRY_STATUSES:
            error: BrokerError
            if status in _UNAVAILABLE_STATUSES:
                error = UpstreamUnavailable(
                    f"OpenAI is busy or unavailable (HTTP {status}); try again shortly.",
                    upstream=upstream,
                )
            else:
                error = UpstreamError(
                    f"OpenAI answered HTTP {status}; see the broker log.", upstream=upstream
                )
            raise _Retryable(error, retry_after)
        raise UpstreamError(
            f"OpenAI refused the request (HTTP {status}); see the broker log.", upstream=upstream
        )


class _NotFound(Exception):
    pass


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP-date (RFC 9110)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if seconds == seconds else None


def error_message(body: bytes) -> str | None:
    """``error.message`` of an OpenAI error body, or None when the body is not one.

    Public so that ``doctor`` reads OpenAI's errors the way the service logs them.
    """
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return message if isinstance(message, str) else None


def _error_detail(body: bytes) -> str:
    """The upstream error message for the log, bounded in size."""
    message = error_message(body)
    return message[:500] if message is not None else repr(body[:200])
