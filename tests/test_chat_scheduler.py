"""Continuous batching (backends.chat.scheduler): rows join the running batch between steps.

In float32 (pinned here: exactness is a float32 promise) a request's greedy tokens are the
same whether it ran alone, in a static batch, or joined a batch that was already decoding;
the limits hold; a cancelled row stops within a step; a failure stays with its request.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from backends.chat.service import ChatService
from backends.chat.settings import chat_params
from shared.chat import ChatRequest, Completion
from shared.errors import ErrorCode, RequestError
from shared.image import encode_image
from shared.loading import LoadPlan
from shared.quantization import Placement

FLOAT32 = Placement("cpu", "float32", "none")


def load(model_store: Path, name: str, **settings: Any) -> ChatService:
    specs = chat_params(name)
    plan = LoadPlan.in_process(model_store / name, FLOAT32, specs, **settings)
    return ChatService.load(plan)


def image(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_image(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))


class Sink:
    """A client: counts pieces, can cancel after some, and says when it has `wake_at`."""

    def __init__(self, cancel_after: int | None = None, wake_at: int = 1) -> None:
        self.pieces: list[str] = []
        self.cancel_after = cancel_after
        self.wake_at = wake_at
        self.woken = threading.Event()

    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.pieces) >= self.cancel_after

    def send(self, piece: str) -> None:
        self.pieces.append(piece)
        if len(self.pieces) >= self.wake_at:
            self.woken.set()


class Outcome:
    def __init__(self) -> None:
        self.value: Completion | Exception | None = None
        self.ready = threading.Event()

    def done(self, value: Completion | Exception) -> None:
        self.value = value
        self.ready.set()

    def get(self) -> Completion | Exception:
        assert self.ready.wait(120), "the scheduler never answered"
        assert self.value is not None
        return self.value


def submit(service: ChatService, request: ChatRequest, sink: Sink | None = None) -> Outcome:
    outcome = Outcome()
    service.submit(service.prepare(request), sink, outcome.done, outcome.done)
    return outcome


def completion(outcome: Outcome) -> Completion:
    value = outcome.get()
    assert isinstance(value, Completion), value
    return value


def step_rows(service: ChatService, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of each fused decoding step."""
    rows: list[int] = []
    decoder = service.engine.fused
    assert decoder is not None
    original = decoder.step

    def counted(tokens: Any, state: Any) -> Any:
        rows.append(int(tokens.shape[0]))
        return original(tokens, state)

    monkeypatch.setattr(decoder, "step", counted)
    return rows


# --- the real SmolLM2 / SmolVLM ------------------------------------------------------------


@pytest.fixture(scope="module")
def smol(model_store: Path) -> Iterator[ChatService]:
    service = load(model_store, "smolvlm-256m-smollm2", decoder="fused")
    yield service
    service.close()


REAL = [
    ChatRequest("What is the capital of France?", max_new_tokens=20),
    ChatRequest("Describe this picture.", images=(image(64, 48, 7),), max_new_tokens=16),
    ChatRequest("Write a haiku about the sea.", max_new_tokens=24),
    ChatRequest("How many legs does a spider have?", max_new_tokens=12),
]


def test_staggered_arrivals_decode_what_they_decode_alone_on_the_real_model(
    smol: ChatService,
) -> None:
    """Each request joins while the ones before it are decoding (it is submitted once the
    previous one has streamed 3 pieces): its tokens are those it gets alone and in a static
    batch, text and image neighbours alike."""
    alone = [smol.run([smol.prepare(r)])[0] for r in REAL]
    static = smol.run([smol.prepare(r) for r in REAL])
    outcomes = []
    for request in REAL:
        sink = Sink(wake_at=3)
        outcomes.append(submit(smol, request, sink))
        assert sink.woken.wait(120)
    joined = [completion(o) for o in outcomes]
    assert [c.token_ids for c in joined] == [c.token_ids for c in alone]
    assert [c.token_ids for c in static] == [c.token_ids for c in alone]
    assert "Paris" in joined[0].text
    assert all(c.admitted_at is not None for c in joined)


# --- a tiny random SmolVLM: limits, cancellation, failures -----------------------------------


@pytest.fixture
def tiny(model_store: Path) -> Iterator[ChatService]:
    service = load(
        model_store, "smolvlm-tiny-random", decoder="fused", max_batch_rows=2, max_new_tokens=8
    )
    yield service
    service.close()


