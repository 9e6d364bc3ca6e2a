"""Text-to-speech benchmark: real-time factor in-process and served, and time to first audio.

    scripts/loadtest bench-tts [--model-path mms-tts-eng-random] [--out DIR]
    scripts/loadtest bench-tts --smoke      # a one-minute check that it all runs

The real-time factor (RTF) here is seconds of audio produced per second of wall time (higher
is better; 1 keeps up with playback). Three phases, one machine, the same sentences:

  1. in-process: the engine (`backends.tts`) synthesising a batch of sentences, one forward
     pass, at each batch size: RTF and sentences per second (`--batch-sizes`);
  2. served: the real tritonserver with `tts` laid out as each `--layouts` entry says
     (instances x torch threads, max_batch_size, queue delay), driven over HTTP by closed-loop
     clients at each `--concurrency`: RTF, requests per second and latency percentiles;
  3. time to first audio: a paragraph on `tts_stream` over gRPC streaming (the first piece)
     against the whole response of `tts`, median of `--repeats`.

Writes results.json and results.md into --out, with the command, machine, date and load
average, because every figure depends on them. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import queue
import re
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .machine import load_average, machine
from .options import ROOT, int_list, str_list
from .results import progress
from .stats import percentile

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Open the door and turn on the lights.",
    "A large language model can answer questions about the weather.",
    "Thank you very much for your help.",
    "We will meet at the library on Monday afternoon, then go for a walk in the park.",
    "Speech recognition turns audio into text, and text to speech turns it back.",
    "The weather today is sunny and warm, with a light wind from the west.",
]
PARAGRAPH = " ".join(SENTENCES[:6])


def in_process(model_dir: Path, batch_sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    """RTF of one forward pass over `batch` sentences, best of `repeats` (after a warm-up)."""
    from backends.tts.engine import Utterance, load_engine
    from backends.tts.settings import tts_params
    from shared.loading import LoadPlan
    from shared.quantization import Placement

    placement = Placement("cpu", "float32", "none")
    engine = load_engine(LoadPlan.in_process(model_dir, placement, tts_params(model_dir.name)))
    rows = []
    for batch in batch_sizes:
        texts = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
        utterances = [
            Utterance(engine.front_end.check(t), 0, 1.0, seed) for seed, t in enumerate(texts)
        ]
        engine.synthesize(utterances[:1])  # warm-up
        best = None
        for _ in range(repeats):
            started = time.perf_counter()
            audio = engine.synthesize(utterances)
            wall = time.perf_counter() - started
            seconds = sum(a.shape[0] for a in audio) / engine.sampling_rate
            if best is None or wall < best["wall_s"]:
                best = {"batch": batch, "wall_s": wall, "audio_s": seconds}
        assert best is not None
        best["rtf"] = best["audio_s"] / best["wall_s"]
        best["sentences_per_s"] = batch / best["wall_s"]
        progress(f"in-process batch {batch}: RTF {best['rtf']:.2f}")
        rows.append(best)
    return rows


def repository(work: Path, layout: str) -> Path:
    """A copy of model_repository/tts{,_stream} laid out as `layout`.

    `layout` is INSTANCESxTHREADS:MAX_BATCH:QUEUE_DELAY_US, e.g. "2x1:8:0".
    """
    match = re.fullmatch(r"(\d+)x(\d+):(\d+):(\d+)", layout)
    if match is None:
        raise SystemExit(f"--layouts entry {layout!r} is not INSTANCESxTHREADS:MAX_BATCH:DELAY_US")
    instances, threads, max_batch, delay = match.groups()
    repo = work / f"repository-{layout.replace(':', '_')}"
    for model in ("tts", "tts_stream"):
        shutil.copytree(ROOT / "model_repository" / model, repo / model)
        config_path = repo / model / "config.pbtxt"
        config = config_path.read_text(encoding="utf-8")
        config = re.sub(r"count: \d+", f"count: {instances}", config)
        config = re.sub(r"max_batch_size: \d+", f"max_batch_size: {max_batch}", config)
        config = re.sub(
            r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {delay}", config
        )
        config = re.sub(
            r'(key: "num_threads", value: \{ string_value: )"\d+"', rf'\1"{threads}"', config
        )
        config_path.write_text(config, encoding="utf-8")
    return repo


def closed_loop(url: str, concurrency: int, requests: int) -> dict[str, Any]:
    """`concurrency` clients sending back to back until `requests` are answered."""
    import numpy as np
    import tritonclient.http as httpclient

    lock = threading.Lock()
    remaining = [requests]
    latencies: list[float] = []
    audio_seconds: list[float] = []

    def client(index: int) -> None:
        connection = httpclient.InferenceServerClient(url, network_timeout=600)
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
                number = remaining[0]
            text = SENTENCES[(index + number) % len(SENTENCES)]
            tensor = httpclient.InferInput("text", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
            fmt = httpclient.InferInput("format", [1, 1], "BYTES")
            fmt.set_data_from_numpy(np.array([[b"pcm_s16"]], dtype=np.object_))
            started = time.perf_counter()
            result = connection.infer("tts", [tensor, fmt])
            elapsed = time.perf_counter() - started
            rate = int(result.as_numpy("sample_rate")[0, 0])
            with lock:
                latencies.append(elapsed)
                audio_seconds.append(len(result.as_numpy("audio")[0, 0]) / 2 / rate)

    started = time.perf_counter()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": requests,
        "wall_s": wall,
        "rtf": sum(audio_seconds) / wall,
        "requests_per_s": requests / wall,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
    }


def _stamped(sink: queue.Queue, result: Any, error: Any) -> None:
    """A gRPC stream callback: each response with the time it arrived."""
    sink.put((time.perf_counter(), result, error))


def first_audio(server: Any, repeats: int) -> dict[str, Any]:
    """Seconds to the first streamed piece of PARAGRAPH vs. to the whole unary response."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    def text_input(module: Any) -> Any:
        tensor = module.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[PARAGRAPH.encode()]], dtype=np.object_))
        return tensor

    first, last, whole = [], [], []
    for _ in range(repeats):
        received: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.start_stream(callback=functools.partial(_stamped, received))
        started = time.perf_counter()
        client.async_stream_infer(
            "tts_stream", [text_input(grpcclient)], enable_empty_final_response=True
        )
        stamps = []
        while True:
            stamp, result, error = received.get(timeout=600)
            if error is not None:
                raise RuntimeError(f"tts_stream failed: {error}")
            stamps.append(stamp - started)
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
        client.stop_stream()
        client.close()
        first.append(stamps[0])
        last.append(stamps[-1])
        http = httpclient.InferenceServerClient(server.http_url, network_timeout=600)
        started = time.perf_counter()
        http.infer("tts", [text_input(httpclient)])
        whole.append(time.perf_counter() - started)
    return {
        "paragraph_chars": len(PARAGRAPH),
        "stream_first_audio_s": statistics.median(first),
        "stream_last_audio_s": statistics.median(last),
        "unary_whole_response_s": statistics.median(whole),
    }


