"""serving.streaming: every request of a decoupled batch ends with exactly one final flag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.harness.runner import ModelHarness

MODEL = Path(__file__).parent / "contract_models" / "stream_batch"


@pytest.fixture
def harness():
    with ModelHarness(MODEL) as h:
        yield h


def count(n: int) -> dict[str, np.ndarray]:
    return {"count": np.array([[n]], dtype=np.int32)}


def pieces(results) -> list[int]:
    return [int(r.outputs["piece"][0, 0]) for r in results if "piece" in r.outputs]


def test_one_engine_call_streams_every_request_and_finishes_each_once(harness):
    batch = harness.execute([harness.request(count(n)) for n in (3, 2, 0)])
    assert harness.model.calls == 1
    for n, results in zip((3, 2, 0), batch, strict=True):
        assert pieces(results) == list(range(n))
        assert [r.final for r in results].count(True) == 1 and results[-1].final
        assert all(r.error is None for r in results)
    assert int(batch[0][-1].outputs["total"][0, 0]) == 3  # finished by the engine with data
    assert batch[1][-1].null_response  # left open: finished here with the bare flag


def test_a_bad_request_fails_alone_with_the_final_flag(harness):
    good, bad = harness.execute([harness.request(count(2)), harness.request(count(-1))])
    assert pieces(good) == [0, 1] and good[-1].final
    assert len(bad) == 1 and bad[0].final and bad[0].code == "INVALID_ARG"
    assert "'count'" in bad[0].message
    assert (
        harness.metric(
            "multimodal_request_errors_total", {"model": "stream_batch", "code": "INVALID_ARG"}
        ).value
        == 1
    )


def splits(harness) -> float:
    series = harness.metric("multimodal_batch_splits_total", {"model": "stream_batch"})
    return 0.0 if series is None else series.value


def test_an_engine_failure_is_pinned_on_the_request_that_causes_it(harness):
    counts = (1, 2, 99, 3)
    before = splits(harness)  # the metric registry outlives a harness
    batch = harness.execute([harness.request(count(n)) for n in counts])
    for n, results in zip(counts, batch, strict=True):
        assert [r.final for r in results].count(True) == 1 and results[-1].final
        if n == 99:
            assert len(results) == 1 and results[0].code == "INTERNAL"
            assert "see the server log" in results[0].message
        else:
            assert pieces(results) == list(range(n)) and results[-1].error is None
    assert splits(harness) == before + 2  # 4 -> 2 + 2 -> the poisoned pair -> 1 + 1
    assert any("engine failure" in message for _, message in harness.logs)


def test_a_stream_that_already_sent_pieces_gets_the_error_the_others_are_retried(harness):
    # 77 fails the call after every stream's first piece: those streams cannot be rerun (their
    # clients hold piece 0); a request that had no piece yet (count 0) is retried and served.
    before = splits(harness)
    started, poisoned, idle = harness.execute([harness.request(count(n)) for n in (2, 77, 0)])
    for results in (started, poisoned):
        assert pieces(results) == [0] and results[-1].final and results[-1].code == "INTERNAL"
    assert idle[-1].final and idle[-1].error is None and pieces(idle) == []
    assert harness.model.calls == 2 and splits(harness) == before


def test_an_engine_that_always_fails_ends_every_stream_with_internal(harness):
    batch = harness.execute([harness.request(count(99)) for _ in range(3)])
    for results in batch:
        assert len(results) == 1 and results[0].final and results[0].code == "INTERNAL"
    assert harness.model.calls == 5  # 3 -> 1 + 2 -> 1 + 1


def test_a_cancelled_request_gets_no_pieces(harness):
    cancelled = harness.request(count(3))
    harness.cancel(cancelled)
    live, gone = harness.execute([harness.request(count(2)), cancelled])
    assert pieces(live) == [0, 1]
    assert pieces(gone) == [] and gone[-1].final and gone[-1].code == "CANCELLED"
