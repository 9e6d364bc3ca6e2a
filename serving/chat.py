"""The Triton side of the chat engine model (`vlm_stream`): tensors in and out.

It reads a request into one `ChatRequest` per row, adapts streams to the engine's `RowSink`,
records the generation metrics, and is the whole model of `vlm_stream`, which holds the
weights, the running batch and the sessions for itself and for the unary fronts `vlm` and
`llm` (`serving.chat_front`).

Inputs with a variable count per row (`images`, `stop`) have dims [-1]: a request of R rows
carries an [R, N] tensor, so rows of one request carry the same N; an empty element is
padding and is skipped, which lets rows carry fewer.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import triton_python_backend_utils as pb_utils

from backends.chat.sampling import DecodeTotals
from backends.chat.service import ChatRow, ChatService
from serving import metrics, tensors
from serving.adapters import StreamingModel
from serving.batch import engine_error
from serving.chat_protocol import CANCEL_ID_CHARS, CANCEL_INPUT, completion_tensors
from serving.protocols import Request
from serving.streaming import Stream, submit_streams
from shared.chat import FINISH_REASONS, MAX_STOP_CHARS, ChatRequest, Completion
from shared.errors import ErrorCode, RequestError, invalid


def read_chat_requests(request: Request, settings: Mapping[str, Any]) -> list[ChatRequest]:
    """One `ChatRequest` per row of `request` (only sizes and encodings are checked here).

    `settings` are the model's: `max_prompt_bytes`, and `max_image_bytes` where it reads images.
    """
    max_prompt_bytes = settings["max_prompt_bytes"]
    max_image_bytes = settings.get("max_image_bytes", 0)
    rows = tensors.request_rows(request, "prompt")
    prompts = [
        tensors.utf8("prompt", raw)
        for raw in tensors.bytes_column(request, "prompt", rows, max_bytes=max_prompt_bytes) or []
    ]
    images = tensors.list_column(request, "images", rows, max_bytes=max_image_bytes)
    stops = tensors.list_column(request, "stop", rows, max_bytes=4 * MAX_STOP_CHARS)

    def numbers(name: str, cast: type) -> list[Any]:
        return tensors.number_column(request, name, rows, cast) or [None] * rows

    max_new = numbers("max_new_tokens", int)
    temperature = numbers("temperature", float)
    top_p = numbers("top_p", float)
    top_k = numbers("top_k", int)
    penalty = numbers("repetition_penalty", float)
    seed = numbers("seed", int)
    reset = numbers("reset_session", bool)
    text_only = numbers("text_only", bool)
    sessions: Sequence[str | None] = (
        tensors.text_column(request, "session_id", rows, max_chars=256) or [None] * rows
    )
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
            stop=tuple(tensors.utf8("stop", s) for s in stops[i]),
            session_id=sessions[i],
            reset_session=bool(reset[i]),
            text_only=bool(text_only[i]),
        )
        for i in range(rows)
    ]


class StreamSink:
    """A decoupled request as a row sink: each new piece of text is one response."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self.withdrawn = False

    def withdraw(self) -> None:
        self.withdrawn = True

    def cancelled(self) -> bool:
        return self.withdrawn or self._stream.cancelled()

    def send(self, piece: str) -> None:
        self._stream.send([tensors.bytes_tensor("text", [piece])])


