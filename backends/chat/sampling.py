"""Per-row decoding inside one batched generation: sampling, stop rules, streaming.

`generate()` takes one set of options for the whole batch, but the requests Triton batches
together each bring their own: temperature, top-p, top-k, repetition penalty, seed,
max_new_tokens, stop strings, and (streaming) a client who may go away. Grouping rows by
options would split a batch of 16 users into 16 calls, so instead the batch runs as one
greedy `generate()` (or the fused decoder's loop in `VlmEngine`, which calls the same two hooks
for the rows still going: `apply` and `advance`) with two hooks that act per row:

* `RowSampler` (a logits processor) applies each row's own penalty, temperature, top-k and
  top-p and draws its token with the row's own random generator, then leaves only that token
  possible, so the greedy step picks it. A greedy row is left alone (after its penalty).
  Each row's draw depends only on its own logits and generator: a seeded request gets the
  same text alone or in any batch.
* `RowTracker` (a stopping criterion, called after every step with the new tokens) turns
  each row's tokens into text incrementally, sends new text to the row's sink, cuts at stop
  strings, and marks a row finished on end-of-sequence, its own max_new_tokens, a stop
  string, or its client's cancellation. `generate()` then pads finished rows and returns once
  every row is finished, so a cancelled request stops costing compute as soon as it, and the
  rows it shares the batch with, are done; the fused loop drops a finished row at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import LogitsProcessor, StoppingCriteria

from backends.scores import finite_scores
from shared.chat import Completion

#: Repetition penalties a request may ask for (1: off): below 1 repetition is favoured, and
#: dividing scores by a tiny penalty overflows them (1e-40 made the draw fail).
MIN_PENALTY = 0.1
MAX_PENALTY = 10.0


@dataclass(frozen=True)
class Sampling:
    """A row's decoding options, already validated."""

    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0
    seed: int | None = None  # None: a fresh random seed
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class RowSink(Protocol):
    """Where a row's text goes while it is generated, and how to tell its client left."""

    def cancelled(self) -> bool: ...

    def send(self, piece: str) -> None: ...


class RowSampler(LogitsProcessor):
    """Each row's own penalty and sampling, in one batched step (see the module doc).

    `starts[i]` is where row i's real tokens begin in the left-padded batch: the repetition
    penalty looks only at them, never at padding, so it is the same alone and batched.
    """

    def __init__(self, samplings: Sequence[Sampling], starts: Sequence[int], device: Any) -> None:
        self.samplings = list(samplings)
        self.starts = list(starts)
        self.generators: list[torch.Generator | None] = []
        for sampling in self.samplings:
            if sampling.greedy:
                self.generators.append(None)
                continue
            generator = torch.Generator(device=device)
            seed = sampling.seed if sampling.seed is not None else _random_seed()
            generator.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
            self.generators.append(generator)

    @property
    def needed(self) -> bool:
        return any(not s.greedy or s.repetition_penalty != 1.0 for s in self.samplings)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        return self.apply(input_ids, scores, range(len(self.samplings)))

    def apply(
        self, input_ids: torch.Tensor, scores: torch.Tensor, rows: Sequence[int]
    ) -> torch.Tensor:
        """Like a call, for a batch that holds only `rows` (its row j is row `rows[j]`)."""
        for j, i in enumerate(rows):
            sampling = self.samplings[i]
            row = scores[j]
            if sampling.repetition_penalty != 1.0:
                seen = input_ids[j, self.starts[i] :].unique()
                picked = row[seen]
                row[seen] = torch.where(
                    picked < 0,
                    picked * sampling.repetition_penalty,
                    picked / sampling.repetition_penalty,
                )
            generator = self.generators[i]
            if generator is None:
                continue
            token = _draw(row, sampling, generator)
            row.fill_(-float("inf"))
            row[token] = 0.0
        return scores


