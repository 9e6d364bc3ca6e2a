"""Fixtures shared by the test modules: the model store and real tritonservers.

The real servers are local tritonservers (tools/local_server.py), or containers of the built
image when TRITON_IMAGE names one (`./scripts/image test` sets it): the same tests, the same
models and settings, served as deployed. Tests marked `image` need the image and are
deselected without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.container_server import ContainerTritonServer
from tools.local_server import LocalTritonServer

ROOT = Path(__file__).resolve().parents[1]
#: The image the real-server tests run against instead of a local server (unset: local).
TRITON_IMAGE = os.environ.get("TRITON_IMAGE", "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without an image to test, the image's own tests are deselected (not skipped)."""
    if TRITON_IMAGE:
        return
    kept = [item for item in items if item.get_closest_marker("image") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


#: With STRICT_SKIPS=1 (CI sets it), a test skipped for want of something ./scripts/setup
#: installs fails the run instead: CI must not pass by skipping what it was meant to check.
STRICT_SKIPS = os.environ.get("STRICT_SKIPS") == "1"
SETUP_PROVIDES = re.compile(r"espeak|promtool|prometheus|weights|wheel|model store", re.I)
_skipped_for_setup: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if STRICT_SKIPS and report.skipped:
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        if SETUP_PROVIDES.search(reason):
            _skipped_for_setup.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped_for_setup:
        print("\nSTRICT_SKIPS: skipped for want of what ./scripts/setup installs:")
        for line in _skipped_for_setup:
            print(f"  {line}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def model_store() -> Path:
    """The store ./scripts/setup built (MODEL_STORE, default ./model_store)."""
    store = Path(os.environ.get("MODEL_STORE", ROOT / "model_store"))
    if not store.is_dir():
        pytest.fail(f"model store {store} is missing: run ./scripts/setup (./scripts/test does)")
    return store


def new_server(
    log: Path,
    models: list[str],
    repository: Path = ROOT / "model_repository",
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    local: bool = False,
) -> LocalTritonServer:
    """A server of the kind under test (local, or the image's container), not yet started;
    `local`: always a local one (tests that look into the server's own processes)."""
    common: dict[str, Any] = {
        "model_repository": repository,
        "models": models,
        "log_path": log,
        "env_overrides": env or {},
        "extra_args": extra_args or [],
    }
    if TRITON_IMAGE and not local:
        # As open as ./scripts/serve, which these tests were written against (model control,
        # shared memory); tests of the production profile ask for it.
        common["env_overrides"] = {"TRITON_PROFILE": "development", **common["env_overrides"]}
        return ContainerTritonServer(image=TRITON_IMAGE, **common)
    return LocalTritonServer(**common)


def start_server(
    tmp_path_factory: pytest.TempPathFactory,
    models: list[str],
    repository: Path = ROOT / "model_repository",
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    local: bool = False,
) -> LocalTritonServer:
    """A running server with `models` loaded; its log is printed if it fails to start."""
    log = tmp_path_factory.mktemp("tritonserver") / "server.log"
    server = new_server(log, models, repository, env, extra_args, local)
    try:
        server.__enter__()
    except (RuntimeError, TimeoutError) as exc:
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        pytest.fail(f"tritonserver did not start: {exc}\n{tail}")
    return server


@pytest.fixture(scope="module")
def local_speech_server(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[LocalTritonServer]:
    """tts and stt on their shipped defaults, on a local server in every run (also under
    ./scripts/image test): for tests that read the server's own processes from /proc."""
    server = start_server(
        tmp_path_factory, ["tts", "stt"], env={"MODEL_STORE": str(model_store)}, local=True
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a busy 2-core machine: one torch thread is many times faster. Modules
    of in-process engine tests use it for all their tests (`pytest.mark.usefixtures`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stt_server(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[LocalTritonServer]:
    """The stt model with its shipped config, limits lowered so the tests stay small."""
    server = start_stt(tmp_path_factory, model_store)
    yield server
    server.stop()


def start_stt(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path, **env: str
) -> LocalTritonServer:
    """`stt_server`'s server, with further settings (`env`: variables) over it."""
    return start_server(
        tmp_path_factory,
        ["stt"],
        env={"STT_MAX_AUDIO_SECONDS": "120", "MODEL_STORE": str(model_store), **env},
    )


@pytest.fixture(scope="module")
def vlm_server(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[LocalTritonServer]:
    """vlm_stream (the chat engine) and its fronts vlm and llm on the tiny random SmolVLM,
    set the way deployments set them: MODEL_PATH (the shared alias) names the checkpoint,
    the engine's own names set the rest. dtype=float32: the tests hold a request batched or
    streamed to its tokens alone, which float32 keeps and bfloat16 (dtype=auto on a CPU with
    native bf16) does not.
    """
    server = start_server(
        tmp_path_factory,
        ["vlm", "vlm_stream", "llm"],
        env={
            "MODEL_STORE": str(model_store),
            "MODEL_PATH": "smolvlm-tiny-random",
            "MAX_NEW_TOKENS": "8",
            "MAX_HISTORY": "2",
            "VLM_STREAM_MAX_IMAGE_PIXELS": "200000",
            "VLM_STREAM_MAX_NEW_TOKENS_LIMIT": "4000",
            "VLM_STREAM_DTYPE": "float32",
        },
    )
    yield server
    server.stop()
