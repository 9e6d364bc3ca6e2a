"""The models' metrics as a real tritonserver exports them on /metrics after known requests.

One server with a chat, a speech-to-text and both text-to-speech models on tiny checkpoints;
each test sends requests whose counts are known and reads the exposition with Prometheus'
own parser: counts are exact, sums plausible, histograms native, and nothing is exported that
the catalogue (`serving.metrics`, and so docs/metrics.md) does not list. Last, a real
Prometheus scrapes the server with deploy/prometheus/'s rules: the target is up and every
recording rule returns data for the models that served requests.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving import metrics
from shared.errors import ErrorCode
from tests.chat_client import arrays, http
from tests.conftest import start_server
from tests.speech import encode
from tests.test_prometheus_rules import PROMETHEUS, TRITON_METRICS, rules
from tests.test_stt_server import audio_input
from tests.test_tts_server import stream, tensors
from tools.local_server import LocalTritonServer, free_port

pytestmark = pytest.mark.server

MODELS = ("llm", "stt", "tts", "tts_stream")
#: What the server loads for MODELS: llm answers through the chat engine, vlm_stream.
LOADED = (*MODELS, "vlm_stream")
#: The models that hold weights (a front holds none: no load time, no footprint).
ENGINES = tuple(m for m in LOADED if m != "llm")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[LocalTritonServer]:
    env = {
        "MODEL_STORE": str(model_store),
        "VLM_STREAM_MODEL_PATH": "smolvlm-tiny-random",  # the engine llm answers through
        "VLM_STREAM_MAX_NEW_TOKENS": "8",
        "STT_MODEL_PATH": "whisper-tiny-random",
        "STT_MAX_AUDIO_SECONDS": "60",
        "TTS_MODEL_PATH": "vits-tiny-random",
        "TTS_STREAM_MODEL_PATH": "vits-tiny-random",
    }
    # Triton's latency summaries, which recording rules read, are off by default.
    extra = ["--metrics-config=summary_latencies=true"]
    running = start_server(tmp_path_factory, list(MODELS), env=env, extra_args=extra)
    yield running
    running.stop()


class Scrape:
    """One read of /metrics: samples by (name, labels)."""

    def __init__(self, server: LocalTritonServer) -> None:
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode("utf-8")
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in self.families.values()
            for s in family.samples
        }

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def bucket(self, spec: metrics.Spec, le: float, **labels: str) -> float:
        """A histogram's cumulative bucket, whatever way the server writes its bound."""
        for (name, pairs), value in self.samples.items():
            found = dict(pairs)
            bound = found.pop("le", None)
            if name == f"{spec.name}_bucket" and found == labels and float(bound or "nan") == le:
                return value
        return 0.0

    def histogram(self, spec: metrics.Spec, **labels: str) -> tuple[float, float]:
        """(count, sum) of a histogram series."""
        return self.get(f"{spec.name}_count", **labels), self.get(f"{spec.name}_sum", **labels)


def clip(seconds: float) -> bytes:
    rng = np.random.default_rng(7)
    return encode((0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32), 16_000)


def test_stt_audio_windows_and_real_time_factor(server: LocalTritonServer) -> None:
    before = Scrape(server)
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=300)
    tokens = httpclient.InferInput("max_new_tokens", [1, 1], "INT32")
    tokens.set_data_from_numpy(np.array([[4]], dtype=np.int32))
    for seconds in (2.0, 31.0):  # one 30-second window, then two
        client.infer("stt", [audio_input(httpclient, clip(seconds)), tokens])
    with pytest.raises(Exception, match="audio"):
        client.infer("stt", [audio_input(httpclient, b"not audio")])
    client.close()
    after = Scrape(server)
    stt = {"model": "stt"}
    audio = metrics.AUDIO_SECONDS.name
    assert after.get(audio, **stt) - before.get(audio, **stt) == pytest.approx(33.0)
    count, total = np.subtract(
        after.histogram(metrics.WINDOWS, **stt), before.histogram(metrics.WINDOWS, **stt)
    )
    assert (count, total) == (2, 3)
    count, total = np.subtract(
        after.histogram(metrics.REAL_TIME_FACTOR, **stt),
        before.histogram(metrics.REAL_TIME_FACTOR, **stt),
    )
    assert count == 2 and 0 < total < 100
    # Native histograms: cumulative buckets, the last (+Inf) equal to the count.
    for bound, expected in ((1.0, 1), (2.0, 2), (math.inf, 2)):
        bucket = after.bucket(metrics.WINDOWS, bound, **stt)
        assert bucket - before.bucket(metrics.WINDOWS, bound, **stt) == expected
    assert bucket == after.histogram(metrics.WINDOWS, **stt)[0]
    errors = metrics.ERRORS.name
    invalid = {"code": "INVALID_ARG", **stt}
    assert after.get(errors, **invalid) - before.get(errors, **invalid) == 1
    rows = (
        after.histogram(metrics.BATCH_ROWS, **stt)[0]
        - before.histogram(metrics.BATCH_ROWS, **stt)[0]
    )
    assert rows == 2  # the bad request never reached the engine


