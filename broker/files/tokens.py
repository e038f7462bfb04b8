"""Signed, short-lived file capabilities: one user, one attachment, one verb.

An upload or preview URL carries its own authority (``<img src>`` sends no header), so the
signature binds everything the URL may do: the verb is the salt, the user and attachment are
the payload, the age is checked on use. A leaked URL expires; it never opens another file.
"""

from __future__ import annotations

from collections.abc import Sequence

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from ..errors import Forbidden

__all__ = ["FileTokens"]

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
