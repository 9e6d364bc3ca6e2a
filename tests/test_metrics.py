"""The models' Prometheus metrics (`serving.metrics`) through the pb_utils harness: the
catalogue's rules, and what each kind of model records for requests whose outcome is known.

The harness keeps the server's registry for the whole process, so each test reads the
series before and after its requests and checks the difference.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from serving import metrics
from serving.metrics import CATALOGUE, COUNTER, GAUGE, HISTOGRAM
from tests.harness.pb_metrics import Series
from tests.harness.runner import ModelHarness
from tests.harness.server import HarnessServer
from tests.speech import encode

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "model_repository"
BOUNDED_LABELS = {"model", "code", "reason", "instance"}


def load(name: str, store: Path, **parameters: str) -> ModelHarness:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODEL_STORE", str(store))
        return ModelHarness(REPO / name, parameters=parameters).load()


@pytest.fixture(scope="module", autouse=True)
def restore_threads() -> Iterator[None]:
    """The TTS models' num_threads setting sets torch's threads for this whole process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chat_engine(model_store: Path) -> Iterator[ModelHarness]:
    harness = load("vlm_stream", model_store, model_path="smolvlm-tiny-random", max_new_tokens="8")
    yield harness
    harness.finalize()


@pytest.fixture(scope="module")
def llm(chat_engine: ModelHarness) -> Iterator[ModelHarness]:
    """The llm front, linked to its engine as on one server."""
    with ModelHarness(REPO / "llm") as front:
        HarnessServer(chat_engine, front)
        yield front


@pytest.fixture(scope="module")
def stt(model_store: Path) -> Iterator[ModelHarness]:
    harness = load("stt", model_store, model_path="whisper-tiny-random", max_audio_seconds="60")
    yield harness
    harness.finalize()


@pytest.fixture(scope="module")
def tts_stream(model_store: Path) -> Iterator[ModelHarness]:
    harness = load("tts_stream", model_store, model_path="vits-tiny-random")
    yield harness
    harness.finalize()


class Reading:
    """The series of one model as they stand now, to compare with a later reading."""

    def __init__(self, harness: ModelHarness, model: str) -> None:
        self.harness, self.model = harness, model

    def series(self, spec: metrics.Spec, **labels: str) -> Series:
        found = self.harness.metric(spec.name, {"model": self.model, **labels})
        return found if found is not None else Series()

    def value(self, spec: metrics.Spec, **labels: str) -> float:
        return self.series(spec, **labels).value

    def observed(self, spec: metrics.Spec, **labels: str) -> list[float]:
        return list(self.series(spec, **labels).observations)


def test_the_catalogue_follows_prometheus_conventions() -> None:
    names = [spec.name for spec in CATALOGUE]
    assert len(set(names)) == len(names)
    for spec in CATALOGUE:
        assert re.fullmatch(r"multimodal_[a-z_]+", spec.name), spec.name
        assert spec.kind in (COUNTER, GAUGE, HISTOGRAM)
        assert spec.name.endswith("_total") == (spec.kind == COUNTER), spec.name
        assert spec.labels[0] == "model" and set(spec.labels) <= BOUNDED_LABELS, spec.name
        if spec.kind == HISTOGRAM:
            assert list(spec.buckets) == sorted(set(spec.buckets)) and spec.buckets[0] > 0
        else:
            assert spec.buckets == ()
    assert 1.0 in metrics.REAL_TIME_FACTOR.buckets  # the RTF alert's bound is a bucket edge


def test_a_family_takes_exactly_its_specs_labels(stt: ModelHarness) -> None:
    with stt.activated():
        errors = metrics.Family(metrics.ERRORS, "unit")
        with pytest.raises(ValueError, match="takes the labels"):
            errors.increment(1)
        with pytest.raises(ValueError, match="takes the labels"):
            errors.increment(1, code="INTERNAL", session="abc")
        with pytest.raises(ValueError, match="has no label"):
            metrics.Family(metrics.SPLITS, "unit", instance="unit_0")
        rows = metrics.Family(metrics.BATCH_ROWS, "unit")
        rows.observe(3)
    series = stt.metric(metrics.BATCH_ROWS.name, {"model": "unit"})
    assert series is not None and series.buckets == list(metrics.ROW_BUCKETS)