def test_chat_tokens_latencies_and_finish_reasons(server: LocalTritonServer) -> None:
    before = Scrape(server)
    answers = [
        http(server, "llm", arrays(prompt, max_new_tokens=limit, session_id=session))
        for prompt, limit, session in (("Tell me a story", 5, "metrics"), ("Hello", 3, ""))
    ]
    prompt_tokens = sum(a[2] for a in answers)
    tokens = [a[3] for a in answers]
    reasons = [a[1] for a in answers]
    after = Scrape(server)
    llm = {"model": "vlm_stream"}  # generation is the engine's: llm is a front over it

    def delta(name: str, **labels: str) -> float:
        return after.get(name, **llm, **labels) - before.get(name, **llm, **labels)

    assert delta(metrics.PROMPT_TOKENS.name) == prompt_tokens
    assert delta(metrics.GENERATED_TOKENS.name) == sum(tokens)
    for reason in ("stop", "length"):
        expected = reasons.count(reason)
        assert delta(metrics.COMPLETIONS.name, reason=reason) == expected
    # One request per execute(): one token step per token, one row in each.
    assert delta(metrics.DECODE_STEPS.name) == sum(tokens)
    assert delta(metrics.DECODE_STEP_ROWS.name) == sum(tokens)
    count, total = np.subtract(
        after.histogram(metrics.FIRST_TOKEN, **llm), before.histogram(metrics.FIRST_TOKEN, **llm)
    )
    assert count == 2 and 0 < total < 120
    count, _ = np.subtract(
        after.histogram(metrics.PER_TOKEN, **llm), before.histogram(metrics.PER_TOKEN, **llm)
    )
    assert count == sum(n > 1 for n in tokens)
    assert delta(f"{metrics.BATCH_ROWS.name}_count") == 2
    # The one session of this server ("" is none), held by the engine's instance.
    held = after.families[metrics.SESSIONS.name].samples
    assert sum(s.value for s in held if s.labels["model"] == "vlm_stream") == 1
    history = after.families[metrics.SESSION_BYTES.name].samples
    assert sum(s.value for s in history if s.labels["model"] == "vlm_stream") > len(
        "Tell me a story"
    )


def test_tts_audio_out_and_stream_first_audio(server: LocalTritonServer) -> None:
    before = Scrape(server)
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=300)
    result = client.infer("tts", tensors(httpclient, "One sentence to say."))
    client.close()
    waveform, rate = sf.read(io.BytesIO(result.as_numpy("audio")[0, 0]))
    spoken = len(waveform) / rate
    events = stream(server, tensors(grpcclient, "The first sentence. And a second one."))
    streamed = 0.0
    for piece, error in events:
        assert error is None
        data = piece.as_numpy("audio")
        if data is not None:
            audio, piece_rate = sf.read(io.BytesIO(data[0, 0]))
            streamed += len(audio) / piece_rate
    after = Scrape(server)
    audio = metrics.AUDIO_SECONDS.name
    for model, seconds in (("tts", spoken), ("tts_stream", streamed)):
        heard = after.get(audio, model=model) - before.get(audio, model=model)
        assert heard == pytest.approx(seconds, abs=1e-3), model
        count, total = np.subtract(
            after.histogram(metrics.REAL_TIME_FACTOR, model=model),
            before.histogram(metrics.REAL_TIME_FACTOR, model=model),
        )
        assert count == 1 and 0 < total < 100, model
    count, total = np.subtract(
        after.histogram(metrics.FIRST_AUDIO, model="tts_stream"),
        before.histogram(metrics.FIRST_AUDIO, model="tts_stream"),
    )
    assert count == 1 and 0 < total < 60


