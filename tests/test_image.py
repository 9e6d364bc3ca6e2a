"""Dockerfile.triton ships what ./scripts/serve runs: same files, same import layout, same pins.

No Docker engine runs here, so the image is checked by what it is made of: every COPY source
exists, the project is installed as a package (the stub ignores PYTHONPATH), the wheel that
`pip install .` builds holds every module the model repository imports, and the pins hold.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile.triton").read_text(encoding="utf-8")


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    lines = [
        ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_base_image_is_pinned_to_the_local_server_version() -> None:
    args = dict(arg.split("=", 1) for op, arg in instructions() if op == "ARG" and "=" in arg)
    froms = [arg for op, arg in instructions() if op == "FROM"]
    assert froms == ["nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3"]
    # 24.10 is Triton 2.51, the server that ./scripts/serve runs from nvidia-pytriton 0.7.0.
    assert args["TRITON_VERSION"] == "24.10"
    assert "nvidia-pytriton==0.7.0" in (ROOT / "requirements-dev.txt").read_text(encoding="utf-8")


def test_every_copy_source_exists_and_the_repository_is_copied() -> None:
    copies = [arg.split() for op, arg in instructions() if op == "COPY"]
    for *sources, _dest in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} is missing"
    copied = {s.rstrip("/") for *sources, _ in copies for s in sources}
    assert {
        "requirements-triton.txt",
        "shared",
        "backends",
        "model_repository",
        "pyproject.toml",
    } <= copied


def test_runtime_installs_match_the_local_environment() -> None:
    runs = " ".join(arg for op, arg in instructions() if op == "RUN")
    assert "pip install --no-cache-dir -r requirements-triton.txt" in runs
    assert "pip install --no-cache-dir --no-deps ." in runs
    setup = (ROOT / "scripts" / "setup").read_text(encoding="utf-8")
    # Locally: the same requirements (via requirements-dev.txt) and the same project install.
    assert "-r requirements-triton.txt" in (ROOT / "requirements-dev.txt").read_text(
        encoding="utf-8"
    )
    assert "--no-deps -e" in setup
    env = " ".join(arg for op, arg in instructions() if op == "ENV")
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
    for name in ("shared", "backends", "serving", "tools/model_store"):
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
    for package in ("shared", "backends", "serving", "tools/model_store"):
        for module in (ROOT / package).rglob("*.py"):
            assert module.relative_to(ROOT).as_posix() in wheel_members
    assert not any(m.startswith("tests/") for m in wheel_members)
    # Of the tooling, the image carries only the model-store builder.
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
