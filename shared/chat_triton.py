"""The Triton half of the chat models (`vlm`, `vlm_stream`, `llm`): tensors in and out.

Imported only by those models' `model.py` (it needs `triton_python_backend_utils`, like
`shared.triton`, whose column readers it builds on). It reads a request into one
`ChatRequest` per row, turns completions into output tensors, adapts requests and streams
to the engine's `RowSink`, and keeps the generation metrics.

Inputs with a variable count per row (`images`, `stop`) have dims [-1]: a request of R rows
carries an [R, N] tensor, so rows of one request carry the same N; an empty element is
padding and is skipped, which lets rows carry fewer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from shared import triton
from shared.chat import MAX_STOP_CHARS, ChatRequest, Completion
from shared.errors import ErrorCode, RequestError, invalid
from shared.streaming import Stream


def read_chat_requests(request: Any, settings: Mapping[str, Any]) -> list[ChatRequest]:
    """One `ChatRequest` per row of `request` (only sizes and encodings are checked here).

    `settings` are the model's: `max_prompt_bytes`, and `max_image_bytes` where it reads images.
    """
    max_prompt_bytes = settings["max_prompt_bytes"]
    max_image_bytes = settings.get("max_image_bytes", 0)
    rows = triton.request_rows(request, "prompt")
    prompts = [
        _utf8("prompt", raw)
        for raw in triton.bytes_column(request, "prompt", rows, max_bytes=max_prompt_bytes) or []
    ]
    images = _list_column(request, "images", rows, max_bytes=max_image_bytes)
    stops = _list_column(request, "stop", rows, max_bytes=4 * MAX_STOP_CHARS)

    def numbers(name: str, cast: type) -> list[Any]:
        return triton.number_column(request, name, rows, cast) or [None] * rows

    max_new = numbers("max_new_tokens", int)
    temperature = numbers("temperature", float)
    top_p = numbers("top_p", float)
    top_k = numbers("top_k", int)
    penalty = numbers("repetition_penalty", float)
    seed = numbers("seed", int)
    reset = numbers("reset_session", bool)
    sessions = triton.text_column(request, "session_id", rows, max_chars=256) or [None] * rows
    return [
        ChatRequest(
            prompt=prompts[i],
            images=tuple(images[i]),
            max_new_tokens=max_new[i],
            temperature=temperature[i],
            top_p=top_p[i],
            top_k=top_k[i],
            repetition_penalty=penalty[i],
            seed=seed[i],
            stop=tuple(_utf8("stop", s) for s in stops[i]),
            session_id=sessions[i],
            reset_session=bool(reset[i]),
        )
        for i in range(rows)
    ]


def _utf8(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(f"input '{name}' is not valid UTF-8 text: {exc}") from exc


def _list_column(request: Any, name: str, rows: int, *, max_bytes: int) -> list[list[bytes]]:
    """A BYTES input of dims [-1]: per row, its non-empty elements, each within `max_bytes`."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return [[] for _ in range(rows)]
    array = tensor.as_numpy()
    if array.ndim != 2 or array.shape[0] != rows:
        raise invalid(
            f"input '{name}' has shape {list(array.shape)}; expected [{rows}, N], N per row"
        )
    result = []
    for row in array:
        values = [bytes(v) for v in row if len(v) > 0]
        for index, value in enumerate(values):
            if len(value) > max_bytes:
                raise invalid(
                    f"input '{name}' item {index} is {len(value)} bytes; the limit is {max_bytes} "
                    "bytes"
                )
        result.append(values)
    return result


def completion_tensors(completions: Sequence[Completion]) -> list[Any]:
    """The outputs of a request: one row per completion."""
    return [
        triton.bytes_tensor("text", [c.text for c in completions]),
        triton.bytes_tensor("finish_reason", [c.finish_reason for c in completions]),
        _int_tensor("prompt_tokens", [c.prompt_tokens for c in completions]),
        _int_tensor("completion_tokens", [c.completion_tokens for c in completions]),
    ]


