"""Signed, short-lived file capabilities: one user, one attachment, one verb.

An upload or preview URL carries its own authority (``<img src>`` sends no header), so the
signature binds everything the URL may do: the verb is the salt, the user and attachment are
the payload, the age is checked on use. A leaked URL expires; it never opens another file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import zlib
from collections.abc import Sequence
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from ..errors import Forbidden

__all__ = ["FileTokens", "SealedFileTokens"]

VERBS = {"upload": 600, "preview": 3600}


class FileTokens:
    """Signs with the first key, verifies with any (the session-secret keys, rotated alike)."""

    def __init__(self, keys: Sequence[str | bytes], *, ttl: dict[str, int] | None = None) -> None:
        self.ttl = {**VERBS, **(ttl or {})}
        self._by_verb = {
            verb: URLSafeTimedSerializer(list(reversed(keys)), salt=f"chatkit-broker file {verb}")
            for verb in self.ttl
        }

    def sign(self, verb: str, user: str, attachment_id: str) -> str:
        return self._by_verb[verb].dumps({"u": user, "a": attachment_id})

    def check(self, verb: str, token: str | None, attachment_id: str) -> str:
        """The user the token was issued to; ``Forbidden`` if it is bad, expired, or for
        another attachment (or verb: each verb has its own salt)."""
        if not token:
            raise Forbidden(f"This {verb} URL carries no signature (?t=).")
        try:
            payload = self._by_verb[verb].loads(token, max_age=self.ttl[verb])
        except SignatureExpired:
            raise Forbidden(f"This {verb} URL has expired; ask for a new one.") from None
        except BadSignature:
            raise Forbidden(f"This {verb} URL is not valid.") from None
        if not isinstance(payload, dict) or payload.get("a") != attachment_id:
            raise Forbidden(f"This {verb} URL is not valid for this file.")
        return str(payload.get("u"))


class SealedFileTokens:
    """Capabilities that carry facts the browser must not read: encrypted and signed.

    A gateway workflow's upload and preview URLs point at the broker, which relays to the
    backend's own URL; that URL (an internal host), the descriptor's method and headers and
    the user's forwarded claims ride in the token, so no state is kept and any instance
    sharing the session-secret keys can answer. Fernet (AES-128-CBC with HMAC-SHA256, from
    ``cryptography``, already a dependency through pyjwt[crypto]) seals them: the browser
    sees an opaque string. Like ``FileTokens``, the verb has its own lifetime and the token
    names the one user, workflow and attachment it was issued for.
    """

    def __init__(self, keys: Sequence[str | bytes], *, ttl: dict[str, int] | None = None) -> None:
        from cryptography.fernet import Fernet, MultiFernet

        self.ttl = {**VERBS, **(ttl or {})}
        self._fernet = MultiFernet([Fernet(_fernet_key(k)) for k in keys])

    def seal(self, verb: str, payload: dict[str, Any]) -> str:
        data = json.dumps({**payload, "v": verb}, separators=(",", ":")).encode()
        return self._fernet.encrypt(zlib.compress(data)).decode("ascii")

    def open(self, verb: str, token: str | None, **bound: str) -> dict[str, Any]:
        """The payload of a token issued for ``verb`` whose fields equal ``bound``;
        ``Forbidden`` if it is missing, forged, expired, or for another verb or file."""
        from cryptography.fernet import InvalidToken

        if not token:
            raise Forbidden(f"This {verb} URL carries no signature (?t=).")
        try:
            raw = self._fernet.decrypt(token.encode("ascii"))
            payload = json.loads(zlib.decompress(raw, bufsize=4096))
        except (InvalidToken, UnicodeEncodeError, ValueError, zlib.error):
            raise Forbidden(f"This {verb} URL is not valid.") from None
        if not isinstance(payload, dict) or payload.get("v") != verb:
            raise Forbidden(f"This {verb} URL is not valid.")
        if any(payload.get(k) != v for k, v in bound.items()):
            raise Forbidden(f"This {verb} URL is not valid for this file.")
        issued = int.from_bytes(base64.urlsafe_b64decode(token.encode("ascii"))[1:9], "big")
        if time.time() - issued > self.ttl[verb]:
            raise Forbidden(f"This {verb} URL has expired; ask for a new one.")
        return payload


def _fernet_key(key: str | bytes) -> bytes:
    """A Fernet key of its own derived from one session-secret key (never the key itself)."""
    raw = key.encode() if isinstance(key, str) else key
    digest = hmac.new(raw, b"chatkit-broker sealed file URLs", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest)
