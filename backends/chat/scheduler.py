"""Continuous (iteration-level) batching for the chat engine: a request joins the running
batch at the next decoding step and leaves it the step it finishes.

Why: with static batches every `execute()` decodes its batch to the end, so a request that
arrives meanwhile waits for the whole batch (measured on `vlm_stream`, 16 clients: time to
first token 35x what it is alone). Here one scheduler per engine owns the running batch on a
thread of its own; `execute()` only parses and `submit`s, and returns.

The loop, between two decoding steps:

1. **admit**: waiting jobs, in arrival order, while the limits allow (`BatchLimits`: rows in
   flight, key/value slots, prompt tokens per admission); a job whose client already left is
   answered `cancelled` without any work;
2. **prompt pass** of the admitted jobs as one left-padded batch, which gives each its first
   token; the rows still going join the running `DecodeState`. A prompt that is costly to
   pass passes alone, in stages, one stage between two decoding steps: a prompt with images
   its images a tile per stage, then its text (`TiledImages`); the text of a prompt longer
   than `max_prefill_tokens` chunks of that many tokens (`ChunkedPrefill`). So the rows decoding
   wait for at most one stage, and a request cancelled meanwhile costs at most the stage
   under way;
3. **step**: one fused decoding step for every running row; each row then takes its token
   through its own sampler and tracker (sampling options, seed, stop strings,
   `max_new_tokens`, cancellation, as in a static batch: `backends.chat.sampling`), and a
   row that finished leaves the batch at once.

Exactness: a row's prompt pass and steps compute what they compute in a static batch; only
the masked left padding it shares the batch with differs, so in float32 its greedy tokens are
those it gets alone (tested on the real SmolLM2 with staggered arrivals).

A failure is pinned where it belongs: a prompt pass that fails is retried on halves of its
jobs until the job that fails alone gets the error; a row whose sampling fails leaves with its
error; only a failing decoding step fails every running row (the step is shared).

Only the fused decoder runs here; models that decode with `generate()` keep static batches
(`ChatService`).

All of the engine's torch work belongs on the scheduler's thread, its loading included
(`Scheduler(load, ...)`): GNU OpenMP, torch's CPU thread pool, keeps one pool of worker threads
per calling thread and spins them briefly only while it manages no more threads than there are
CPUs; a second pool (the loading thread's) halves its spinning and every parallel region then
wakes a sleeping worker. Measured on 2 cores: the same 48-token answer took 0.89 s on a thread
of its own against 0.53 s on the thread that had loaded the model, and 0.61 s once the thread
that decodes had loaded it too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import torch

from backends.chat.decode import DecodeState, FusedDecoder
from backends.chat.engine import EngineRow, PromptStages, VlmEngine
from backends.chat.sampling import RowSampler, RowSink, RowTracker
from shared.chat import Completion

log = logging.getLogger(__name__)
T = TypeVar("T")


class StaticOnly(ValueError):
    """The engine decodes with `generate()`, which runs a batch to its end: no continuous
    batching for it. `engine` is loaded, for static batches."""

    def __init__(self, engine: VlmEngine) -> None:
        super().__init__("continuous batching needs the fused decoder")
        self.engine = engine


@dataclass
class Job:
    """One row to generate, and where its outcome goes (called once, on the scheduler's
    thread: `done` with the completion, or `failed` with the exception)."""

    row: EngineRow
    sink: RowSink | None
    done: Callable[[Completion], None]
    failed: Callable[[Exception], None]
    arrived: float = field(default_factory=time.perf_counter)
    admitted: float | None = None  # when its prompt pass began


@dataclass(frozen=True)
class BatchLimits:
    """What the running batch may hold; jobs beyond it wait, in order.

    `max_tokens` bounds the key/value buffers: rows x allocated columns (each row's columns
    hold its prompt, its left padding and room for its remaining tokens). `max_prefill_tokens`
    bounds the prompt tokens of one admission, so the rows decoding wait for at most one such
    prompt pass between two steps: a longer prompt passes alone, in chunks of that size.
    A prompt with images passes alone, a tile at a time, then its text in chunks
    (`TiledImages`); where the checkpoint's image layout does not allow that, whole, and
    alone if it is longer.
    """

    max_rows: int
    max_tokens: int
    max_prefill_tokens: int
    #: While rows decode, arrivals wait to be admitted together (one prompt pass of several
    #: rows costs far less than several of one, and every pass stalls the decoding rows) until
    #: a quarter as many as are running wait, or the oldest has waited this long.
    admit_wait_s: float = 0.0


class _Row:
    """A job in the running batch: its tracker, sampler and the token it feeds next."""

    def __init__(self, job: Job, engine: VlmEngine) -> None:
        sampling = job.row.sampling
        self.job = job
        self.tracker = RowTracker(engine.tokenizer, [sampling], [job.sink], engine.eos_token_ids)
        self.sampler = RowSampler([sampling], [0], engine.device)
        self.ids = job.row.encoded.inputs["input_ids"].to(engine.device)  # the penalty's view
        self.generated = 0
        self.done = False  # ended: end of turn, max_new_tokens, a stop string, cancelled
        self.error: Exception | None = None

    @property
    def remaining(self) -> int:
        return self.job.row.sampling.max_new_tokens - self.generated

    @property
    def finished(self) -> bool:
        return self.done or self.error is not None


class Scheduler:
    """The running batch of one engine (see the module doc)."""

    def __init__(self, load: Callable[[], VlmEngine], limits: BatchLimits) -> None:
        """Start the scheduler's thread and load the engine on it (`load`; the module doc says
        why there); raises what loading raised, or `StaticOnly` with the loaded engine if the
        model decodes with `generate()`."""
        self.limits = limits
        self._waiting: deque[Job] = deque()
        self._rows: list[_Row] = []
        self._state: DecodeState | None = None
        self._tokens: torch.Tensor | None = None  # each running row's next input token
        self._prefilling: tuple[Job, PromptStages] | None = None  # a prompt passing in stages
        self._wake = threading.Condition()
        self._closed = False
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(
            target=self._main, args=(load,), name="chat-scheduler", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def _main(self, load: Callable[[], VlmEngine]) -> None:
        try:
            self.engine = load()
            if self.engine.fused is None:
                raise StaticOnly(self.engine)
            self.decoder: FusedDecoder = self.engine.fused
        except BaseException as exc:
            self._failure = exc
            return
        finally:
            self._ready.set()
        self._loop()

    # --- any thread ------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the chat scheduler is closed")
            self._waiting.append(job)
            self._wake.notify()

    def close(self, reason: Exception) -> None:
        """Stop the loop; every job still waiting or running fails with `reason`."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        jobs = [row.job for row in self._rows] + list(self._waiting)
        if self._prefilling is not None:
            jobs.append(self._prefilling[0])
        for job in jobs:
            _call(job.failed, reason)
        self._rows, self._waiting, self._prefilling = [], deque(), None

    @property
    def load(self) -> tuple[int, int]:
        """(rows running, jobs waiting), for metrics and tests."""
        return len(self._rows), len(self._waiting)

    # --- the scheduler's thread ------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while (
                    not self._closed
                    and not self._waiting
                    and not self._rows
                    and self._prefilling is None
                ):
                    self._wake.wait()
                if self._closed:
                    return
            try:
                with torch.inference_mode():
                    self._admit()
                    if self._prefilling is not None:
                        self._advance_prefill()
                    if self._rows:
                        self._step()
            except Exception as exc:  # a bug here must not end the loop every request needs
                log.exception("chat scheduler: the loop failed; its running rows fail")
                self._fail_running(exc)

    def _fail_running(self, exc: Exception) -> None:
        """Every running row, and a prompt under way, fails with `exc`; the batch is empty."""
        jobs = [row.job for row in self._rows]
        if self._prefilling is not None:
            jobs.append(self._prefilling[0])
        self._rows, self._state, self._tokens, self._prefilling = [], None, None, None
        for job in jobs:
            _call(job.failed, exc)

    def _due(self) -> bool:
        """Whether the waiting jobs are admitted now (`BatchLimits.admit_wait_s`)."""
        if not self._waiting:
            return False
        running = len(self._rows) + (self._prefilling is not None)
        if running == 0 or len(self._waiting) >= max(1, running // 4):
            return True
        return time.perf_counter() - self._waiting[0].arrived >= self.limits.admit_wait_s

    def _admit(self) -> None:
        arrivals: list[Job] = []
        gone: list[Job] = []
        with self._wake:
            while self._waiting and self._due():
                job = self._waiting[0]
                if job.sink is not None and job.sink.cancelled():
                    gone.append(self._waiting.popleft())
                    continue
                staged = self._staged(job)
                if (staged and (arrivals or self._prefilling)) or not self._fits([*arrivals, job]):
                    break
                arrivals.append(self._waiting.popleft())
                if staged:
                    break
        for job in gone:
            _cancelled(job)
        if len(arrivals) == 1 and self._staged(arrivals[0]):
            job = arrivals[0]
            job.admitted = time.perf_counter()
            stages = self.engine.staged_prefill(
                job.row.encoded, job.row.sampling.max_new_tokens, self.limits.max_prefill_tokens
            )
            self._prefilling = (job, stages)
        elif arrivals:
            self._prefill(arrivals)

    def _staged(self, job: Job) -> bool:
        return self.engine.staged(job.row.encoded, self.limits.max_prefill_tokens)

    def _advance_prefill(self) -> None:
        """One stage of the prompt under way; after its last, the row joins."""
        assert self._prefilling is not None
        job, stages = self._prefilling
        if job.sink is not None and job.sink.cancelled():
            self._prefilling = None
            _cancelled(job)
            return
        try:
            result = stages.advance()
        except Exception as exc:
            self._prefilling = None
            _call(job.failed, exc)
            return
        if result is not None:
            self._prefilling = None
            self._join([job], *result)

    def _fits(self, jobs: Sequence[Job]) -> bool:
        """Whether the running rows and `jobs` stay inside the limits (a first job always
        does: the settings make one request's largest need fit)."""
        rows = len(self._rows) + (self._prefilling is not None)
        if not rows and len(jobs) == 1:
            return True
        limits = self.limits
        if rows + len(jobs) > limits.max_rows:
            return False
        prompts = [job.row.encoded.prompt_tokens for job in jobs]
        if len(jobs) > 1 and sum(prompts) > limits.max_prefill_tokens:
            return False
        pending = list(jobs)
        if self._prefilling is not None:
            pending.append(self._prefilling[0])
        length = max(job.row.encoded.prompt_tokens for job in pending)
        if self._state is not None:
            length = max(length, self._state.length - self._state.padding())
        room = max(
            [job.row.sampling.max_new_tokens for job in pending] + [r.remaining for r in self._rows]
        )
        return (rows + len(jobs)) * (length + room) <= limits.max_tokens

    def _prefill(self, jobs: list[Job]) -> None:
        """The prompt pass of `jobs`; on failure, halves until the failing job is alone."""
        now = time.perf_counter()
        for job in jobs:
            job.admitted = now
        room = max(job.row.sampling.max_new_tokens for job in jobs)
        try:
            logits, state = self.engine.prefill([job.row.encoded for job in jobs], room)
        except Exception as exc:
            if len(jobs) == 1:
                _call(jobs[0].failed, exc)
                return
            log.warning("chat scheduler: a prompt pass of %d jobs failed; halving", len(jobs))
            half = len(jobs) // 2
            self._prefill(jobs[:half])
            self._prefill(jobs[half:])
            return
        self._join(jobs, logits, state)

    def _join(self, jobs: list[Job], logits: torch.Tensor, state: DecodeState) -> None:
        """Rows that have passed their prompt take their first token; those still going join
        the running batch."""
        rows = [_Row(job, self.engine) for job in jobs]
        self.engine.decode_totals.count(len(rows))  # their first token: a step, as in generate()
        tokens = self._take(rows, logits)
        going = [j for j, row in enumerate(rows) if not row.finished]
        self._finish([row for row in rows if row.finished])
        if not going:
            return
        if len(going) < len(rows):
            keep = torch.tensor(going, device=state.mask.device)
            state.keep(keep)
            tokens = tokens[keep]
        rows = [rows[j] for j in going]
        if self._state is None:
            self._state, self._tokens, self._rows = state, tokens, rows
            return
        assert self._tokens is not None
        room = max(row.remaining for row in [*self._rows, *rows])
        self._state.join(state, room)
        self._tokens = torch.cat([self._tokens, tokens])
        self._rows += rows

    def _step(self) -> None:
        state, tokens = self._state, self._tokens
        assert state is not None and tokens is not None
        try:
            state.reserve(1)
            logits = self.decoder.step(tokens, state)
        except Exception as exc:
            log.exception("chat scheduler: a decoding step failed; its rows fail")
            rows, self._rows, self._state, self._tokens = self._rows, [], None, None
            for row in rows:
                _call(row.job.failed, exc)
            return
        self.engine.decode_totals.count(len(self._rows))
        tokens = self._take(self._rows, logits)
        going = [j for j, row in enumerate(self._rows) if not row.finished]
        self._finish([row for row in self._rows if row.finished])
        if not going:
            self._rows, self._state, self._tokens = [], None, None
            return
        if len(going) < len(self._rows):
            keep = torch.tensor(going, device=tokens.device)
            state.keep(keep)
            tokens = tokens[keep]
            self._rows = [self._rows[j] for j in going]
        self._tokens = tokens

    def _take(self, rows: Sequence[_Row], logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token from its logits (rows, vocabulary), through its own sampler
        and tracker; the tokens as a tensor, in row order."""
        for j, row in enumerate(rows):
            if row.sampler.needed:
                try:
                    row.sampler.apply(row.ids, logits[j : j + 1], [0])
                except Exception as exc:  # this row's sampling failed: it alone leaves
                    row.error = exc
        tokens = logits.argmax(dim=-1)
        for row, token in zip(rows, tokens.tolist(), strict=True):
            if row.error is not None:
                continue
            row.done = row.tracker.advance([0], [token])[0]
            row.generated += 1
            if row.sampler.needed:
                row.ids = torch.cat([row.ids, row.ids.new_tensor([[token]])], dim=-1)
        return tokens

    def _finish(self, rows: Sequence[_Row]) -> None:
        for row in rows:
            if row.error is not None:
                _call(row.job.failed, row.error)
                continue
            completion = row.tracker.completions([row.job.row.encoded.prompt_tokens])[0]
            _call(row.job.done, replace(completion, admitted_at=row.job.admitted))


def _cancelled(job: Job) -> None:
    """A job whose client left before its prompt pass ended: answered, nothing generated."""
    _call(job.done, Completion("", "cancelled", job.row.encoded.prompt_tokens, 0))


def _call(callback: Callable[[T], None], value: T) -> None:
    """A job's callback; one that raises must not stop the loop the other rows depend on."""
    try:
        callback(value)
    except Exception:
        log.exception("chat scheduler: a job's callback failed")
