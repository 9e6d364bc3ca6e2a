"""The Triton side of `voice_chat`: a request's inputs, the three stages as BLS calls, and the
responses (`transcript`, then `text` + `audio` per sentence, then `finish_reason`).

The turn itself is `backends.voice.pipeline.converse`; this module gives it its stages:
`stt` (unary), the chat model streamed (`exec(decoupled=True)`, which also takes a unary chat
model such as `llm` as a stream of one response) and `tts` once per sentence, each through
`async_exec`, so the sentences' speech overlaps the chat model's generation.

What tritonserver 2.51's BLS does not give, and what is done instead:
- a callee's error code: its message arrives, its code is always INTERNAL. The code is read
  back from the message (`serving.errors.code_of_message`: the models of this package name
  the input at fault, under the same input names `voice_chat` takes); the message names the
  stage's model;
- cancelling a BLS stream (ResponseIterator.cancel() came in a later python_backend): the
  chat call carries a random request id, and when the client cancels, a second call with
  `cancel_id` naming it stops the generation (the chat models' `cancel_id` input); no more
  speech is started or sent either.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import triton_python_backend_utils as pb_utils

from backends.voice.pipeline import ChatPiece, StageError, converse
from serving import tensors
from serving.bls import FinishedStreams
from serving.errors import ErrorCounter, code_of_message, internal_error, log_exception
from serving.protocols import Request
from serving.streaming import Stream
from shared.errors import RequestError, cancelled, invalid
from shared.params import Param, resolve

PARAMS = [
    Param("stt_model", "stt", doc="the model that transcribes the question"),
    Param(
        "chat_model",
        "vlm_stream",
        doc="the model that answers: streamed (vlm_stream) or unary (llm, vlm)",
    ),
    Param("tts_model", "tts", doc="the model that speaks each sentence of the answer"),
    Param(
        "max_audio_bytes",
        64 * 1024 * 1024,
        parse=int,
        minimum=1,
        doc="the largest question audio taken, in bytes",
    ),
    Param(
        "max_system_chars",
        4000,
        parse=int,
        minimum=1,
        doc="the longest `system` instruction, in characters",
    ),
    Param(
        "max_sentence_chars",
        300,
        parse=int,
        minimum=20,
        doc="a longer sentence of the answer is spoken in pieces (as the TTS models cut)",
    ),
]


@dataclass(frozen=True)
class Turn:
    """One request's inputs, checked."""

    audio: bytes
    session_id: str | None
    voice: str | None
    max_new_tokens: int | None
    system: str | None
    format: str | None


def parse(request: Request, settings: Mapping[str, Any]) -> Turn:
    """The request's inputs; a bad one fails the request with INVALID_ARG naming it."""
    if tensors.request_rows(request, "audio") != 1:
        raise invalid("input 'audio' has several rows; a voice_chat request carries one question")

    def text(name: str, max_chars: int) -> str | None:
        column = tensors.text_column(request, name, 1, max_chars=max_chars)
        return None if column is None else column[0]

    audio = tensors.bytes_column(request, "audio", 1, max_bytes=settings["max_audio_bytes"])
    assert audio is not None  # request_rows found it
    max_new = tensors.number_column(request, "max_new_tokens", 1, int)
    return Turn(
        audio=audio[0],
        session_id=text("session_id", 256),
        voice=text("voice", 256),
        max_new_tokens=None if max_new is None else max_new[0],
        system=text("system", settings["max_system_chars"]),
        format=text("format", 32),
    )


def stage_error(stage: str, response: Any) -> StageError:
    """A stage's error response as this request's error (see the module docstring)."""
    message = str(response.error().message())
    return StageError(stage, message, code_of_message(message))


def _bytes(value: str | bytes) -> np.ndarray:
    return np.array([[value.encode("utf-8") if isinstance(value, str) else value]], np.object_)


def _request(
    model: str, inputs: Mapping[str, np.ndarray | None], outputs: list[str], request_id: str = ""
) -> Any:
    return pb_utils.InferenceRequest(
        model_name=model,
        inputs=[
            pb_utils.Tensor(name, value) for name, value in inputs.items() if value is not None
        ],
        requested_output_names=outputs,
        request_id=request_id,
    )


def _withdrawal(model: str, request_id: str) -> Any:
    """The call that cancels the chat call `request_id` by naming it (the chat models'
    `cancel_id` input): 2.51's BLS cannot cancel a call. Its answer is not needed (the call
    may have finished already)."""
    return _request(model, {"prompt": _bytes(""), "cancel_id": _bytes(request_id)}, [])


def _text(response: Any, name: str) -> str:
    tensor = pb_utils.get_output_tensor_by_name(response, name)
    return "" if tensor is None else bytes(tensor.as_numpy().reshape(-1)[0]).decode("utf-8")