def test_every_model_reports_its_load_and_footprint(stt: ModelHarness) -> None:
    labels = {"model": "stt", "instance": stt.instance_name}
    load_seconds = stt.metric(metrics.LOAD_SECONDS.name, labels)
    footprint = stt.metric(metrics.FOOTPRINT.name, labels)
    assert load_seconds is not None and 0 < load_seconds.value < 600
    # whisper-tiny-random: 1 MB of weights in bfloat16 (dtype=auto here), 2 MB in float32.
    assert footprint is not None and 2**19 < footprint.value < 2**30


def clip(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode((0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32), 16_000)


def test_stt_counts_audio_windows_and_real_time_factor(stt: ModelHarness) -> None:
    before = Reading(stt, "stt")
    rtf, windows = before.observed(metrics.REAL_TIME_FACTOR), before.observed(metrics.WINDOWS)
    rows = before.observed(metrics.BATCH_ROWS)
    audio = before.value(metrics.AUDIO_SECONDS)
    tokens = np.array([[4]], dtype=np.int32)
    requests = [
        stt.request(
            {"audio": np.array([[clip(seconds, 1)]], dtype=np.object_), "max_new_tokens": tokens}
        )
        for seconds in (2.0, 31.0)
    ]
    results = stt.execute(requests)
    assert all(r.error is None for r in results)
    after = Reading(stt, "stt")
    assert after.value(metrics.AUDIO_SECONDS) - audio == pytest.approx(33.0)
    assert after.observed(metrics.WINDOWS)[len(windows) :] == [1, 2]
    assert after.observed(metrics.BATCH_ROWS)[len(rows) :] == [2]
    factors = after.observed(metrics.REAL_TIME_FACTOR)[len(rtf) :]
    # Both answered at the end of one batch: the same seconds over 2 s and over 31 s of audio.
    assert len(factors) == 2 and factors[0] == pytest.approx(factors[1] * 31 / 2, rel=0.05)


def test_an_error_and_a_cancellation_are_counted(stt: ModelHarness) -> None:
    before = Reading(stt, "stt")
    invalid = before.value(metrics.ERRORS, code="INVALID_ARG")
    cancelled = before.value(metrics.CANCELLED)
    bad = stt.request({"audio": np.array([[b"not audio"]], dtype=np.object_)})
    gone = stt.request({"audio": np.array([[clip(1.0, 2)]], dtype=np.object_)})
    stt.cancel(gone)
    results = stt.execute([gone, bad])
    assert [r.code for r in results] == ["CANCELLED", "INVALID_ARG"]
    after = Reading(stt, "stt")
    assert after.value(metrics.ERRORS, code="INVALID_ARG") == invalid + 1
    assert after.value(metrics.CANCELLED) == cancelled + 1


def test_chat_records_tokens_latencies_steps_and_sessions(
    llm: ModelHarness, chat_engine: ModelHarness
) -> None:
    """llm's requests, generated by its engine: the generation metrics are the engine's."""
    before = Reading(chat_engine, "vlm_stream")
    first, per_token = before.observed(metrics.FIRST_TOKEN), before.observed(metrics.PER_TOKEN)
    counts = {
        spec.name: before.value(spec)
        for spec in (
            metrics.PROMPT_TOKENS,
            metrics.GENERATED_TOKENS,
            metrics.DECODE_STEPS,
            metrics.DECODE_STEP_ROWS,
        )
    }
    finished = before.value(metrics.COMPLETIONS, reason="length")
    prompts = [("Tell me a story", 5, "s1"), ("Hello there", 3, "")]
    requests = [
        llm.request(
            {
                "prompt": np.array([[prompt.encode()]], dtype=np.object_),
                "max_new_tokens": np.array([[limit]], dtype=np.int32),
                "session_id": np.array([[session.encode()]], dtype=np.object_),
            }
        )
        for prompt, limit, session in prompts
    ]
    results = llm.execute(requests)
    assert all(r.error is None for r in results)
    prompt_tokens = [int(r.outputs["prompt_tokens"][0, 0]) for r in results]
    generated = [int(r.outputs["completion_tokens"][0, 0]) for r in results]
    reasons = [r.text("finish_reason") for r in results]
    after = Reading(chat_engine, "vlm_stream")
    delta = {
        name: after.value(spec) - counts[name]
        for name, spec in (
            (s.name, s)
            for s in (
                metrics.PROMPT_TOKENS,
                metrics.GENERATED_TOKENS,
                metrics.DECODE_STEPS,
                metrics.DECODE_STEP_ROWS,
            )
        )
    }
    assert delta[metrics.PROMPT_TOKENS.name] == sum(prompt_tokens)
    assert delta[metrics.GENERATED_TOKENS.name] == sum(generated)
    assert after.value(metrics.COMPLETIONS, reason="length") - finished == reasons.count("length")
    # The two rows reach the engine as two calls: they may join the running batch a step
    # apart. Each step computes one or both rows.
    assert max(generated) <= delta[metrics.DECODE_STEPS.name] <= sum(generated)
    assert sum(generated) <= delta[metrics.DECODE_STEP_ROWS.name] <= 2 * max(generated)
    ttft = after.observed(metrics.FIRST_TOKEN)[len(first) :]
    assert len(ttft) == 2 and all(0 < t < 60 for t in ttft)
    assert len(after.observed(metrics.PER_TOKEN)[len(per_token) :]) == sum(n > 1 for n in generated)
    instance = {"instance": chat_engine.instance_name}
    assert after.value(metrics.SESSIONS, **instance) == 1  # "" is no session
    assert after.value(metrics.SESSION_BYTES, **instance) > len("Tell me a story")


def test_tts_stream_records_first_audio_and_audio_out(tts_stream: ModelHarness) -> None:
    before = Reading(tts_stream, "tts_stream")
    first = before.observed(metrics.FIRST_AUDIO)
    rtf = before.observed(metrics.REAL_TIME_FACTOR)
    audio = before.value(metrics.AUDIO_SECONDS)
    text = np.array([[b"The first sentence. And the second one."]], dtype=np.object_)
    results = tts_stream.infer({"text": text})
    assert all(r.error is None for r in results) and len(results) == 2
    heard = 0.0
    for result in results:
        waveform, rate = sf.read(io.BytesIO(result.outputs["audio"][0, 0]))
        heard += len(waveform) / rate
    after = Reading(tts_stream, "tts_stream")
    assert after.value(metrics.AUDIO_SECONDS) - audio == pytest.approx(heard, abs=1e-3)
    (first_audio,) = after.observed(metrics.FIRST_AUDIO)[len(first) :]
    (factor,) = after.observed(metrics.REAL_TIME_FACTOR)[len(rtf) :]
    assert first_audio > 0 and factor > 0


def test_docs_list_every_metric_as_the_catalogue_defines_it() -> None:
    """docs/metrics.md's table: name, type, labels and buckets, one row per catalogue entry."""
    rows = {}
    for line in (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"`multimodal_\w+`", cells[0]):
            buckets = tuple(float(b) for b in cells[3].split(",")) if cells[3] else ()
            labels = tuple(label.strip() for label in cells[2].split(","))
            rows[cells[0].strip("`")] = (cells[1], labels, buckets)
    assert rows == {spec.name: (spec.kind, spec.labels, spec.buckets) for spec in CATALOGUE}
