"""A real tritonserver for tests that compare the harness with the server.

One place starts it, so swapping the launcher touches one function: `running_server` uses
the project's `tools.local_server.LocalTritonServer` (free ports, the venv's environment,
the backend directory ./scripts/setup builds) and keeps the server log, which the contract
tests read (Logger lines) and print when the server fails to start.

In a test module:
    contract_server = server_fixture(REPOSITORY, ["model_a", "model_b"])
    def test_x(contract_server: RunningServer) -> None: ...
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tools.local_server import LocalTritonServer


@dataclass
class RunningServer:
    """A started server: its addresses, its log file, and the config it serves per model."""

    server: LocalTritonServer
    log_path: Path

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def grpc_url(self) -> str:
        return self.server.grpc_url

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, holds: Callable[[str], bool], timeout: float = 60.0) -> str:
        return wait_for_log(self.log_path, holds, timeout)

    def model_config_text(self, model: str) -> str:
        """GET /v2/models/<model>/config, as the server writes it."""
        url = f"http://{self.http_url}/v2/models/{model}/config"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode("utf-8")


def wait_for_log(log_path: Path, holds: Callable[[str], bool], timeout: float = 60.0) -> str:
    """The server log once `holds(text)` is true.

    The Python backend's stub hands Logger lines to the server through a queue that a
    server thread drains, so a line can reach the file after the response it belongs to.
    """
    deadline = time.monotonic() + timeout
    while True:
        text = log_path.read_text(encoding="utf-8", errors="replace")
        if holds(text):
            return text
        if time.monotonic() > deadline:
            pytest.fail(
                f"the server log did not show what was expected in {timeout:.0f} s:\n"
                + text[-4000:]
            )
        time.sleep(0.1)


@contextmanager
def running_server(repository: Path, models: list[str], log_dir: Path) -> Iterator[RunningServer]:
    """tritonserver serving `models` from `repository` until the block ends."""
    log_path = log_dir / "tritonserver.log"
    server = LocalTritonServer(model_repository=repository, models=models, log_path=log_path)
    try:
        server.__enter__()
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        tail = (
            log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
            if log_path.exists()
            else ""
        )
        pytest.fail(
            f"tritonserver did not start ({exc}); ./scripts/setup builds what it needs\n{tail}"
        )
    try:
        yield RunningServer(server, log_path)
    finally:
        server.stop()


def server_fixture(
    repository: Path, models: list[str], scope: str = "module"
) -> Callable[..., Any]:
    """A pytest fixture running one server for `models` (module-scoped by default)."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
        with running_server(repository, models, tmp_path_factory.mktemp("tritonserver")) as s:
            yield s

    return _server