class GenerationMetrics:
    """What the chat models generate, how fast, and what clients cancel (`serving.metrics`).

    Tokens generated for a cancelled request are counted too: they are the cost a
    cancellation did not save, which is what shows that generation stops. Latencies count
    from the start of execute(): the time a request waited in Triton's queue before it is
    Triton's own `nv_inference_queue_duration_us`.
    """

    TOKENS = metrics.GENERATED_TOKENS.name
    CANCELLED = metrics.GENERATION_CANCELLED.name

    def __init__(self, model_name: str, instance: str) -> None:
        self._model = model_name
        self._first_token = metrics.Family(metrics.FIRST_TOKEN, model_name)
        self._per_token = metrics.Family(metrics.PER_TOKEN, model_name)
        self._queue = metrics.Family(metrics.QUEUE_WAIT, model_name)
        self._prompt_tokens = metrics.Family(metrics.PROMPT_TOKENS, model_name)
        self._tokens = metrics.Family(metrics.GENERATED_TOKENS, model_name)
        self._completions = metrics.Family(metrics.COMPLETIONS, model_name, FINISH_REASONS)
        self._cancelled = metrics.Family(metrics.GENERATION_CANCELLED, model_name)
        self._steps = metrics.Family(metrics.DECODE_STEPS, model_name)
        self._step_rows = metrics.Family(metrics.DECODE_STEP_ROWS, model_name)
        self._sessions = metrics.Family(metrics.SESSIONS, model_name, instance=instance)
        self._session_bytes = metrics.Family(metrics.SESSION_BYTES, model_name, instance=instance)
        self._decode_seen = DecodeTotals()

    def record(
        self, completions: Sequence[Completion], service: ChatService, started: float
    ) -> None:
        """One engine call's completions; `started`: when its execute() began."""
        reasons: Counter[str] = Counter()
        for completion in completions:
            reasons[completion.finish_reason] += 1
            first, last = completion.first_token_at, completion.last_token_at
            if completion.admitted_at is not None:
                self._queue.observe(completion.admitted_at - started)
            if first is not None:
                self._first_token.observe(first - started)
            if last is not None and first is not None and completion.completion_tokens > 1:
                self._per_token.observe((last - first) / (completion.completion_tokens - 1))
            if completion.finish_reason == "cancelled":
                pb_utils.Logger.log_info(
                    f"{self._model}: the client cancelled; generation stopped after "
                    f"{completion.completion_tokens} tokens"
                )
        self._prompt_tokens.increment(sum(c.prompt_tokens for c in completions))
        self._tokens.increment(sum(c.completion_tokens for c in completions))
        for reason, count in reasons.items():
            self._completions.increment(count, reason=reason)
        self._cancelled.increment(reasons["cancelled"])
        totals = service.decode_totals
        self._steps.increment(totals.steps - self._decode_seen.steps)
        self._step_rows.increment(totals.rows - self._decode_seen.rows)
        self._decode_seen = DecodeTotals(totals.steps, totals.rows)
        self._sessions.set(len(service.sessions))
        self._session_bytes.set(service.sessions.size_bytes)


