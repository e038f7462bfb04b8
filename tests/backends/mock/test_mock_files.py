"""Mock mode takes files (kept in memory) and the canned reply says what arrived, over real
HTTP: mint, ``attachments.create``, the signed upload URL, a message carrying the id."""

from __future__ import annotations

from ...files.test_audio import CLIPS
from ...support.mock_broker import deltas, mock_broker

PNG = b"\x89PNG\r\n\x1a\n" + bytes(100)
TEXT = b"hello from a text file\n"


async def test_mock_mode_accepts_a_file_and_describes_it() -> None:
    async with mock_broker() as broker:
        chat = await broker.chat()
        created = await chat.json(
            "attachments.create", name="cat.png", size=len(PNG), mime_type="image/png"
        )
        url = created["upload_descriptor"]["url"]
        r = await broker.http.post(url, files={"file": ("cat.png", PNG, "image/png")})
        assert r.status_code == 200, r.text
        preview = await broker.http.get(created["preview_url"])
        assert preview.status_code == 200 and preview.content == PNG
        message = {
            "content": [{"type": "input_text", "text": "Look"}],
            "attachments": [created["id"]],
            "inference_options": {},
        }
        events = await chat.stream("threads.create", input=message)
        reply = "".join(deltas(events))
        assert '[attached "cat.png": image/png, 108 bytes, received]' in reply
        # a text file is refused by the default policy (images and PDFs), by content
        r = await chat.call(
            "attachments.create", name="a.txt", size=len(TEXT), mime_type="text/plain"
        )
        assert r.status_code == 415


async def test_mock_mode_dictation_answers_a_stand_in_transcript() -> None:
    import base64

    async with mock_broker() as broker:
        minted = await broker.mint()
        assert minted["backend"]["dictation"] == {"enabled": True}
        chat = await broker.chat()
        data = (CLIPS / "chrome-3s.webm").read_bytes()
        audio = base64.b64encode(data).decode()
        result = await chat.json("input.transcribe", audio_base64=audio, mime_type="audio/webm")
        assert result == {"text": f"[mock transcript of {len(data)} bytes of audio/webm, 2.9 s]"}
        # not a recording: a 415 in mock mode too
        junk = base64.b64encode(bytes(300)).decode()
        r = await chat.call("input.transcribe", audio_base64=junk, mime_type="audio/webm")
        assert r.status_code == 415, r.text
        assert r.json()["error"]["code"] == "unsupported_media_type"


async def test_mock_mode_dictation_refuses_a_recording_over_the_limit() -> None:
    import base64

    async with mock_broker(env={"BROKER_TRANSCRIBE_MAX_SECONDS": "2"}) as broker:
        chat = await broker.chat()
        audio = base64.b64encode((CLIPS / "clip-3s.ogg").read_bytes()).decode()
        r = await chat.call("input.transcribe", audio_base64=audio, mime_type="audio/ogg")
        assert r.status_code == 413, r.text
        assert r.json()["error"]["message"] == (
            "The recording is 3.0 s long; dictation takes at most 2 s."
        )
