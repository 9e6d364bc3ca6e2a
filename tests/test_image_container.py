"""The built image, run as deployed: `./scripts/image test` (TRITON_IMAGE names the image).

One container of the image with its defaults (production profile, every model, the OpenAI door,
the local model store mounted read-only at its /models volume) answers real requests to each
modality, through Triton's endpoints and through the door, and is then checked for what a platform team relies on: it runs as non-root, its HEALTHCHECK passes,
the store cannot be written, and `stop` drains: requests in flight when SIGTERM arrives are
answered, and the server exits by itself inside the grace period (not killed).
"""

from __future__ import annotations

import io
import json
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import soundfile as sf
import tritonclient.grpc as grpcclient

from tests import chat_client, speech
from tests.conftest import ROOT, new_server
from tests.served import model_ready, speak, transcribe
from tools.container_server import ContainerTritonServer
from tools.local_server import free_port

pytestmark = [pytest.mark.image, pytest.mark.server]

#: Every model of the repository: what the image serves by default.
MODELS = tuple(sorted(p.parent.name for p in (ROOT / "model_repository").glob("*/config.pbtxt")))
SENTENCE = "Please call Stella and ask her to bring these things with her from the store."


@pytest.fixture(scope="module")
def container(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[ContainerTritonServer]:
    log = tmp_path_factory.mktemp("container") / "server.log"
    env = {"MODEL_STORE": str(model_store), "TRITON_PROFILE": "production"}  # as deployed
    server = new_server(log, list(MODELS), env=env)
    assert isinstance(server, ContainerTritonServer), "TRITON_IMAGE must be set"
    server.openai_port = free_port()  # the image's door, on
    # Time to drain on a busy 2-core machine: the stop test must not depend on its speed.
    server.exit_timeout = 60
    try:
        server.__enter__()
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(
            f"the container did not start: {exc}\n{log.read_text(errors='replace')[-4000:]}"
        )
    yield server
    server.stop()


def engine(server: ContainerTritonServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([server.engine, *args], capture_output=True, text=True, check=False)


def inspect(server: ContainerTritonServer, template: str) -> Any:
    return json.loads(
        engine(
            server, "inspect", "--format", f"{{{{json {template}}}}}", server.container_name
        ).stdout
    )


def test_every_model_is_ready(container: ContainerTritonServer) -> None:
    for model in MODELS:
        url = f"http://{container.http_url}/v2/models/{model}/ready"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200, model


def test_stt_hears_a_recording(container: ContainerTritonServer) -> None:
    samples, rate = speech.speak(SENTENCE)
    heard = transcribe(container, speech.encode(samples, rate, fmt="FLAC"))
    assert speech.word_error_rate(SENTENCE, heard) <= 0.15, heard


def test_llm_answers_a_fact(container: ContainerTritonServer) -> None:
    text, reason, *_ = chat_client.http(
        container, "llm", chat_client.arrays("What is the capital of France?", max_new_tokens=16)
    )
    assert "Paris" in text and reason in ("stop", "length"), text


def test_tts_speaks_and_stt_hears_it(container: ContainerTritonServer) -> None:
    text = "The children played in the garden until it was dark."
    audio = speak(container, text)
    samples, rate = sf.read(io.BytesIO(audio), dtype="float32")
    assert rate == 22_050 and len(samples) > rate  # more than a second of speech
    assert speech.word_error_rate(text, transcribe(container, audio)) <= 0.15


def test_runs_as_non_root(container: ContainerTritonServer) -> None:
    assert inspect(container, ".Config.User") == "triton-server"
    # Every process in the container: tini, tritonserver and each model's stub.
    uids = engine(
        container,
        "exec",
        container.container_name,
        "sh",
        "-c",
        "grep -h '^Uid:' /proc/[0-9]*/status",
    ).stdout.split("\n")
    real_uids = {line.split()[1] for line in uids if line.strip()}
    assert real_uids == {"1000"}, uids


def test_healthcheck_reports_healthy(container: ContainerTritonServer) -> None:
    assert inspect(container, ".Config.Healthcheck.Test")[-1] == "healthcheck"
    if container.engine == "podman":
        # Without systemd, podman runs health checks when asked; docker runs them on its own.
        assert engine(container, "healthcheck", "run", container.container_name).returncode == 0
    deadline = time.monotonic() + 120
    while (status := inspect(container, ".State.Health.Status")) != "healthy":
        assert status == "starting" and time.monotonic() < deadline, status
        time.sleep(2)


def test_the_store_is_mounted_read_only(container: ContainerTritonServer) -> None:
    (mount,) = [m for m in inspect(container, ".Mounts") if m["Destination"] == "/models"]
    assert mount["RW"] is False
    touched = engine(container, "exec", container.container_name, "touch", "/models/written")
    assert touched.returncode != 0 and "Read-only file system" in touched.stderr


def test_the_door_answers_with_the_official_client(container: ContainerTritonServer) -> None:
    """The image serves the OpenAI door beside Triton (OPENAI_PORT), as ./scripts/serve does."""
    client = openai.OpenAI(base_url=f"{container.openai_url}/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model="llm",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    assert "Paris" in (answer.choices[0].message.content or ""), answer
    samples, rate = speech.speak(SENTENCE)
    heard = client.audio.transcriptions.create(
        model="whisper-1", file=("question.flac", speech.encode(samples, rate, fmt="FLAC"))
    )
    assert speech.word_error_rate(SENTENCE, heard.text) <= 0.15, heard.text


KILL_STUB = """
import os, pathlib, signal
for proc in pathlib.Path("/proc").iterdir():
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\\0")
    except OSError:
        continue
    if argv[0].endswith(b"triton_python_backend_stub") and argv[8] == b"tts_0_0":
        os.kill(int(proc.name), signal.SIGKILL)
        print(proc.name)
"""


def test_the_watchdog_brings_back_a_model_whose_stub_was_killed(
    container: ContainerTritonServer,
) -> None:
    """The entry point's watchdog, with the production profile's admin key: tts goes down
    (not ready) and comes back by itself after one of its stubs is killed."""
    killed = engine(container, "exec", container.container_name, "python", "-c", KILL_STUB)
    assert killed.returncode == 0 and killed.stdout.strip(), killed
    states = [model_ready(container, "tts")]
    deadline = time.monotonic() + 300
    while states[-1]:
        assert time.monotonic() < deadline, "tts never went down"
        time.sleep(0.05)
        states.append(model_ready(container, "tts"))
    while not states[-1]:
        assert time.monotonic() < deadline, "tts never came back"
        time.sleep(0.2)
        states.append(model_ready(container, "tts"))
    text = "The children played in the garden until it was dark."
    assert speech.word_error_rate(text, transcribe(container, speak(container, text))) <= 0.15


def test_stop_answers_requests_in_flight_and_exits_without_being_killed(
    container: ContainerTritonServer,
) -> None:
    """Last in this module: it stops the container.

    Four chat streams are in flight (each has sent its first piece: the server is generating
    them) when `stop` sends SIGTERM. Each stream still receives the rest of its answer and its
    final response, and the container exits by itself, with status 0, before the engine's
    grace period would kill it.
    """
    new_tokens = 32
    responses: queue.Queue[tuple[float, Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(container.grpc_url)
    client.start_stream(
        callback=lambda result, error: responses.put((time.monotonic(), result, error))
    )
    prompts = ["Tell me about the sea.", "Describe a forest.", "Write about rain.", "Explain fire."]
    for index, prompt in enumerate(prompts):
        inputs = chat_client.arrays(prompt, max_new_tokens=new_tokens, temperature=0.0)
        client.async_stream_infer(
            "vlm_stream",
            chat_client.tensors(grpcclient, inputs),
            request_id=str(index),
            enable_empty_final_response=True,
        )
    started: set[str] = set()
    finals: dict[str, Any] = {}
    pieces_after_stop = 0
    stopping: threading.Thread | None = None
    stopped: list[subprocess.CompletedProcess[str]] = []
    stop_sent = float("inf")
    while len(finals) < len(prompts):
        when, result, error = responses.get(timeout=180)
        assert error is None, error  # no stream was cut
        response = result.get_response()
        if response.parameters["triton_final_response"].bool_param:
            finals[response.id] = result
            continue
        started.add(response.id)
        pieces_after_stop += when > stop_sent
        if stopping is None and len(started) == len(prompts):
            # Every request is being generated: now `docker stop`.
            stop_sent = time.monotonic()
            stopping = threading.Thread(
                target=lambda: stopped.append(
                    engine(container, "stop", f"--time={container.grace}", container.container_name)
                )
            )
            stopping.start()
    client.stop_stream()
    client.close()
    assert stopping is not None
    stopping.join(timeout=container.grace + 30)
    assert stopped and stopped[0].returncode == 0, stopped
    assert pieces_after_stop > 0  # generation went on after SIGTERM
    for index, final in finals.items():
        assert final.as_numpy("finish_reason")[0, 0].decode() in ("stop", "length"), index
    assert container.process is not None
    container.process.wait(timeout=60)
    # tritonserver ended on SIGTERM by itself, every model unloaded inside EXIT_TIMEOUT (else
    # it exits with 1), and the supervisor passed its status on; a SIGKILL after the grace
    # period would read 137.
    assert container.process.returncode == 0, container.process.returncode
