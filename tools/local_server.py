"""Start a real tritonserver (from the nvidia-pytriton wheel) on this project's model repository.

`./scripts/serve` and the tests that talk to a real server both start it through this module,
so the environment the Python backend stub sees is the same in both:
  * the virtual environment is "activated" (VIRTUAL_ENV, its bin first on PATH), because the
    stub takes its site-packages from the `python3` it finds and ignores PYTHONPATH; `shared`
    and `backends` are installed there, as in the image;
  * LD_LIBRARY_PATH starts with the interpreter's own libpython directory (otherwise the stub
    binds Debian's libpython3.11 and torch fails to import) and pytriton's bundled libraries
    (libcudart, needed even without a GPU);
  * MODEL_STORE tells the models where their checkpoints are.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from tools.container.repository import with_engines

ROOT = Path(__file__).resolve().parents[1]
S = TypeVar("S", bound="ServerProcess")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pytriton_dir() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def server_environment(model_store: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its Python backend stubs need (see module docstring)."""
    env = dict(os.environ if base is None else base)
    venv = Path(sys.prefix)
    site_packages = Path(sysconfig.get_paths()["purelib"])
    libs = [
        sysconfig.get_config_var("LIBDIR") or "",
        str(site_packages / "nvidia_pytriton.libs"),
        str(site_packages / "nvidia" / "cuda_runtime" / "lib"),
    ]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["MODEL_STORE"] = str(model_store)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class ServerProcess:
    """A server run as a process of its own group: started with its log, awaited until ready,
    stopped with SIGTERM (SIGKILL after `timeout`); a context manager. Subclasses (tritonserver
    here, the OpenAI door in tools.openai_door) say what to run and how readiness is seen."""

    name = "server"
    process: subprocess.Popen[bytes] | None
    log_path: Path | None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def start(self: S) -> S:
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - owned by Popen
        self.process = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        if out:
            out.close()
        return self

    def wait_ready(self, timeout: float = 600.0) -> None:
        """Block until the server is ready; raise if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode} before it was ready"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if self.is_ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s")

    def stop(self, timeout: float = 60.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self: S) -> S:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class LocalTritonServer(ServerProcess):
    """A tritonserver process; a context manager that waits for readiness and stops it."""

    name = "tritonserver"

    model_repository: Path = ROOT / "model_repository"
    model_store: Path = field(
        default_factory=lambda: Path(os.environ.get("MODEL_STORE", ROOT / "model_store"))
    )
    backend_directory: Path = field(
        default_factory=lambda: Path(
            os.environ.get("TRITON_BACKENDS", ROOT / ".triton" / "backends")
        )
    )
    address: str = "127.0.0.1"  # what the endpoints bind to; 0.0.0.0 to serve other hosts
    exit_timeout: int = 10
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    models: list[str] | None = None  # None: every model in the repository
    extra_args: list[str] = field(default_factory=list)
    env_overrides: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        cmd = [
            str(pytriton_dir() / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.backend_directory}",
            f"--http-address={self.address}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            # Latency quantiles (Triton 2.51 has no latency histograms): deploy/prometheus reads them.
            "--metrics-config=summary_latencies=true",
            # Open client connections hold shutdown up to this long (default 30 s).
            f"--exit-timeout-secs={self.exit_timeout}",
        ]
        if self.models is not None:
            cmd.append("--model-control-mode=explicit")
            models = with_engines(self.models, self.model_repository, self.environment())
            cmd += [f"--load-model={name}" for name in models]
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        return {**server_environment(self.model_store), **self.env_overrides}

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False


def argument_parser(description: str | None) -> argparse.ArgumentParser:
    """The options `./scripts/serve` and `./scripts/image run` share (same names, same defaults)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--address", default=os.environ.get("BIND_ADDRESS", "127.0.0.1"))
    parser.add_argument("--http-port", type=int, default=int(os.environ.get("PORT_HTTP", 8000)))
    parser.add_argument("--grpc-port", type=int, default=int(os.environ.get("PORT_GRPC", 8001)))
    parser.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("PORT_METRICS", 8002))
    )
    parser.add_argument("--model", action="append", dest="models", help="serve only these models")
    parser.add_argument(
        "--openai-port",
        type=int,
        default=int(os.environ.get("OPENAI_PORT") or 9000),
        help="the OpenAI-compatible door's port (OPENAI_PORT, 9000); 0 turns it off",
    )
    parser.add_argument(
        "--no-openai", action="store_true", help="serve Triton alone, without the OpenAI door"
    )
    parser.add_argument("extra", nargs="*", help="further tritonserver arguments (after --)")
    return parser


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """LocalTritonServer's fields from `argument_parser`'s options."""
    return {
        "address": args.address,
        "http_port": args.http_port,
        "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port,
        "models": args.models,
        "extra_args": args.extra,
    }


def run_foreground(processes: list[ServerProcess], banner: str) -> int:
    """Start `processes` in order, each once the one before is ready, print `banner`, and
    serve until Ctrl-C, SIGTERM or one of them exits (a crash of one ends all); stop them in
    reverse order (the door before the Triton it holds streams open to)."""

    def forward(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, forward)
    started: list[ServerProcess] = []
    try:
        for server in processes:
            started.append(server.start())
            server.wait_ready()
        print(banner, flush=True)
        running = [p.process for p in started if p.process is not None]
        while all(p.poll() is None for p in running):
            time.sleep(0.5)
        return next(p.returncode for p in running if p.returncode is not None)
    except KeyboardInterrupt:
        print("\nstopping " + " and ".join(p.name for p in processes), flush=True)
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for server in reversed(started):
            server.stop()


def endpoints(http_port: int, grpc_port: int, metrics_port: int, openai_url: str | None) -> str:
    return (
        f"  HTTP:    http://localhost:{http_port}   (curl localhost:{http_port}/v2/health/ready)\n"
        f"  gRPC:    localhost:{grpc_port}\n"
        f"  metrics: http://localhost:{metrics_port}/metrics\n"
        + (f"  OpenAI:  {openai_url}/v1   (docs/openai.md)\n" if openai_url else "")
        + "Ctrl-C stops it."
    )


def main(argv: list[str] | None = None) -> int:
    """`./scripts/serve`: run the server in the foreground until Ctrl-C or SIGTERM."""
    args = argument_parser(main.__doc__).parse_args(argv)
    server = LocalTritonServer(**server_options(args))
    from tools.openai_door import OpenAIDoor  # here: that module builds on this one

    processes: list[ServerProcess] = [server]
    door = None
    if args.openai_port and not args.no_openai:
        door = OpenAIDoor(
            triton_url=server.grpc_url,
            port=args.openai_port,
            address=args.address,
            models=args.models,
        )
        processes.append(door)
    banner = "\ntritonserver is ready\n" + endpoints(
        server.http_port, server.grpc_port, server.metrics_port, door.url if door else None
    )
    return run_foreground(processes, banner)


if __name__ == "__main__":
    sys.exit(main())
