"""The commands of scripts/loadtest.

  run           perf_analyzer against a running server (any URL), one model or all
  batching      the same model with dynamic batching on and off, side by side
  quantization  memory footprint and throughput per quantization
  overhead      Triton-served throughput against the model's in-process ceiling
  baseline      Triton against a per-request FastAPI + transformers server, same load
  peers         Triton against llama.cpp's llama-server on the same weights, same load
  numerics      the model in-process per quantization:dtype: speed, identical answers, WER

`run` needs a server, and is what runs when no command is named (scripts/loadtest -m stt);
the others start local tritonservers (scripts/serve's environment) on temporary copies of the
model repository, one setup at a time, so each gets the machine alone. COMMAND --help lists
each command's options.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import report
from .content import ContentOptions, Sample, generator_for
from .inputs import is_decoupled, write_data
from .machine import load_average, machine
from .perf import PerfSettings, shared_memory_problem, sweep
from .server import Endpoint, NotReady, check_ready, connect, model_config, ready_models

ROOT = Path(__file__).resolve().parents[2]
STARTED = time.monotonic()
COMMANDS = ("run", "batching", "quantization", "overhead", "baseline", "peers", "numerics")


def progress(message: str) -> None:
    """One line on stderr with the time since start: a long run must not look like a hang."""
    print(f"[loadtest {time.monotonic() - STARTED:6.0f}s] {message}", file=sys.stderr, flush=True)


def int_list(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,2,4: {text!r}")
    return values


def str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def host_port(text: str) -> str:
    """perf_analyzer's -u takes host:port; accept a URL with a scheme too."""
    return text.split("://", 1)[-1].rstrip("/")


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """What every command shares: the models, the content, the sweep and the output."""
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="perf_analyzer against a running server")
    add_load_options(run)
    run.add_argument(
        "--url",
        metavar="HOST",
        help="the server's host: gRPC on HOST:8001, HTTP on HOST:8000",
    )
    run.add_argument(
        "--grpc-url",
        type=host_port,
        default=os.environ.get("TRITON_GRPC_URL", "localhost:8001"),
        help="host:port (default $TRITON_GRPC_URL or localhost:8001)",
    )
    run.add_argument(
        "--http-url",
        type=host_port,
        default=os.environ.get("TRITON_HTTP_URL", "localhost:8000"),
        help="host:port (default $TRITON_HTTP_URL or localhost:8000)",
    )
    run.add_argument(
        "--protocol", choices=["grpc", "http", "both"], default="grpc", help="default grpc"
    )
    for name, text in (
        ("batching", "dynamic batching on vs. off (local servers)"),
        ("quantization", "footprint and throughput per quantization (local servers)"),
        ("overhead", "served vs. in-process ceiling (local server + the model in-process)"),
        ("baseline", "Triton vs. a per-request FastAPI + transformers server (local servers)"),
        ("peers", "Triton vs. llama.cpp's llama-server on the same weights (local servers)"),
        ("numerics", "the model in-process per quantization:dtype: speed, answers, WER"),
    ):
        sub = commands.add_parser(name, help=text)
        add_load_options(sub)
        add_local_options(sub)
    from . import benchmarks, peers

    benchmarks.add_arguments(commands.choices)
    peers.add_arguments(commands.choices["peers"])
    args = parser.parse_args(argv)
    if args.command == "run" and args.url:
        host = host_port(args.url).split(":")[0]
        args.grpc_url, args.http_url = f"{host}:8001", f"{host}:8000"
    return args


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


