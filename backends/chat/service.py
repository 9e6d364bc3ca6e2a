"""The chat service of the chat engine model (`vlm_stream`, which the fronts `vlm` and `llm`
call): validation, conversation history, and the batched engine call.

Plain Python like the engine: the model files read Triton tensors into `ChatRequest`s, this
module turns each into an engine row (or a per-request `RequestError`), runs a batch, and
records each finished turn in its session.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from backends.chat.engine import EngineRow, VlmEngine
from backends.chat.sampling import MAX_PENALTY, MIN_PENALTY, DecodeTotals, RowSink, Sampling
from backends.chat.scheduler import BatchLimits, Job, Scheduler, StaticOnly
from shared.chat import (
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    ChatRequest,
    Completion,
    ImageLimits,
    Message,
    parse_prompt,
    text_message,
)
from shared.errors import UNLOADING_MESSAGE, ErrorCode, ModelLoadError, RequestError, invalid
from shared.loading import LoadPlan
from shared.params import check_temperature
from shared.sessions import SessionStore

MAX_SESSION_ID_CHARS = 256
#: How requests share decoding steps (setting `batching`; `backends.chat.scheduler`).
BATCHING = ("continuous", "static")


@dataclass(frozen=True)
class ChatRow:
    """A validated request row: what the engine runs, and what its session records."""

    engine_row: EngineRow | None  # None: a reset-only request, nothing to generate
    session_id: str | None
    turn: tuple[Message, ...]  # the request's own non-system messages


class ChatService:
    """Settings, sessions and the engine of one chat model instance."""

    def __init__(
        self,
        engine: VlmEngine,
        settings: Mapping[str, Any],
        scheduler: Scheduler | None = None,
    ) -> None:
        """`scheduler`: the running batch that loaded `engine` (`load`); without one, one is
        made here when the settings ask for continuous batching and the engine can."""
        self.engine = engine
        self.settings = dict(settings)
        self.limits = ImageLimits(
            max_images=settings.get("max_images", 0),
            max_pixels=settings.get("max_image_pixels", 1),
            max_bytes=settings.get("max_image_bytes", 1),
        )
        limit = engine.max_new_tokens_limit
        if settings["max_new_tokens"] > limit:
            raise ModelLoadError(
                f"setting 'max_new_tokens' is {settings['max_new_tokens']}, over the limit of "
                f"{limit} (max_new_tokens_limit, and the model's context)"
            )
        self.sessions = SessionStore(
            max_turns=settings["max_history"],
            max_sessions=settings["max_sessions"],
            max_bytes=settings["session_max_bytes"],
            idle_seconds=settings["session_idle_seconds"],
        )
        if scheduler is None and _continuous(settings) and engine.fused is not None:
            scheduler = Scheduler(lambda: engine, _limits(settings))
        self.scheduler = scheduler
        if scheduler is not None and settings["max_batch_tokens"] < engine.context_length:
            self.close()
            raise ModelLoadError(
                f"setting 'max_batch_tokens' is {settings['max_batch_tokens']}; one request "
                f"may need the model's whole context of {engine.context_length} tokens"
            )

    @classmethod
    def load(cls, plan: LoadPlan) -> ChatService:
        """The engine of `plan`'s checkpoint, with the plan's settings. Under continuous
        batching the engine loads on the scheduler's thread, where all its torch work runs,
        and this thread keeps one torch thread for its own small work (encoding requests):
        see `backends.chat.scheduler` for why. A model that decodes with `generate()` gets
        static batches."""
        if not _continuous(plan.settings):
            return cls(VlmEngine.load(plan), plan.settings)
        try:
            scheduler = Scheduler(lambda: VlmEngine.load(plan), _limits(plan.settings))
        except StaticOnly as static:
            return cls(static.engine, plan.settings)
        import torch

        torch.set_num_threads(1)
        return cls(scheduler.engine, plan.settings, scheduler)

    def describe(self) -> str:
        return f"{self.engine.describe()} batching={'continuous' if self.scheduler else 'static'}"

    def close(self) -> None:
        """Stop the scheduler: what waits or runs fails UNAVAILABLE (the model unloads)."""
        if self.scheduler is not None:
            self.scheduler.close(RequestError(UNLOADING_MESSAGE, ErrorCode.UNAVAILABLE))

    @property
    def footprint_bytes(self) -> int:
        return self.engine.footprint_bytes

    @property
    def decode_totals(self) -> DecodeTotals:
        return self.engine.decode_totals

    # --- one request row -------------------------------------------------------------------

    def prepare(self, request: ChatRequest) -> ChatRow:
        """Validate a row and encode its prompt, history included; RequestError if bad."""
        sampling = self.sampling(request)
        session_id = self._session_id(request)
        if request.reset_session:
            if session_id is None:
                raise invalid("input 'reset_session' is true but input 'session_id' is missing")
            self.sessions.reset(session_id)
            if not request.prompt.strip() and not request.images:
                return ChatRow(engine_row=None, session_id=session_id, turn=())
        limits = replace(self.limits, max_images=0) if request.text_only else self.limits
        messages = parse_prompt(request.prompt, request.images, limits)
        self._check_text(messages)
        system = [m for m in messages if m.role == "system"]
        turn = tuple(m for m in messages if m.role != "system")
        history = self.sessions.history(session_id) if session_id is not None else []
        # Oldest turns give way when the conversation outgrows the context.
        for first in range(len(history) + 1):
            kept = [m for past in history[first:] for m in past]
            encoded = self.engine.encode([*system, *kept, *turn])
            if encoded.prompt_tokens + sampling.max_new_tokens <= self.engine.context_length:
                break
        self.engine.check_length(encoded, sampling.max_new_tokens)
        return ChatRow(EngineRow(encoded, sampling), session_id, turn)

    def _check_text(self, messages: list[Message]) -> None:
        """Refuse text that cannot fit the context before the tokenizer sees it: tokenizing
        megabytes costs hundreds of MB (measured: +685 MB for 4 MB) only to be refused after."""
        chars = sum(len(p.text) for m in messages for p in m.parts if p.text is not None)
        limit = self.settings["max_prompt_chars"]
        if chars > limit:
            raise invalid(
                f"input 'prompt' holds {chars} characters of text; the limit is {limit} "
                "(max_prompt_chars: more cannot fit the model's context)"
            )

    def sampling(self, request: ChatRequest) -> Sampling:
        """The row's decoding options: the request's, else the model's defaults; checked."""
        s = self.settings
        limit = self.engine.max_new_tokens_limit
        max_new = _given(request.max_new_tokens, s["max_new_tokens"])
        if not 1 <= max_new <= limit:
            raise invalid(f"input 'max_new_tokens' is {max_new}; allowed: 1 to {limit}")
        temperature = check_temperature(_given(request.temperature, s["temperature"]))
        top_p = float(_given(request.top_p, s["top_p"]))
        if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0:
            raise invalid(f"input 'top_p' is {top_p}; allowed: greater than 0, at most 1")
        top_k = int(_given(request.top_k, s["top_k"]))
        if top_k < 0:
            raise invalid(f"input 'top_k' is {top_k}; allowed: 0 (off) or more")
        penalty = float(_given(request.repetition_penalty, s["repetition_penalty"]))
        if not math.isfinite(penalty) or not MIN_PENALTY <= penalty <= MAX_PENALTY:
            raise invalid(
                f"input 'repetition_penalty' is {penalty}; allowed: {MIN_PENALTY:g} to "
                f"{MAX_PENALTY:g} (1: off)"
            )
        stop = tuple(request.stop)
        if len(stop) > MAX_STOP_STRINGS:
            raise invalid(f"input 'stop' has {len(stop)} strings; the limit is {MAX_STOP_STRINGS}")
        for text in stop:
            if len(text) > MAX_STOP_CHARS:
                raise invalid(
                    f"input 'stop' has a string of {len(text)} characters; the limit is "
                    f"{MAX_STOP_CHARS}"
                )
        return Sampling(
            max_new_tokens=max_new,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=penalty,
            seed=request.seed,
            stop=stop,
        )

    @staticmethod
    def _session_id(request: ChatRequest) -> str | None:
        session_id = request.session_id
        if session_id is None or session_id == "":
            return None
        if len(session_id) > MAX_SESSION_ID_CHARS or not session_id.isprintable():
            raise invalid(
                f"input 'session_id' must be printable text of at most {MAX_SESSION_ID_CHARS} "
                "characters"
            )
        return session_id

    # --- one batch ---------------------------------------------------------------------------

    def run(
        self, rows: Sequence[ChatRow], sinks: Sequence[RowSink | None] | None = None
    ) -> list[Completion]:
        """Generate for all rows in one engine call; record finished turns in their sessions."""
        sinks = list(sinks) if sinks is not None else [None] * len(rows)
        live = [i for i, row in enumerate(rows) if row.engine_row is not None]
        results: list[Completion] = [Completion("", "stop", 0, 0)] * len(rows)
        if live:
            generated = self.engine.generate(
                [rows[i].engine_row for i in live],  # type: ignore[misc]
                [sinks[i] for i in live],
            )
            for index, completion in zip(live, generated, strict=True):
                results[index] = completion
        for row, completion in zip(rows, results, strict=True):
            self._remember(row, completion)
        return results

    def submit(
        self,
        row: ChatRow,
        sink: RowSink | None,
        done: Callable[[Completion], None],
        failed: Callable[[Exception], None],
    ) -> None:
        """Continuous batching: queue `row` to join the running batch. `done` gets its
        completion (its turn already in its session), `failed` an exception; each is called
        once, on the scheduler's thread, or here at once for a reset-only row."""
        assert self.scheduler is not None, "submit() is for continuous batching"
        if row.engine_row is None:
            done(Completion("", "stop", 0, 0))
            return

        def finished(completion: Completion) -> None:
            self._remember(row, completion)
            done(completion)

        self.scheduler.submit(Job(row.engine_row, sink, finished, failed))

    def _remember(self, row: ChatRow, completion: Completion) -> None:
        """A finished turn joins its session (a cancelled one does not)."""
        if row.session_id is None or not row.turn or completion.finish_reason == "cancelled":
            return
        turn = (*row.turn, text_message("assistant", completion.text))
        self.sessions.append(row.session_id, turn, sum(m.size_bytes() for m in turn))


def _continuous(settings: Mapping[str, Any]) -> bool:
    return settings.get("batching", "static") == "continuous"


def _limits(settings: Mapping[str, Any]) -> BatchLimits:
    return BatchLimits(
        settings["max_batch_rows"],
        settings["max_batch_tokens"],
        settings["max_prefill_tokens"],
        settings["admit_wait_ms"] / 1000,
    )


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value