class StreamingChatModel(StreamingModel[ChatService, ChatRow]):
    """The chat engine model (`vlm_stream`): the weights, the running batch and the sessions,
    for its own streaming clients and for the unary fronts `vlm` and `llm`
    (`serving.chat_front`). One response per new piece of text, then a final one with the
    summary. Continuous batching: execute() submits each stream to the running batch and
    returns; static: all requests of one execute() stream from one generation."""

    metrics: GenerationMetrics
    load_engine = staticmethod(ChatService.load)
    #: Rows the running execute() handed to the running batch (continuous batching).
    submitted: int = 0

    def start_metrics(self) -> None:
        super().start_metrics()
        self.metrics = GenerationMetrics(self.name, self.instance)
        self._live: dict[str, list[StreamSink]] = {}
        self._live_lock = threading.Lock()

    def execute(self, requests: list[Request]) -> None:
        for request in requests:
            if self.is_control(request):
                self._withdrawal(request)
        work = [r for r in requests if not self.is_control(r)]
        if not work:
            return None
        if self.engine.scheduler is None:
            return super().execute(work)
        self.started, self.submitted = time.perf_counter(), 0
        submit_streams(work, self.parse, self._submit, self.name, self.errors)
        if self.submitted:
            self.batch_rows.observe(self.submitted)
        return None

    def finalize(self) -> None:
        """Unloading: requests still waiting or generating are answered UNAVAILABLE."""
        self.engine.close()

    def parse(self, request: Request) -> list[ChatRow]:
        chats = read_chat_requests(request, self.settings)
        if len(chats) != 1:
            raise invalid(
                f"input 'prompt' has {len(chats)} rows; a streaming request carries one prompt"
            )
        return [self.engine.prepare(chats[0])]

    def run(self, rows: list[ChatRow], streams: list[Stream]) -> None:
        """Static batching: one generation for the rows of one execute()."""
        sinks = [StreamSink(s) for s in streams]
        forgets = [self.track(s.request, sink) for s, sink in zip(streams, sinks, strict=True)]
        try:
            completions = self.engine.run(rows, sinks)
        finally:
            for forget in forgets:
                forget()
        self.record(completions, self.started)
        for stream, completion in zip(streams, completions, strict=True):
            stream.finish(_summary(completion))

    def _submit(self, rows: list[ChatRow], stream: Stream) -> None:
        """Continuous batching: the row joins the running batch; it finishes the stream."""
        (row,) = rows
        started = self.started
        self.submitted += 1
        sink = StreamSink(stream)
        forget = self.track(stream.request, sink)

        def done(completion: Completion) -> None:
            forget()
            self.record([completion], started)
            stream.finish(_summary(completion))

        def failed(exc: Exception) -> None:
            forget()
            stream.fail(engine_error(self.name, exc))

        self.engine.submit(row, sink, done, failed)

    def record(self, completions: Sequence[Completion], started: float) -> None:
        """Metrics of finished rows; `started`: their execute()'s start."""
        self.metrics.record(completions, self.engine, started)

    # --- cancellation by request id ----------------------------------------------------------
    # A BLS caller cannot cancel its call on tritonserver 2.51 (ResponseIterator.cancel() came
    # later), so the fronts and `voice_chat` cancel a call they no longer need with a second
    # request whose `cancel_id` input names the first one's request id. Only ids of
    # CANCEL_ID_CHARS or more (a random token) are cancellable, so that a guessed id cannot
    # stop another client's request. It acts at once under continuous batching, where
    # execute() returns at once; under static batching it is answered after the running batch.

    def is_control(self, request: Request) -> bool:
        return tensors.has_input(request, CANCEL_INPUT)

    def _withdrawal(self, request: Request) -> None:
        stream = Stream(request, self.errors)
        error = self.withdraw(request)
        if error is not None:
            stream.fail(error)
        else:
            stream.finish(_summary(Completion("", "cancelled", 0, 0)))

    def withdraw(self, request: Request) -> RequestError | None:
        """Cancel the live request `request`'s `cancel_id` names; the error if it names none."""
        try:
            (target,) = tensors.text_column(request, CANCEL_INPUT, 1, max_chars=256) or [""]
        except RequestError as error:
            return error
        with self._live_lock:
            sinks = self._live.get(target, [])
        for sink in sinks:
            sink.withdraw()
        if not sinks:
            return RequestError(
                f"input '{CANCEL_INPUT}': no request with that id is running or waiting here",
                ErrorCode.NOT_FOUND,
            )
        return None

    def track(self, request: Request, sink: StreamSink) -> Callable[[], None]:
        """Make `request` cancellable by its id while it runs; the call that forgets it."""
        key = str(request.request_id())
        if len(key) < CANCEL_ID_CHARS:
            return lambda: None
        with self._live_lock:
            self._live.setdefault(key, []).append(sink)

        def forget() -> None:
            with self._live_lock:
                sinks = self._live.get(key, [])
                if sink in sinks:
                    sinks.remove(sink)
                if not sinks:
                    self._live.pop(key, None)

        return forget


def _summary(completion: Completion) -> list[Any]:
    """A stream's final response: the text went out piece by piece, the summary comes last."""
    return completion_tensors([replace(completion, text="")])
