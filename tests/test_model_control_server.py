"""Model control and versions on a real server in the production profile.

The server runs as deployed: explicit model control, and the repository API (load, unload,
index) behind the `triton-admin-key` header. Locally that is a tritonserver given the image's
own restriction flags; with TRITON_IMAGE, a container of the image in its production profile.
What is checked: a model is unloaded, loaded and reloaded through the API while another model
keeps answering; the API refuses callers without the key; and the A/B versions of `stt`
(docs/deploy.md#model-versions) are served side by side once a load asks for both, each
chosen by the client, version 2 with its own settings (int8). And `./scripts/serve` runs the
same explicit model control, every model loaded when none is named.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import ROOT, TRITON_IMAGE, start_server
from tests.speech import SENTENCES, encode, espeak_available, speak, word_error_rate
from tests.stack import answers, wait_for
from tools.container.__main__ import ADMIN_HEADER, RESTRICTED_APIS
from tools.local_server import LocalTritonServer, free_port

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng makes the speech"),
]

KEY = secrets.token_hex(16)
ADMIN = {ADMIN_HEADER: KEY}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[LocalTritonServer]:
    """stt (the real whisper-tiny.en) and tts (a tiny VITS), production profile, key known."""
    env = {"MODEL_STORE": str(model_store), "TTS_MODEL_PATH": "vits-tiny-random"}
    extra: list[str] = []
    if TRITON_IMAGE:
        env |= {"TRITON_PROFILE": "production", "TRITON_ADMIN_KEY": KEY}
    else:
        restricted = f"{RESTRICTED_APIS}:{ADMIN_HEADER}={KEY}"
        extra = [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]
    running = start_server(tmp_path_factory, ["stt", "tts"], env=env, extra_args=extra)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def sentence() -> tuple[str, bytes]:
    text = SENTENCES[0]
    return text, encode(*speak(text))


def client(server: LocalTritonServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url, network_timeout=300)


def transcribe(server: LocalTritonServer, audio: bytes, version: str = "") -> str:
    tensor = httpclient.InferInput("audio", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[audio]], dtype=np.object_))
    result = client(server).infer("stt", [tensor], model_version=version)
    return str(result.as_numpy("text")[0, 0].decode("utf-8"))


def synthesize(server: LocalTritonServer) -> int:
    """Samples of the audio tts answers for a short text."""
    tensor = httpclient.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"Hello there."]], dtype=np.object_))
    result = client(server).infer("tts", [tensor])
    return int(np.asarray(result.as_numpy("audio")).size)


def post(server: LocalTritonServer, path: str, headers: dict[str, str]) -> int:
    """The status code of a bare POST to the server's HTTP API."""
    request = urllib.request.Request(
        f"http://{server.http_url}{path}", data=b"{}", headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def version_successes(server: LocalTritonServer) -> dict[str, float]:
    """Triton's nv_inference_request_success of stt, by version, from /metrics."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode("utf-8")
    counts = {}
    for line in text.splitlines():
        if line.startswith('nv_inference_request_success{model="stt",version="'):
            version = line.split('version="', 1)[1].split('"', 1)[0]
            counts[version] = float(line.rsplit(" ", 1)[1])
    return counts


def test_the_repository_api_is_closed_without_the_key(server: LocalTritonServer) -> None:
    for headers in ({}, {ADMIN_HEADER: "wrong"}):
        for path in ("/v2/repository/index", "/v2/repository/models/stt/unload"):
            assert post(server, path, headers) == 403, (path, headers)
    assert client(server).is_model_ready("stt")  # nothing was unloaded
    assert post(server, "/v2/repository/index", ADMIN) == 200


def test_unload_load_reload_while_another_model_serves(
    server: LocalTritonServer, sentence: tuple[str, bytes]
) -> None:
    text, audio = sentence
    admin = client(server)
    admin.unload_model("stt", headers=ADMIN)
    assert not admin.is_model_ready("stt")
    with pytest.raises(InferenceServerException, match="stt"):
        transcribe(server, audio)
    assert synthesize(server) > 0  # tts serves on

    # tts answers while stt loads (loading takes seconds: the load runs in a thread, over
    # urllib: tritonclient's HTTP client is gevent's and stays in the thread that made it).
    answered: list[int] = []
    for step in ("load", "reload"):  # a load of a loaded model reloads it
        loads: list[int] = []
        loader = threading.Thread(
            target=lambda done=loads: done.append(
                post(server, "/v2/repository/models/stt/load", ADMIN)
            )
        )
        loader.start()
        while True:
            answered.append(synthesize(server))
            if not loader.is_alive():
                break
        loader.join()
        assert loads == [200], step
        assert admin.is_model_ready("stt"), step
        assert word_error_rate(text, transcribe(server, audio)) <= 0.2, step
    assert all(samples > 0 for samples in answered)
    index = {(m["name"], m.get("state")) for m in admin.get_model_repository_index(headers=ADMIN)}
    assert {("stt", "READY"), ("tts", "READY")} <= index


def test_ab_versions_served_side_by_side_and_chosen_by_the_client(
    server: LocalTritonServer, sentence: tuple[str, bytes]
) -> None:
    text, audio = sentence
    admin = client(server)
    assert admin.is_model_ready("stt", "1") and not admin.is_model_ready("stt", "2")
    log_before = server.log_path.read_text(errors="replace") if server.log_path else ""

    # The A/B load: the model's own config with a version_policy that serves both.
    config = admin.get_model_config("stt")
    config["version_policy"] = {"specific": {"versions": [1, 2]}}
    admin.load_model("stt", headers=ADMIN, config=json.dumps(config))
    assert admin.is_model_ready("stt", "1") and admin.is_model_ready("stt", "2")
    assert admin.get_model_metadata("stt")["versions"] == ["1", "2"]
    before = version_successes(server)
    for version in ("1", "2"):
        assert word_error_rate(text, transcribe(server, audio, version)) <= 0.2, version
    # Triton counts a request once its response is out: wait for the counts (10 s at most).
    deadline = time.monotonic() + 10
    while True:
        after = version_successes(server)
        counted = {v: after.get(v, 0.0) - before.get(v, 0.0) for v in ("1", "2")}
        if counted == {"1": 1.0, "2": 1.0} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counted == {"1": 1.0, "2": 1.0}

    # Version 2 loaded with its parameters.json (int8), version 1 as before (none).
    assert server.log_path is not None
    loads = server.log_path.read_text(errors="replace")[len(log_before) :]
    assert "stt: loaded whisper (English-only) quantization=int8" in loads
    assert "stt: loaded whisper (English-only) quantization=none" in log_before

    # The end of the test: a load whose policy names version 1 alone (version 2 unloads once
    # the load has returned: Triton retires the versions a new policy drops in the background).
    config["version_policy"] = {"specific": {"versions": [1]}}
    admin.load_model("stt", headers=ADMIN, config=json.dumps(config))
    assert admin.is_model_ready("stt", "1")
    deadline = time.monotonic() + 120
    while admin.is_model_ready("stt", "2") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not admin.is_model_ready("stt", "2")
    assert word_error_rate(text, transcribe(server, audio)) <= 0.2


def test_scripts_serve_loads_every_model_under_explicit_control(tmp_path: Path) -> None:
    """`./scripts/serve` with no model named: every model loaded, and the repository API (open
    outside the production profile) unloads and loads one while the others stay ready."""
    ports: dict[str, int] = {}
    while len(set(ports.values())) < 3:  # the OS may hand out one free port twice
        ports = {name: free_port() for name in ("PORT_HTTP", "PORT_GRPC", "PORT_METRICS")}
    tiny = {  # small checkpoints: what is under test is which models load, and how
        "MODEL_PATH": "smolvlm-tiny-random",
        "STT_MODEL_PATH": "whisper-tiny-random",
        "TTS_MODEL_PATH": "vits-tiny-random",
        "TTS_STREAM_MODEL_PATH": "vits-tiny-random",
    }
    env = {**os.environ, **tiny, **{k: str(v) for k, v in ports.items()}}
    env.pop("MODELS", None)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            [str(ROOT / "scripts" / "serve"), "--no-openai"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"127.0.0.1:{ports['PORT_HTTP']}"
    try:
        wait_for(
            "./scripts/serve ready",
            lambda: serve.poll() is not None or answers(f"http://{url}/v2/health/ready"),
            600,
        )
        assert serve.poll() is None, log.read_text(errors="replace")[-2000:]
        admin = httpclient.InferenceServerClient(url, network_timeout=300)
        served = sorted(
            p.name for p in (ROOT / "model_repository").iterdir() if (p / "config.pbtxt").is_file()
        )
        index = admin.get_model_repository_index()
        assert sorted(m["name"] for m in index if m.get("state") == "READY") == served
        admin.unload_model("tts")
        assert not admin.is_model_ready("tts") and admin.is_model_ready("stt")
        admin.load_model("tts")
        assert all(admin.is_model_ready(name) for name in served)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(120)
    assert "model_control_mode               | MODE_EXPLICIT" in log.read_text(errors="replace")
