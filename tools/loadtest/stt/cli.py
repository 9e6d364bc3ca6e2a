"""Speech-to-text benchmark: served vs. in-process, batched vs. not, per quantization, vs. a peer.

    scripts/loadtest bench-stt [--peer-python bench-peers/ct2venv/bin/python] [--wait-idle 300]

Every figure comes from ONE run on one machine and the same clips (espeak-ng speech, several
sentences, voices and rates), so the ratios between them mean something:

  1. in-process: `WhisperEngine` at batch 1 and at each batch size (the ceiling is the best),
     with the time of one batch split into features / encoder / decoder (forward hooks);
  2. peer: CTranslate2 (faster-whisper's engine) on the same wheel's original `model.bin`, per
     compute type and batch size, in a subprocess of a separate, throwaway Python (--peer-python);
  3. served: the real tritonserver with the shipped config (dynamic batching) and with dynamic
     batching removed, driven by perf_analyzer over gRPC at each concurrency;
  4. quantizations: WER, throughput and memory of the served model per STT_QUANTIZATION.

Writes results.json, results.md and (with a Python that has matplotlib) results.png into --out.
Progress goes to stderr. Other work on the machine shows up in every number, so each
measurement records the share of the CPU other processes took meanwhile (and is taken again,
once, when that share was large), and the load average is recorded at start, end and per phase.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..content import make_clips
from ..machine import load_average, machine
from ..options import ROOT, int_list, str_list
from ..results import STARTED, progress
from .inprocess import in_process
from .measure import MAX_INTERFERENCE, disturbed, phase, wait_quiet
from .peer import peer, peer_problem
from .report import markdown, ratios
from .served import served_phases

PLOT_WORKER = Path(__file__).with_name("plot_worker.py")


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clips", type=int, default=16, help="clips (>= 12: every sentence once)")
    parser.add_argument("--model-path", default="whisper-tiny.en")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="our model's dtype, in-process and served (STT_DTYPE); e.g. bfloat16",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "stt")
    parser.add_argument("--concurrency", type=int_list, default=[1, 2, 4, 8, 16])
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 2, 4, 8, 16])
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="perf_analyzer requests per level = rounds x concurrency",
    )
    parser.add_argument("--min-requests", type=int, default=16, help="and at least this many")
    parser.add_argument(
        "--quantizations",
        type=str_list,
        default=["none", "int8", "nf4"],
        help="served per STT_QUANTIZATION (none, int8, nf4, fp4)",
    )
    parser.add_argument(
        "--quantization-concurrency", type=int, default=8, help="concurrency for the table"
    )
    parser.add_argument(
        "--peer-python",
        help="a Python with ctranslate2, transformers and tokenizers (a throwaway venv); "
        "without it the peer is skipped",
    )
    parser.add_argument("--peer-compute-types", type=str_list, default=["int8", "float32"])
    parser.add_argument(
        "--plot-python", help="a Python with matplotlib for results.png (default: --peer-python)"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for other processes to leave the CPU alone",
    )
    parser.add_argument(
        "--max-interference",
        type=float,
        default=15.0,
        metavar="PCT",
        help="measure again (once) when other processes took more than this %% of the CPU",
    )
    parser.add_argument(
        "--retry-budget",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="total time the run may spend waiting and measuring again",
    )
    parser.add_argument("--skip-served", action="store_true", help="development: engine only")


def main(args: argparse.Namespace, argv: list[str]) -> int:
    """The four phases, then results.json, results.png (where matplotlib is) and results.md."""
    args.batch_sizes = sorted({1, *args.batch_sizes})
    MAX_INTERFERENCE["pct"] = args.max_interference
    MAX_INTERFERENCE["budget_s"] = args.retry_budget
    store = Path(os.environ.get("MODEL_STORE", ROOT / "model_store")).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    waited = wait_quiet(args.wait_idle) if args.wait_idle else 0.0
    results: dict[str, Any] = {
        "command": " ".join(["scripts/loadtest", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "model": args.model_path if args.dtype == "auto" else f"{args.model_path} ({args.dtype})",
        "load_average": {"start": load_average()},
        "waited_for_idle_s": round(waited, 1),
        "phases": {},
        "notes": [],
    }
    progress(f"load average at start: {results['load_average']['start']}")

    clips = phase(results, "clips", lambda: make_clips(args.clips))
    results["clips"] = [
        {k: v for k, v in asdict(c).items() if k != "wav"} | {"bytes": len(c.wav)} for c in clips
    ]
    results["clip_seconds"] = {
        "min": min(c.seconds for c in clips),
        "max": max(c.seconds for c in clips),
        "total": sum(c.seconds for c in clips),
    }
    results["clip_distinct_sentences"] = len({c.text for c in clips})
    progress(f"{len(clips)} clips, {results['clip_seconds']['total']:.0f} s of speech")

    progress("in-process engine")
    results["in_process"] = phase(
        results,
        "in_process",
        lambda: in_process(store / args.model_path, clips, args.batch_sizes, args.dtype),
    )

    with tempfile.TemporaryDirectory(prefix="bench-stt-") as tmp:
        work = Path(tmp)
        problem = peer_problem(args.peer_python) if args.peer_python else "no --peer-python given"
        if problem:
            results["notes"].append(f"peer skipped: {problem}")
            progress(f"peer skipped: {problem}")
        else:
            results["peer"] = phase(
                results,
                "peer",
                lambda: peer(
                    args.peer_python,
                    store,
                    args.model_path,
                    clips,
                    args.peer_compute_types,
                    args.batch_sizes,
                    work,
                ),
            )
        if not args.skip_served:
            served_phases(args, results, clips, store, work)

    results["load_average"]["end"] = load_average()
    noisy = list(
        disturbed(
            {
                k: results[k]
                for k in ("in_process", "peer", "served", "quantization")
                if k in results
            }
        )
    )
    if noisy:
        results["notes"].append(
            f"other processes took more than {MAX_INTERFERENCE['pct']:.0f}% of the CPU during "
            f"(even after one retry): {'; '.join(noisy)}"
        )
    results["retry_budget_left_s"] = round(MAX_INTERFERENCE["budget_s"], 1)
    results["runtime_s"] = time.monotonic() - STARTED
    results["ratios"] = ratios(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plot_python = args.plot_python or (args.peer_python if "peer" in results else None)
    if not plot_python and _has_matplotlib():
        plot_python = sys.executable  # requirements-dev.txt pins matplotlib for the suite
    if plot_python:
        cmd = [plot_python, str(PLOT_WORKER)]
        cmd += ["--results", str(args.out / "results.json"), "--png", str(args.out / "results.png")]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
            failure = None if done.returncode == 0 else done.stderr.strip().splitlines()[-1:]
        except OSError as exc:
            failure = [str(exc)]
        if failure:
            results["notes"].append(f"no plot: {plot_python} failed: {failure}")
    else:
        results["notes"].append("no plot: no matplotlib here, no --plot-python or --peer-python")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    table = markdown(results)
    (args.out / "results.md").write_text(table, encoding="utf-8")
    print(table)
    progress(
        f"done in {results['runtime_s']:.0f} s; load average at end {results['load_average']['end']}"
    )
    return 0
