"""Serve the built image the way ./scripts/serve serves the work tree, for people and for tests.

`./scripts/image run` and `./scripts/image test` both start containers through this module:
  * host networking and the same ports, bound to BIND_ADDRESS (127.0.0.1), so the container
    answers where ./scripts/serve would, and several test containers can run side by side;
  * the local model store mounted read-only at /models (the image's volume);
  * the settings in this environment passed through (every `<MODEL>_<SETTING>` variable of
    the served models, the chat models' aliases, and the image's own variables).

The tests switch from local servers to containers with one variable, TRITON_IMAGE (set by
`./scripts/image test`): `tests/conftest.py` then starts `ContainerTritonServer` where it
would start `LocalTritonServer`, with the same models, settings and log file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tools.local_server import (
    ROOT,
    LocalTritonServer,
    argument_parser,
    endpoints,
    run_foreground,
    server_options,
)

#: The image's own variables (tools/container/__main__.py), passed through when set.
IMAGE_VARIABLES = ("MODELS", "TRITON_PROFILE", "TRITON_ADMIN_KEY", "EXIT_TIMEOUT")
#: The door's settings (docs/openai.md) pass through too, but for where it listens and which
#: Triton it talks to: the container decides those.
DOOR_OWN = ("OPENAI_HOST", "OPENAI_PORT", "OPENAI_TRITON_URL")
#: Where the container sees the store and a repository other than its own.
STORE_MOUNT = "/models"
REPOSITORY_MOUNT = "/repository"


def docker_answers() -> bool:
    """A docker CLI with a daemon behind it (the CLI alone cannot run anything)."""
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def container_engine() -> str:
    """The engine ./scripts/image chose (CONTAINER_ENGINE), podman if none was chosen."""
    engine = os.environ.get("CONTAINER_ENGINE") or ("docker" if docker_answers() else "podman")
    if not shutil.which(engine):
        raise RuntimeError(f"no container engine: {engine} is not installed")
    return engine


def setting_variables(repository: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of `environ` that set something in the served models or the image."""
    from backends.chat.settings import chat_params

    prefixes = tuple(
        re.sub(r"[^A-Z0-9]", "_", path.name.upper()) + "_"
        for path in repository.iterdir()
        if (path / "config.pbtxt").is_file()
    )
    aliases = {a for p in chat_params("") for a in p.env_aliases}
    return {
        name: value
        for name, value in environ.items()
        if name.startswith(prefixes)
        or name in aliases
        or name in IMAGE_VARIABLES
        or (name.startswith("OPENAI_") and name not in DOOR_OWN)
    }


@dataclass
class ContainerTritonServer(LocalTritonServer):
    """LocalTritonServer's interface (ports, readiness, log, stop), served by the image."""

    image: str = "triton-multimodal:cpu"
    engine: str = field(default_factory=container_engine)
    container_name: str = field(default_factory=lambda: f"triton-multimodal-{uuid.uuid4().hex[:8]}")
    passthrough: dict[str, str] = field(default_factory=dict)
    #: The image's OpenAI door: 0 leaves it off, as a LocalTritonServer has none.
    openai_port: int = 0

    @property
    def name(self) -> str:
        return f"container {self.container_name} ({self.image})"

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.openai_port}"

    def store(self) -> Path:
        return Path(self.env_overrides.get("MODEL_STORE") or self.model_store).resolve()

    def command(self) -> list[str]:
        env = {
            **self.passthrough,
            **{k: v for k, v in self.env_overrides.items() if k != "MODEL_STORE"},
            "BIND_ADDRESS": self.address,
            "PORT_HTTP": str(self.http_port),
            "PORT_GRPC": str(self.grpc_port),
            "PORT_METRICS": str(self.metrics_port),
            "EXIT_TIMEOUT": str(self.exit_timeout),
            "OPENAI_PORT": str(self.openai_port),
        }
        volumes = [f"{self.store()}:{STORE_MOUNT}:ro"]
        own_repository = self.model_repository.resolve() == (ROOT / "model_repository").resolve()
        if not own_repository:
            volumes.append(f"{self.model_repository.resolve()}:{REPOSITORY_MOUNT}:ro")
            env["MODEL_REPOSITORY"] = REPOSITORY_MOUNT
        if self.models is not None:
            env["MODELS"] = ",".join(self.models)
        return [
            self.engine,
            "run",
            "--rm",
            f"--name={self.container_name}",
            "--network=host",
            # The Python backend hands tensors to its stubs through /dev/shm.
            "--shm-size=1g",
            *(arg for volume in volumes for arg in ("-v", volume)),
            *(arg for key, value in sorted(env.items()) for arg in ("-e", f"{key}={value}")),
            self.image,
            "serve",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        """The engine's own environment: what the server sees goes in through `-e`."""
        return dict(os.environ)

    def is_ready(self) -> bool:
        if not super().is_ready():
            return False
        if not self.openai_port:
            return True
        try:
            with urllib.request.urlopen(f"{self.openai_url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    @property
    def grace(self) -> int:
        """`stop --time`: the door's grace, then Triton's EXIT_TIMEOUT, and a margin."""
        return self.exit_timeout + 15

    def stop(self, timeout: float = 60.0) -> None:
        """`docker stop`: SIGTERM, the server drains for EXIT_TIMEOUT, then the engine kills."""
        if self.process is None or self.process.poll() is not None:
            return
        subprocess.run(
            [self.engine, "stop", f"--time={self.grace}", self.container_name],
            capture_output=True,
            check=False,
        )
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            subprocess.run(
                [self.engine, "rm", "-f", self.container_name], capture_output=True, check=False
            )
            self.process.wait()


def main(argv: list[str] | None = None) -> int:
    """`./scripts/image run`: serve the built image in the foreground until Ctrl-C or SIGTERM."""
    parser = argument_parser(main.__doc__)
    parser.add_argument("--image", default=os.environ.get("TRITON_IMAGE", "triton-multimodal:cpu"))
    args = parser.parse_args(argv)
    server = ContainerTritonServer(
        **server_options(args),
        image=args.image,
        exit_timeout=int(os.environ.get("EXIT_TIMEOUT", 25)),
        openai_port=0 if args.no_openai else args.openai_port,
        passthrough=setting_variables(ROOT / "model_repository", os.environ),
    )
    banner = f"\n{args.image} is ready (container {server.container_name})\n" + endpoints(
        server.http_port,
        server.grpc_port,
        server.metrics_port,
        server.openai_url if server.openai_port else None,
    )
    return run_foreground([server], banner)


if __name__ == "__main__":
    sys.exit(main())
