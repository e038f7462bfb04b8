"""What a workflow accepts as attachments (``[workflows.<name>.files]``), and the content
sniffing that decides a file's type: its first bytes, never its name or declared mime_type,
which the browser (or anyone with curl) chooses freely."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, StrictBool, StrictStr

from ..declare import Says, strict_whole

__all__ = ["IMAGE_TYPES", "KNOWN_TYPES", "SNIFF_BYTES", "FilesPolicy", "sniff"]

MB = 1024 * 1024
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
TEXT_TYPES = ("text/plain", "text/markdown", "text/csv")
KNOWN_TYPES = (*IMAGE_TYPES, "application/pdf", *TEXT_TYPES)
#: the file-name extensions the composer's picker offers per type
EXTENSIONS = {
    "image/png": [".png"],
    "image/jpeg": [".jpg", ".jpeg"],
    "image/gif": [".gif"],
    "image/webp": [".webp"],
    "application/pdf": [".pdf"],
    "text/plain": [".txt"],
    "text/markdown": [".md"],
    "text/csv": [".csv"],
}
#: how many leading bytes ``sniff`` needs
SNIFF_BYTES = 4096


def _accept(value: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [v for v in value if v not in KNOWN_TYPES]
    if unknown:
        raise ValueError(
            f"lists {', '.join(repr(u[:40]) for u in unknown)}; known types: "
            + ", ".join(KNOWN_TYPES)
        )
    if not value:
        raise ValueError("must list at least one type (or set enabled = false)")
    return tuple(dict.fromkeys(value))


class FilesPolicy(BaseModel):
    """Attachments a workflow accepts; on by default for agent workflows (images and PDFs)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    enabled: StrictBool = True
    """Whether the composer offers the attach button and the broker accepts uploads."""
    max_size: strict_whole(1, 100 * MB, "bytes") = 20 * MB
    """Largest file, bytes (checked while the upload streams in)."""
    accept: Annotated[tuple[StrictStr, ...], AfterValidator(_accept), Says(" must be a list")] = (
        *IMAGE_TYPES,
        "application/pdf",
    )
    """Accepted types, checked by content: image/png, image/jpeg, image/gif, image/webp,
    application/pdf, text/plain, text/markdown, text/csv."""
    max_per_message: strict_whole(1, 20) = 4
    """Most attachments one message may carry."""
    max_pending: strict_whole(1, 1000) = 20
    """Most attachments a user may have created but not yet sent in a message."""
    pending_ttl: strict_whole(60, 86400, "seconds") = 3600
    """Seconds an attachment never sent in a message is kept before it is removed."""

    def allows(self, mime_type: str) -> bool:
        return mime_type in self.accept

    def composer(self) -> dict[str, Any]:
        """ChatKit's ``composer.attachments`` for this policy (the mint answer's)."""
        if not self.enabled:
            return {"enabled": False}
        return {
            "enabled": True,
            "max_size": self.max_size,
            "max_count": self.max_per_message,
            "accept": {mime: EXTENSIONS.get(mime, []) for mime in self.accept},
        }


def _text(head: bytes, complete: bool) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character cut at the end of the sniffed window is still text
        return not complete and exc.start >= len(head) - 3
    return True


def sniff(head: bytes, *, complete: bool = False, declared: str = "") -> str | None:
    """The type the first bytes of a file show (``complete``: ``head`` is the whole file).

    Text has no signature: valid UTF-8 without NUL counts as text, its flavour (markdown,
    CSV) taken from the declared type when that is a text type, else ``text/plain``.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head and _text(head, complete):
        base = declared.split(";", 1)[0].strip().lower()
        return base if base in TEXT_TYPES else "text/plain"
    return None
