"""The load-test suite against real tritonservers: a tiny sweep of the one command over gRPC
and HTTP, shared memory, a decoupled model streamed, the messages when something is not ready,
the in-process ceiling and the per-request baseline. No timing thresholds: only that every
request was sent, answered and counted, and that the results hold what they claim."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import start_server
from tests.speech import espeak_available, word_error_rate
from tools.loadtest import baseline, inprocess, loadgen
from tools.loadtest.content import ContentOptions, Sample, generator_for
from tools.loadtest.inputs import read_config, write_data
from tools.loadtest.perf import PerfSettings, sweep
from tools.loadtest.server import Endpoint, connect, statistics
from tools.local_server import LocalTritonServer, free_port

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng makes the speech"),
]
ROOT = Path(__file__).resolve().parents[1]
LOADTEST = ROOT / "scripts" / "loadtest"
TINY = ["--concurrency", "1", "--requests", "2", "--rounds", "1", "--samples", "2"]


def loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LOADTEST), *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )


def answered(server: LocalTritonServer, model: str) -> int:
    client = connect(Endpoint("grpc", server.grpc_url))
    try:
        return statistics(client, model)["success"]
    finally:
        client.close()


def test_one_command_sweeps_grpc_and_http(stt_server: LocalTritonServer, tmp_path: Path) -> None:
    before = answered(stt_server, "stt")
    out = tmp_path / "results"
    done = loadtest(
        "-m", "stt", "--grpc-url", stt_server.grpc_url, "--http-url", stt_server.http_url,
        "--protocol", "both", *TINY, "--warmup", "0", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "stt over grpc: concurrency 1 (1/1, 2 requests)" in done.stderr  # progress
    # Two measured requests per protocol reached the model.
    assert answered(stt_server, "stt") - before == 4
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    entry = results["models"]["stt"]
    assert entry["config"]["dynamic_batching"] and not entry["config"]["decoupled"]
    assert len(entry["content"]["samples"]) == 2
    for protocol in ("grpc", "http"):
        (level,) = entry["series"][protocol]["levels"]
        assert level["concurrency"] == 1 and level["requests"] == 2
        assert level["throughput"] > 0 and 0 < level["p50_ms"] <= level["p99_ms"]
        assert level["perf_analyzer"]["throughput"] > 0  # its own figure, kept beside ours
        assert level["server_compute_ms"] > 0 and level["mean_batch_size"] == 1.0
    with open(out / "results.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["series"], r["requests"]) for r in rows] == [
        ("stt", "grpc", "2"),
        ("stt", "http", "2"),
    ]
    assert (out / "stt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "## stt" in summary and "![stt](stt.png)" in summary and "| grpc | 1 | 2 |" in summary


def test_shared_memory_refused_with_optional_inputs(
    stt_server: LocalTritonServer, tmp_path: Path
) -> None:
    """perf_analyzer 2.50 cannot use shared memory for a model with optional inputs (stt):
    said before any request, naming the inputs."""
    done = loadtest(
        "-m", "stt", "--grpc-url", stt_server.grpc_url, *TINY, "--shared-memory", "system",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert done.returncode == 1
    assert "does not support shared memory for models with optional inputs" in done.stderr
    assert "stt has language, task" in done.stderr


def test_not_ready_is_a_clear_message(stt_server: LocalTritonServer) -> None:
    missing = loadtest("-m", "vlm", "--grpc-url", stt_server.grpc_url, *TINY)
    assert missing.returncode == 2
    assert "model 'vlm' is not ready" in missing.stderr and "Ready models: stt" in missing.stderr
    nobody = loadtest("--grpc-url", f"127.0.0.1:{free_port()}", *TINY)
    assert nobody.returncode == 2
    assert "cannot reach a Triton server at 127.0.0.1:" in nobody.stderr


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory: pytest.TempPathFactory):
    # Local in every run: perf_analyzer's system shared memory belongs to this user, which the
    # image's non-root server may not open.
    server = start_server(
        tmp_path_factory,
        ["stream_batch"],
        repository=ROOT / "tests" / "contract_models",
        local=True,
    )
    yield server
    server.stop()


def test_decoupled_model_is_streamed(stream_server: LocalTritonServer, tmp_path: Path) -> None:
    """--streaming for a decoupled model: every response of every request is counted, and the
    first response comes no later than the last."""
    config = read_config(ROOT / "tests" / "contract_models" / "stream_batch")
    data = write_data(config, [Sample({"count": 3}, "3 pieces, then the total")], tmp_path / "d")
    before = answered(stream_server, "stream_batch")
    (level,) = sweep(
        "stream_batch",
        Endpoint("grpc", stream_server.grpc_url),
        data,
        [2],
        PerfSettings(requests=4, rounds=0),
        tmp_path,
        streaming=True,
        progress=lambda _: None,
        warmup=1,
    )
    assert level["requests"] == 4 and answered(stream_server, "stream_batch") - before == 5
    assert level["responses_per_request"] == 4  # 3 pieces + the final response with the total
    assert level["first_response_p50_ms"] <= level["p50_ms"]
    # Through shared memory (this model has no optional inputs, which perf_analyzer needs).
    (level,) = sweep(
        "stream_batch",
        Endpoint("grpc", stream_server.grpc_url),
        data,
        [1],
        PerfSettings(requests=2, rounds=0, shared_memory="system", output_shared_memory_size=64),
        tmp_path,
        streaming=True,
        progress=lambda _: None,
    )
    assert level["requests"] == 2 and level["responses_per_request"] == 4
    # A model without a content generator fails with a message saying where to add one.
    done = loadtest("-m", "stream_batch", "--grpc-url", stream_server.grpc_url, *TINY)
    assert done.returncode == 1
    assert "no content generator for model 'stream_batch'" in done.stderr


def test_in_process_ceiling_runs_the_models_own_code(model_store: Path) -> None:
    config = read_config(ROOT / "model_repository" / "stt")
    samples = generator_for(config).make(config, ContentOptions(samples=2))
    result = inprocess.measure(
        ROOT / "model_repository" / "stt",
        samples,
        [1, 2],
        lambda size: size,
        {"MODEL_STORE": str(model_store)},
        lambda _: None,
    )
    assert [run["requests"] for run in result["batches"].values()] == [1, 2]
    assert result["best_batch_size"] in (1, 2) and result["best_throughput"] > 0
    # each request's transcript is kept, to compare setups (dtypes) on what they answer
    heard = result["batches"]["2"]["answers"]
    assert sorted(heard) == ["0", "1"]
    for index, text in heard.items():
        spoken = samples[int(index)].note.split(": ", 1)[1]
        assert word_error_rate(spoken, text) < 0.5, (spoken, text)


def test_numerics_command_runs_the_model_per_setup(model_store: Path, tmp_path: Path) -> None:
    """`scripts/loadtest numerics`: the same model in-process in float32 and bfloat16, its
    answers compared; bfloat16 Whisper still hears the words."""
    out = tmp_path / "numerics"
    done = loadtest(
        "numerics", "-m", "stt", "--setups", "none:float32,none:bfloat16",
        "--batch-sizes", "2", "--samples", "2", "--requests", "2",
        "--env", f"MODEL_STORE={model_store}", "--env", "STT_MODEL_PATH=whisper-tiny.en",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ratios = json.loads((out / "results.json").read_text())["models"]["stt"]["ratios"]
    assert ratios["none float32 batch 2: requests/s"] > 0
    share = ratios["none bfloat16 batch 2: answers identical to none float32 (share)"]
    assert 0.0 <= share <= 1.0
    assert ratios["none bfloat16 batch 2: word error rate"] < 0.5


def test_baseline_server_and_the_load_generator(
    stt_server: LocalTritonServer, model_store: Path, tmp_path: Path
) -> None:
    """The per-request FastAPI server transcribes the clips (real work, same checkpoint), and
    the load generator drives it and Triton alike."""
    import urllib.request

    config = read_config(ROOT / "model_repository" / "stt")
    samples = generator_for(config).make(config, ContentOptions(samples=2))
    env = {"MODEL_STORE": str(model_store), "STT_MODEL_PATH": "whisper-tiny.en"}
    checkpoint = baseline.served_model_dir(ROOT / "model_repository" / "stt", env)
    assert checkpoint == model_store.resolve() / "whisper-tiny.en"
    log = tmp_path / "baseline.log"
    with baseline.baseline_server(sys.executable, "stt", checkpoint, env, log) as url:
        body = json.dumps(loadgen.json_body(samples[0])).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            text = json.loads(response.read())["text"]
        spoken = samples[0].note.split(": ", 1)[1]
        assert word_error_rate(spoken, text) < 0.5, text
        level = loadgen.run_level(
            lambda c: loadgen.HttpJsonTarget(url, samples, c), len(samples), 2, 2
        )
        assert level["requests"] == 2 and level["p50_ms"] > 0
    before = answered(stt_server, "stt")
    level = loadgen.run_level(
        lambda c: loadgen.TritonTarget("http", stt_server.http_url, config, samples),
        len(samples),
        2,
        2,
    )
    assert level["requests"] == 2 and answered(stt_server, "stt") - before == 2
    assert os.path.exists(log)
