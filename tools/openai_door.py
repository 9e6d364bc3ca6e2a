"""Run the OpenAI-compatible door (`python -m openai_api`) as a process beside a tritonserver.

`./scripts/serve` (tools.local_server) and the door's tests start it through this module, the
way LocalTritonServer starts Triton: its own process group, settings through its environment,
readiness from its /health (which answers 200 only once Triton and the door's models are).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tools.local_server import ROOT, ServerProcess


@dataclass
class OpenAIDoor(ServerProcess):
    """A door process talking to the Triton gRPC endpoint `triton_url`."""

    name = "the OpenAI door"

    triton_url: str
    port: int
    address: str = "127.0.0.1"
    models: list[str] | None = None  # None: the door's default (every model)
    env_overrides: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.address in ("0.0.0.0", "::") else self.address
        return f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "openai_api"]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The work tree first, so that `-m openai_api` finds this checkout's package.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env.update(
            OPENAI_HOST=self.address, OPENAI_PORT=str(self.port), OPENAI_TRITON_URL=self.triton_url
        )
        if self.models is not None:
            env["OPENAI_MODELS"] = ",".join(self.models)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.env_overrides)
        return env

    def is_ready(self) -> bool:
        """/health answers 200 only once Triton and the door's models are ready."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False
