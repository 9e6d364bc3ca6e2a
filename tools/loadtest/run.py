"""`run`: perf_analyzer against a running server (any URL), every chosen model over every
chosen protocol. What runs when no command is named (scripts/loadtest -m stt).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from .inputs import is_decoupled
from .options import add_load_options, content_options, host_port, settings_from
from .perf import shared_memory_problem, sweep
from .results import default_out, finish, new_results, prepare_model, progress
from .server import Endpoint, NotReady, check_ready, connect, model_config, ready_models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_load_options(parser)
    parser.add_argument(
        "--url",
        metavar="HOST",
        help="the server's host: gRPC on HOST:8001, HTTP on HOST:8000",
    )
    parser.add_argument(
        "--grpc-url",
        type=host_port,
        default=os.environ.get("TRITON_GRPC_URL", "localhost:8001"),
        help="host:port (default $TRITON_GRPC_URL or localhost:8001)",
    )
    parser.add_argument(
        "--http-url",
        type=host_port,
        default=os.environ.get("TRITON_HTTP_URL", "localhost:8000"),
        help="host:port (default $TRITON_HTTP_URL or localhost:8000)",
    )
    parser.add_argument(
        "--protocol", choices=["grpc", "http", "both"], default="grpc", help="default grpc"
    )


def resolve_urls(args: argparse.Namespace) -> None:
    """--url HOST stands for both endpoints on the standard ports."""
    if args.url:
        host = host_port(args.url).split(":")[0]
        args.grpc_url, args.http_url = f"{host}:8001", f"{host}:8000"


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
