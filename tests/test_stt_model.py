"""model_repository/stt through the pb_utils harness: parsing, per-request errors, batching."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.budget import budget_groups
from shared.errors import RequestError
from tests.harness.runner import ModelHarness, ServerRejected
from tests.speech import encode

ROOT = Path(__file__).resolve().parents[1]
STT = ROOT / "model_repository" / "stt"


def clip(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode((0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32), 16_000)


def audio(*clips: bytes) -> dict[str, np.ndarray]:
    return {"audio": np.array([[c] for c in clips], dtype=np.object_)}


def with_tokens(inputs: dict[str, np.ndarray], n: int = 6) -> dict[str, np.ndarray]:
    rows = inputs["audio"].shape[0]
    return {**inputs, "max_new_tokens": np.full((rows, 1), n, dtype=np.int32)}


def loaded(model_store: Path, **parameters: str) -> Iterator[ModelHarness]:
    """The stt model on the random tiny checkpoint with `parameters`, loaded, then finalized."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODEL_STORE", str(model_store))
        harness = ModelHarness(
            STT, parameters={"model_path": "whisper-tiny-random", **parameters}
        ).load()
        yield harness
        harness.finalize()


@pytest.fixture(scope="module")
def stt(model_store: Path) -> Iterator[ModelHarness]:
    yield from loaded(model_store, max_audio_seconds="60", max_audio_samples="2000000")


def test_initialize_logs_the_placement_and_footprint(stt: ModelHarness) -> None:
    logged = [m for level, m in stt.logs if level == "INFO"]
    assert any(
        "stt: loaded" in m and "quantization=none" in m and "footprint=" in m for m in logged
    )


def test_batch_equals_one_at_a_time(stt: ModelHarness) -> None:
    clips = [clip(s, i) for i, s in enumerate([0.7, 4.0, 1.5, 9.0])]
    requests = [stt.request(with_tokens(audio(c))) for c in clips]
    together = [r.text("text") for r in stt.execute(requests)]
    alone = [stt.infer(with_tokens(audio(c))).text("text") for c in clips]
    assert together == alone


def test_a_request_with_several_rows_gets_one_output_row_each(stt: ModelHarness) -> None:
    result = stt.infer(with_tokens(audio(clip(1.0, 1), clip(2.0, 2))))
    assert result.outputs["text"].shape == (2, 1)
    assert result.outputs["segments"].shape == (2, 1)
    assert result.text("text", 1) == stt.infer(with_tokens(audio(clip(2.0, 2)))).text("text")


def test_bad_requests_fail_alone_with_invalid_arg(stt: ModelHarness) -> None:
    good = with_tokens(audio(clip(1.0, 0)))
    cases = {
        "corrupt": (audio(b"not audio at all"), "input 'audio' is not a readable audio file"),
        "language": (
            {**good, "language": np.array([[b"fr"]], dtype=np.object_)},
            "English-only",
        ),
        "tokens": (with_tokens(audio(clip(1.0, 0)), 0), "input 'max_new_tokens' is 0"),
        "temperature": (
            {**good, "temperature": np.array([[np.nan]], dtype=np.float32)},
            "input 'temperature' is nan",
        ),
        "utf-8": ({**good, "task": np.array([[b"\xff\xfe"]], dtype=np.object_)}, "not valid UTF-8"),
        "long": (audio(encode(np.zeros(16_000 * 61, dtype=np.float32), 16_000)), "limit is 60 s"),
        "truncated": (audio(clip(3.7, 1)[: 44 + 1280]), "is a truncated WAV file"),
        "bomb": (
            audio(encode(np.zeros((384_000, 8), dtype=np.float32), 384_000, fmt="FLAC")),
            "(max_audio_samples)",
        ),
        "huge-samples": (
            audio(encode(np.full(1600, 1e30, dtype=np.float32), 16_000, subtype="FLOAT")),
            "has samples of magnitude 1e+30",
        ),
        "missing": (
            {"language": np.array([[b"en"]], dtype=np.object_)},
            "input 'audio' is required",
        ),
    }
    # Triton batches only requests with the same inputs, so this mix never reaches one
    # execute() together; run it anyway: per-request isolation must not rely on that.
    requests = [stt.request(good)] + [stt.request(inputs) for inputs, _ in cases.values()]
    results = stt.execute(requests, enforce_batcher=False)
    assert results[0].error is None
    assert results[0].text("text") == stt.infer(good).text("text")
    for result, (name, (_, expected)) in zip(results[1:], cases.items(), strict=True):
        assert result.code == "INVALID_ARG", (name, result.message)
        assert expected in result.message, (name, result.message)
        assert result.http_status == 400


