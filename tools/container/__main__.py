"""The serving image's entry point: `serve` (the default), `build-store`, `healthcheck`.

tini is PID 1 and runs this. `serve` starts tritonserver and, on OPENAI_PORT (9000; 0 turns
it off), the OpenAI door (`python -m openai_api`) talking to it over gRPC, and stays as their
supervisor: `docker stop`'s SIGTERM stops the door first (it drains its own requests, which
are Triton's requests too), then tritonserver, which answers what is in flight (up to
EXIT_TIMEOUT seconds) and exits; either one ending on its own ends the other and the
container with its exit code. Meanwhile its watchdog (tools/container/watchdog.py) reloads a
model whose stub process died, which Triton itself neither notices nor repairs, and ends both
with status 75 when a model that calls others lost one (its callees may be wedged: only a new
server mends them, so the orchestrator is to restart the container). Settings come
from the environment, the same names ./scripts/serve reads (docs/deployment.md):

  PORT_HTTP, PORT_GRPC, PORT_METRICS   8000, 8001, 8002
  OPENAI_PORT                          9000 (0: no door); the door's other OPENAI_* settings
                                       pass through (docs/openai.md)
  BIND_ADDRESS                         0.0.0.0 in the image
  MODELS                               comma-separated models to load (default: all)
  TRITON_PROFILE                       production (default) or development
  TRITON_ADMIN_KEY                     production: the value of the `triton-admin-key` header
                                       that unlocks the model-control, shared-memory, logging
                                       and trace APIs (unset: they stay closed)
  EXIT_TIMEOUT                         seconds `stop` waits for requests in flight (default 25)
  WATCHDOG_INTERVAL                    seconds between the watchdog's looks (default 2; 0: off)

Any other command runs as given (`docker run IMAGE bash`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from openai_api.settings import ALL_MODELS as DOOR_MODELS
from tools.container.repository import with_engines
from tools.container.watchdog import EXIT_RESTART, RestartNeeded, Watchdog

PROFILES = ("production", "development")
#: What production hides behind the admin key: loading and unloading models, registering
#: shared-memory regions (a client that can map the server's memory must be trusted), and
#: changing the server's log and trace settings.
RESTRICTED_APIS = "model-repository,shared-memory,logging,trace"
ADMIN_HEADER = "triton-admin-key"
#: How long the door may take to finish its requests once told to stop (uvicorn gives open
#: streams 5 s, then cancels their Triton calls).
DOOR_GRACE_SECONDS = 10


def _port(env: Mapping[str, str], name: str, default: int, allow_zero: bool = False) -> int:
    value = env.get(name, "") or str(default)
    if not value.isdigit() or not (0 if allow_zero else 1) <= int(value) < 65536:
        raise SystemExit(f"{name}={value!r} is not a port number")
    return int(value)


def _local_host(env: Mapping[str, str]) -> str:
    """Where this container's own servers answer it: loopback unless bound to one address."""
    address = env.get("BIND_ADDRESS", "0.0.0.0") or "0.0.0.0"
    return "127.0.0.1" if address in ("0.0.0.0", "::") else address


def _models(env: Mapping[str, str]) -> list[str]:
    return [m.strip() for m in env.get("MODELS", "").split(",") if m.strip()]


def admin_key(env: Mapping[str, str]) -> str:
    """TRITON_ADMIN_KEY, or a random key: the restricted APIs are then closed to all but us."""
    return env.get("TRITON_ADMIN_KEY") or secrets.token_hex(16)


def server_args(env: Mapping[str, str], key: str) -> list[str]:
    """tritonserver's arguments for this environment (without the program name); `key` opens
    the restricted APIs in the production profile."""
    profile = env.get("TRITON_PROFILE", "production") or "production"
    if profile not in PROFILES:
        raise SystemExit(f"TRITON_PROFILE={profile!r} is not one of {', '.join(PROFILES)}")
    address = env.get("BIND_ADDRESS", "0.0.0.0") or "0.0.0.0"
    exit_timeout = env.get("EXIT_TIMEOUT", "25") or "25"
    if not exit_timeout.isdigit():
        raise SystemExit(f"EXIT_TIMEOUT={exit_timeout!r} is not a number of seconds")
    repository = env.get("MODEL_REPOSITORY", "/opt/triton-multimodal/model_repository")
    models = with_engines(_models(env), Path(repository), env) or ["*"]
    args = [
        f"--model-repository={repository}",
        f"--http-address={address}",
        f"--http-port={_port(env, 'PORT_HTTP', 8000)}",
        f"--grpc-address={address}",
        f"--grpc-port={_port(env, 'PORT_GRPC', 8001)}",
        f"--metrics-address={address}",
        f"--metrics-port={_port(env, 'PORT_METRICS', 8002)}",
        "--allow-metrics=true",
        # Latency quantiles (Triton 2.51 has no latency histograms): deploy/prometheus reads them.
        "--metrics-config=summary_latencies=true",
        f"--exit-timeout-secs={exit_timeout}",
        # Explicit control: the models named (and the engines the chat fronts among them call)
        # are loaded at start; later loads and unloads go through the repository API (behind
        # the admin key in production).
        "--model-control-mode=explicit",
        *(f"--load-model={m}" for m in models),
        # Ready means every model loaded is ready: what the HEALTHCHECK and a load balancer ask.
        "--strict-readiness=true",
    ]
    if profile == "production":
        restricted = f"{RESTRICTED_APIS}:{ADMIN_HEADER}={key}"
        args += [
            f"--http-restricted-api={restricted}",
            f"--grpc-restricted-protocol={restricted}",
            "--log-verbose=0",
        ]
    else:
        args += ["--log-verbose=1"]
    return args


