"""A command's results from start to finish: the results dict (command, machine, settings),
each model's entry made from its config and content, the files written at the end, and the
progress lines on the way. Shared by `run` and every benchmark command.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import report
from .content import ContentOptions, Sample, generator_for
from .inputs import is_decoupled, write_data
from .machine import load_average, machine
from .options import ROOT, content_options, settings_from

STARTED = time.monotonic()


def progress(message: str) -> None:
    """One line on stderr with the time since start: a long run must not look like a hang."""
    print(f"[loadtest {time.monotonic() - STARTED:6.0f}s] {message}", file=sys.stderr, flush=True)


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


@contextmanager
def collecting(
    args: argparse.Namespace, argv: list[str], title: str
) -> Iterator[tuple[dict[str, Any], Path]]:
    """A benchmark command's results and a scratch folder; the results written at the end."""
    results = new_results(args, argv)
    out = args.out or default_out(args.command)
    with tempfile.TemporaryDirectory(prefix=f"loadtest-{args.command}-") as tmp:
        yield results, Path(tmp)
    finish(results, out, title)


def best(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """The level with the most throughput."""
    return max(levels, key=lambda level: level["throughput"])


def level_at(levels: list[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    """The level measured at `concurrency`, if there was one."""
    return next((lv for lv in levels if lv["concurrency"] == concurrency), None)
