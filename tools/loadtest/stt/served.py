"""The real tritonserver, driven by perf_analyzer over gRPC: the shipped config (dynamic
batching) vs. dynamic batching removed at every concurrency, then each further quantization
at one; per server its load facts, the stub's memory and the WER of every clip.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..content import Sample
from ..inputs import read_config, write_data
from ..local import load_facts, local_server, repository_copy, stub_pid
from ..machine import load_average, proc_memory
from ..options import ROOT
from ..perf import PerfSettings, run_level
from ..results import progress
from ..server import Endpoint
from .measure import corpus_wer, measured, phase

if TYPE_CHECKING:
    from ..content import Clip


def requests_for(concurrency: int, rounds: int, minimum: int, clips: int) -> int:
    """Requests measured at one concurrency: enough rounds that ramp-up and tail are small, in
    whole passes over the clips so that every clip weighs the same at every level."""
    wanted = max(minimum, rounds * concurrency)
    return clips * -(-wanted // clips)


def perf(
    server: Any, data_file: Path, concurrency: int, requests: int, work: Path
) -> dict[str, Any]:
    """perf_analyzer at one concurrency for a fixed number of requests (the suite's run_level:
    no stability search, throughput and percentiles from the per-request timestamps).

    A fixed count keeps the runtime predictable on a slow CPU, where perf_analyzer's default
    stability windows would take minutes per level or give up on a busy machine. Latencies are
    the client's (gRPC round trip); the server columns (from its CSV) split its side of it.
    """

    level = run_level(
        "stt",
        Endpoint("grpc", server.grpc_url),
        data_file,
        concurrency,
        PerfSettings(requests=requests, rounds=0),
        work,
        streaming=False,
        progress=progress,
    )
    reported = level["perf_analyzer"]
    return {
        "concurrency": concurrency,
        "requests": level["requests"],
        "clips_per_s": level["throughput"],
        **{key: level[key] for key in ("p50_ms", "p90_ms", "p99_ms", "avg_ms")},
        "perf_analyzer_reported": {
            "clips_per_s": reported["throughput"],
            "p50_ms": reported["p50_ms"],
            "p99_ms": reported["p99_ms"],
        },
        "server_queue_ms": level["server_queue_ms"],
        "server_compute_ms": level["server_compute_ms"],
        "executions_by_batch_size": level["executions_by_batch_size"],
        "mean_batch_size": level["mean_batch_size"],
        "load_average": load_average(),
    }


def transcribe_served(url: str, clips: list[Clip], concurrency: int) -> tuple[list[str], float]:
    """Every clip through gRPC, `concurrency` at a time; the transcripts and the wall time."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    def one(clip: Clip) -> str:
        client = grpcclient.InferenceServerClient(url)
        audio = grpcclient.InferInput("audio", [1, 1], "BYTES")
        audio.set_data_from_numpy(np.array([[clip.wav]], dtype=np.object_))
        result = client.infer("stt", [audio], outputs=[grpcclient.InferRequestedOutput("text")])
        client.close()
        return result.as_numpy("text")[0, 0].decode()

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        texts = list(pool.map(one, clips))
    return texts, time.perf_counter() - started


