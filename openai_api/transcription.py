"""POST /v1/audio/transcriptions and /v1/audio/translations: an uploaded file to `stt`.

The file goes to `stt` as it came (any format stt decodes: WAV, FLAC, OGG, MP3), whatever its
length: stt transcribes long audio whole. `prompt` is accepted and ignored, because `stt` has
no input for it (docs/openai.md). The response formats are written by `subtitles`.
"""

from __future__ import annotations

import io
from typing import Annotated

import numpy as np
import soundfile as sf
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from openai_api import subtitles
from openai_api.errors import invalid
from openai_api.models import TRANSCRIPTION, resolve
from openai_api.triton import row, text

router = APIRouter()


def duration(audio: bytes) -> float | None:
    """The file's length from its header (None when libsndfile cannot tell; stt then decides)."""
    try:
        info = sf.info(io.BytesIO(audio))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    return float(info.duration) if info.samplerate > 0 else None


def stt_inputs(
    audio: bytes,
    *,
    task: str,
    language: str | None,
    temperature: float | None,
    response_format: str,
    granularities: list[str],
) -> dict[str, np.ndarray]:
    """stt's input tensors for one OpenAI transcription or translation request."""
    if response_format not in subtitles.FORMATS:
        raise invalid(
            f"response_format: '{response_format}' is not one of {', '.join(subtitles.FORMATS)}",
            "response_format",
        )
    unknown = [g for g in granularities if g != "segment"]
    if unknown:
        raise invalid(
            f"timestamp_granularities: {', '.join(unknown)} is not available; stt gives "
            "segment timestamps only",
            "timestamp_granularities",
        )
    if not audio:
        raise invalid("file: the uploaded file is empty", "file")
    inputs = {"audio": row(audio, np.object_)}
    if task != "transcribe":
        inputs["task"] = row(task.encode(), np.object_)
    if language:
        inputs["language"] = row(language.encode(), np.object_)
    if temperature is not None:
        if not 0 <= temperature <= 1:
            raise invalid("temperature: must be between 0 and 1", "temperature")
        inputs["temperature"] = row(temperature, np.float32)
    if response_format in subtitles.TIMED or granularities:
        inputs["return_timestamps"] = row(True, np.bool_)
    return inputs


async def transcribe(
    request: Request,
    task: str,
    file: UploadFile,
    model: str,
    language: str | None,
    temperature: float | None,
    response_format: str,
    granularities: list[str],
) -> Response:
    settings, triton = request.app.state.settings, request.app.state.triton
    route = resolve(TRANSCRIPTION, model, settings.models, "transcription")
    audio = await file.read()
    inputs = stt_inputs(
        audio,
        task=task,
        language=language,
        temperature=temperature,
        response_format=response_format,
        granularities=granularities,
    )
    outputs = await triton.infer(route.unary, inputs)
    transcript = text(outputs, "text")
    if response_format == "json":
        return JSONResponse({"text": transcript})
    if response_format == "text":
        return PlainTextResponse(transcript)
    seconds = duration(audio)
    items = subtitles.segments(text(outputs, "segments"), transcript, seconds)
    if response_format == "srt":
        return PlainTextResponse(subtitles.srt(items))
    if response_format == "vtt":
        return PlainTextResponse(subtitles.vtt(items), media_type="text/vtt")
    # stt does not report the language it detected: the one asked for is given back.
    spoken = "english" if task == "translate" else (language or "unknown")
    return JSONResponse(
        subtitles.verbose_json(transcript, items, task=task, language=spoken, duration=seconds)
    )


@router.post("/v1/audio/transcriptions", response_model=None)
async def transcriptions(
    request: Request,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()],
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,  # accepted and ignored: stt has no prompt input
    temperature: Annotated[float | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
    timestamp_granularities: Annotated[list[str], Form(alias="timestamp_granularities[]")] = [],  # noqa: B006 - FastAPI copies defaults
) -> Response:
    return await transcribe(
        request,
        "transcribe",
        file,
        model,
        language,
        temperature,
        response_format,
        timestamp_granularities,
    )


@router.post("/v1/audio/translations", response_model=None)
async def translations(
    request: Request,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()],
    prompt: Annotated[str | None, Form()] = None,  # accepted and ignored: stt has no prompt input
    temperature: Annotated[float | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
) -> Response:
    return await transcribe(
        request, "translate", file, model, None, temperature, response_format, []
    )