def new_results(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    settings = settings_from(args)
    measurement = (
        f"a fixed request count per level (max({settings.requests}, {settings.rounds} x "
        "concurrency))"
        if settings.requests
        else f"perf_analyzer's stability windows ({settings.measurement_interval_ms} ms, "
        f"{settings.stability_percentage}%, up to {settings.max_trials} trials)"
    )
    return {
        "command": " ".join(["scripts/loadtest", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_average": {"start": load_average()},
        "settings": {
            "measurement": measurement,
            "concurrency": args.concurrency,
            "shared_memory": args.shared_memory,
            "content": content_options(args).__dict__,
            "warmup": args.warmup,
        },
        "models": {},
        "notes": [],
    }


def config_summary(config: Any) -> dict[str, Any]:
    return {
        "max_batch_size": config.max_batch_size,
        "dynamic_batching": config.HasField("dynamic_batching"),
        "decoupled": is_decoupled(config),
        "instances": sum(max(1, g.count) for g in config.instance_group) or 1,
    }


def prepare_model(
    config: Any, options: ContentOptions, work: Path
) -> tuple[dict[str, Any], Path, list[Sample]]:
    """The model's results entry (config, content), its perf_analyzer data file (written to
    `work`/<model>-data.json) and the samples it holds."""
    generator = generator_for(config)
    progress(f"{config.name}: making {options.samples} samples of {generator.describe}")
    samples = generator.make(config, options)
    data_file = write_data(config, samples, work / f"{config.name}-data.json")
    entry = {
        "config": config_summary(config),
        "content": {
            "generator": generator.name,
            "unit": generator.unit,
            "describe": generator.describe,
            "samples": [s.note for s in samples],
        },
        "series": {},
        "skipped": {},
        "ratios": {},
        "notes": [],
    }
    return entry, data_file, samples


def finish(results: dict[str, Any], out: Path, title: str) -> None:
    results["load_average"]["end"] = load_average()
    results["runtime_s"] = time.monotonic() - STARTED
    report.write(results, out, title)
    progress(f"results: {out}/summary.md (results.json, results.csv, one PNG per model)")


def default_out(command: str) -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return ROOT / "bench-results" / f"{command}-{stamp}"


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    """perf_analyzer against a running server: every chosen model over every chosen protocol."""
    protocols = ["grpc", "http"] if args.protocol == "both" else [args.protocol]
    endpoints = [Endpoint(p, args.grpc_url if p == "grpc" else args.http_url) for p in protocols]
    clients = {e.protocol: connect(e) for e in endpoints}
    try:
        first = endpoints[0]
        check_ready(clients[first.protocol], first, [])
        models = args.models or ready_models(clients[first.protocol])
        if not models:
            raise NotReady(f"no model is ready on {first}")
        for endpoint in endpoints:
            check_ready(clients[endpoint.protocol], endpoint, models)
        configs = {m: model_config(clients[first.protocol], m) for m in models}
    finally:
        for client in clients.values():
            client.close()
    results = new_results(args, argv)
    results["endpoints"] = [str(e) for e in endpoints]
    settings = settings_from(args)
    options = content_options(args)
    out = args.out or default_out("run")
    with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp:
        work = Path(tmp)
        for model in models:
            config = configs[model]
            entry, data_file, _ = prepare_model(config, options, work)
            results["models"][model] = entry
            decoupled = is_decoupled(config)
            for endpoint in endpoints:
                problem = shared_memory_problem(config, settings)
                if decoupled and endpoint.protocol != "grpc":
                    problem = "a decoupled (streaming) model answers over gRPC streams only"
                if problem:
                    entry["skipped"][endpoint.protocol] = problem
                    progress(f"{model}: {endpoint.protocol} skipped: {problem}")
                    continue
                levels = sweep(
                    model,
                    endpoint,
                    data_file,
                    args.concurrency,
                    settings,
                    work,
                    streaming=decoupled,
                    progress=progress,
                    warmup=args.warmup,
                )
                entry["series"][endpoint.protocol] = {"levels": levels}
    finish(results, out, "Load test")
    if not any(entry["series"] for entry in results["models"].values()):
        reasons = {m: e["skipped"] for m, e in results["models"].items()}
        raise RuntimeError(f"nothing was measured: {reasons}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["run", *argv]
    args = parse_args(argv)
    from . import benchmarks, peers

    handlers = {"run": cmd_run, **benchmarks.COMMANDS, "peers": peers.cmd_peers}
    try:
        return handlers[args.command](args, argv)
    except NotReady as exc:
        print(f"loadtest: not ready: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, LookupError) as exc:
        print(f"loadtest: error: {exc}", file=sys.stderr)
        return 1
