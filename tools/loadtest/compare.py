"""What the comparisons against other servers share (`baseline`, `peers`): a local HTTP
server process started and awaited, and the suite's load generator at every concurrency level
against it or against a local Triton, with the same request counts perf_analyzer would send.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import loadgen
from .local import local_server
from .machine import CpuProbe
from .options import settings_from
from .results import progress
from .server import Endpoint, connect, model_config


@contextmanager
def http_process(
    cmd: list[str], health_url: str, env: dict[str, str], log: Path, name: str
) -> Iterator[subprocess.Popen]:
    """A local server process, yielded once `health_url` answers 200; stopped on exit."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    try:
        deadline = time.monotonic() + 900
        while True:
            if process.poll() is not None:
                tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited ({process.returncode}):\n{tail}")
            try:
                with urllib.request.urlopen(health_url, timeout=2):
                    break
            except OSError:  # not listening yet, or 503 while it loads
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} was not ready in 900 s") from None
                time.sleep(0.5)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def generator_levels(
    args: argparse.Namespace,
    make_target: Callable[[int], Any],
    samples: int,
    label: str,
    stagger_s: float = 0.0,
) -> list[dict[str, Any]]:
    """The load generator at every concurrency, with the same request counts as perf_analyzer
    (`stagger_s`: the clients' starts, `loadgen.closed_loop`)."""
    settings = settings_from(args)
    if args.warmup:
        loadgen.run_level(make_target, samples, 1, args.warmup)
    return [
        _measured(
            make_target,
            samples,
            concurrency,
            settings.request_count(concurrency) or max(args.samples, 3 * concurrency),
            None,
            f"{label}: concurrency {concurrency}",
            stagger_s,
        )
        for concurrency in args.concurrency
    ]


def rate_levels(
    args: argparse.Namespace, make_target: Callable[[int], Any], samples: int, label: str
) -> list[dict[str, Any]]:
    """The load generator at every Poisson arrival rate of `--rates` (`--rate-requests` each)."""
    return [
        _measured(
            make_target, samples, 1, args.rate_requests, rate, f"{label}: Poisson at {rate:g}/s"
        )
        for rate in args.rates
    ]


def _measured(
    make_target: Callable[[int], Any],
    samples: int,
    concurrency: int,
    count: int,
    rate: float | None,
    label: str,
    stagger_s: float = 0.0,
) -> dict[str, Any]:
    """One level of the load generator, with the CPU others took meanwhile, and its progress."""
    progress(f"{label}, {count} requests")
    with CpuProbe() as probe:
        level = loadgen.run_level(
            make_target, samples, concurrency, count, rate=rate, stagger_s=stagger_s
        )
    level["interference"] = probe.record()
    progress(
        f"{label}: {level['throughput']:.2f}/s served, "
        f"p50 {level['p50_ms']:.0f} ms, p99 {level['p99_ms']:.0f} ms"
    )
    return level


def triton_generator_levels(
    args: argparse.Namespace,
    repo: Path,
    model: str,
    env: dict[str, str],
    samples: list[Any],
    log: Path,
    label: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A local Triton serving `model` from `repo`, driven by the suite's load generator (over
    --triton-protocol) at every concurrency, then at every Poisson rate of `args.rates` where
    the command has them: the Triton side of baseline and peers."""
    with local_server(repo, [model], env, log) as server:
        url = server.grpc_url if args.triton_protocol == "grpc" else server.http_url
        client = connect(Endpoint("grpc", server.grpc_url))
        try:
            served = model_config(client, model)
        finally:
            client.close()

        def target(_connections: int) -> loadgen.TritonTarget:
            return loadgen.TritonTarget(args.triton_protocol, url, served, samples)

        levels = generator_levels(args, target, len(samples), f"{model} on {label}")
        if getattr(args, "rates", None):
            poisson = rate_levels(args, target, len(samples), f"{model} on {label}")
            return levels, poisson
        return levels, []
