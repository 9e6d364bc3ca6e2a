"""`baseline`: Triton against the per-request stack users run today, a FastAPI + transformers
server (baseline_server.py, beside this file) on the same checkpoint, driven by the same load
generator with the same samples at the same concurrency levels, one server at a time.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tools.local_server import free_port

from . import loadgen
from .compare import generator_levels, http_process, triton_generator_levels
from .content import generator_for
from .inputs import is_decoupled, read_config
from .local import env_name, repository_copy
from .options import content_options, models, server_env
from .results import collecting, level_at, prepare_model, progress

BASELINE_SERVER = Path(__file__).with_name("baseline_server.py")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--triton-protocol",
        choices=["http", "grpc"],
        default="http",
        help="how the load generator reaches Triton (default http, like the baseline)",
    )
    parser.add_argument(
        "--baseline-task",
        choices=["stt", "llm", "vlm", "tts"],
        help="the baseline server's task (default: from the model's content)",
    )
    parser.add_argument(
        "--baseline-python",
        default=sys.executable,
        help="interpreter for the baseline server (default this one: fastapi, uvicorn)",
    )


def served_model_dir(model_dir: Path, env: dict[str, str]) -> Path:
    """The checkpoint directory the Triton model loads: its `model_path` setting (config
    parameter, or <MODEL>_MODEL_PATH) under the model store."""
    from shared.loading import resolve_model_dir

    config = read_config(model_dir)
    variable = env_name(config.name, "model_path")
    path = env.get(variable) or os.environ.get(variable)
    if not path:
        path = (
            config.parameters["model_path"].string_value
            if "model_path" in config.parameters
            else ""
        )
    if not path:
        raise ValueError(f"{config.name}: no model_path parameter; set {variable}")
    return resolve_model_dir(path, Path(env["MODEL_STORE"]))


@contextmanager
def baseline_server(
    python: str, task: str, model_dir: Path, env: dict[str, str], log: Path
) -> Iterator[str]:
    """baseline_server.py on a free local port; its /v1/infer URL when ready."""
    port = free_port()
    cmd = [python, str(BASELINE_SERVER), "--task", task, "--model-dir", str(model_dir)]
    cmd += ["--port", str(port)]
    with http_process(cmd, f"http://127.0.0.1:{port}/health", env, log, "the baseline server"):
        yield f"http://127.0.0.1:{port}/v1/infer"


def baseline_task(generator: str, checkpoint: Path) -> str:
    """The baseline server's task for a model: by its content, and for prompts by the
    checkpoint (a vision-language checkpoint needs its processor, even for text-only prompts)."""
    import json

    if generator == "speech":
        return "stt"
    if generator == "sentences":
        return "tts"
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    return "vlm" if "vision_config" in config else "llm"


def cmd_baseline(args: argparse.Namespace, argv: list[str]) -> int:
    """Triton (shipped config) vs. the per-request FastAPI server: same samples, same load
    generator, same concurrency levels."""
    env = server_env(args)
    with collecting(args, argv, "Triton vs. a per-request FastAPI server") as (results, work):
        for model in models(args):
            model_dir = args.repository / model
            config = read_config(model_dir)
            if is_decoupled(config):
                raise ValueError(
                    f"{model} is decoupled (streaming); compare its non-streaming sibling"
                )
            generator = generator_for(config)
            checkpoint = served_model_dir(model_dir, env)
            task = args.baseline_task or baseline_task(generator.name, checkpoint)
            entry, _, samples = prepare_model(config, content_options(args), work)
            results["models"][model] = entry
            repo = repository_copy(args.repository, [model], work / f"repo-{model}")
            triton_name = f"triton ({args.triton_protocol}, shipped config)"
            levels, _ = triton_generator_levels(
                args, repo, model, env, samples, work / f"{model}-triton.log", "triton"
            )
            entry["series"][triton_name] = {"levels": levels}
            name = "baseline (FastAPI + transformers, one request at a time)"
            progress(f"{model}: starting the baseline server ({task}, {checkpoint})")
            with baseline_server(
                args.baseline_python, task, checkpoint, env, work / f"{model}-baseline.log"
            ) as url:
                levels = generator_levels(
                    args,
                    lambda c, url=url, samples=samples: loadgen.HttpJsonTarget(url, samples, c),
                    len(samples),
                    f"{model} on the baseline",
                )
            entry["series"][name] = {
                "levels": levels,
                "about": f"tools/loadtest/baseline_server.py --task {task} on {checkpoint.name}",
            }
            top = max(args.concurrency)
            ours, theirs = (
                level_at(entry["series"][s]["levels"], top) for s in (triton_name, name)
            )
            if ours and theirs:
                entry["ratios"][f"throughput Triton / baseline at concurrency {top}"] = (
                    ours["throughput"] / theirs["throughput"]
                )
                entry["ratios"][f"p99 latency Triton / baseline at concurrency {top}"] = (
                    ours["p99_ms"] / theirs["p99_ms"]
                )
    return 0
