"""Model ids the door answers to, and the Triton models behind each.

The ids are the Triton model names, so a client that knows this package uses them; OpenAI's
own names (`whisper-1`, `tts-1`, `tts-1-hd`) are aliases so that code written for OpenAI
works unchanged. A modality with a decoupled twin names it: streamed chat goes to
`vlm_stream`, streamed speech to `tts_stream`.
"""

from __future__ import annotations

from dataclasses import dataclass

from openai_api.errors import ApiError


@dataclass(frozen=True)
class Route:
    """Where one model id goes: its unary model and, if it has one, its streaming twin."""

    unary: str
    stream: str | None = None

    def models(self) -> tuple[str, ...]:
        return (self.unary,) if self.stream is None else (self.unary, self.stream)


CHAT = {
    "vlm": Route("vlm", "vlm_stream"),
    "vlm_stream": Route("vlm_stream", "vlm_stream"),
    # llm has no streaming twin of its own (vlm_stream may serve another checkpoint): a
    # streamed llm answer is sent as one content chunk.
    "llm": Route("llm"),
}
TRANSCRIPTION = {"stt": Route("stt"), "whisper-1": Route("stt")}
SPEECH = {
    "tts": Route("tts", "tts_stream"),
    "tts_stream": Route("tts_stream", "tts_stream"),
    "tts-1": Route("tts", "tts_stream"),
    "tts-1-hd": Route("tts", "tts_stream"),
}
ALL = {**CHAT, **TRANSCRIPTION, **SPEECH}


def resolve(table: dict[str, Route], model: str, served: tuple[str, ...], kind: str) -> Route:
    """The route for `model`, or OpenAI's 404 when it is not a `kind` model this door serves."""
    route = table.get(model)
    if route is None or route.unary not in served:
        known = ", ".join(sorted(name for name, r in table.items() if r.unary in served))
        raise ApiError(
            404,
            f"The model '{model}' does not exist or is not a {kind} model; "
            f"{kind} models here: {known or 'none'}",
            param="model",
            code="model_not_found",
        )
    return route


def listed(served: tuple[str, ...], ready: set[str]) -> list[str]:
    """The ids /v1/models shows: those whose unary model is served and ready."""
    return [name for name, route in ALL.items() if route.unary in served and route.unary in ready]
