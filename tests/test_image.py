"""The image's recipe and entry point, checked without building it (no engine needed).

The gpu target cannot be built here (its NGC base needs a registry): its recipe stays honest by
sharing every step with the cpu target, which is built and tested as deployed
(tests/test_image_container.py). What is checked here: the two targets differ only in their
platform stage and the torch index; the build context holds what the recipe copies and what
the installed package needs; and the entry point (`python -m tools.container`) builds
tritonserver's arguments per profile, runs the door beside it, forwards `docker stop`'s
SIGTERM in the right order and reports health, run for real with stand-in servers.
"""

from __future__ import annotations

import ast
import fnmatch
import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.conftest import ROOT
from tools.container.__main__ import (
    ADMIN_HEADER,
    RESTRICTED_APIS,
    admin_key,
    door_environment,
    healthcheck,
    server_args,
)
from tools.container.watchdog import EXIT_RESTART
from tools.local_server import free_port

RECIPE = (ROOT / "Dockerfile.triton").read_text(encoding="utf-8")
#: The directories the recipe copies and installs as the package.
PACKAGED = ("shared", "backends", "serving", "openai_api", "tools/model_store", "tools/container")


def stages() -> dict[str, tuple[str, list[str]]]:
    """Each stage's name -> (its FROM, its instructions with continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", RECIPE)
    found: dict[str, tuple[str, list[str]]] = {}
    current: list[str] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line):
            current = []
            found[match.group(2)] = (match.group(1), current)
        elif found:
            current.append(line)
    return found


def test_two_platforms_and_one_shared_image_stage() -> None:
    found = stages()
    assert list(found) == ["cpu-platform", "gpu-platform", "image"]
    assert found["cpu-platform"][0] == "${CPU_BASE}"
    assert found["gpu-platform"][0] == "${GPU_BASE}"
    assert found["image"][0] == "${TARGET}-platform"
    assert re.search(r"^ARG GPU_BASE=nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3$", RECIPE, re.M)
    assert re.search(r"^ARG CPU_BASE=docker\.io/library/debian:bookworm-slim$", RECIPE, re.M)


def test_the_shared_stage_differs_by_target_only_in_the_torch_index() -> None:
    """Every line of the image stage that looks at TARGET: the torch index it installs from,
    and on the cpu target the removal of bitsandbytes' CUDA kernels (no CUDA there)."""
    _, steps = stages()["image"]
    mentions = [step for step in steps if "TARGET" in step and not step.startswith("ARG ")]
    assert len(mentions) == 1, mentions
    (step,) = mentions
    assert 'cpu) index="$CPU_TORCH_INDEX"' in step and 'gpu) index="$GPU_TORCH_INDEX"' in step
    cpu_only = re.findall(r'if \[ "\$TARGET" = cpu \]; then (.*?) fi', step)
    assert cpu_only and all("bitsandbytes" in part for part in cpu_only), cpu_only
    assert re.search(
        r"^ARG GPU_TORCH_INDEX=https://download\.pytorch\.org/whl/cu\d+$", RECIPE, re.M
    )


