"""What a run leaves behind: results.json, results.csv, summary.md and one PNG per model.

Every command (run, batching, quantization, overhead, baseline) produces the same shape:
`results["models"][model]["series"][series_name]["levels"]` is a list of levels, one per
concurrency (a series is a protocol, a batching setting, a quantization or a server), so one
writer, one table and one plot serve them all; commands add their own ratios to
`results["models"][model]["ratios"]`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

CSV_COLUMNS = [
    "model",
    "series",
    "concurrency",
    "requests",
    "throughput",
    "tokens_per_s",
    "ms_per_output_token",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "avg_ms",
    "first_response_p50_ms",
    "first_response_p99_ms",
    "responses_per_request",
    "server_queue_ms",
    "server_compute_ms",
    "mean_batch_size",
    "other_cpu_pct",
]


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every level of every series of every model, flat (the CSV)."""
    out = []
    for model, entry in results["models"].items():
        for series, data in entry.get("series", {}).items():
            for level in data["levels"]:
                row = {"model": model, "series": series}
                row.update({k: level.get(k) for k in CSV_COLUMNS if k in level})
                row["other_cpu_pct"] = level.get("interference", {}).get("other_cpu_pct")
                out.append(row)
    return out


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: dict[str, Any], title: str) -> str:
    """summary.md: the settings, then per model one table of every level and its ratios."""
    m = results["machine"]
    lines = [
        f"# {title}",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}; {results.get('runtime_s', 0):.0f} s in all",
        f"- client machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']:.0f} GiB; "
        f"load average at start {results['load_average']['start']}, at end "
        f"{results['load_average'].get('end', '-')}",
        f"- measurement: {results['settings']['measurement']}",
        "",
        "Throughput and latencies come from per-request timestamps: perf_analyzer's export (its "
        "own figures are in results.json), or the suite's closed-loop load generator for the "
        "series that compare other servers (baseline, peers); latency is until the last "
        "response, first response is "
        "what a streaming client waits for; server queue and compute are Triton's per-request "
        "averages; mean batch is what the dynamic batcher formed (Triton's statistics); others' "
        "CPU is the share of this machine's CPU that other processes took meanwhile.",
    ]
    for model, entry in results["models"].items():
        unit = entry.get("content", {}).get("unit", "request")
        lines += ["", f"## {model}", ""]
        if entry.get("config"):
            c = entry["config"]
            lines.append(
                f"- config: max_batch_size {c['max_batch_size']}, dynamic batching "
                f"{'on' if c['dynamic_batching'] else 'off'}, "
                f"{'decoupled (streamed)' if c['decoupled'] else 'one response per request'}, "
                f"{c['instances']} instance(s)"
            )
        if entry.get("content"):
            content = entry["content"]
            lines.append(f"- content: {len(content['samples'])} x {content['describe']}")
        for name, reason in entry.get("skipped", {}).items():
            lines.append(f"- {name}: skipped: {reason}")
        if entry.get("plot"):
            lines += ["", f"![{model}]({entry['plot']})"]
        streaming = any(
            level.get("responses_per_request", 1) > 1
            for s in entry.get("series", {}).values()
            for level in s["levels"]
        )
        tokens = any(
            "tokens_per_s" in level
            for s in entry.get("series", {}).values()
            for level in s["levels"]
        )
        header = ["series", "concurrency", "requests", f"{unit}s/s"]
        header += ["tokens/s", "ms per output token"] if tokens else []
        header += ["p50 ms", "p90 ms", "p99 ms"]
        header += ["first response p50 ms", "first response p99 ms"] if streaming else []
        header += ["server queue ms", "server compute ms", "mean batch", "others' CPU %"]
        if entry.get("series"):  # in-process-only commands (numerics) have none
            lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, series in entry.get("series", {}).items():
            for level in series["levels"]:
                cells = [name, str(level["concurrency"]), str(level["requests"])]
                cells.append(_fmt(level["throughput"], 2))
                if tokens:
                    cells += [
                        _fmt(level.get("tokens_per_s"), 1),
                        _fmt(level.get("ms_per_output_token"), 1),
                    ]
                cells += [_fmt(level[k]) for k in ("p50_ms", "p90_ms", "p99_ms")]
                if streaming:
                    cells += [
                        _fmt(level[k]) for k in ("first_response_p50_ms", "first_response_p99_ms")
                    ]
                cells += [
                    _fmt(level.get("server_queue_ms")),
                    _fmt(level.get("server_compute_ms")),
                    _fmt(level.get("mean_batch_size"), 1),
                    _fmt(level.get("interference", {}).get("other_cpu_pct")),
                ]
                lines.append("| " + " | ".join(cells) + " |")
        for name, series in entry.get("series", {}).items():
            if series.get("about"):
                lines.append(f"- {name}: {series['about']}")
        for key, value in entry.get("ratios", {}).items():
            lines.append(f"- **{key}**: {_fmt(value, 2) if isinstance(value, float) else value}")
        for note in entry.get("notes", []):
            lines.append(f"- {note}")
    for note in results.get("notes", []):
        lines += ["", f"- {note}"]
    return "\n".join(lines) + "\n"


def plot(model: str, entry: dict[str, Any], path: Path, subtitle: str) -> Path:
    """One PNG: latency (p50 solid, p99 dashed) against throughput with each point's
    concurrency, and throughput against concurrency, one colour per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = entry.get("content", {}).get("unit", "request")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ticks: set[int] = set()
    for i, (name, series) in enumerate(entry.get("series", {}).items()):
        color = colors[i % len(colors)]
        levels = series["levels"]
        x = [level["throughput"] for level in levels]
        for key, style, label in (("p50_ms", "-o", "p50"), ("p99_ms", "--s", "p99")):
            left.plot(
                x, [lv[key] / 1000 for lv in levels], style, color=color, label=f"{name}, {label}"
            )
        for level in levels:
            left.annotate(
                f"c{level['concurrency']}",
                (level["throughput"], level["p50_ms"] / 1000),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=8,
                color=color,
            )
        concurrency = [level["concurrency"] for level in levels]
        ticks.update(concurrency)
        right.plot(concurrency, x, "-o", color=color, label=name)
    for line in entry.get("reference_lines", []):
        right.axhline(line["value"], ls=":", color="gray", label=line["label"])
    left.set_xlabel(f"throughput ({unit}s/s)")
    left.set_ylabel("latency (s)")
    left.set_title("latency vs. throughput (points: concurrency)")
    left.set_xlim(left=0)
    left.set_ylim(bottom=0)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    if ticks:
        right.set_xscale("log", base=2)
        right.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
    right.set_xlabel("concurrency (requests in flight)")
    right.set_ylabel(f"throughput ({unit}s/s)")
    right.set_ylim(bottom=0)
    right.set_title("throughput vs. concurrency")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(f"{model}: {subtitle}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(results: dict[str, Any], out: Path, title: str) -> None:
    """results.json, results.csv, one PNG per model with levels, summary.md, all under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    subtitle = f"{results['machine']['cpu']}, {results['date']}"
    for model, entry in results["models"].items():
        if any(s["levels"] for s in entry.get("series", {}).values()):
            entry["plot"] = plot(model, entry, out / f"{model}.png", subtitle).name
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    with open(out / "results.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows(results))
    (out / "summary.md").write_text(markdown(results, title), encoding="utf-8")
