"""Local tritonservers for the benchmarks: repository variants, the stubs' memory, load facts.

Servers start through tools.local_server (what ./scripts/serve and the tests use), on a
temporary copy of the model repository holding only the models measured, so a benchmark never
edits model_repository/ and a variant differs from the shipped config in one field only.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from .inputs import read_config


def repository_copy(source: Path, models: list[str], dest: Path, *, batching: bool = True) -> Path:
    """A repository with `models` (and the engines the fronts among them call) copied from
    `source`; with `batching=False` their configs
    lose `dynamic_batching` (rewritten through Triton's protobuf schema, nothing else changes),
    so Triton's default scheduler hands the model one request per execute()."""
    from tools.container.repository import with_engines

    dest.mkdir(parents=True, exist_ok=True)
    for model in with_engines(models, source, os.environ):
        src = source / model
        if not (src / "config.pbtxt").is_file():
            raise LookupError(f"model {model!r} has no config.pbtxt under {source}")
        shutil.copytree(src, dest / model, ignore=shutil.ignore_patterns("__pycache__"))
        if not batching:
            config = read_config(dest / model)
            config.ClearField("dynamic_batching")
            (dest / model / "config.pbtxt").write_text(
                text_format.MessageToString(config), encoding="utf-8"
            )
    return dest


@contextmanager
def local_server(
    repository: Path, models: list[str], env: dict[str, str], log: Path
) -> Iterator[Any]:
    """A ready tritonserver on `repository` with `models` loaded; its log tail on failure."""
    from tools.local_server import LocalTritonServer

    server = LocalTritonServer(
        model_repository=repository, models=models, env_overrides=env, log_path=log
    )
    try:
        server.__enter__()
    except (RuntimeError, TimeoutError) as exc:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(f"tritonserver did not start: {exc}\n{tail}") from exc
    try:
        yield server
    finally:
        server.stop()


def stub_pid(server: Any, model: str) -> int | None:
    """The Python backend stub process that holds `model` (its command line names the model's
    directory), or None."""
    import psutil

    assert server.process is not None
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if "triton_python_backend_stub" in child.name() and any(
                f"/{model}/" in arg or arg.endswith(f"/{model}") for arg in child.cmdline()
            ):
                return child.pid
        except psutil.Error:
            continue
    return None


def load_facts(log: Path, model: str) -> dict[str, Any]:
    """The model's load log line (`<model>: loaded [<dir>: ]... footprint=X MiB load=Y s`,
    what every model here logs from its engine's describe()): footprint and load time."""
    text = log.read_text(encoding="utf-8", errors="replace")
    match = re.search(
        rf"{re.escape(model)}: loaded (?:\S+: )?(.*?footprint=([\d.]+) MiB load=([\d.]+) s)",
        text,
    )
    if not match:
        return {}
    return {
        "describe": match.group(1),
        "footprint_mib": float(match.group(2)),
        "load_s": float(match.group(3)),
    }


def env_name(model: str, setting: str) -> str:
    """The environment variable that overrides a model's config parameter (shared.params);
    a front's engine settings are those of the engine model it answers through (`llm`'s
    dtype is VLM_STREAM_DTYPE)."""
    from shared.params import Param
    from tools.container.repository import engine_model

    if setting != "engine_model":
        model = (
            engine_model(model, Path(__file__).resolve().parents[2] / "model_repository") or model
        )
    return Param(setting, "").env_names(model)[0]


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--env takes NAME=VALUE, got {pair!r}")
        env[name] = value
    return env
