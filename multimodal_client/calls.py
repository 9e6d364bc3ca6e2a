"""What each call sends and what it reads back, for both clients and both protocols.

Inputs are built with the protocol's own `InferInput` (tritonclient.grpc or .http, whose
asyncio clients use the same classes); outputs are read from a result's `as_numpy`.
"""

from __future__ import annotations

import io
import json
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException

#: The models each call uses by default (model_repository/).
MODELS = {
    "transcribe": "stt",
    "chat": "llm",
    "chat_images": "vlm",
    "chat_stream": "vlm_stream",
    "speak": "tts",
    "speak_stream": "tts_stream",
    "voice_chat": "voice_chat",
}

Audio = bytes | str | Path

#: A server that is not listening (yet): what wait_ready keeps waiting through.
CONNECTION_FAILURES = (InferenceServerException, OSError)


def audio_bytes(audio: Audio) -> bytes:
    """Audio given as bytes, or as the path of a file."""
    return audio if isinstance(audio, bytes) else Path(audio).read_bytes()


def inputs(module: ModuleType, values: dict[str, Any]) -> list[Any]:
    """InferInputs of one row each: str and bytes as BYTES, int as INT32, float as FP32,
    bool as BOOL, a list of bytes as one row of N BYTES; None values are left out."""
    tensors = []
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, list):
            array, datatype = np.array([value], dtype=np.object_), "BYTES"
        elif isinstance(value, bool):
            array, datatype = np.array([[value]], dtype=bool), "BOOL"
        elif isinstance(value, int):
            array, datatype = np.array([[value]], dtype=np.int32), "INT32"
        elif isinstance(value, float):
            array, datatype = np.array([[value]], dtype=np.float32), "FP32"
        else:
            raw = value.encode("utf-8") if isinstance(value, str) else value
            array, datatype = np.array([[raw]], dtype=np.object_), "BYTES"
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def output(result: Any, name: str) -> bytes | None:
    """The first element of a BYTES output, None if the response does not carry it."""
    array = result.as_numpy(name)
    return None if array is None else bytes(array.reshape(-1)[0])


def text(result: Any, name: str) -> str:
    raw = output(result, name)
    return "" if raw is None else raw.decode("utf-8")


def transcribe_inputs(
    audio: Audio, language: str | None, task: str | None, timestamps: bool
) -> dict[str, Any]:
    return {
        "audio": audio_bytes(audio),
        "language": language,
        "task": task,
        "return_timestamps": True if timestamps else None,
    }


def segments(result: Any) -> list[dict[str, Any]]:
    raw = output(result, "segments")
    return list(json.loads(raw) or []) if raw else []


def chat_inputs(
    prompt: str,
    images: Sequence[Audio],
    session_id: str | None,
    max_new_tokens: int | None,
    temperature: float | None,
) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "images": [audio_bytes(i) for i in images] or None,
        "session_id": session_id,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
    }


def chat_model(images: Sequence[Audio], stream: bool) -> str:
    if stream:
        return MODELS["chat_stream"]
    return MODELS["chat_images"] if images else MODELS["chat"]


def speak_inputs(text: str, voice: str | None, format: str | None) -> dict[str, Any]:
    return {"text": text, "voice": voice, "format": format}


def voice_inputs(
    audio: Audio,
    session_id: str | None,
    system: str | None,
    voice: str | None,
    max_new_tokens: int | None,
    format: str | None,
) -> dict[str, Any]:
    return {
        "audio": audio_bytes(audio),
        "session_id": session_id,
        "system": system,
        "voice": voice,
        "max_new_tokens": max_new_tokens,
        "format": format,
    }


@dataclass(frozen=True)
class Speech:
    """A sentence of a voice_chat answer: its text and its audio (encoded as asked)."""

    text: str
    audio: bytes


@dataclass(frozen=True)
class VoiceEvent:
    """One voice_chat response: the `transcript`, a `speech` (a sentence), or the final
    `finish_reason`; exactly one of the three is set."""

    transcript: str | None = None
    speech: Speech | None = None
    finish_reason: str | None = None


def voice_event(result: Any) -> VoiceEvent | None:
    """A voice_chat response as an event; None for the empty final response of a stream."""
    names = {o["name"] if isinstance(o, dict) else o.name for o in _outputs(result)}
    if "transcript" in names:
        return VoiceEvent(transcript=text(result, "transcript"))
    if "audio" in names:
        return VoiceEvent(speech=Speech(text(result, "text"), output(result, "audio") or b""))
    if "finish_reason" in names:
        return VoiceEvent(finish_reason=text(result, "finish_reason"))
    return None


def _outputs(result: Any) -> list[Any]:
    response = result.get_response()
    return list(response["outputs"] if isinstance(response, dict) else response.outputs)


def is_final(result: Any) -> bool:
    """A gRPC stream response that carries the final flag."""
    parameters = result.get_response().parameters
    return "triton_final_response" in parameters and bool(
        parameters["triton_final_response"].bool_param
    )


def join_wav(parts: Sequence[bytes]) -> bytes:
    """WAV files of one format as one WAV file (a voice_chat answer as one recording)."""
    if not parts:
        raise ValueError("no audio to join")
    frames, params = [], None
    for part in parts:
        with wave.open(io.BytesIO(part), "rb") as reader:
            params = params or reader.getparams()
            frames.append(reader.readframes(reader.getnframes()))
    buffer = io.BytesIO()
    assert params is not None  # parts is not empty
    with wave.open(buffer, "wb") as writer:
        writer.setparams(params)
        writer.writeframes(b"".join(frames))
    return buffer.getvalue()
