"""The pieces of the gateway's file relay that need no server: sealed URLs and the rewriting
of a stream whose events arrive cut anywhere."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from broker.backends.gateway.files import AttachmentUrls, SseRewriter
from broker.errors import Forbidden
from broker.files.tokens import SealedFileTokens

INTERNAL = "http://10.0.0.7:8001"
KEYS = ["k" * 32]


def urls() -> AttachmentUrls:
    return AttachmentUrls(SealedFileTokens(KEYS), "https://broker.example", "support", "alice")


def attachment(n: int = 1) -> dict:
    return {
        "type": "image",
        "id": f"atc_{n}",
        "name": "a.png",
        "mime_type": "image/png",
        "upload_descriptor": {
            "url": f"{INTERNAL}/support/attachments/atc_{n}/upload",
            "method": "PUT",
            "headers": {"x-amz-acl": "private"},
        },
        "preview_url": f"{INTERNAL}/support/attachments/atc_{n}/content",
    }


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["t"][0]


def test_an_attachment_gets_sealed_broker_urls_that_open_only_as_issued() -> None:
    rewriter = urls()
    out = json.loads(rewriter.body(json.dumps(attachment()).encode()))
    upload, preview = out["upload_descriptor"]["url"], out["preview_url"]
    assert upload.startswith("https://broker.example/api/files/gateway/support/atc_1/upload?t=")
    assert out["upload_descriptor"]["method"] == "PUT"
    assert out["upload_descriptor"]["headers"] == {}
    assert "10.0.0.7" not in json.dumps(out) and "x-amz-acl" not in json.dumps(out)
    tokens = SealedFileTokens(KEYS)
    opened = tokens.open("upload", token_of(upload), w="support", a="atc_1")
    assert opened["url"] == f"{INTERNAL}/support/attachments/atc_1/upload"
    assert opened["u"] == "alice" and opened["m"] == "PUT"
    assert opened["h"] == {"x-amz-acl": "private"}
    for verb, token, bound in [
        ("preview", token_of(upload), {"a": "atc_1"}),  # another verb
        ("upload", token_of(upload), {"a": "atc_2"}),  # another file
        ("upload", token_of(upload), {"w": "other"}),  # another workflow
        ("upload", token_of(upload)[:-4] + "AAAA", {}),  # forged
        ("upload", None, {}),
    ]:
        with pytest.raises(Forbidden):
            tokens.open(verb, token, **bound)
    with pytest.raises(Forbidden, match="expired"):
        SealedFileTokens(KEYS, ttl={"preview": -1}).open("preview", token_of(preview))
    with pytest.raises(Forbidden):  # keys rotated away
        SealedFileTokens(["z" * 32]).open("preview", token_of(preview))
    assert SealedFileTokens(["z" * 32, *KEYS]).open("preview", token_of(preview))["a"] == "atc_1"


def test_data_previews_pass_other_schemes_are_dropped_and_plain_bodies_are_untouched() -> None:
    item = {**attachment(), "upload_descriptor": None, "preview_url": "data:image/png;base64,AA=="}
    body = json.dumps({"data": [item]}).encode()
    assert urls().body(body) == body
    odd = {**attachment(), "preview_url": "file:///etc/passwd"}
    odd["upload_descriptor"]["url"] = "ftp://10.0.0.7/x"
    out = json.loads(urls().body(json.dumps(odd).encode()))
    assert "preview_url" not in out and out["upload_descriptor"] is None
    plain = b'{"type":"threads.list","data":[]}'
    assert urls().body(plain) is plain


def test_a_stream_cut_at_every_byte_is_rewritten_whole() -> None:
    events = [
        {
            "type": "thread.item.done",
            "item": {"type": "user_message", "attachments": [attachment(n)]},
        }
        for n in range(3)
    ]
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    for cut in range(1, len(raw)):
        rewriter = SseRewriter(urls())
        out = rewriter.feed(raw[:cut]) + rewriter.feed(raw[cut:]) + rewriter.end()
        assert b"10.0.0.7" not in out, cut
        parsed = [json.loads(line[6:]) for line in out.split(b"\n\n") if line]
        assert [e["item"]["attachments"][0]["id"] for e in parsed] == ["atc_0", "atc_1", "atc_2"]


def test_events_without_attachments_pass_as_they_came() -> None:
    raw = b'event: x\ndata: {"type":"thread.item.updated"}\n\n'
    rewriter = SseRewriter(urls())
    assert rewriter.feed(raw) is raw
    assert rewriter.feed(raw[:10]) == b""
    assert rewriter.feed(raw[10:]) == raw