def door_environment(env: Mapping[str, str]) -> dict[str, str] | None:
    """The door's environment, pointed at this container's Triton; None when OPENAI_PORT=0."""
    port = _port(env, "OPENAI_PORT", 9000, allow_zero=True)
    if port == 0:
        return None
    door = dict(env)
    door["OPENAI_PORT"] = str(port)
    door.setdefault("OPENAI_HOST", env.get("BIND_ADDRESS", "0.0.0.0") or "0.0.0.0")
    door.setdefault("OPENAI_TRITON_URL", f"{_local_host(env)}:{_port(env, 'PORT_GRPC', 8001)}")
    if _models(env) and "OPENAI_MODELS" not in env:
        # Of the models loaded, the ones the door serves; none of them: no door.
        served = [m for m in _models(env) if m in DOOR_MODELS]
        if not served:
            return None
        door["OPENAI_MODELS"] = ",".join(served)
    return door


def _end(process: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM, SIGKILL after `grace` seconds; the exit code as a shell reports it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    code = process.returncode
    return 128 - code if code < 0 else code


def supervise(
    triton: list[str],
    door: list[str] | None,
    door_env: dict[str, str],
    grace: int,
    watchdog: Callable[[int], Watchdog | None] = lambda _pid: None,
    interval: float = 2.0,
) -> int:
    """Run tritonserver (and the door) until a signal or until one of them ends; stop both.

    `watchdog` makes the watchdog for the server's PID; it looks every `interval` seconds on a
    thread of its own, so that a reload that takes a while never delays a stop. When it finds
    a server only a restart mends, both are stopped and the status is EXIT_RESTART."""
    stop = threading.Event()
    restart = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    def watch(guard: Watchdog) -> None:
        while not stop.wait(interval):
            # Not up yet, or busy loading: look again next time.
            with contextlib.suppress(urllib.error.URLError, OSError, KeyError, ValueError):
                try:
                    guard.check()
                except RestartNeeded as exc:
                    guard.log(str(exc))
                    restart.set()
                    stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = subprocess.Popen(triton)
    front = subprocess.Popen(door, env=door_env) if door else None
    guard = watchdog(server.pid)
    if guard is not None:
        threading.Thread(target=watch, args=(guard,), daemon=True).start()
    while not stop.wait(0.5):
        if server.poll() is not None or (front is not None and front.poll() is not None):
            break
    stopped = stop.is_set()
    stop.set()  # ends the watchdog's loop
    door_code = _end(front, DOOR_GRACE_SECONDS) if front is not None else 0
    server_code = _end(server, grace + 5)
    if restart.is_set():
        return EXIT_RESTART
    if stopped:
        return server_code
    # One of them ended by itself: the container fails with the first non-zero code.
    return server_code or door_code or 1


def healthcheck(env: Mapping[str, str]) -> int:
    """0 when /v2/health/ready answers 200 (every model loaded) and the door, when it runs,
    answers its /health (ready once its models are); else 1. Docker's HEALTHCHECK."""
    urls = [f"http://{_local_host(env)}:{_port(env, 'PORT_HTTP', 8000)}/v2/health/ready"]
    if door_environment(env) is not None:
        urls.append(f"http://{_local_host(env)}:{_port(env, 'OPENAI_PORT', 9000)}/health")
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=4) as response:
                if response.status != 200:
                    return 1
        except (urllib.error.URLError, OSError):
            return 1
    return 0


def main(argv: Sequence[str]) -> int:
    command, *rest = list(argv) or ["serve"]
    env = os.environ
    if command == "serve":
        key = admin_key(env)
        triton = ["tritonserver", *server_args(env, key), *rest]
        door_env = door_environment(env)
        interval = float(env.get("WATCHDOG_INTERVAL") or 2)
        http = f"{_local_host(env)}:{_port(env, 'PORT_HTTP', 8000)}"

        def watchdog(pid: int) -> Watchdog | None:
            return Watchdog(http, pid, headers={ADMIN_HEADER: key}) if interval > 0 else None

        return supervise(
            triton,
            None if door_env is None else [sys.executable, "-m", "openai_api"],
            door_env or {},
            int(env.get("EXIT_TIMEOUT") or 25),
            watchdog,
            interval,
        )
    if command == "build-store":
        store = env.get("MODEL_STORE", "/models")
        os.execvp(
            sys.executable,
            [sys.executable, "-m", "tools.model_store", "build", "--store", store, *rest],
        )
    if command == "healthcheck":
        return healthcheck(env)
    os.execvp(command, [command, *rest])
    return 0  # not reached: exec replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
