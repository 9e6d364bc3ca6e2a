"""The transcription response formats: text, json, verbose_json, srt and vtt.

`stt` answers with its text and Whisper's segments (start, end, text in seconds); every format
OpenAI offers is written from those two, here, without a model. Pure functions, so the formats
are tested without a server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
#: The formats that need segment timestamps from stt.
TIMED = frozenset({"srt", "verbose_json", "vtt"})


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str


def segments(raw: str, text: str, duration: float | None) -> list[Segment]:
    """stt's `segments` output (JSON, or "null") as Segments with monotonic times.

    Whisper may leave the last segment's end open (None); it then ends with the audio. When
    stt gave no segments at all, the whole text is one segment over the whole audio.
    """
    parsed = json.loads(raw) if raw else None
    if not parsed:
        return [Segment(0.0, duration or 0.0, text.strip())] if text.strip() else []
    result: list[Segment] = []
    for item in parsed:
        start = float(item.get("start") or 0.0)
        if result:
            start = max(start, result[-1].end)
        end = item.get("end")
        end = float(end) if end is not None else (duration if duration is not None else start)
        result.append(Segment(start, max(end, start), str(item.get("text", "")).strip()))
    return result


def timestamp(seconds: float, separator: str) -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (WebVTT)."""
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(items: list[Segment]) -> str:
    blocks = [
        f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text}\n"
        for i, s in enumerate(items, 1)
    ]
    return "\n".join(blocks)


def vtt(items: list[Segment]) -> str:
    blocks = [f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text}\n" for s in items]
    return "WEBVTT\n\n" + "\n".join(blocks)


def verbose_json(
    text: str, items: list[Segment], *, task: str, language: str, duration: float | None
) -> dict[str, Any]:
    """OpenAI's verbose_json, with the segment fields stt has (id, start, end, text)."""
    return {
        "task": task,
        "language": language,
        "duration": duration if duration is not None else (items[-1].end if items else 0.0),
        "text": text,
        "segments": [
            {"id": i, "start": s.start, "end": s.end, "text": s.text} for i, s in enumerate(items)
        ],
    }