def served(args: argparse.Namespace, layout: str, work: Path, model_store: Path) -> dict[str, Any]:
    from tools.local_server import LocalTritonServer

    repo = repository(work, layout)
    env = {
        "MODEL_STORE": str(model_store),
        "TTS_MODEL_PATH": args.model_path,
        "TTS_STREAM_MODEL_PATH": args.model_path,
    }
    log = work / f"server-{layout.replace(':', '_')}.log"
    with LocalTritonServer(
        model_repository=repo, models=["tts", "tts_stream"], log_path=log, env_overrides=env
    ) as server:
        closed_loop(server.http_url, 1, 2)  # warm-up: both instances load lazily enough
        rows = []
        for concurrency in args.concurrency:
            requests = max(args.min_requests, 2 * concurrency)
            row = closed_loop(server.http_url, concurrency, requests)
            progress(f"served {layout} concurrency {concurrency}: RTF {row['rtf']:.2f}")
            rows.append(row)
        ttfa = first_audio(server, args.repeats)
        progress(f"served {layout}: first audio {ttfa['stream_first_audio_s']:.2f} s")
    return {"layout": layout, "concurrency": rows, "time_to_first_audio": ttfa}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Text-to-speech benchmark",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}; model: `{results['model_path']}`",
        f"- machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"{results['machine']['memory_gib']:.0f} GiB; load average at start "
        f"{results['load_average_start']}, at end {results['load_average_end']}",
        "",
        "RTF: seconds of audio per second of wall time (higher is better).",
        "",
        "## In-process, one forward pass per batch",
        "",
        "| batch | RTF | sentences/s |",
        "| ---: | ---: | ---: |",
    ]
    for row in results["in_process"]:
        lines.append(f"| {row['batch']} | {row['rtf']:.2f} | {row['sentences_per_s']:.2f} |")
    for layout in results["served"]:
        lines += [
            "",
            f"## Served, layout {layout['layout']} (instances x threads : max batch : delay us)",
            "",
            "| concurrency | RTF | requests/s | p50 s | p95 s |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in layout["concurrency"]:
            lines.append(
                f"| {row['concurrency']} | {row['rtf']:.2f} | {row['requests_per_s']:.2f} | "
                f"{row['latency_p50_s']:.2f} | {row['latency_p95_s']:.2f} |"
            )
        ttfa = layout["time_to_first_audio"]
        lines += [
            "",
            f"Paragraph of {ttfa['paragraph_chars']} characters: first audio on tts_stream after "
            f"{ttfa['stream_first_audio_s']:.2f} s (last piece {ttfa['stream_last_audio_s']:.2f} s); "
            f"whole response on tts after {ttfa['unary_whole_response_s']:.2f} s.",
        ]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", default="mms-tts-eng-random")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "tts")
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 2, 4, 8, 16])
    parser.add_argument("--concurrency", type=int_list, default=[1, 2, 4, 8, 16])
    parser.add_argument(
        "--layouts",
        type=str_list,
        default=["2x1:8:0", "1x2:8:0", "1x2:8:20000", "2x1:1:0"],
        help="served layouts, INSTANCESxTHREADS:MAX_BATCH:QUEUE_DELAY_US, comma-separated",
    )
    parser.add_argument("--min-requests", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-served", action="store_true", help="in-process phase only")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model, one layout, small sizes (~1 minute)"
    )


def main(args: argparse.Namespace, argv: list[str]) -> int:
    """In-process, then each served layout; results.json and results.md into --out."""
    if args.smoke:
        args.model_path, args.batch_sizes, args.concurrency = "vits-tiny-random", [1, 2], [1, 2]
        args.layouts, args.min_requests, args.repeats = ["2x1:8:0"], 2, 1
    model_store = Path(os.environ.get("MODEL_STORE") or ROOT / "model_store").resolve()
    results: dict[str, Any] = {
        "command": " ".join(["scripts/loadtest", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_path": args.model_path,
        "machine": machine(),
        "load_average_start": load_average(),
    }
    os.environ.setdefault("MODEL_STORE", str(model_store))
    results["in_process"] = in_process(
        model_store / args.model_path, args.batch_sizes, args.repeats
    )
    results["served"] = []
    if not args.skip_served:
        with tempfile.TemporaryDirectory(prefix="bench-tts-") as tmp:
            for layout in args.layouts:
                results["served"].append(served(args, layout, Path(tmp), model_store))
    results["load_average_end"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (args.out / "results.md").write_text(markdown(results), encoding="utf-8")
    progress(f"wrote {args.out / 'results.md'}")
    return 0
