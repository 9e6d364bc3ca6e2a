"""A real tritonserver with every model and the OpenAI door in front of it, for the door's
tests (tests/test_openai_*.py), plus the official `openai` client pointed at it."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tests.conftest import start_server
from tools.local_server import LocalTritonServer, free_port
from tools.openai_door import OpenAIDoor

#: The body limits the test door runs with: small, so that a 413 costs little to provoke.
MAX_JSON_BYTES = 2 * 1024 * 1024
MAX_UPLOAD_BYTES = 4 * 1024 * 1024


@dataclass
class Served:
    triton: LocalTritonServer
    door: OpenAIDoor

    def client(self, **options: object) -> openai.OpenAI:
        """The official client; no retries, so that a 503 is seen as it is."""
        options.setdefault("api_key", "unused")
        return openai.OpenAI(base_url=f"{self.door.url}/v1", max_retries=0, timeout=300, **options)

    def metric(self, name: str, model: str) -> float:
        """A counter from Triton's metrics endpoint (0 when not yet exported)."""
        url = f"http://127.0.0.1:{self.triton.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        prefix = f'{name}{{model="{model}"'
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def start_door(triton: LocalTritonServer, log: Path, **env: str) -> OpenAIDoor:
    door = OpenAIDoor(triton_url=triton.grpc_url, port=free_port(), log_path=log, env_overrides=env)
    try:
        door.__enter__()
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"the door did not start: {exc}\n{log.read_text(errors='replace')[-4000:]}")
    return door


def wait_answering(door: OpenAIDoor, timeout: float = 30) -> None:
    """Until the door answers /health at all (a door in front of no Triton answers 503)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{door.url}/health", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise TimeoutError("the door did not answer")


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[Served]:
    """All six models on their shipped defaults (the real SmolLM2 text, whisper-tiny.en, the
    Piper voice) and a door with small body limits."""
    triton = start_server(
        tmp_path_factory,
        ["vlm", "vlm_stream", "llm", "stt", "tts", "tts_stream"],
        env={"MODEL_STORE": str(model_store)},
    )
    door = start_door(
        triton,
        tmp_path_factory.mktemp("door") / "door.log",
        OPENAI_MAX_JSON_BYTES=str(MAX_JSON_BYTES),
        OPENAI_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
    )
    yield Served(triton, door)
    door.stop()
    triton.stop()
