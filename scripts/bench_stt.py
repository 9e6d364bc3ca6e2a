"""Speech-to-text benchmark: batched vs. one at a time, served vs. in-process, side by side.

    .venv/bin/python scripts/bench_stt.py [--clips 16] [--batch 8] [--out docs/benchmarks/stt]

All figures come from one run on one machine:
  1. in-process: the engine on the same clips, one clip per generate() call vs. batches;
  2. served: the real tritonserver with the shipped config (dynamic batching) vs. the same
     model with dynamic batching removed, both driven by perf_analyzer over gRPC;
  3. the ratios: batching gain in-process and served, and served / in-process throughput.
Writes results.json and a markdown table into --out.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from backends.stt import SttRow, WhisperEngine  # noqa: E402
from shared.audio import decode_audio  # noqa: E402
from shared.local_server import LocalTritonServer  # noqa: E402
from shared.quantization import resolve_placement  # noqa: E402
from tests.speech import SENTENCES, encode, speak  # noqa: E402


def make_clips(count: int) -> list[bytes]:
    voices = [("en-us", 150), ("en-gb", 165), ("en-us", 180)]
    clips = []
    for i in range(count):
        samples, rate = speak(SENTENCES[i % len(SENTENCES)], *voices[i % len(voices)])
        clips.append(encode(samples, rate))
    return clips


def in_process(model_dir: Path, clips: list[bytes], batch: int, threads: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    engine = WhisperEngine.load(model_dir, resolve_placement("none", "auto", "cpu"))
    rows = [
        SttRow(audio=decode_audio(c, target_rate=16_000, max_seconds=60, max_bytes=1 << 26))
        for c in clips
    ]
    engine.transcribe(rows[:1])  # warm-up
    started = time.perf_counter()
    for row in rows:
        engine.transcribe([row])
    one = len(rows) / (time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        engine.transcribe(rows[i : i + batch])
    batched = len(rows) / (time.perf_counter() - started)
    return {"batch1_clips_per_s": one, f"batch{batch}_clips_per_s": batched}


def variant_repository(dest: Path, batching: bool) -> Path:
    """A copy of the stt model whose config has dynamic batching on (as shipped) or off."""
    repo = dest / ("batching" if batching else "no-batching")
    shutil.copytree(ROOT / "model_repository" / "stt", repo / "stt")
    config_path = repo / "stt" / "config.pbtxt"
    config = text_format.Parse(
        config_path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig()
    )
    if not batching:
        config.ClearField("dynamic_batching")
    config_path.write_text(text_format.MessageToString(config), encoding="utf-8")
    return repo


def perf(
    server: LocalTritonServer, data_file: Path, concurrency: int, report: Path
) -> dict[str, float]:
    cmd = [
        str(ROOT / "scripts" / "perf_analyzer"),
        "-m",
        "stt",
        "-u",
        server.grpc_url,
        "-i",
        "grpc",
        "--input-data",
        str(data_file),
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        str(max(8, 2 * concurrency)),
        "--stability-percentage",
        "50",
        "--max-trials",
        "6",
        "-f",
        str(report),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    with open(report, encoding="utf-8") as handle:
        row = next(csv.DictReader(handle))
    return {
        "clips_per_s": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--model-path", default="whisper-tiny.en")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "stt")
    args = parser.parse_args()
    store = Path(os.environ.get("MODEL_STORE", ROOT / "model_store"))
    threads = os.cpu_count() or 1
    clips = make_clips(args.clips)
    args.out.mkdir(parents=True, exist_ok=True)

    print("in-process ...", file=sys.stderr)
    local = in_process(store / args.model_path, clips, args.batch, threads)

    served: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_file = Path(tmp) / "stt-data.json"
        data = [
            {
                "audio": {
                    "b64": base64.b64encode(struct.pack("<I", len(c)) + c).decode(),
                    "shape": [1],
                }
            }
            for c in clips
        ]
        data_file.write_text(json.dumps({"data": data}), encoding="utf-8")
        for batching in (True, False):
            name = "dynamic batching" if batching else "no batching"
            repo = variant_repository(Path(tmp), batching)
            env = {"STT_MODEL_PATH": args.model_path}
            with LocalTritonServer(
                model_repository=repo, model_store=store, env_overrides=env
            ) as server:
                served[name] = {}
                for concurrency in (1, args.batch):
                    print(f"served, {name}, concurrency {concurrency} ...", file=sys.stderr)
                    report = Path(tmp) / f"{batching}-{concurrency}.csv"
                    served[name][f"c{concurrency}"] = perf(server, data_file, concurrency, report)

    best_local = local[f"batch{args.batch}_clips_per_s"]
    on, off = served["dynamic batching"], served["no batching"]
    c = f"c{args.batch}"
    ratios = {
        "in_process_batching_gain": best_local / local["batch1_clips_per_s"],
        "served_batching_gain": on[c]["clips_per_s"] / off[c]["clips_per_s"],
        "served_over_in_process": on[c]["clips_per_s"] / best_local,
        "latency_added_at_c1_ms": on["c1"]["p50_ms"] - 1000 / local["batch1_clips_per_s"],
    }
    results = {
        "command": " ".join(["scripts/bench_stt.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {threads} cores, {platform.platform()}",
        "model": args.model_path,
        "clips": args.clips,
        "in_process": local,
        "served": served,
        "ratios": ratios,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    table = [
        f"Command: `{results['command']}`; {results['date']}; {results['machine']}; "
        f"model {args.model_path}, {args.clips} espeak-ng clips of 2-5 s.",
        "",
        "| setup | clips/s | p50 ms | p99 ms |",
        "|---|---|---|---|",
        f"| in-process, batch 1 | {local['batch1_clips_per_s']:.2f} | | |",
        f"| in-process, batch {args.batch} | {best_local:.2f} | | |",
    ]
    for name, by_c in served.items():
        for key, row in by_c.items():
            table.append(
                f"| served, {name}, concurrency {key[1:]} | {row['clips_per_s']:.2f} | "
                f"{row['p50_ms']:.0f} | {row['p99_ms']:.0f} |"
            )
    table += [
        "",
        f"- batching gain in-process (batch {args.batch} / batch 1): {ratios['in_process_batching_gain']:.2f}x",
        f"- batching gain served (dynamic batching / none, concurrency {args.batch}): {ratios['served_batching_gain']:.2f}x",
        f"- served / in-process throughput at batch {args.batch}: {ratios['served_over_in_process']:.2f}",
        f"- p50 latency added by serving at concurrency 1: {ratios['latency_added_at_c1_ms']:.0f} ms",
    ]
    (args.out / "results.md").write_text("\n".join(table) + "\n", encoding="utf-8")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
