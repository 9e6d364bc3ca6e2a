"""Per-row decoding (backends.chat.sampling): detokenizing, stop strings, sampling, finishing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backends.chat.sampling import Detokenizer, RowSampler, RowTracker, Sampling
from backends.scores import finite_scores

TEXT = "Hello wörld, the café — 猫 sat. Stop here, please!"


@pytest.fixture(scope="module")
def tokenizer(model_store: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_store / "smolvlm-tiny-random")


class Sink:
    def __init__(self, cancel_after: int | None = None) -> None:
        self.pieces: list[str] = []
        self.cancel_after = cancel_after

    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.pieces) >= self.cancel_after

    def send(self, piece: str) -> None:
        self.pieces.append(piece)


def feed(tracker: RowTracker, rows_of_ids: list[list[int]], pad: int = 0) -> int:
    """Drive the tracker as generate() does, one column of tokens per step; the steps taken."""
    steps = max(len(ids) for ids in rows_of_ids)
    done = torch.zeros(len(rows_of_ids), dtype=torch.bool)
    for step in range(steps):
        column = [ids[step] if step < len(ids) else pad for ids in rows_of_ids]
        done = done | tracker(torch.tensor(column)[:, None], None)
        if bool(done.all()):
            return step + 1
    return steps


def test_incremental_detokenizing_equals_decoding_everything(tokenizer) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    detokenizer = Detokenizer(tokenizer)
    pieces = [detokenizer.add(i) for i in ids]
    assert "".join(pieces) + detokenizer.flush() == TEXT
    assert all("\ufffd" not in piece for piece in pieces), "a character was split"


def test_stop_strings_cut_the_text_and_are_never_streamed(tokenizer) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    sink = Sink()
    tracker = RowTracker(tokenizer, [Sampling(100, stop=("xyz", "Stop here"))], [sink], [614])
    steps = feed(tracker, [ids])
    (completion,) = tracker.completions([7])
    assert completion.text == TEXT[: TEXT.index("Stop here")]
    assert completion.finish_reason == "stop"
    assert "".join(sink.pieces) == completion.text and "Stop" not in "".join(sink.pieces)
    assert steps < len(ids) and completion.completion_tokens == steps
    assert completion.prompt_tokens == 7


def test_each_row_finishes_for_its_own_reason(tokenizer) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    eos = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    samplings = [Sampling(5), Sampling(100), Sampling(100), Sampling(100, stop=("café",))]
    sinks = [None, None, Sink(cancel_after=2), None]
    tracker = RowTracker(tokenizer, samplings, sinks, [eos])
    feed(tracker, [ids, [*ids[:4], eos, 99], ids, ids], pad=eos)
    results = tracker.completions([1, 1, 1, 1])
    assert [r.finish_reason for r in results] == ["length", "stop", "cancelled", "stop"]
    assert results[0].completion_tokens == 5 and results[0].text == tokenizer.decode(ids[:5])
    assert results[1].completion_tokens == 5 and results[1].text == tokenizer.decode(ids[:4])
    assert results[2].completion_tokens < len(ids) and sinks[2].pieces == ["Hello", " w"]
    assert results[3].text == TEXT[: TEXT.index("café")]


def test_a_tracker_whose_clients_all_left_skips_the_work(tokenizer) -> None:
    tracker = RowTracker(tokenizer, [Sampling(5)] * 2, [Sink(0), Sink(0)], [0])
    assert tracker.all_cancelled()
    assert [c.finish_reason for c in tracker.completions([3, 4])] == ["cancelled"] * 2


def scores(rows: int, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=generator) * 3


def pick(sampler: RowSampler, logits: torch.Tensor, ids: torch.Tensor | None = None) -> list[int]:
    ids = torch.zeros((logits.shape[0], 1), dtype=torch.long) if ids is None else ids
    return sampler(ids, logits.clone()).argmax(dim=-1).tolist()


def test_greedy_rows_are_left_alone_and_degenerate_sampling_is_greedy() -> None:
    logits = scores(4)
    samplings = [
        Sampling(5),
        Sampling(5, temperature=1.5, top_k=1, seed=1),
        Sampling(5, temperature=1.5, top_p=1e-6, seed=2),
        Sampling(5, temperature=1.5, seed=3),
    ]
    sampler = RowSampler(samplings, [0] * 4, "cpu")
    out = sampler(torch.zeros((4, 1), dtype=torch.long), logits.clone())
    assert torch.equal(out[0], logits[0])
    greedy = logits.argmax(dim=-1).tolist()
    assert pick(RowSampler(samplings, [0] * 4, "cpu"), logits)[:3] == greedy[:3]
    assert torch.isinf(out[3]).sum() == logits.shape[1] - 1  # one token left possible


def test_seeded_rows_draw_the_same_whatever_their_neighbours() -> None:
    logits = scores(3)
    row = Sampling(5, temperature=1.0, top_p=0.9, top_k=20, seed=42)
    draws = []
    for neighbours in ([], [Sampling(5)], [Sampling(5, temperature=2.0, seed=7)] * 2):
        sampler = RowSampler([row, *neighbours], [0] * (1 + len(neighbours)), "cpu")
        draws.append([pick(sampler, logits[: 1 + len(neighbours)])[0] for _ in range(20)])
    assert draws[0] == draws[1] == draws[2]
    other = RowSampler([Sampling(5, temperature=1.0, seed=43)], [0], "cpu")
    assert [pick(other, logits[:1])[0] for _ in range(20)] != draws[0]


def test_top_k_and_top_p_restrict_the_choice() -> None:
    logits = scores(1, vocab=50) / 3  # flat enough that half the mass is several tokens
    top5 = set(torch.topk(logits[0], 5).indices.tolist())
    sampler = RowSampler([Sampling(5, temperature=2.0, top_k=5, seed=0)], [0], "cpu")
    assert {pick(sampler, logits)[0] for _ in range(200)} <= top5
    probs = torch.softmax(logits[0], dim=-1)
    ordered = torch.sort(probs, descending=True)
    nucleus = int((ordered.values.cumsum(0) < 0.5).sum()) + 1
    allowed = set(ordered.indices[:nucleus].tolist())
    sampler = RowSampler([Sampling(5, temperature=1.0, top_p=0.5, seed=0)], [0], "cpu")
    drawn = {pick(sampler, logits)[0] for _ in range(300)}
    assert drawn <= allowed and len(drawn) > 1


def test_infinite_and_nan_scores_never_reach_the_draw() -> None:
    """A row whose scores hold +inf or NaN is drawn from, not a failure of the whole batch."""
    logits = scores(2)
    logits[0, 7] = float("inf")  # certain: always drawn
    logits[1, :] = float("nan")
    logits[1, 3] = 0.5  # the only possible token
    sampler = RowSampler([Sampling(5, temperature=0.7, seed=s) for s in (1, 2)], [0, 0], "cpu")
    assert {tuple(pick(sampler, logits)) for _ in range(20)} == {(7, 3)}


def test_a_row_with_no_possible_token_fails_clearly() -> None:
    logits = scores(1)
    logits[0, :] = float("nan")
    sampler = RowSampler([Sampling(5, temperature=1.0, seed=1)], [0], "cpu")
    with pytest.raises(FloatingPointError, match="no finite score"):
        pick(sampler, logits)


def test_the_guard_changes_no_probability() -> None:
    logits = scores(1, vocab=50) / 3
    shifted = finite_scores(logits)
    assert shifted.max().item() == 0.0
    assert torch.allclose(torch.softmax(shifted / 0.7, -1), torch.softmax(logits / 0.7, -1))


def test_repetition_penalty_ignores_left_padding() -> None:
    logits = torch.zeros(2, 10)
    logits[:, 3] = 2.0  # the pad token (3) would win
    logits[:, 5] = 1.5
    ids = torch.tensor([[3, 3, 7], [7, 7, 7]])  # row 0 is left-padded with 3
    sampler = RowSampler([Sampling(5, repetition_penalty=2.0)] * 2, [2, 0], "cpu")
    out = sampler(ids, logits.clone())
    assert out[0, 3] == 2.0 and out[0, 7] == 0.0  # padding not penalised
    assert out[1, 7] == 0.0 and out[1, 3] == 2.0
    logits[:, 7] = 2.0
    out = sampler(ids, logits.clone())
    assert out[0, 7] == 1.0 and out[1, 7] == 1.0  # the real repeated token is
