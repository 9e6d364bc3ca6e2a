"""The options every command shares, and what is read from them: perf_analyzer settings,
content options, the servers' environment. The bottom of the commands: imports no command.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .content import ContentOptions
from .local import parse_env
from .perf import PerfSettings

ROOT = Path(__file__).resolve().parents[2]


def int_list(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,2,4: {text!r}")
    return values


def float_list(text: str) -> list[float]:
    values = [float(x) for x in text.split(",") if x.strip()]
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers like 0.5,1,2: {text!r}")
    return values


def str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def host_port(text: str) -> str:
    """perf_analyzer's -u takes host:port; accept a URL with a scheme too."""
    return text.split("://", 1)[-1].rstrip("/")


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """What every load-test command shares: the models, the content, the sweep and the output."""
    parser.add_argument(
        "-m",
        "--models",
        type=str_list,
        default=None,
        help="comma-separated model names (run: default every ready model)",
    )
    parser.add_argument(
        "--concurrency", type=int_list, default=[1, 2, 4, 8, 16], help="levels (default 1,2,4,8,16)"
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=16,
        help="requests per level: at least this many and --rounds x concurrency; "
        "0 uses perf_analyzer's stability windows instead (--measurement-interval)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="see --requests (default 3)")
    parser.add_argument(
        "--measurement-interval", type=int, default=5000, metavar="MS", help="with --requests 0"
    )
    parser.add_argument(
        "--stability-percentage", type=float, default=10.0, help="with --requests 0"
    )
    parser.add_argument("--max-trials", type=int, default=10, help="with --requests 0")
    parser.add_argument(
        "--warmup", type=int, default=2, help="requests sent before measuring (default 2)"
    )
    parser.add_argument(
        "--samples", type=int, default=8, help="distinct inputs per model (clips, prompts, ...)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=32, help="generation length for text models"
    )
    parser.add_argument("--image-size", type=int, default=384, help="drawn images, pixels")
    parser.add_argument("--images-per-prompt", type=int, default=1, help="images per VLM prompt")
    parser.add_argument(
        "--shared-memory",
        choices=["none", "system", "cuda"],
        default="none",
        help="pass tensors through shared memory (server on this machine only; saves copying "
        "large audio and images through the socket)",
    )
    parser.add_argument(
        "--output-shared-memory-size",
        type=int,
        default=4 << 20,
        metavar="BYTES",
        help="shared memory per output with --shared-memory (default 4 MiB)",
    )
    parser.add_argument(
        "--level-timeout", type=float, default=1800.0, metavar="S", help="per level (s)"
    )
    parser.add_argument(
        "--perf-analyzer",
        default=str(ROOT / "scripts" / "perf_analyzer"),
        help="the perf_analyzer to run (default scripts/perf_analyzer)",
    )
    parser.add_argument(
        "--perf-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra perf_analyzer argument (repeatable), e.g. --perf-arg=--max-threads=32",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default bench-results/<command>-<UTC time>)",
    )


def add_local_options(parser: argparse.ArgumentParser) -> None:
    """The commands that start their own servers."""
    parser.add_argument(
        "--repository",
        type=Path,
        default=ROOT / "model_repository",
        help="model repository to copy the models from (default model_repository)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for the servers, e.g. STT_MODEL_PATH=whisper-tiny.en (repeatable)",
    )


def settings_from(args: argparse.Namespace) -> PerfSettings:
    return PerfSettings(
        requests=args.requests,
        rounds=args.rounds,
        measurement_interval_ms=args.measurement_interval,
        stability_percentage=args.stability_percentage,
        max_trials=args.max_trials,
        shared_memory=args.shared_memory,
        output_shared_memory_size=args.output_shared_memory_size,
        timeout_s=args.level_timeout,
        binary=args.perf_analyzer,
        extra_args=list(args.perf_arg),
    )


def content_options(args: argparse.Namespace) -> ContentOptions:
    return ContentOptions(
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        image_size=args.image_size,
        images_per_prompt=args.images_per_prompt,
    )


def models(args: argparse.Namespace) -> list[str]:
    """The models a benchmark command was given (`run` defaults to every ready one instead)."""
    if not args.models:
        raise ValueError(f"{args.command}: name the model(s) with -m")
    return list(args.models)


def server_env(args: argparse.Namespace) -> dict[str, str]:
    """The local servers' environment: the model store, then every --env."""
    store = os.environ.get("MODEL_STORE", str(ROOT / "model_store"))
    return {"MODEL_STORE": store, **parse_env(args.env)}
