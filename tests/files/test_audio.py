"""The length of a dictation recording, read from each container browsers record."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.files.audio import UnreadableAudio, audio_seconds

CLIPS = Path(__file__).parent / "audio"
FORMATS = {
    "chrome-3s.webm": "audio/webm",
    "chrome-3s.m4a": "audio/mp4",
    "clip-3s.ogg": "audio/ogg",
    "clip-3s.wav": "audio/wav",
    "clip-3s.mp3": "audio/mpeg",
}


@pytest.mark.parametrize(("name", "media_type"), FORMATS.items())
async def test_each_format_browsers_record_is_read_to_its_length(name: str, media_type: str):
    seconds = await audio_seconds((CLIPS / name).read_bytes(), media_type)
    assert 2.8 <= seconds <= 3.2, seconds


async def test_chromes_webm_without_a_duration_is_measured_from_its_blocks():
    data = (CLIPS / "chrome-3s.webm").read_bytes()
    assert b"\x44\x89" not in data[:200]  # no Duration element in the header
    half = await audio_seconds(data[: len(data) // 2], "audio/webm")
    assert 1.0 <= half <= 2.0, half  # a cut recording: what is there


@pytest.mark.parametrize(
    "data",
    [bytes(300), b"\x1aE\xdf\xa3" + bytes(1000), b"OggS" + bytes(200), b"RIFF\x00\x00\x00\x00WAVE"],
    ids=["zeros", "webm magic then zeros", "ogg magic then zeros", "wav header only"],
)
@pytest.mark.parametrize("media_type", sorted(set(FORMATS.values())))
async def test_bytes_that_are_not_a_recording_are_unreadable(data: bytes, media_type: str):
    with pytest.raises(UnreadableAudio):
        await audio_seconds(data, media_type)


async def test_a_recording_of_another_type_than_declared_is_unreadable():
    with pytest.raises(UnreadableAudio):
        await audio_seconds((CLIPS / "clip-3s.ogg").read_bytes(), "audio/webm")
    with pytest.raises(UnreadableAudio):
        await audio_seconds((CLIPS / "clip-3s.mp3").read_bytes(), "audio/ogg")
