"""Vision-language benchmark: dynamic batching on vs. off, the in-process ceiling, and TTFT.

    scripts/loadtest bench-vlm [--out docs/benchmarks/vlm] [--dry-run]

On the SmolVLM-256M-shaped random checkpoint (`smolvlm-256m-random`, which costs per token what
the real SmolVLM-256M costs; built into the store on first use), in one run on one machine so
that the ratios mean something:

  1. in-process: the `vlm` model (through the pb_utils harness) at batch 1 and 16: the batching
     ceiling of this machine (loadtest `overhead`);
  2. served: the real tritonserver, `vlm` and `vlm_stream` with the shipped config (dynamic
     batching) and with dynamic batching removed, perf_analyzer over gRPC at concurrency 1 to 16
     (loadtest `batching`): throughput, p50/p99 latency, and for `vlm_stream` the time to the
     first response (first token).

The measuring is the load-test suite's own `overhead` and `batching` commands; this one fixes
the settings, runs the two, and writes README.md in --out with the command line, the machine,
the date and the headline figures (each command also leaves its own summary.md, results.json
and plots in a sub-folder). Long: minutes per level on 2 CPU cores; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from .options import ROOT

CHECKPOINT = "smolvlm-256m-random"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "vlm")
    parser.add_argument(
        "--model-path", default=CHECKPOINT, help=f"store entry (default {CHECKPOINT})"
    )
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--images-per-prompt",
        type=int,
        default=1,
        help="drawn images per prompt (SmolVLM turns a 384 px image into 17 crops of 512 px)",
    )
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")


def commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """The loadtest invocations, each writing into its own sub-folder of --out."""
    env = [
        f"--env=MODEL_PATH={args.model_path}",
        f"--env=MAX_NEW_TOKENS={args.max_new_tokens}",
    ]
    content = [
        f"--max-new-tokens={args.max_new_tokens}",
        f"--images-per-prompt={args.images_per_prompt}",
        f"--image-size={args.image_size}",
        f"--samples={args.samples}",
    ]
    loadtest = [str(ROOT / "scripts" / "loadtest")]
    return {
        "overhead": [
            *loadtest,
            "overhead",
            "-m",
            "vlm",
            "--batch-sizes=1,16",
            f"--concurrency={args.concurrency}",
            *env,
            *content,
            f"--out={args.out / 'overhead'}",
        ],
        "batching": [
            *loadtest,
            "batching",
            "-m",
            "vlm,vlm_stream",
            f"--concurrency={args.concurrency}",
            *env,
            *content,
            f"--out={args.out / 'batching'}",
        ],
    }


def _levels(results: dict[str, Any], model: str, series: str) -> dict[int, dict[str, Any]]:
    levels = results["models"][model]["series"][series]["levels"]
    return {level["concurrency"]: level for level in levels}


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def report(args: argparse.Namespace, argv: list[str], ran: dict[str, list[str]]) -> str:
    """README.md: how it was run, where, when, and the headline figures."""
    batching = json.loads((args.out / "batching" / "results.json").read_text(encoding="utf-8"))
    overhead = json.loads((args.out / "overhead" / "results.json").read_text(encoding="utf-8"))
    lines = [
        "# Vision-language benchmark (`vlm`, `vlm_stream`)",
        "",
        f"- date: {batching['date']}",
        f"- machine: {json.dumps(batching['machine'])}",
        f"- checkpoint: `{args.model_path}`; {args.max_new_tokens} new tokens per request, "
        f"{args.images_per_prompt} drawn {args.image_size} px image(s) per prompt",
        f"- load average: {json.dumps(batching['load_average'])}",
        "",
        f"Commands (run by `{shlex.join(['scripts/loadtest', *argv])}`):",
        "",
        "```bash",
        *(shlex.join(command).replace(f"{ROOT}/", "") for command in ran.values()),
        "```",
        "",
        "## Served: dynamic batching on vs. off (requests/s; p99 latency)",
        "",
        _row(
            ["model", "concurrency", "on: req/s", "on: p99 ms", "off: req/s", "off: p99 ms", "gain"]
        ),
        _row(["---"] * 7),
    ]
    for model in ("vlm", "vlm_stream"):
        on = _levels(batching, model, "dynamic batching")
        off = _levels(batching, model, "no batching")
        for level in sorted(on):
            a, b = on[level], off.get(level)
            lines.append(
                _row(
                    [
                        model,
                        level,
                        f"{a['throughput']:.3f}",
                        f"{a['p99_ms']:.0f}",
                        f"{b['throughput']:.3f}" if b else "-",
                        f"{b['p99_ms']:.0f}" if b else "-",
                        f"{a['throughput'] / b['throughput']:.2f}x" if b else "-",
                    ]
                )
            )
    lines += [
        "",
        "## Time to first token (`vlm_stream`, first response)",
        "",
        _row(["series", "concurrency", "p50 ms", "p99 ms"]),
        _row(["---"] * 4),
    ]
    for series in ("dynamic batching", "no batching"):
        for level, values in sorted(_levels(batching, "vlm_stream", series).items()):
            lines.append(
                _row(
                    [
                        series,
                        level,
                        f"{values['first_response_p50_ms']:.0f}",
                        f"{values['first_response_p99_ms']:.0f}",
                    ]
                )
            )
    local = overhead["models"]["vlm"]["in_process"]["batches"]
    lines += ["", "## In-process ceiling (`vlm` through the harness)", ""]
    lines += [
        f"- batch {size}: {run['throughput']:.3f} requests/s" for size, run in sorted(local.items())
    ]
    if "1" in local and "16" in local:
        ratio = local["16"]["throughput"] / local["1"]["throughput"]
        lines.append(f"- batch 16 / batch 1: {ratio:.2f}x")
    lines += [
        "",
        "Full tables and plots: [batching](batching/summary.md), [overhead](overhead/summary.md).",
        "",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace, argv: list[str]) -> int:
    """Build the checkpoint if needed, run `overhead` and `batching`, write README.md."""
    store = Path(os.environ.get("MODEL_STORE", ROOT / "model_store"))
    ran = commands(args)
    if args.dry_run:
        print("\n".join(shlex.join(command) for command in ran.values()))
        return 0
    if not (store / args.model_path / "config.json").is_file():
        # The benchmark checkpoint is built on demand, not by ./scripts/setup (870 MiB); a
        # path that is no store entry gets the model store's own message naming the entries.
        build = [sys.executable, "-m", "tools.model_store", "build", "--store", str(store)]
        built = subprocess.run([*build, "--only", args.model_path], cwd=ROOT)
        if built.returncode:
            return built.returncode
    args.out.mkdir(parents=True, exist_ok=True)
    for name, command in ran.items():
        print(f"[bench-vlm] {name}: {shlex.join(command)}", file=sys.stderr, flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
    (args.out / "README.md").write_text(report(args, argv, ran), encoding="utf-8")
    print(f"[bench-vlm] results: {args.out / 'README.md'}", file=sys.stderr)
    return 0