def _int_tensor(name: str, values: Sequence[int]) -> Any:
    return pb_utils.Tensor(name, np.asarray(values, dtype=np.int32).reshape(-1, 1))


class RequestSink:
    """A unary request as a row sink: nothing is streamed, but a client that left stops it."""

    def __init__(self, request: Any) -> None:
        self._request = request

    def cancelled(self) -> bool:
        return bool(self._request.is_cancelled())

    def send(self, piece: str) -> None:
        """Unary responses carry the whole text at the end."""


class StreamSink:
    """A decoupled request as a row sink: each new piece of text is one response."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    def cancelled(self) -> bool:
        return self._stream.cancelled()

    def send(self, piece: str) -> None:
        self._stream.send([triton.bytes_tensor("text", [piece])])


class GenerationMetrics:
    """Prometheus counters of what the chat models generate and what clients cancel.

    Tokens generated for a cancelled request are counted too: they are the cost a
    cancellation did not save, which is what shows that generation stops.
    """

    TOKENS = "multimodal_generated_tokens_total"
    CANCELLED = "multimodal_generation_cancelled_total"

    def __init__(self, model_name: str) -> None:
        self._model = model_name
        labels = {"model": model_name}
        # The families must outlive their metrics (Triton deletes a family's series with it).
        self._families = [
            pb_utils.MetricFamily(
                name=self.TOKENS,
                description="Tokens generated, cancelled requests included",
                kind=pb_utils.MetricFamily.COUNTER,
            ),
            pb_utils.MetricFamily(
                name=self.CANCELLED,
                description="Requests whose generation stopped because the client cancelled",
                kind=pb_utils.MetricFamily.COUNTER,
            ),
        ]
        self._tokens, self._cancelled = (f.Metric(labels=labels) for f in self._families)

    def record(self, completions: Sequence[Completion]) -> None:
        for completion in completions:
            if completion.completion_tokens:
                self._tokens.increment(completion.completion_tokens)
            if completion.finish_reason == "cancelled":
                self._cancelled.increment(1)
                pb_utils.Logger.log_info(
                    f"{self._model}: the client cancelled; generation stopped after "
                    f"{completion.completion_tokens} tokens"
                )


class UnaryChatModel:
    """The whole `TritonPythonModel` of the unary chat models, `vlm` and `llm`.

    They differ only in their settings (`llm` has no images), so each `model.py` subclasses
    this with its `params` and the engine's loader (`backends.vlm_chat.ChatService.load`;
    passed in, because `shared` never imports `backends`). One batched generation per
    execute(); each request keeps its own sampling options.
    """

    params: Sequence[Any]
    load_service: Any  # Callable[[LoadPlan], ChatService]

    def initialize(self, args: dict[str, str]) -> None:
        from shared.loading import plan_load

        self.name = args["model_name"]
        plan = plan_load(args, self.params)
        self.service = type(self).load_service(plan)
        self.errors = triton.ErrorCounter(self.name)
        self.metrics = GenerationMetrics(self.name)
        pb_utils.Logger.log_info(
            f"{self.name}: loaded {plan.model_dir}: {self.service.engine.describe()}"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        return triton.run_batch(
            requests, self._parse, self._run, self._respond, self.name, self.errors
        )

    def _parse(self, request: Any) -> list[tuple[Any, RequestSink]]:
        sink = RequestSink(request)
        chats = read_chat_requests(request, self.service.settings)
        return [(self.service.prepare(chat), sink) for chat in chats]

    def _run(self, rows: list[tuple[Any, RequestSink]]) -> list[Completion]:
        completions = self.service.run([row for row, _ in rows], [sink for _, sink in rows])
        self.metrics.record(completions)
        return completions

    def _respond(self, request: Any, completions: list[Completion]) -> Any:
        if any(c.finish_reason == "cancelled" for c in completions):
            return triton.error_response(
                RequestError("the request was cancelled", ErrorCode.CANCELLED)
            )
        return pb_utils.InferenceResponse(output_tensors=completion_tensors(completions))
