"""POST /v1/audio/speech and GET /v1/audio/voices: OpenAI speech requests to `tts`.

`wav` and `pcm` are streamed from `tts_stream` sentence by sentence, so the first audio leaves
before the whole text is spoken: raw 16-bit samples need no header, and the WAV header is
written once with the lengths left open (0xFFFFFFFF, what streaming WAV writers do). `flac`,
`mp3` and `opus` are containers whose header or framing depends on the whole signal; they are
answered once `tts` has spoken the whole text. MP3 and Opus are encoded here by libsndfile
(LAME and libopus, inside the soundfile wheel the models already use).
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from openai_api.errors import ApiError, invalid
from openai_api.models import SPEECH, resolve
from openai_api.triton import Outputs, Triton, blob, number, row
from shared.audio import encode_audio

router = APIRouter()

#: OpenAI's `pcm`: 16-bit little-endian mono at 24 kHz (the rate OpenAI documents).
PCM_RATE = 24_000
#: Opus works at 8, 12, 16, 24 or 48 kHz; 24 kHz keeps the voice's 22.05 kHz band.
OPUS_RATE = 24_000


@dataclass(frozen=True)
class Format:
    """How one response_format is made: what tts is asked for, and what the door does."""

    media_type: str
    tts_format: str
    sample_rate: int | None = None  # None: the voice's own rate
    streams: bool = False  # sent sentence by sentence from tts_stream
    encode: tuple[str, str] | None = None  # (libsndfile format, subtype) encoded here


FORMATS = {
    "wav": Format("audio/wav", "pcm_s16", streams=True),
    "pcm": Format("audio/pcm", "pcm_s16", PCM_RATE, streams=True),
    "flac": Format("audio/flac", "flac"),
    "mp3": Format("audio/mpeg", "pcm_f32", encode=("MP3", "MPEG_LAYER_III")),
    "opus": Format("audio/ogg", "pcm_f32", OPUS_RATE, encode=("OGG", "OPUS")),
}


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: str = Field(min_length=1)
    voice: str
    response_format: str = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: str = "audio"
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)  # extension: tts's seed


def wav_header(rate: int) -> bytes:
    """A 16-bit mono PCM WAV header whose lengths are left open, for a stream."""
    open_length = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    riff = b"RIFF" + struct.pack("<I", open_length) + b"WAVE"
    return (
        riff
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", open_length)
    )


def speech_format(request: SpeechRequest) -> Format:
    fmt = FORMATS.get(request.response_format)
    if fmt is None:
        raise invalid(
            f"response_format: '{request.response_format}' is not available; "
            f"use {', '.join(FORMATS)}",
            "response_format",
        )
    if request.stream_format not in ("audio", "sse"):
        raise invalid("stream_format: use 'audio' or 'sse'", "stream_format")
    if request.stream_format == "sse" and not fmt.streams:
        raise invalid(
            "stream_format: 'sse' needs a streamed response_format (wav or pcm)", "stream_format"
        )
    return fmt


def tts_inputs(
    request: SpeechRequest, fmt: Format, voices: dict[str, str]
) -> dict[str, np.ndarray]:
    """tts's inputs: OpenAI voice names mapped, anything else passed on as the voice's own."""
    inputs = {
        "text": row(request.input.encode(), np.object_),
        "voice": row(voices.get(request.voice, request.voice).encode(), np.object_),
        "speaking_rate": row(request.speed, np.float32),
        "format": row(fmt.tts_format.encode(), np.object_),
    }
    if fmt.sample_rate is not None:
        inputs["sample_rate"] = row(fmt.sample_rate, np.int32)
    if request.seed is not None:
        inputs["seed"] = row(request.seed, np.int64)
    return inputs


def encoded(outputs: Outputs, fmt: Format) -> bytes:
    """A whole answer of `tts` in the asked container."""
    audio = blob(outputs, "audio")
    if fmt.encode is None:
        return audio
    samples = np.frombuffer(audio, dtype="<f4")
    container, subtype = fmt.encode
    return encode_audio(
        np.clip(samples, -1.0, 1.0), number(outputs, "sample_rate"), container, subtype
    )


def sse_event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def streamed(
    triton: Triton, model: str, inputs: dict[str, np.ndarray], wav: bool, events: bool
) -> AsyncIterator[bytes]:
    """The audio of each sentence as tts_stream sends it."""
    first, pieces = await triton.started_stream(model, inputs)

    def frame(audio: bytes) -> bytes:
        if not events:
            return audio
        return sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode()})

    async def body() -> AsyncIterator[bytes]:
        async with aclosing(pieces):
            if wav:
                yield frame(wav_header(number(first, "sample_rate")))
            outputs: Outputs | None = first
            try:
                while outputs is not None:
                    audio = blob(outputs, "audio")
                    if audio:
                        yield frame(audio)
                    outputs = await anext(pieces, None)
            except ApiError as exc:
                if events:
                    yield sse_event({"type": "error", **exc.body()})
                return
            if events:
                yield sse_event({"type": "speech.audio.done"})

    return body()


@router.post("/v1/audio/speech", response_model=None)
async def speech(body: SpeechRequest, request: Request) -> Response:
    settings, triton = request.app.state.settings, request.app.state.triton
    route = resolve(SPEECH, body.model, settings.models, "speech")
    fmt = speech_format(body)
    inputs = tts_inputs(body, fmt, dict(settings.voices))
    if fmt.streams and route.stream is not None and route.stream in settings.models:
        events = body.stream_format == "sse"
        chunks = await streamed(triton, route.stream, inputs, body.response_format == "wav", events)
        media_type = "text/event-stream" if events else fmt.media_type
        return StreamingResponse(
            chunks, media_type=media_type, headers={"Cache-Control": "no-cache"}
        )
    if body.response_format == "wav":
        inputs["format"] = row(b"wav", np.object_)  # whole: tts writes a complete WAV file
    outputs = await triton.infer(route.unary, inputs)
    return Response(encoded(outputs, fmt), media_type=fmt.media_type)


@router.get("/v1/audio/voices")
async def voices(request: Request) -> JSONResponse:
    """OpenAI's voice names and the voice of the checkpoint each one speaks with."""
    mapping = request.app.state.settings.voices
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"id": name, "voice": voice, "model": "tts"} for name, voice in mapping.items()
            ],
        }
    )