def test_engine_failure_fails_the_batch_with_a_short_internal_error(
    stt: ModelHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(rows):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(stt.model.engine, "transcribe", broken)
    results = stt.execute([stt.request(audio(clip(1.0, i))) for i in range(3)])
    assert [r.code for r in results] == ["INTERNAL"] * 3
    assert all(
        "internal error while running the model (RuntimeError)" in r.message for r in results
    )
    assert all("Traceback" not in r.message and "simulated" not in r.message for r in results)
    errors = [m for level, m in stt.logs if level == "ERROR"]
    assert any("Traceback" in m and "simulated" in m for m in errors), "the log keeps the details"


def test_an_engine_failure_is_pinned_on_the_request_that_causes_it(
    stt: ModelHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch is retried in halves: only the poisoned requests fail, each with its own code."""
    real = stt.model.engine.transcribe
    internal, invalid = int(1.3 * 16_000), int(1.7 * 16_000)  # audio lengths that poison a call

    def poisoned(rows):
        lengths = {row.audio.shape[0] for row in rows}
        if internal in lengths:
            raise RuntimeError("simulated")
        if invalid in lengths:
            raise RequestError("input 'audio' breaks the model (simulated)")
        return real(rows)

    monkeypatch.setattr(stt.model.engine, "transcribe", poisoned)
    series = stt.metric("multimodal_batch_splits_total", {"model": "stt"})
    before = 0.0 if series is None else series.value
    seconds = [1.0, 1.3, 2.0, 1.1, 1.7, 0.9]
    inputs = [with_tokens(audio(clip(s, i))) for i, s in enumerate(seconds)]
    results = stt.execute([stt.request(i) for i in inputs])
    assert [r.code for r in results] == [None, "INTERNAL", None, None, "INVALID_ARG", None]
    assert "internal error while running the model (RuntimeError)" in results[1].message
    assert results[4].message == "input 'audio' breaks the model (simulated)"
    for k in (0, 2, 3, 5):
        assert results[k].text("text") == stt.infer(inputs[k]).text("text")
    after = stt.metric("multimodal_batch_splits_total", {"model": "stt"})
    assert after is not None and after.value == before + 5  # 6 -> 3 + 3, and 1.3 and 1.7 s
    # are each found in 2 more halvings (3 -> 1 + 2 -> 1 + 1)
    assert any("retrying them in two halves" in m for level, m in stt.logs if level == "WARNING")


def test_server_checks_happen_before_the_model(stt: ModelHarness) -> None:
    with pytest.raises(ServerRejected, match="data-type"):
        stt.request({"audio": np.zeros((1, 1), dtype=np.float32)})
    with pytest.raises(ServerRejected, match="shape"):
        stt.request({"audio": np.array([[b"a", b"b"]], dtype=np.object_)})
    with pytest.raises(ServerRejected, match="batch-size"):
        stt.request(audio(*[b"x"] * 9))
    with pytest.raises(ServerRejected, match="unexpected inference input"):
        stt.request({**audio(b"x"), "speed": np.ones((1, 1), dtype=np.float32)})


def test_timestamps_on_request(stt: ModelHarness) -> None:
    inputs = {**with_tokens(audio(clip(2.0, 5))), "return_timestamps": np.array([[True]])}
    import json

    segments = json.loads(stt.infer(inputs).outputs["segments"][0, 0])
    assert isinstance(segments, list) and all({"start", "end", "text"} <= set(s) for s in segments)


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_quantized_model_serves(
    model_store: Path, monkeypatch: pytest.MonkeyPatch, quantization: str
) -> None:
    monkeypatch.setenv("MODEL_STORE", str(model_store))
    monkeypatch.setenv("STT_QUANTIZATION", quantization)
    with ModelHarness(STT, parameters={"model_path": "whisper-tiny-random"}) as harness:
        result = harness.infer(with_tokens(audio(clip(1.0, 0))))
        assert result.error is None
        assert any(f"quantization={quantization}" in m for _, m in harness.logs)


def test_a_cancelled_request_is_answered_cancelled_and_not_run(stt: ModelHarness) -> None:
    cancelled = stt.request(with_tokens(audio(clip(1.0, 0))))
    stt.cancel(cancelled)
    live = stt.request(with_tokens(audio(clip(1.0, 1))))
    first, second = stt.execute([cancelled, live])
    assert first.code == "CANCELLED" and second.error is None


def test_errors_are_counted_by_code(stt: ModelHarness) -> None:
    def count(code: str) -> float:
        series = stt.metric("multimodal_request_errors_total", {"model": "stt", "code": code})
        return 0.0 if series is None else series.value

    before = count("INVALID_ARG")
    stt.execute([stt.request(audio(b"junk")), stt.request(audio(b""))])
    assert count("INVALID_ARG") == before + 2


@pytest.fixture(scope="module")
def budgeted(model_store: Path) -> Iterator[ModelHarness]:
    """stt with a 10 s budget of decoded audio per execute()."""
    yield from loaded(model_store, max_batch_audio_seconds="10")


def held_audio(harness: ModelHarness, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The model's decode_audio, spied on: the most seconds of decoded audio alive at once
    (each decoded array counted until it is freed) is kept in the returned list's one item."""
    namespace = type(harness.model).parse.__globals__  # model.py's (the harness loads it by path)
    real = namespace["decode_audio"]
    alive: dict[int, float] = {}
    most = [0.0]

    def spy(*args: Any, **kwargs: Any) -> np.ndarray:
        decoded = real(*args, **kwargs)
        key = id(decoded)
        alive[key] = decoded.shape[0] / kwargs["target_rate"]
        weakref.finalize(decoded, alive.pop, key)
        most[0] = max(most[0], sum(alive.values()))
        return decoded

    monkeypatch.setitem(namespace, "decode_audio", spy)
    return most


def test_a_batch_never_holds_more_decoded_audio_than_its_budget(
    budgeted: ModelHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_batch_audio_seconds 10: four requests of 4 s are decoded and run two at a time
    (all four decoded before one engine call held 16 s), each answered as alone."""
    inputs = [with_tokens(audio(clip(4.0, i))) for i in range(4)]
    alone = [budgeted.infer(i).text("text") for i in inputs]
    calls: list[int] = []
    real = budgeted.model.engine.transcribe
    monkeypatch.setattr(
        budgeted.model.engine, "transcribe", lambda rows: calls.append(len(rows)) or real(rows)
    )
    most = held_audio(budgeted, monkeypatch)
    results = budgeted.execute([budgeted.request(i) for i in inputs])
    assert most[0] == 8.0
    assert calls == [2, 2]
    assert [r.text("text") for r in results] == alone


def test_a_request_over_the_batch_budget_fails_alone(
    budgeted: ModelHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused from the headers, before a sample is decoded: three rows of 4 s (one request),
    or one row of 12 s (under max_audio_seconds, over the batch's budget)."""
    most = held_audio(budgeted, monkeypatch)
    good = with_tokens(audio(clip(1.0, 0)))
    rows = with_tokens(audio(clip(4.0, 1), clip(4.0, 2), clip(4.0, 3)))
    long = with_tokens(audio(clip(12.0, 4)))
    results = budgeted.execute(
        [budgeted.request(good), budgeted.request(rows), budgeted.request(long)],
        enforce_batcher=False,
    )
    assert results[0].error is None and most[0] == 1.0
    assert results[1].code == "INVALID_ARG"
    assert results[1].message == (
        "input 'audio' is 12.0 s of audio in 3 rows; one batch holds at most 10 s "
        "(max_batch_audio_seconds)"
    )
    assert results[2].code == "INVALID_ARG"
    assert "12.0 s of audio in 1 rows" in results[2].message
    assert "(max_batch_audio_seconds)" in results[2].message


def test_budget_groups_pack_lightest_first_and_keep_the_order() -> None:
    assert budget_groups([4.0, 4.0, 4.0, 4.0], 10.0) == [[0, 1], [2, 3]]
    assert budget_groups([9.0, 1.0, 30.0, 2.0], 10.0) == [[1, 3], [0], [2]]
    assert budget_groups([1.0, 2.0], 10.0) == [[0, 1]]
    assert budget_groups([], 10.0) == []
