"""Dictation (ChatKit's ``input.transcribe``) for agent workflows: the audio goes to OpenAI's
transcription endpoint with the broker's key; mock mode answers a stand-in transcript.

The audio arrives base64 inside the ChatKit request, so the broker's 256 KiB cap on ChatKit
bodies already bounds it (about 190 KB of audio); ``MAX_AUDIO_BYTES`` says so in the error.
Its length is read from the audio itself (``broker.files.audio``) before anything is sent:
longer than ``BROKER_TRANSCRIBE_MAX_SECONDS`` is a 413, bytes that are not a recording of the
declared type a 415, in mock mode too.
"""

from __future__ import annotations

import logging

import openai
from chatkit.types import AudioInput, TranscriptionResult
from openai import AsyncOpenAI

from ...errors import (
    PayloadTooLarge,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ...files.audio import UnreadableAudio, audio_seconds
from .store import Caller

__all__ = ["AUDIO_TYPES", "Dictation"]

log = logging.getLogger("broker.agent")

#: what browsers record (MediaRecorder) and OpenAI's endpoint takes, with the file suffix it
#: infers the format from
AUDIO_TYPES = {
    "audio/webm": "webm",
    "audio/ogg": "ogg",
    "audio/mp4": "mp4",
    "audio/mpeg": "mp3",
    "audio/wav": "wav",
}
MAX_AUDIO_BYTES = 190 * 1024


class Dictation:
    """Turns one recording into text; ``client`` None is mock mode (no model at all)."""

    def __init__(
        self,
        client: AsyncOpenAI | None,
        model: str,
        *,
        max_seconds: float = 120.0,
        timeout: float = 30.0,
    ) -> None:
        self.client = client
        self.model = model
        self.max_seconds = max_seconds
        self.timeout = timeout

    async def transcribe(self, audio_input: AudioInput, context: Caller) -> TranscriptionResult:
        media = audio_input.media_type.strip().lower()
        suffix = AUDIO_TYPES.get(media)
        if suffix is None:
            raise UnsupportedMediaType(
                f"Dictation takes {', '.join(AUDIO_TYPES)}; got {media[:60]!r}."
            )
        size = len(audio_input.data)
        if size > MAX_AUDIO_BYTES:
            raise PayloadTooLarge(f"The recording is larger than {MAX_AUDIO_BYTES} bytes.")
        if size == 0:
            return TranscriptionResult(text="")
        try:
            seconds = await audio_seconds(audio_input.data, media)
        except UnreadableAudio:
            raise UnsupportedMediaType(
                f"The recording could not be read as {media}; record again."
            ) from None
        if seconds > self.max_seconds:
            raise PayloadTooLarge(
                f"The recording is {seconds:.1f} s long; dictation takes at most "
                f"{self.max_seconds:g} s."
            )
        if self.client is None:
            return TranscriptionResult(
                text=f"[mock transcript of {size} bytes of {media}, {seconds:.1f} s]"
            )
        try:
            result = await self.client.audio.transcriptions.create(
                model=self.model,
                file=(f"speech.{suffix}", audio_input.data, media),
                timeout=self.timeout,
            )
        except openai.APITimeoutError:
            raise UpstreamTimeout("OpenAI's transcription did not answer in time.") from None
        except openai.APIConnectionError:
            raise UpstreamUnavailable(
                "OpenAI's transcription endpoint cannot be reached."
            ) from None
        except openai.APIStatusError as exc:
            log.warning("transcription failed: %s %s", exc.status_code, type(exc).__name__)
            raise UpstreamError(
                f"OpenAI's transcription answered {exc.status_code}; try again."
            ) from None
        return TranscriptionResult(text=result.text)