def test_both_platforms_bring_what_the_shared_stage_checks() -> None:
    """The shared stage asserts Python 3.11+, a backend stub and tritonserver on PATH: the cpu
    platform installs them; the gpu platform's NGC base ships them in /opt/tritonserver."""
    _, steps = stages()["image"]
    assert any("sys.version_info >= (3, 11)" in step for step in steps)
    assert any("/opt/tritonserver/backends/python/triton_python_backend_stub" in s for s in steps)
    _, cpu = stages()["cpu-platform"]
    assert any("python_backend_stubs/$py/triton_python_backend_stub" in step for step in cpu)


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last matching rule wins)."""
    verdict = False
    for rule in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or fnmatch.fnmatch(
            path, pattern.replace("**/", "*")
        ):
            verdict = not negate
    return verdict


def test_the_context_holds_what_the_recipe_copies_and_the_package_needs() -> None:
    copied = [
        source
        for step in stages()["image"][1]
        if step.startswith("COPY ") and "--from" not in step
        for source in step.split()[1:-1]
    ]
    for source in copied:
        files = (
            [source]
            if (ROOT / source).is_file()
            else [str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")]
        )
        assert files, source
        assert not [f for f in files if ignored(f)], source
    # What the server runs: the libraries the models import, the door, the store builder and
    # the entry point (the client library and the development tools stay out).
    assert {f"{package}/" for package in PACKAGED} <= set(copied)
    # What must never enter an image: the local store, the venv, tests, the load-test tools.
    for kept_out in ("model_store/x.safetensors", ".venv/bin/python", "tests/test_image.py"):
        assert ignored(kept_out), kept_out
    assert ignored("tools/loadtest/__init__.py") and ignored("tools/local_server.py")


def test_production_closes_the_admin_apis_and_development_logs_verbosely() -> None:
    production = server_args({}, "s3cret")
    restricted = f"{RESTRICTED_APIS}:{ADMIN_HEADER}=s3cret"
    assert f"--http-restricted-api={restricted}" in production
    assert f"--grpc-restricted-protocol={restricted}" in production
    assert "--strict-readiness=true" in production and "--log-verbose=0" in production
    assert "--load-model=*" in production and "--model-control-mode=explicit" in production
    # Without a key set, a fresh random key each start: the APIs are closed to all but the
    # entry point's watchdog.
    assert admin_key({"TRITON_ADMIN_KEY": "s3cret"}) == "s3cret"
    assert len({admin_key({}) for _ in range(2)}) == 2
    repository = str(ROOT / "model_repository")
    env = {"TRITON_PROFILE": "development", "MODELS": "stt, llm", "MODEL_REPOSITORY": repository}
    development = server_args(env, "k")
    assert not [a for a in development if "restricted" in a]
    assert "--log-verbose=1" in development
    # llm is a front: the chat engine it calls loads first, also when named by the variable.
    assert [a for a in development if a.startswith("--load-model")] == [
        "--load-model=stt",
        "--load-model=vlm_stream",
        "--load-model=llm",
    ]
    moved = server_args({**env, "LLM_ENGINE_MODEL": "my_engine"}, "k")
    assert [a for a in moved if a.startswith("--load-model=")][1:] == [
        "--load-model=my_engine",
        "--load-model=llm",
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRITON_PROFILE": "debug"}, "TRITON_PROFILE='debug' is not one of"),
        ({"PORT_HTTP": "80a"}, "PORT_HTTP='80a' is not a port number"),
        ({"PORT_GRPC": "70000"}, "PORT_GRPC='70000' is not a port number"),
        ({"EXIT_TIMEOUT": "soon"}, "EXIT_TIMEOUT='soon' is not a number of seconds"),
    ],
)
def test_a_bad_setting_stops_the_start_naming_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(SystemExit, match=re.escape(message)):
        server_args(env, "k")


def test_the_door_talks_to_this_containers_triton() -> None:
    assert door_environment({"OPENAI_PORT": "0"}) is None
    door = door_environment({"BIND_ADDRESS": "0.0.0.0", "PORT_GRPC": "9101", "MODELS": "stt"})
    assert door is not None
    assert door["OPENAI_PORT"] == "9000" and door["OPENAI_HOST"] == "0.0.0.0"
    assert door["OPENAI_TRITON_URL"] == "127.0.0.1:9101" and door["OPENAI_MODELS"] == "stt"
    # Models the door does not serve stay out of its list; none it serves: no door.
    door = door_environment({"MODELS": "stt,voice_chat"})
    assert door is not None and door["OPENAI_MODELS"] == "stt"
    assert door_environment({"MODELS": "voice_chat"}) is None
    bound = door_environment({"BIND_ADDRESS": "10.1.2.3", "OPENAI_API_KEYS": "k"})
    assert bound is not None
    assert bound["OPENAI_TRITON_URL"] == "10.1.2.3:8001" and bound["OPENAI_API_KEYS"] == "k"


#: A stand-in server: writes "<name> started", and on SIGTERM "<name> stopped" after `drain`
#: seconds, then exits 0; with `crash`, exits 3 by itself after a moment.
STAND_IN = textwrap.dedent(
    """
    import signal, sys, time
    name, log, drain, crash = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
    def note(what):
        with open(log, "a") as f:
            f.write(f"{name} {what} {time.monotonic()}\\n")
    def stop(*_):
        time.sleep(drain)
        note("stopped")
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    note("started")
    time.sleep(1 if crash else 60)
    sys.exit(3)
    """
)


def supervisor(log: Path, crash: str = "", restart: bool = False) -> subprocess.Popen[bytes]:
    """`python -m tools.container serve`'s supervise() with the two stand-ins; `restart`: a
    watchdog whose first look finds a server only a restart mends."""
    code = textwrap.dedent(
        f"""
        import sys
        from tools.container.__main__ import supervise
        from tools.container.watchdog import RestartNeeded
        class Guard:
            def log(self, message):
                print(message, flush=True)
            def check(self):
                raise RestartNeeded("a caller lost a stub")
        stand_in = [sys.executable, "-c", {STAND_IN!r}]
        triton = stand_in + ["triton", {str(log)!r}, "1.0", {str(crash == "triton")!r}[0] == "T" and "1" or "0"]
        door = stand_in + ["door", {str(log)!r}, "0.5", {str(crash == "door")!r}[0] == "T" and "1" or "0"]
        watchdog = (lambda pid: Guard()) if {restart!r} else (lambda pid: None)
        sys.exit(supervise(triton, door, {{}}, grace=10, watchdog=watchdog, interval=1.0))
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ})


