"""The CTranslate2 peer's worker: run as a plain file by the peer's own interpreter (a
throwaway venv with ctranslate2, numpy, tokenizers and transformers, not the project's), so it
imports nothing of the project: the standard library at the top, the peer's packages inside.

    PEER_PYTHON tools/loadtest/stt/peer_worker.py --ct2-model DIR --preprocessor DIR \
        --audio CLIPS.npz --compute-type int8 --batch-sizes 1,8 --threads 2

Prints JSON on stdout: per batch size the throughput, the time per clip in features, encoder
and decoder, and every call's milliseconds (the suite computes the percentiles).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def memory_mib() -> dict[str, float]:
    """Resident and peak resident memory (MiB) of this process, from /proc (Linux): what the
    suite's machine.proc_memory reads, which this interpreter cannot import."""
    fields = {}
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return {"rss_mib": round(fields["VmRSS"], 1), "peak_rss_mib": round(fields["VmHWM"], 1)}


def run(args: argparse.Namespace) -> int:
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
    after_load = memory_mib()
    extractor = WhisperFeatureExtractor.from_pretrained(args.preprocessor)
    tokenizer = Tokenizer.from_file(str(Path(args.ct2_model) / "tokenizer.json"))
    prompt = [tokenizer.token_to_id("<|startoftranscript|>")]
    if model.is_multilingual:
        prompt += [tokenizer.token_to_id("<|en|>"), tokenizer.token_to_id("<|transcribe|>")]
    prompt.append(tokenizer.token_to_id("<|notimestamps|>"))
    with np.load(args.audio) as archive:
        audio = [archive[f"clip{i}"] for i in range(len(archive.files))]

    def transcribe(batch: list[Any]) -> tuple[list[str], float, float, float]:
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

    transcribe(audio[:1])  # warm-up
    runs = {}
    texts: list[str] = []
    for size in args.batch_sizes:
        features = encode = decode = 0.0
        call_ms = []
        outputs: list[str] = []
        started = time.perf_counter()
        for i in range(0, len(audio), size):
            call = time.perf_counter()
            got, f, e, d = transcribe(audio[i : i + size])
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
            "call_ms": call_ms,
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
            "peak_rss_mib": memory_mib()["peak_rss_mib"],
            "batch": runs,
            "best_batch_size": best["batch_size"],
            "best_clips_per_s": best["clips_per_s"],
            "texts": texts,
        },
        sys.stdout,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct2-model", required=True, help="CTranslate2 model directory")
    parser.add_argument("--preprocessor", required=True, help="preprocessor_config.json's folder")
    parser.add_argument("--audio", required=True, help=".npz of 16 kHz clips clip0, clip1, ...")
    parser.add_argument("--compute-type", required=True, help="int8, float32, ...")
    parser.add_argument(
        "--batch-sizes",
        type=lambda text: [int(x) for x in text.split(",") if x],
        required=True,
        help="comma-separated",
    )
    parser.add_argument("--threads", type=int, default=1, help="CTranslate2 intra threads")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