def test_every_exported_metric_is_in_the_catalogue(server: LocalTritonServer) -> None:
    """What the models export is what `serving.metrics.CATALOGUE` (and docs/metrics.md) lists:
    same type, same label names; each instance reports its load time and footprint; counters
    exist at 0 before their first count (no request here was ever cancelled, and no error
    ever had the code ALREADY_EXISTS), so that rate() sees that count."""
    scrape = Scrape(server)
    catalogue = {spec.name.removesuffix("_total"): spec for spec in metrics.CATALOGUE}
    exported = {name: f for name, f in scrape.families.items() if name.startswith("multimodal_")}
    assert set(exported) <= set(catalogue)
    assert {name for name in scrape.families if name.startswith("nv_inference")} >= set(
        TRITON_METRICS
    )
    for name, family in exported.items():
        spec = catalogue[name]
        assert family.type == spec.kind, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == set(spec.labels), sample
    for model in ENGINES:
        for spec in (metrics.LOAD_SECONDS, metrics.FOOTPRINT):
            values = [s.value for s in exported[spec.name].samples if s.labels["model"] == model]
            assert values and all(v > 0 and math.isfinite(v) for v in values), (model, spec.name)
    for model in LOADED:
        codes = {
            s.labels["code"]
            for s in exported[metrics.ERRORS.name.removesuffix("_total")].samples
            if s.labels["model"] == model
        }
        assert codes >= {code.value for code in ErrorCode}, model
        cancelled = exported[metrics.CANCELLED.name.removesuffix("_total")].samples
        assert [s.labels for s in cancelled if s.labels["model"] == model] == [{"model": model}]


def query(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)["data"]


#: Which model's requests each recording rule needs to return a number (None: any model).
RULE_MODELS = {
    "model:multimodal_time_to_first_token_seconds": "vlm_stream",
    "model:multimodal_time_per_output_token_seconds": "vlm_stream",
    "model:multimodal_decode_step_rows": "vlm_stream",
    "model:multimodal_generated_tokens": "vlm_stream",
    "model:multimodal_real_time_factor": "stt",
    "model:multimodal_time_to_first_audio_seconds": "tts_stream",
}


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed")
def test_prometheus_scrapes_the_server_and_every_recording_rule_returns_data(
    server: LocalTritonServer, tmp_path: Path
) -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS / name) for name in config["rule_files"]]
    target = f"127.0.0.1:{server.metrics_port}"
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    command = [
        "prometheus",
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        targets: list[dict[str, Any]] = []
        for _ in range(60):
            time.sleep(1)
            try:
                targets = query(port, "targets")["activeTargets"]
            except OSError:
                continue
            if targets and targets[0]["health"] == "up":
                break
        assert [(t["scrapeUrl"], t["health"]) for t in targets] == [
            (f"http://{target}/metrics", "up")
        ]
        # Requests to every model while Prometheus scrapes, so that rates over the window move.
        http(server, "llm", arrays("Tell me a story", max_new_tokens=5))
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=300)
        client.infer("stt", [audio_input(httpclient, clip(2.0))])
        client.infer("tts", tensors(httpclient, "One sentence to say."))
        client.close()
        stream(server, tensors(grpcclient, "The first sentence. And a second one."))
        missing = recorded = set()
        for _ in range(30):
            time.sleep(1)
            recorded = set()
            for rule in rules("recording.yml"):
                for sample in query(port, "query", query=rule["record"])["result"]:
                    if math.isfinite(float(sample["value"][1])):
                        recorded.add((rule["record"], sample["metric"]["model"]))
            missing = {
                rule["record"]
                for rule in rules("recording.yml")
                if not any(
                    name == rule["record"]
                    and RULE_MODELS.get(name.rsplit(":", 1)[0], model) == model
                    for name, model in recorded
                )
            }
            if not missing:
                break
        assert not missing, (missing, sorted(recorded))
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