def served_setup(
    name: str,
    repo: Path,
    store: Path,
    env: dict[str, str],
    clips: list[Clip],
    data_file: Path,
    concurrencies: list[int],
    rounds: int,
    minimum: int,
    work: Path,
    wer_concurrency: int,
) -> dict[str, Any]:
    """One server: load facts, memory, WER of every clip, then perf_analyzer per concurrency."""
    log = work / f"{name}.log"
    progress(f"served {name}: starting tritonserver")
    started = time.perf_counter()
    with local_server(repo, ["stt"], {**env, "MODEL_STORE": str(store)}, log) as server:
        ready_s = time.perf_counter() - started
        pid = stub_pid(server, "stt")
        if pid is None:
            raise RuntimeError("no triton_python_backend_stub process for stt")
        loaded = load_facts(log, "stt")
        after_load = proc_memory(pid)
        texts, wall = transcribe_served(server.grpc_url, clips, wer_concurrency)
        wer = corpus_wer([c.text for c in clips], texts)
        progress(
            f"served {name}: ready in {ready_s:.0f} s, WER {wer:.3f}, "
            f"{len(clips) / wall:.2f} clips/s transcribing at concurrency {wer_concurrency}"
        )
        levels = {}
        for c in concurrencies:
            n = requests_for(c, rounds, minimum, len(clips))
            progress(f"served {name}: perf_analyzer concurrency {c} ({n} requests)")
            levels[str(c)] = measured(
                f"served {name} concurrency {c}",
                lambda c=c, n=n: perf(server, data_file, c, n, work),
            )
            row = levels[str(c)]
            progress(
                f"served {name}: concurrency {c}: {row['clips_per_s']:.2f} clips/s, "
                f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, "
                f"mean batch {row['mean_batch_size']:.1f}"
            )
        memory = proc_memory(pid)
    return {
        "env": env,
        "ready_s": ready_s,
        **loaded,
        "stub_rss_after_load_mib": after_load["rss_mib"],
        "stub_peak_rss_mib": memory["peak_rss_mib"],
        "wer": wer,
        "texts": texts,
        "concurrency": levels,
    }


def served_phases(
    args: argparse.Namespace, results: dict[str, Any], clips: list[Clip], store: Path, work: Path
) -> None:
    """Batching on vs. off over every concurrency, then each further quantization at one."""
    source = ROOT / "model_repository"
    samples = [Sample({"audio": clip.wav}, clip.text) for clip in clips]
    data_file = write_data(read_config(source / "stt"), samples, work / "stt-data.json")
    base_env = {
        "STT_MODEL_PATH": args.model_path,
        "STT_QUANTIZATION": "none",
        "STT_DTYPE": args.dtype,
    }
    results["served"] = {}
    repos = {
        batching: repository_copy(
            source, ["stt"], work / ("batching" if batching else "no-batching"), batching=batching
        )
        for batching in (True, False)
    }
    common = {
        "store": store,
        "clips": clips,
        "data_file": data_file,
        "rounds": args.rounds,
        "minimum": args.min_requests,
        "work": work,
        "wer_concurrency": args.quantization_concurrency,
    }
    for batching in (True, False):
        name = "dynamic batching" if batching else "no batching"
        results["served"][name] = phase(
            results,
            f"served {name}",
            lambda batching=batching, name=name: served_setup(
                name, repos[batching], env=base_env, concurrencies=args.concurrency, **common
            ),
        )
    c = args.quantization_concurrency
    results["quantization_concurrency"] = c
    quant: dict[str, Any] = {}
    for q in args.quantizations:
        if q == "none" and str(c) in results["served"]["dynamic batching"]["concurrency"]:
            setup = results["served"]["dynamic batching"]
        else:
            setup = phase(
                results,
                f"served quantization {q}",
                lambda q=q: served_setup(
                    f"quantization {q}",
                    repos[True],
                    env={**base_env, "STT_QUANTIZATION": q},
                    concurrencies=[c],
                    **common,
                ),
            )
        level = setup["concurrency"][str(c)]
        quant[q] = {
            "wer": setup["wer"],
            "clips_per_s": level["clips_per_s"],
            "p50_ms": level["p50_ms"],
            "p99_ms": level["p99_ms"],
            "footprint_mib": setup.get("footprint_mib", float("nan")),
            "load_s": setup.get("load_s", float("nan")),
            "describe": setup.get("describe", ""),
            "stub_rss_after_load_mib": setup["stub_rss_after_load_mib"],
            "stub_peak_rss_mib": setup["stub_peak_rss_mib"],
            "texts": setup["texts"],
            "interference": level["interference"],
        }
    results["quantization"] = quant
