"""Honest health: a model whose backend stub process died is taken down and loaded again.

Triton 2.51 neither restarts a Python backend stub that dies (killed by the OOM killer, a
crash in a native library) nor reports it: the model stays READY while every request routed to
the dead instance fails with "Stub process '<instance>' is not healthy". The watchdog looks at
what Triton does not: each stub is a process whose arguments name its model directory, its
instance and its server's PID, so a dead one is seen from /proc. When a READY model has fewer
live stubs than its config's instances, the watchdog unloads it (it stops being ready at once:
the model's ready endpoint, and the server's under --strict-readiness, say so to a load
balancer) and loads it again through the repository API, which starts fresh stubs.

One case a reload cannot mend: a model that calls other models over BLS (a setting ending in
`_model` names them, as the chat fronts' `engine_model` and voice_chat's stages). 2.51 hands
a decoupled callee's response to its caller's stub and waits for the stub's acknowledgement
with no timeout (python_backend r24.10, `SendBLSDecoupledResponse`): with the caller's stub
dead, the callee's sends never return, its running batch stops, and it cannot be unloaded
either (the unload waits for the same threads). The second 60-minute soak saw the chat engine
stop answering after a front's stub died. So when such a caller loses a stub while its
callees are loaded, the watchdog raises `RestartNeeded`, and the entry point ends the server
with EXIT_RESTART for the orchestrator to start it again (Kubernetes restarts the container;
compose's `restart: unless-stopped` too).

The image's entry point runs it beside tritonserver (WATCHDOG_INTERVAL seconds between looks,
2 by default, 0 turns it off); in the production profile it carries the admin key that the
repository API requires.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.params import Param

STUB = "triton_python_backend_stub"
#: The entry point's exit status when the server must be started again (EX_TEMPFAIL).
EXIT_RESTART = 75


class RestartNeeded(Exception):
    """A model that calls others lost a stub: only a new server unwedges its callees."""


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str
    instance: str


def stubs(server_pid: int, proc: Path = Path("/proc")) -> list[Stub]:
    """The live stub processes of the tritonserver with `server_pid`.

    A stub's arguments (python_backend's stub_launcher): the model's model.py, its shared
    memory region, two sizes, the server's PID, the backend directory, an IPC handle, the
    instance name, the runtime modality.
    """
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        if (
            len(argv) < 9
            or not argv[0].endswith(STUB.encode())
            or argv[5] != str(server_pid).encode()
        ):
            continue
        if status.rsplit(")", 1)[-1].split()[0] == "Z":  # dead, not yet reaped
            continue
        model = Path(argv[1].decode()).parent.parent.name
        found.append(Stub(int(entry.name), model, argv[8].decode()))
    return found


@dataclass
class Watchdog:
    """Checks one tritonserver's models against its live stubs; reloads the ones missing some."""

    http_url: str  # host:port of Triton's HTTP endpoint
    server_pid: int
    headers: dict[str, str] = field(default_factory=dict)  # the admin key, in production
    log: Callable[[str], None] = print
    #: The server's environment: a callee named by `<MODEL>_<PARAM>` there is the one called.
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    _configs: dict[str, Any] = field(default_factory=dict)

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://{self.http_url}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **self.headers},
            method="GET" if body is None else "POST",
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            text = response.read()
        return json.loads(text) if text else None

    def ready_models(self) -> list[str]:
        index = self._call("/v2/repository/index", {"ready": True})
        return sorted({m["name"] for m in index if m.get("state") == "READY"})

    def _config(self, model: str) -> Any:
        if model not in self._configs:
            self._configs[model] = self._call(f"/v2/models/{model}/config")
        return self._configs[model]

    def instances(self, model: str) -> int:
        """How many stubs `model` runs: the sum of its instance groups' counts."""
        return sum(g.get("count", 1) for g in self._config(model)["instance_group"])

    def callees(self, model: str) -> set[str]:
        """The models `model` calls over BLS: its settings ending in `_model`, each read as the
        model reads it (the environment variable first, then the config's value)."""
        parameters = self._config(model).get("parameters", {})
        found = set()
        for key, value in parameters.items():
            if not key.endswith("_model"):
                continue
            names = Param(key, "").env_names(model)
            chosen = next((self.environ[n] for n in names if self.environ.get(n)), None)
            if chosen or value.get("string_value"):
                found.add(chosen or value["string_value"])
        return found

    def check(self) -> list[str]:
        """One look; the models it reloaded. Raises RestartNeeded (see the module docstring)."""
        live = Counter(stub.model for stub in stubs(self.server_pid))
        ready = self.ready_models()
        broken = [m for m in ready if live[m] < self.instances(m)]
        for model in broken:
            stuck = sorted(self.callees(model) & set(ready))
            if stuck:
                raise RestartNeeded(
                    f"watchdog: {model} has {live[model]} of {self.instances(model)} stub "
                    f"processes alive, and it calls {', '.join(stuck)}: tritonserver 2.51 can "
                    "leave those waiting for the dead stub for good, and cannot unload them; "
                    f"ending the server (exit status {EXIT_RESTART}) for it to be restarted"
                )
        for model in broken:
            self.recover(model, live[model])
        return broken

    def recover(self, model: str, alive: int) -> None:
        started = time.monotonic()
        self.log(
            f"watchdog: {model} has {alive} of {self.instances(model)} stub processes alive; "
            "unloading it (not ready) and loading it again"
        )
        self._call(f"/v2/repository/models/{model}/unload", {})
        self._configs.pop(model, None)
        self._call(f"/v2/repository/models/{model}/load", {})
        self.log(f"watchdog: {model} is serving again ({time.monotonic() - started:.1f} s)")