PROMPTS = [ChatRequest(p) for p in ("Hi", "Tell me about foxes.", "Count to ten.", "Why?")]


def test_rows_in_flight_stay_within_max_batch_rows(
    tiny: ChatService, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = step_rows(tiny, monkeypatch)
    outcomes = [submit(tiny, r) for r in PROMPTS]
    results = [completion(o) for o in outcomes]
    assert max(rows) == 2 and len(rows) > 0
    alone = [tiny.run([tiny.prepare(r)])[0] for r in PROMPTS]
    assert [c.token_ids for c in results] == [c.token_ids for c in alone]


def test_the_key_value_budget_makes_requests_wait(
    model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for one long request only, the second waits until the first has left."""
    service = load(model_store, "smolvlm-tiny-random", decoder="fused", max_new_tokens=8)
    context = service.engine.context_length
    service.close()
    service = load(
        model_store,
        "smolvlm-tiny-random",
        decoder="fused",
        max_new_tokens=8,
        max_batch_tokens=context,
        max_new_tokens_limit=context - 64,
    )
    try:
        rows = step_rows(service, monkeypatch)
        long = ChatRequest("Hi", max_new_tokens=context - 64)
        first, second = submit(service, long), submit(service, ChatRequest("Why?"))
        assert completion(first).completion_tokens > 0
        assert completion(second).completion_tokens > 0
        assert max(rows) == 1, "the two never decoded together"
    finally:
        service.close()


def test_max_batch_tokens_below_the_context_is_refused_at_load(model_store: Path) -> None:
    from shared.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="max_batch_tokens"):
        load(model_store, "smolvlm-tiny-random", decoder="fused", max_batch_tokens=16)


def test_a_cancelled_row_leaves_within_one_step(tiny: ChatService) -> None:
    sink = Sink(cancel_after=2)
    result = completion(submit(tiny, ChatRequest("Tell me about foxes.", max_new_tokens=64), sink))
    assert result.finish_reason == "cancelled"
    # The token that saw the cancellation is dropped: two pieces went out, at most one more
    # token was computed for nobody.
    assert len(sink.pieces) == 2 and result.completion_tokens <= 3


def test_a_request_cancelled_while_it_waits_costs_no_prompt_pass(
    tiny: ChatService, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes: list[int] = []
    original = tiny.engine.prefill

    def counted(rows: Any, room: int) -> Any:
        passes.append(len(rows))
        return original(rows, room)

    monkeypatch.setattr(tiny.engine, "prefill", counted)
    gone = Sink(cancel_after=0)
    result = completion(submit(tiny, ChatRequest("Hi"), gone))
    assert result.finish_reason == "cancelled" and result.completion_tokens == 0
    assert passes == []


def test_a_failing_prompt_pass_is_halved_until_only_its_request_fails(
    model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = load(model_store, "smolvlm-tiny-random", decoder="fused", max_new_tokens=8)
    original = service.engine.prefill
    poison = service.prepare(ChatRequest("poison"))
    assert poison.engine_row is not None
    gate = threading.Event()
    passes: list[int] = []  # rows of each pass that held the poison

    def prefill(rows: Any, room: int) -> Any:
        gate.wait(30)  # the first pass waits until all three are queued
        if any(row is poison.engine_row.encoded for row in rows):  # type: ignore[union-attr]
            passes.append(len(rows))
            raise RuntimeError("the model failed")
        return original(rows, room)

    monkeypatch.setattr(service.engine, "prefill", prefill)
    try:
        first = submit(service, ChatRequest("Hi"))
        second = submit(service, ChatRequest("Why?"))
        bad = Outcome()
        service.submit(poison, None, bad.done, bad.done)
        gate.set()
        assert completion(first).completion_tokens == 8
        assert completion(second).completion_tokens == 8
        assert isinstance(bad.get(), RuntimeError)
        # The poison failed with neighbours, then alone: halved until it was by itself.
        assert len(passes) >= 2 and passes[0] > 1 and passes[-1] == 1, passes
    finally:
        service.close()


def test_a_row_whose_sampling_fails_leaves_alone(
    tiny: ChatService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backends.chat import sampling

    original = sampling.RowSampler.apply

    def apply(self: Any, input_ids: Any, scores: Any, rows: Any) -> Any:
        if self.samplings[0].seed == 666:
            raise RuntimeError("the draw failed")
        return original(self, input_ids, scores, rows)

    monkeypatch.setattr(sampling.RowSampler, "apply", apply)
    bad = submit(tiny, ChatRequest("Hi", temperature=0.7, seed=666))
    good = submit(tiny, ChatRequest("Hi", temperature=0.7, seed=1))
    assert isinstance(bad.get(), RuntimeError)
    assert completion(good).completion_tokens == 8


def test_seeded_sampling_is_the_same_joined_as_alone(tiny: ChatService) -> None:
    request = ChatRequest("Tell me about foxes.", temperature=0.9, top_p=0.9, seed=42)
    alone = tiny.run([tiny.prepare(request)])[0]
    neighbour = submit(tiny, ChatRequest("Count to ten.", max_new_tokens=8), Sink(wake_at=2))
    joined = completion(submit(tiny, request))
    completion(neighbour)
    assert joined.token_ids == alone.token_ids


def test_closing_fails_what_waits_and_runs_with_unavailable(model_store: Path) -> None:
    service = load(model_store, "smolvlm-tiny-random", decoder="fused", max_batch_rows=1)
    gate = threading.Event()
    step = service.engine.fused.step  # type: ignore[union-attr]

    def held(tokens: Any, state: Any) -> Any:
        gate.wait(30)
        return step(tokens, state)

    service.engine.fused.step = held  # type: ignore[union-attr,method-assign]
    running = submit(service, ChatRequest("Hi", max_new_tokens=50))
    waiting = submit(service, ChatRequest("Why?"))
    closer = threading.Thread(target=service.close)
    closer.start()
    gate.set()
    closer.join(60)
    for outcome in (running, waiting):
        value = outcome.get()
        if isinstance(value, Completion):  # it may have finished before the close
            continue
        assert isinstance(value, RequestError) and value.code is ErrorCode.UNAVAILABLE


def test_static_batching_stays_selectable(model_store: Path) -> None:
    service = load(model_store, "smolvlm-tiny-random", decoder="fused", batching="static")
    assert service.scheduler is None and "batching=static" in service.describe()
    generate = load(model_store, "smolvlm-tiny-random", decoder="generate")
    assert generate.scheduler is None, "generate() runs a batch to its end: static"


# --- long prompts pass in chunks -------------------------------------------------------------

LONG = ChatRequest(" ".join(f"word{i}" for i in range(60)) + ". Summarise.", max_new_tokens=6)
CHUNK = 48  # prompt tokens per chunk: "Hi" passes whole, LONG in several


@pytest.fixture
def chunky(model_store: Path) -> Iterator[ChatService]:
    service = load(model_store, "smolvlm-tiny-random", decoder="fused", max_prefill_tokens=CHUNK)
    yield service
    service.close()


def test_a_long_prompt_passes_in_chunks_between_steps_and_decodes_as_alone(
    chunky: ChatService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backends.chat.engine import ChunkedPrefill

    events: list[str] = []
    advance, step = ChunkedPrefill.advance, chunky.engine.fused.step  # type: ignore[union-attr]

    def chunk(self: ChunkedPrefill) -> Any:
        events.append("chunk")
        return advance(self)

    def stepped(tokens: Any, state: Any) -> Any:
        events.append("step")
        return step(tokens, state)

    monkeypatch.setattr(ChunkedPrefill, "advance", chunk)
    monkeypatch.setattr(chunky.engine.fused, "step", stepped)
    encoded = chunky.prepare(LONG).engine_row
    assert encoded is not None and encoded.encoded.prompt_tokens > 3 * CHUNK
    alone = chunky.run([chunky.prepare(LONG)])[0]
    running = submit(chunky, ChatRequest("Hi", max_new_tokens=200), Sink(wake_at=2))
    long = submit(chunky, LONG)
    assert completion(long).token_ids == alone.token_ids
    completion(running)
    chunks = [i for i, event in enumerate(events) if event == "chunk"]
    assert len(chunks) == -(-encoded.encoded.prompt_tokens // CHUNK)
    # A decoding step between every two chunks: the running row never waited for the whole.
    assert all(events[i + 1] == "step" for i in chunks[:-1]), events


def test_a_long_prompt_cancelled_while_it_passes_costs_at_most_one_more_chunk(
    chunky: ChatService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backends.chat.engine import ChunkedPrefill

    chunks: list[int] = []
    advance = ChunkedPrefill.advance
    sink = Sink()

    def chunk(self: ChunkedPrefill) -> Any:
        chunks.append(self.done)
        sink.cancel_after = 0  # the client leaves during the first chunk
        return advance(self)

    monkeypatch.setattr(ChunkedPrefill, "advance", chunk)
    result = completion(submit(chunky, LONG, sink))
    assert result.finish_reason == "cancelled" and result.completion_tokens == 0
    assert chunks == [0]


# --- images pass a tile at a time -----------------------------------------------------------

# Two 128x96 pictures: the tiny SmolVLM splits each into 2x2 tiles of 64 and a global one.
PICTURES = ChatRequest(
    "Compare these.", images=(image(128, 96, 1), image(96, 128, 2)), max_new_tokens=6
)


def tile_events(
    service: ChatService, monkeypatch: pytest.MonkeyPatch, on_tile: Any = None
) -> list[str]:
    """ "tile" per tile through the vision tower, "step" per decoding step, in order."""
    events: list[str] = []
    # The inner model's: what the whole pass calls too.
    model, decoder = service.engine.model.model, service.engine.fused
    assert decoder is not None
    encode, step = model.get_image_features, decoder.step

    def tiles(pixel_values: Any, *args: Any, **kwargs: Any) -> Any:
        events.extend(["tile"] * int(pixel_values.shape[1]))
        if on_tile is not None:
            on_tile()
        return encode(pixel_values, *args, **kwargs)

    def stepped(tokens: Any, state: Any) -> Any:
        events.append("step")
        return step(tokens, state)

    monkeypatch.setattr(model, "get_image_features", tiles)
    monkeypatch.setattr(decoder, "step", stepped)
    return events


def test_an_image_prompt_passes_a_tile_between_steps_and_decodes_as_alone(
    tiny: ChatService, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = tiny.run([tiny.prepare(PICTURES)])[0]
    events = tile_events(tiny, monkeypatch)
    running = submit(tiny, ChatRequest("Hi", max_new_tokens=200), Sink(wake_at=2))
    pictures = submit(tiny, PICTURES)
    assert completion(pictures).token_ids == alone.token_ids
    completion(running)
    tiles = [i for i, event in enumerate(events) if event == "tile"]
    assert len(tiles) == 10, events  # two pictures of 5 tiles, each through the tower once
    # A decoding step after every tile: the running row never waited for all the images.
    assert all(events[i + 1] == "step" for i in tiles), events


def test_an_image_prompt_cancelled_while_its_images_pass_costs_at_most_one_more_tile(
    tiny: ChatService, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = Sink()

    def leave() -> None:
        sink.cancel_after = 0  # the client leaves during the first tile

    events = tile_events(tiny, monkeypatch, on_tile=leave)
    result = completion(submit(tiny, PICTURES, sink))
    assert result.finish_reason == "cancelled" and result.completion_tokens == 0
    assert events == ["tile"]


def test_a_long_image_prompt_passes_its_tiles_then_its_text_in_chunks_as_alone(
    chunky: ChatService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backends.chat.engine import ChunkedPrefill

    request = ChatRequest(LONG.prompt, images=(image(128, 96, 1),), max_new_tokens=6)
    encoded = chunky.prepare(request).engine_row
    assert encoded is not None and encoded.encoded.prompt_tokens > 3 * CHUNK
    alone = chunky.run([chunky.prepare(request)])[0]
    events = tile_events(chunky, monkeypatch)
    advance = ChunkedPrefill.advance

    def chunk(self: ChunkedPrefill) -> Any:
        events.append("chunk")
        return advance(self)

    monkeypatch.setattr(ChunkedPrefill, "advance", chunk)
    running = submit(chunky, ChatRequest("Hi", max_new_tokens=200), Sink(wake_at=2))
    assert completion(submit(chunky, request)).token_ids == alone.token_ids
    completion(running)
    staged = [event for event in events if event != "step"]
    chunks = -(-encoded.encoded.prompt_tokens // CHUNK)
    assert staged == ["tile"] * 5 + ["chunk"] * chunks, events
    stages = [i for i, event in enumerate(events) if event != "step"]
    assert all(events[i + 1] == "step" for i in stages[:-1]), events
