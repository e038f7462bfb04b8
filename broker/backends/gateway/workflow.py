"""A gateway workflow's options: the team's own ChatKit server behind the broker, what the
signed identity carries, and how long the broker waits for it."""

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, StrictStr

from ...declare import Says, Text, seconds, strict_whole
from ...files.policy import FilesPolicy
from ...workflow import Workflow
from .headers import refused_forward_header

DEFAULT_CONNECT_TIMEOUT = 5.0
#: seconds without a byte from the server before a stream is ended (the value users had)
DEFAULT_IDLE_TIMEOUT = 60.0


def _server(value: str) -> str:
    parts = urlsplit(value)
    if not (
        parts.scheme in ("http", "https")
        and parts.hostname
        and not (parts.username or parts.password or parts.fragment)
    ):
        raise ValueError(
            "must be an http(s):// URL with a host (no credentials, no fragment), "
            "like https://chat.internal/chatkit"
        )
    return value


def _claims(value: tuple[str, ...]) -> tuple[str, ...]:
    if not all(value):
        raise ValueError("must be a list of claim names")
    return value


def _forward_headers(value: tuple[str, ...]) -> tuple[str, ...]:
    refused = [why for name in value if (why := refused_forward_header(name)) is not None]
    if refused:  # every refused name at once, like every other problem
        raise ValueError("; ".join(refused))
    return value


Timeout = seconds(
    0, 3600, strict=True, above=True, says=" must be a number of seconds, 0 < s <= 3600"
)


class GatewayWorkflow(Workflow):
    """A ChatKit server of the team's own; the broker proxies to it with a signed identity."""

    target_key = "server"
    kind: Literal["gateway"] = "gateway"
    server: Annotated[StrictStr, AfterValidator(_server), Says(" must be a URL string")]
    """The ChatKit server's URL, like https://chat.internal/chatkit."""
    audience: Text | None = None
    """The assertion's aud; default: the workflow's name."""
    forward_claims: Annotated[
        tuple[StrictStr, ...], AfterValidator(_claims), Says(" must be a list of claim names")
    ] = ()
    """Token claims copied into the signed assertion."""
    forward_headers: Annotated[
        tuple[StrictStr, ...],
        AfterValidator(_forward_headers),
        Says(" must be a list of header names"),
    ] = ()
    """Request headers passed to the server besides the few every ChatKit request needs
    (content type, accept, language, user agent, trace context); never identity-like names."""
    assertion: Literal["es256", "hs256"] = "es256"
    """How the identity is signed: es256 (a JWKS at /.well-known/…) or hs256 (a shared secret)."""
    connect_timeout: Timeout = DEFAULT_CONNECT_TIMEOUT
    """Seconds to connect to the server."""
    idle_timeout: Timeout = DEFAULT_IDLE_TIMEOUT
    """Seconds a stream may stay silent before the broker ends it."""
    max_messages_per_minute: strict_whole(1) | None = None
    """Messages (streaming ChatKit requests) per user per minute."""
    files: FilesPolicy | None = None
    """[workflows.<name>.files]: attachments relayed to the server (enabled, max_size, accept,
    max_per_message); off unless given. The server's upload and preview URLs reach the
    browser as signed broker URLs (docs/files.md)."""
    direct_upload_url: (
        Annotated[StrictStr, AfterValidator(_server), Says(" must be a URL string")] | None
    ) = None
    """The server's own direct-upload URL (ChatKit's uploadStrategy direct); unset, uploads
    are two-phase (attachments.create)."""
    dictation: bool = False
    """Whether the composer offers dictation: the server implements ChatKit's transcribe
    (input.transcribe is relayed either way)."""
