"""results.png of the STT benchmark: run as a plain file by any interpreter that has
matplotlib (the project's, or the peer's throwaway venv), so it imports nothing of the project.

    PYTHON tools/loadtest/stt/plot_worker.py --results results.json --png results.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def plot(results_file: Path, png: Path) -> None:
    """Latency against throughput per concurrency, batching on vs. off; throughput per
    concurrency beside the in-process ceiling and the peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(results_file.read_text(encoding="utf-8"))
    served = results["served"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"dynamic batching": "tab:blue", "no batching": "tab:orange"}
    for name, color in styles.items():
        if name not in served:
            continue
        levels = list(served[name]["concurrency"].values())
        x = [r["clips_per_s"] for r in levels]
        for key, style, label in (("p50_ms", "-o", "p50"), ("p99_ms", "--s", "p99")):
            left.plot(
                x, [r[key] / 1000 for r in levels], style, color=color, label=f"{name}, {label}"
            )
        for r in levels:
            left.annotate(
                f"c{r['concurrency']}",
                (r["clips_per_s"], r["p50_ms"] / 1000),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=8,
                color=color,
            )
        right.plot(
            [r["concurrency"] for r in levels], x, "-o", color=color, label=f"served, {name}"
        )
    left.set_xlabel("throughput (clips/s)")
    left.set_ylabel("latency (s)")
    left.set_title("latency vs. throughput (points: concurrency)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    local = results["in_process"]
    right.axhline(
        local["best_clips_per_s"],
        color="tab:green",
        ls=":",
        label=f"in-process ceiling (batch {local['best_batch_size']})",
    )
    right.axhline(
        local["batch1_clips_per_s"], color="tab:green", ls="-.", label="in-process batch 1"
    )
    for compute_type, result in results.get("peer", {}).items():
        right.axhline(
            result["best_clips_per_s"],
            color="tab:red" if compute_type == "int8" else "tab:purple",
            ls=":",
            label=f"CTranslate2 {compute_type} (batch {result['best_batch_size']})",
        )
    right.set_xscale("log", base=2)
    ticks = sorted({r["concurrency"] for s in served.values() for r in s["concurrency"].values()})
    right.set_xticks(ticks, [str(t) for t in ticks])
    right.set_xlabel("concurrency (requests in flight)")
    right.set_ylabel("throughput (clips/s)")
    right.set_title("throughput vs. concurrency")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(
        f"{results['model']} on {results['machine']['cpu']}, {results['date']}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="the benchmark's results.json")
    parser.add_argument("--png", type=Path, required=True, help="the plot to write")
    args = parser.parse_args(argv)
    plot(args.results, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