def _draw(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """One token from temperature-scaled logits restricted by top-k then top-p (guarded by
    `finite_scores`: no NaN or overflow reaches the draw)."""
    logits = finite_scores(logits) / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        outside = probs.cumsum(dim=-1) - probs >= sampling.top_p
        logits = logits.scatter(0, order, ordered.masked_fill(outside, -float("inf")))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _random_seed() -> int:
    return int.from_bytes(os.urandom(8), "little")


class Detokenizer:
    """Token ids to text one token at a time, never splitting a character or a word start.

    Decoding a growing window and emitting what it adds keeps multi-byte characters whole
    (a piece that ends in U+FFFD waits for the next token) and tokenizers that drop a leading
    space at the start of a text right (the window starts one emitted piece back).
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before) :]

    def flush(self) -> str:
        """What the last tokens still hold back (an incomplete character stays as U+FFFD)."""
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return after[len(before) :]


class _Row:
    """One row's progress: tokens, text sent so far, text held back, and why it ended."""

    def __init__(self, tokenizer: Any, sampling: Sampling, sink: RowSink | None) -> None:
        self.sampling = sampling
        self.sink = sink
        self.detokenizer = Detokenizer(tokenizer)
        self.text = ""  # sent (or, without a sink, final) text
        self.held = ""  # generated text not sent yet: it may be the start of a stop string
        self.token_ids: list[int] = []
        self.first_token_at: float | None = None  # time.perf_counter() at those tokens
        self.last_token_at: float | None = None
        self.finish_reason: str | None = None

    def step(self, token: int, eos: frozenset[int]) -> None:
        if self.sink is not None and self.sink.cancelled():
            self.finish_reason = "cancelled"
            return
        self.token_ids.append(token)
        self.last_token_at = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = self.last_token_at
        if token in eos:
            self._finish("stop", self.detokenizer.flush())
            return
        self._add(self.detokenizer.add(token))
        if self.finish_reason is None and len(self.token_ids) >= self.sampling.max_new_tokens:
            self._finish("length", self.detokenizer.flush())

    def _add(self, piece: str) -> None:
        if not piece:
            return
        stops = self.sampling.stop
        pending = self.held + piece
        if stops:
            # Search only where a stop string can newly end: the held text and the new piece.
            cut = _first_stop(pending, stops)
            if cut >= 0:
                self.held = ""
                self._emit(pending[:cut])
                self.finish_reason = "stop"
                return
            keep = _partial_stop_length(pending, stops)
            self.held = pending[len(pending) - keep :] if keep else ""
            self._emit(pending[: len(pending) - keep])
        else:
            self._emit(pending)

    def _finish(self, reason: str, tail: str) -> None:
        self._add(tail)
        if self.finish_reason is None:  # the tail did not end in a stop string
            self._emit(self.held)
            self.held = ""
            self.finish_reason = reason

    def _emit(self, text: str) -> None:
        if not text:
            return
        self.text += text
        if self.sink is not None:
            self.sink.send(text)


def _first_stop(text: str, stops: Sequence[str]) -> int:
    """Where the stop string that completes first in `text` starts (-1: none does).

    The one that completes first, not the one that starts first: generation stops as soon as
    a stop string is whole, so the text must not depend on how the tokens cut it into pieces
    ("c", "é", "c" with stops "é" and "céc" stops at "é" whether it comes whole or not).
    Among those completing together, the longest (the earliest start) is cut.
    """
    found = [(i + len(s), i) for s in stops if (i := text.find(s)) >= 0]
    return min(found)[1] if found else -1


def _partial_stop_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


@dataclass
class DecodeTotals:
    """Token steps an engine ran since it loaded, and the rows computed in them: what the
    batching of decoding really was (rows / steps), for the chat metrics."""

    steps: int = 0
    rows: int = 0

    def add(self, tracker: RowTracker) -> None:
        self.steps += tracker.steps
        self.rows += tracker.step_rows

    def count(self, rows: int) -> None:
        """One step of `rows` rows (continuous batching counts step by step)."""
        self.steps += 1
        self.rows += rows


class RowTracker(StoppingCriteria):
    """Follows every row of one batch (see the module doc)."""

    def __init__(
        self,
        tokenizer: Any,
        samplings: Sequence[Sampling],
        sinks: Sequence[RowSink | None],
        eos_token_ids: Sequence[int],
    ) -> None:
        self.rows = [_Row(tokenizer, s, sink) for s, sink in zip(samplings, sinks, strict=True)]
        self.eos = frozenset(eos_token_ids)
        self.steps = 0  # token steps, and rows computed in them (`DecodeTotals`)
        self.step_rows = 0

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = self.advance(range(len(self.rows)), input_ids[:, -1].tolist())
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def advance(self, rows: Sequence[int], tokens: Sequence[int]) -> list[bool]:
        """Give row `rows[j]` its next token `tokens[j]`; which of these rows are done."""
        self.steps += 1
        self.step_rows += len(rows)
        done = []
        for i, token in zip(rows, tokens, strict=True):
            row = self.rows[i]
            if row.finish_reason is None:
                row.step(token, self.eos)
            done.append(row.finish_reason is not None)
        return done

    def all_cancelled(self) -> bool:
        """True when every row's client has left (then nothing need run at all)."""
        for row in self.rows:
            if row.finish_reason is None and row.sink is not None and row.sink.cancelled():
                row.finish_reason = "cancelled"
        return all(row.finish_reason == "cancelled" for row in self.rows)

    def completions(self, prompt_tokens: Sequence[int]) -> list[Completion]:
        """Each row's result; a row stopped early (overall limit) ends 'length'."""
        results = []
        for row, prompt in zip(self.rows, prompt_tokens, strict=True):
            if row.finish_reason is None:
                row._finish("length", row.detokenizer.flush())
            results.append(
                Completion(
                    text=row.text,
                    finish_reason=row.finish_reason or "length",
                    prompt_tokens=prompt,
                    completion_tokens=len(row.token_ids),
                    token_ids=tuple(row.token_ids),
                    first_token_at=row.first_token_at,
                    last_token_at=row.last_token_at,
                )
            )
        return results
