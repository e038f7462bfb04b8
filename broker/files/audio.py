"""How long a dictation recording is, read from its container by PyAV (FFmpeg's demuxers).

Browsers record dictation as WebM/Opus (Chrome, Edge), Ogg/Opus (Firefox), fragmented MP4
(Safari, Chrome's ``audio/mp4``), and some clients send MP3 or WAV. Chrome's WebM has no
duration in its header (the recorder streams, so the Segment and its Clusters have unknown
sizes) and fragmented MP4 keeps the length in its fragments, not in ``mvhd``: tag readers such
as mutagen answer "unknown" or the first fragment's few milliseconds there. So the length is
taken from the packets themselves (the last packet's end), never from a header alone, which
also means a header claiming one second does not smuggle in ten minutes. Only the demuxer of
the declared type is tried (no probing across formats), nothing is decoded, and the clip is at
most ``MAX_AUDIO_BYTES`` (about 190 KB), so this costs a few milliseconds of CPU.
"""

from __future__ import annotations

import asyncio
import io

__all__ = ["DEMUXERS", "UnreadableAudio", "audio_seconds"]

#: the declared media type → the one FFmpeg demuxer tried for it
DEMUXERS = {
    "audio/webm": "webm",
    "audio/ogg": "ogg",
    "audio/mp4": "mp4",
    "audio/mpeg": "mp3",
    "audio/wav": "wav",
}


class UnreadableAudio(Exception):
    """The bytes are not a recording of the declared type (or have no audio in them)."""


def _seconds(data: bytes, demuxer: str) -> float:
    import av  # imported on first use: the broker starts without loading FFmpeg

    try:
        with av.open(io.BytesIO(data), mode="r", format=demuxer) as container:
            if not container.streams.audio:
                raise UnreadableAudio("it has no audio track")
            stream = container.streams.audio[0]
            end = 0.0
            for packet in container.demux(stream):
                if packet.pts is None or packet.time_base is None:
                    continue  # the flush packet at the end
                end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
            declared = container.duration / av.time_base if container.duration else 0.0
            return max(end, declared)
    except av.error.FFmpegError as exc:
        raise UnreadableAudio(type(exc).__name__) from None


async def audio_seconds(data: bytes, media_type: str) -> float:
    """The recording's length in seconds; ``UnreadableAudio`` when it cannot be read as
    ``media_type`` (one of ``DEMUXERS``)."""
    demuxer = DEMUXERS.get(media_type)
    if demuxer is None:
        raise UnreadableAudio(f"no reader for {media_type[:60]}")
    return await asyncio.to_thread(_seconds, data, demuxer)