def events(log: Path, count: int, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= count:
            return [" ".join(line.split()[:2]) for line in lines]
        time.sleep(0.05)
    raise TimeoutError(log.read_text() if log.exists() else "nothing logged")


def test_sigterm_stops_the_door_first_then_triton_and_the_status_is_trons(tmp_path: Path) -> None:
    log = tmp_path / "events"
    process = supervisor(log)
    assert sorted(events(log, 2)) == ["door started", "triton started"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    # The door drained before Triton was told to stop: Triton served its last requests.
    assert events(log, 4)[2:] == ["door stopped", "triton stopped"]


@pytest.mark.parametrize("crash", ["triton", "door"])
def test_one_ending_by_itself_ends_the_other_and_the_container_fails(
    tmp_path: Path, crash: str
) -> None:
    log = tmp_path / "events"
    process = supervisor(log, crash=crash)
    assert process.wait(timeout=30) == 3
    survivor = "door" if crash == "triton" else "triton"
    assert f"{survivor} stopped" in events(log, 3)


def test_a_server_only_a_restart_mends_ends_both_with_the_restart_status(
    tmp_path: Path,
) -> None:
    log = tmp_path / "events"
    process = supervisor(log, restart=True)
    assert process.wait(timeout=30) == EXIT_RESTART
    assert events(log, 4)[2:] == ["door stopped", "triton stopped"]


class Health(http.server.BaseHTTPRequestHandler):
    statuses: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        self.send_response(self.statuses.get(self.path, 404))
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()


def test_healthy_only_when_triton_and_the_door_are_ready(health_server: int) -> None:
    port = str(health_server)
    env = {"BIND_ADDRESS": "127.0.0.1", "PORT_HTTP": port, "OPENAI_PORT": port}
    Health.statuses = {"/v2/health/ready": 200, "/health": 200}
    assert healthcheck(env) == 0
    Health.statuses = {"/v2/health/ready": 200, "/health": 503}
    assert healthcheck(env) == 1
    assert healthcheck({**env, "OPENAI_PORT": "0"}) == 0  # no door: Triton alone decides
    Health.statuses = {"/v2/health/ready": 503}
    assert healthcheck({**env, "OPENAI_PORT": "0"}) == 1
    assert healthcheck({**env, "PORT_HTTP": str(free_port()), "OPENAI_PORT": "0"}) == 1


def test_runtime_installs_match_the_local_environment() -> None:
    steps = stages()["image"][1]
    runs = " ".join(step for step in steps if step.startswith("RUN "))
    assert "pip install --no-cache-dir -r requirements-triton.txt" in runs
    assert "pip install --no-cache-dir --no-deps ." in runs
    setup = (ROOT / "scripts" / "setup").read_text(encoding="utf-8")
    # Locally: the same requirements (via requirements-dev.txt) and the same project install.
    assert "-r requirements-triton.txt" in (ROOT / "requirements-dev.txt").read_text(
        encoding="utf-8"
    )
    assert "--no-deps -e" in setup
    env = " ".join(step for step in steps if step.startswith("ENV "))
    assert "MODEL_STORE=/models" in env


def test_requirements_are_pinned_and_numpy_below_2() -> None:
    lines = [
        ln.split("#")[0].strip()
        for ln in (ROOT / "requirements-triton.txt").read_text(encoding="utf-8").splitlines()
    ]
    pins = [ln for ln in lines if ln]
    assert pins and all("==" in ln for ln in pins), pins
    numpy = next(ln for ln in pins if ln.startswith("numpy"))
    assert numpy.split("==")[1].startswith("1.")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.fixture(scope="module")
def wheel_members(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The files `pip install .` puts into site-packages in the image."""
    work = tmp_path_factory.mktemp("wheel")
    source, out = work / "src", work / "dist"
    # Build from a copy with what the Dockerfile copies, so nothing else can sneak in and the
    # checkout gets no build/ or *.egg-info.
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in PACKAGED:
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "tools" / "__init__.py", source / "tools" / "__init__.py")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_holds_every_library_module(wheel_members: set[str]) -> None:
    for package in PACKAGED:
        for module in (ROOT / package).rglob("*.py"):
            assert module.relative_to(ROOT).as_posix() in wheel_members
    assert not any(m.startswith("tests/") for m in wheel_members)
    # Of the tooling, the image carries only the model-store builder and its entry point.
    assert not any(m.startswith(("tools/loadtest/", "tools/local_server")) for m in wheel_members)


def test_model_files_import_only_what_the_image_has(wheel_members: set[str]) -> None:
    allowed_third_party = {"triton_python_backend_utils", "numpy"}
    for model in (ROOT / "model_repository").glob("*/1/model.py"):
        for name in imported_modules(model):
            top = name.split(".")[0]
            if top in ("shared", "backends", "serving"):
                assert f"{name.replace('.', '/')}.py" in wheel_members or (
                    f"{name.replace('.', '/')}/__init__.py" in wheel_members
                ), f"{model}: {name} is not in the installed package"
            else:
                assert top in sys.stdlib_module_names or top in allowed_third_party, (
                    f"{model} imports {name}, which the image does not provide"
                )


def test_local_server_imports_the_libraries_from_site_packages() -> None:
    """./scripts/serve's stub finds `shared` through the venv's site-packages, not the cwd."""
    probe = (
        "import shared, backends, serving\nfor m in (shared, backends, serving): print(m.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd="/", check=True, capture_output=True, text=True
    ).stdout.split()
    assert out == [str(ROOT / p / "__init__.py") for p in ("shared", "backends", "serving")]