class BlsStages:
    """The pipeline's stages as BLS calls to the configured models, for `request`."""

    def __init__(
        self,
        request: Request,
        turn: Turn,
        settings: Mapping[str, Any],
        streams: FinishedStreams,
    ) -> None:
        self.request, self.turn, self.settings, self.streams = request, turn, settings, streams

    def _release(self, stream: Any) -> None:
        """Read the rest of a BLS stream and let it go (blocking, for a worker thread)."""
        self.streams.release([stream], self.request)

    async def transcribe(self) -> str:
        model = self.settings["stt_model"]
        response = await _request(model, {"audio": _bytes(self.turn.audio)}, ["text"]).async_exec()
        if response.has_error():
            raise stage_error(model, response)
        return _text(response, "text")

    async def chat(self, question: str) -> AsyncGenerator[ChatPiece, None]:
        model = self.settings["chat_model"]
        turn = self.turn
        prompt: str = question
        if turn.system is not None:
            prompt = json.dumps(
                [{"role": "system", "content": turn.system}, {"role": "user", "content": question}]
            )
        inputs = {
            "prompt": _bytes(prompt),
            "session_id": None if turn.session_id is None else _bytes(turn.session_id),
            "max_new_tokens": None
            if turn.max_new_tokens is None
            else np.array([[turn.max_new_tokens]], np.int32),
        }
        request_id = secrets.token_hex(16)  # unguessable: what makes it cancellable
        request = _request(model, inputs, ["text", "finish_reason"], request_id)
        responses = await request.async_exec(decoupled=True)
        loop = asyncio.get_running_loop()
        ended = False
        try:
            while (response := await loop.run_in_executor(None, next, responses, None)) is not None:
                if response.has_error():
                    raise stage_error(model, response)
                reason = _text(response, "finish_reason")
                yield ChatPiece(_text(response, "text"), reason or None)
            ended = True
        finally:
            if not ended:
                # Left early (the client cancelled, or speech failed): stop the generation.
                withdrawal = _withdrawal(model, request_id)
                loop.run_in_executor(None, lambda: self._release(withdrawal.exec(decoupled=True)))
            # What is left of the stream is read, and it is let go, on a worker thread, not
            # on the event loop that every turn shares.
            loop.run_in_executor(None, self._release, responses)

    async def speak(self, sentence: str) -> bytes:
        model = self.settings["tts_model"]
        turn = self.turn
        inputs = {
            "text": _bytes(sentence),
            "voice": None if turn.voice is None else _bytes(turn.voice),
            "format": None if turn.format is None else _bytes(turn.format),
        }
        response = await _request(model, inputs, ["audio"]).async_exec()
        if response.has_error():
            raise stage_error(model, response)
        audio = pb_utils.get_output_tensor_by_name(response, "audio")
        return bytes(audio.as_numpy().reshape(-1)[0])


class StreamListener:
    """What the pipeline delivers, as this request's responses."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def transcript(self, text: str) -> None:
        self.stream.send([tensors.bytes_tensor("transcript", [text])])

    def sentence(self, text: str, audio: bytes) -> None:
        self.stream.send(
            [tensors.bytes_tensor("text", [text]), tensors.bytes_tensor("audio", [audio])]
        )


class VoiceChatModel:
    """Decoupled, async: every request is one `converse` on the stub's event loop, so the
    turns of concurrent requests overlap too."""

    params: ClassVar[Sequence[Param]] = PARAMS
    name: str
    settings: dict[str, Any]
    errors: ErrorCounter
    streams: FinishedStreams

    def initialize(self, args: dict[str, str]) -> None:
        self.name = args["model_name"]
        self.settings = resolve(self.params, json.loads(args["model_config"]), self.name)
        self.errors = ErrorCounter(self.name)
        self.streams = FinishedStreams()
        stages = ", ".join(self.settings[f"{s}_model"] for s in ("stt", "chat", "tts"))
        pb_utils.Logger.log_info(f"{self.name}: ready; stages {stages}")

    async def execute(self, requests: list[Request]) -> None:
        await asyncio.gather(*(self.serve(request) for request in requests))

    async def serve(self, request: Request) -> None:
        """One request, from its inputs to its final response (always sent)."""
        stream = Stream(request, self.errors)
        try:
            if request.is_cancelled():
                raise cancelled()
            turn = parse(request, self.settings)
            finish_reason = await converse(
                BlsStages(request, turn, self.settings, self.streams),
                StreamListener(stream),
                stream.cancelled,
                self.settings["max_sentence_chars"],
            )
        except RequestError as error:
            stream.fail(error)
        except StageError as error:
            stream.fail(RequestError(str(error), error.code))
        except Exception as exc:
            log_exception(self.name, "answering", exc)
            stream.fail(internal_error(self.name, "answering", exc))
        else:
            stream.finish([tensors.bytes_tensor("finish_reason", [finish_reason])])
