"""perf_analyzer, one run per concurrency level, and what it writes: CSV, stdout, export.

One run per level (not one `--concurrency-range` run) so that a long sweep shows progress per
level, a failing level names itself, and each level's per-request timestamps (the profile
export) are its own. Two ways to end a level:
  * a fixed request count (`--request-count`, the default here): predictable on a slow CPU,
    where perf_analyzer's stability search would take minutes per level or give up when a
    neighbour disturbs the machine;
  * perf_analyzer's own stability windows (`--measurement-interval`), for a quiet machine.
Throughput and percentiles come from the export's timestamps (stats.summarize); perf_analyzer's
own figures are kept beside them.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .server import Endpoint, connect, executions_between, statistics
from .stats import Timing, summarize

ROOT = Path(__file__).resolve().parents[2]
#: scripts/perf_analyzer: the binary of tritonclient 2.50's wheel with the libraries it needs.
PERF_ANALYZER = ROOT / "scripts" / "perf_analyzer"
US_PER_MS = 1000.0
#: Open-loop arrivals; enough sender threads that a slow server does not throttle them.
POISSON = ("--request-distribution", "poisson", "--max-threads", "64")


@dataclass
class PerfSettings:
    """How each level is measured; see the module docstring for the two modes."""

    requests: int = 0  # fixed count per level: max(requests, rounds x concurrency); 0: windows
    rounds: int = 3
    measurement_interval_ms: int = 5000
    stability_percentage: float = 10.0
    max_trials: int = 10
    shared_memory: str = "none"  # perf_analyzer --shared-memory: none | system | cuda
    output_shared_memory_size: int = 4 << 20  # bytes per output (audio, text) when shm is on
    timeout_s: float = 1800.0
    binary: str = str(PERF_ANALYZER)
    extra_args: list[str] = field(default_factory=list)
    #: Open-loop load: a level is a rate (requests/s) of Poisson arrivals, not a concurrency.
    poisson: bool = False

    def request_count(self, concurrency: int) -> int:
        return max(self.requests, self.rounds * concurrency) if self.requests else 0


def command(
    model: str,
    endpoint: Endpoint,
    data_file: Path,
    concurrency: float,
    settings: PerfSettings,
    csv_file: Path,
    export_file: Path,
    *,
    streaming: bool,
) -> list[str]:
    """The perf_analyzer command line for one level."""
    cmd = [
        settings.binary,
        *("-m", model, "-u", endpoint.url, "-i", endpoint.protocol),
        *("--input-data", str(data_file)),
        *(
            ("--request-rate-range", f"{concurrency}:{concurrency}", *POISSON)
            if settings.poisson
            else ("--concurrency-range", f"{concurrency}:{concurrency}")
        ),
        *("-f", str(csv_file), "--verbose-csv"),
        *("--profile-export-file", str(export_file)),
    ]
    count = settings.request_count(concurrency)
    if count:
        cmd += ["--request-count", str(count)]
    else:
        cmd += [
            *("--measurement-interval", str(settings.measurement_interval_ms)),
            *("--stability-percentage", str(settings.stability_percentage)),
            *("--max-trials", str(settings.max_trials)),
        ]
    if streaming:
        cmd.append("--streaming")
    if settings.shared_memory != "none":
        cmd += ["--shared-memory", settings.shared_memory]
        cmd += ["--output-shared-memory-size", str(settings.output_shared_memory_size)]
    return cmd + settings.extra_args


def shared_memory_problem(config: Any, settings: PerfSettings) -> str | None:
    """Why perf_analyzer cannot use shared memory for this model, or None. perf_analyzer 2.50
    refuses it for any model whose config declares an optional input ("Shared memory support
    in Perf Analyzer does not support optional inputs at this time"), whatever the data sends."""
    if settings.shared_memory == "none":
        return None
    optional = [t.name for t in config.input if t.optional]
    if optional:
        return (
            f"perf_analyzer does not support shared memory for models with optional inputs "
            f"({config.name} has {', '.join(optional)}); run it without --shared-memory"
        )
    return None


def parse_csv(path: Path) -> list[dict[str, float]]:
    """perf_analyzer's -f report: one row per concurrency; latencies in microseconds."""
    with open(path, encoding="utf-8") as handle:
        return [
            {
                key.strip(): float(value)
                for key, value in row.items()
                if key and value not in ("", None)
            }
            for row in csv.DictReader(handle)
        ]


_BLOCK = re.compile(r"^Request concurrency: (\d+)", re.MULTILINE)
_FIELDS = {
    "throughput": re.compile(r"^\s*Throughput: ([\d.]+) infer/sec", re.MULTILINE),
    "response_throughput": re.compile(r"^\s*Response Throughput: ([\d.]+)", re.MULTILINE),
    "avg_us": re.compile(r"^\s*Avg latency: (\d+) usec", re.MULTILINE),
    "p50_us": re.compile(r"^\s*p50 latency: (\d+) usec", re.MULTILINE),
    "p90_us": re.compile(r"^\s*p90 latency: (\d+) usec", re.MULTILINE),
    "p95_us": re.compile(r"^\s*p95 latency: (\d+) usec", re.MULTILINE),
    "p99_us": re.compile(r"^\s*p99 latency: (\d+) usec", re.MULTILINE),
    "request_count": re.compile(r"^\s*Request count: (\d+)", re.MULTILINE),
}


def parse_stdout(text: str) -> list[dict[str, float]]:
    """perf_analyzer's printed summary, one dict per "Request concurrency: N" block (for runs
    made without -f; the CSV has the server-side split as well)."""
    starts = list(_BLOCK.finditer(text))
    blocks = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        body = text[match.end() : end]
        block = {"concurrency": float(match.group(1))}
        for key, pattern in _FIELDS.items():
            found = pattern.search(body)
            if found:
                block[key] = float(found.group(1))
        blocks.append(block)
    return blocks


def read_export(path: Path) -> tuple[list[Timing], list[list[dict[str, Any]]]]:
    """Per-request timestamps and response outputs from perf_analyzer's profile export."""
    # The export embeds raw request bytes (audio, images); latin-1 maps every byte to one char.
    data = json.loads(path.read_bytes().decode("latin-1"))
    requests = [r for experiment in data["experiments"] for r in experiment["requests"]]
    timings = [
        Timing(int(r["timestamp"]), tuple(int(t) for t in r.get("response_timestamps", [])))
        for r in requests
    ]
    return timings, [r.get("response_outputs", []) for r in requests]


#: No request generates more tokens than this; a larger value is not a count (see below).
MAX_PLAUSIBLE_TOKENS = 1 << 20


def generated_tokens(outputs: list[list[dict[str, Any]]]) -> int | None:
    """Tokens generated over all requests, when the model reports `completion_tokens`: the
    value in each request's last response (a stream's final response carries the totals, by
    this package's contract). None when any request lacks a believable count: perf_analyzer
    fills an output a response did not carry (a stream's text-only chunks) from memory it did
    not clear, so a value in the wrong response can be any number at all."""
    total = 0
    for responses in outputs:
        value = responses[-1].get("completion_tokens") if responses else None
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or not 0 <= value <= MAX_PLAUSIBLE_TOKENS:
            return None
        total += value
    return total if outputs else None


def run_level(
    model: str,
    endpoint: Endpoint,
    data_file: Path,
    concurrency: int,
    settings: PerfSettings,
    work: Path,
    *,
    streaming: bool,
    progress: Callable[[str], None],
    progress_every_s: float = 15.0,
) -> dict[str, Any]:
    """perf_analyzer at one concurrency; the level's figures, server split and batch sizes."""
    tag = f"{model}-{endpoint.protocol}-c{concurrency}-{time.monotonic_ns()}"
    csv_file, export_file, log_file = (work / f"{tag}.{ext}" for ext in ("csv", "json", "log"))
    cmd = command(
        model,
        endpoint,
        data_file,
        concurrency,
        settings,
        csv_file,
        export_file,
        streaming=streaming,
    )
    client = connect(endpoint)
    try:
        before = statistics(client, model)
        expected = settings.request_count(concurrency)
        started = time.monotonic()
        with open(log_file, "wb") as log:
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
            while True:
                try:
                    process.wait(timeout=progress_every_s)
                    break
                except subprocess.TimeoutExpired:
                    elapsed = time.monotonic() - started
                    if elapsed > settings.timeout_s:
                        process.kill()
                        process.wait()
                        raise RuntimeError(
                            f"perf_analyzer for {model} at concurrency {concurrency} ran past "
                            f"{settings.timeout_s:.0f} s; see {log_file}"
                        ) from None
                    done = statistics(client, model)["success"] - before["success"]
                    of = f"/{expected}" if expected else ""
                    progress(f"  ... {elapsed:.0f} s, {done}{of} requests answered so far")
        stdout = log_file.read_text(encoding="utf-8", errors="replace")
        if process.returncode != 0:
            tail = "\n".join(
                line for line in stdout.strip().splitlines()[-15:] if not line.startswith("\t")
            )
            errors = [
                line
                for line in stdout.splitlines()
                if line.startswith(("Error", "error", "Failed", "Thread"))
            ]
            raise RuntimeError(
                f"perf_analyzer failed for {model} at concurrency {concurrency} (exit "
                f"{process.returncode}): {'; '.join(errors) or tail}\ncommand: {' '.join(cmd)}"
            )
        after = statistics(client, model)
    finally:
        client.close()
    timings, outputs = read_export(export_file)
    level: dict[str, Any] = {"concurrency": concurrency, **summarize(timings)}
    tokens = generated_tokens(outputs)
    if tokens is not None:
        level["tokens_per_s"] = tokens / level["seconds"]
    rows = parse_csv(csv_file)
    reported = rows[0] if rows else {}
    printed = parse_stdout(stdout)
    level["perf_analyzer"] = {
        "throughput": reported.get("Inferences/Second"),
        "response_throughput": reported.get("Response Throughput"),
        "p50_ms": reported.get("p50 latency", 0.0) / US_PER_MS,
        "p99_ms": reported.get("p99 latency", 0.0) / US_PER_MS,
        "avg_ms": reported.get("Avg latency", 0.0) / US_PER_MS,
        "stdout": printed[-1] if printed else {},
    }
    level["server_queue_ms"] = reported.get("Server Queue", 0.0) / US_PER_MS
    level["server_compute_ms"] = (
        sum(
            reported.get(k, 0.0)
            for k in ("Server Compute Input", "Server Compute Infer", "Server Compute Output")
        )
        / US_PER_MS
    )
    executions = executions_between(before, after)
    level["executions_by_batch_size"] = executions
    level["mean_batch_size"] = sum(b * n for b, n in executions.items()) / max(
        1, sum(executions.values())
    )
    for path in (csv_file, export_file, log_file):
        path.unlink(missing_ok=True)
    return level


def sweep(
    model: str,
    endpoint: Endpoint,
    data_file: Path,
    concurrencies: list[int],
    settings: PerfSettings,
    work: Path,
    *,
    streaming: bool,
    progress: Callable[[str], None],
    warmup: int = 0,
) -> list[dict[str, Any]]:
    """Every concurrency level in turn, each with the share of CPU others took meanwhile."""
    from .machine import CpuProbe, listening_pid, load_average

    server_pid = listening_pid(endpoint.url)

    if warmup:
        progress(f"{model} over {endpoint.protocol}: {warmup} warm-up requests (not measured)")
        run_level(
            model,
            endpoint,
            data_file,
            1,
            PerfSettings(**{**settings.__dict__, "requests": warmup, "rounds": 0}),
            work,
            streaming=streaming,
            progress=progress,
        )
    levels = []
    for i, concurrency in enumerate(concurrencies, 1):
        count = settings.request_count(concurrency)
        how = f"{count} requests" if count else "until stable"
        progress(
            f"{model} over {endpoint.protocol}: concurrency {concurrency} "
            f"({i}/{len(concurrencies)}, {how})"
        )
        with CpuProbe(also=(server_pid,) if server_pid else ()) as probe:
            level = run_level(
                model,
                endpoint,
                data_file,
                concurrency,
                settings,
                work,
                streaming=streaming,
                progress=progress,
            )
        level["interference"] = probe.record()
        level["load_average"] = load_average()
        progress(
            f"{model} over {endpoint.protocol}: concurrency {concurrency}: "
            f"{level['throughput']:.2f}/s, p50 {level['p50_ms']:.0f} ms, "
            f"p99 {level['p99_ms']:.0f} ms, mean batch {level['mean_batch_size']:.1f}"
            + (f", others used {probe.other_cpu_pct:.0f}% CPU" if probe.other_cpu_pct >= 10 else "")
        )
        levels.append(level)
    return levels
