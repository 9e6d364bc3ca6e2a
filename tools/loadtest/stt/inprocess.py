"""The engine in-process, without a server: throughput per batch size, and where one batch's
time goes (features, encoder, decoder, LM head: forward hooks; one call under cProfile).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..inprocess import profile_call
from ..machine import load_average, proc_memory
from ..results import progress
from ..stats import percentile
from .measure import corpus_wer, measured

if TYPE_CHECKING:
    from ..content import Clip


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

    from backends.stt.engine import SttRow, WhisperEngine
    from backends.stt.settings import stt_params
    from shared.audio import decode_audio
    from shared.loading import LoadPlan
    from shared.quantization import resolve_placement

    placement = resolve_placement("none", dtype, "cpu")
    engine = WhisperEngine.load(
        LoadPlan.in_process(model_dir, placement, stt_params(model_dir.name))
    )
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
