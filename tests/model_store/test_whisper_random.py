"""Random-weight Whisper checkpoints: complete, loadable through Auto*, with Whisper's layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

from shared.model_store.whisper_random import VARIANTS, build_random_whisper


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    dest = tmp_path_factory.mktemp("random") / f"whisper-{request.param}"
    return request.param, build_random_whisper(dest, request.param)


def load(path: Path):
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(
        path, local_files_only=True, use_safetensors=True
    )
    return processor, model


def test_loads_with_the_declared_shape_and_safetensors_only(built) -> None:
    variant, path = built
    processor, model = load(path)
    spec = VARIANTS[variant]
    assert model.config.num_mel_bins == spec.num_mel_bins
    assert processor.feature_extractor.feature_size == spec.num_mel_bins
    assert model.config.decoder_layers == spec.decoder_layers
    assert model.config.vocab_size == len(processor.tokenizer)
    assert list(path.glob("*.safetensors")) and not list(path.glob("*.bin"))
    assert sum(p.stat().st_size for p in path.iterdir()) < 8 << 20


def test_special_token_layout_matches_whisper(built) -> None:
    variant, path = built
    processor, model = load(path)
    tok, gen = processor.tokenizer, model.generation_config
    ids = tok.convert_tokens_to_ids
    assert gen.decoder_start_token_id == ids("<|startoftranscript|>")
    assert gen.eos_token_id == ids("<|endoftext|>")
    assert gen.no_timestamps_token_id == ids("<|notimestamps|>")
    # Timestamps follow the last special token, as transformers' decoding assumes.
    assert ids("<|0.00|>") == tok.all_special_ids[-1] + 1 == gen.no_timestamps_token_id + 1
    assert bool(gen.is_multilingual) is VARIANTS[variant].multilingual
    if VARIANTS[variant].multilingual:
        assert len(gen.lang_to_id) == 100 and gen.lang_to_id["<|fr|>"] == ids("<|fr|>")
        assert gen.task_to_id["translate"] == ids("<|translate|>")
    else:
        assert not getattr(gen, "lang_to_id", None), (
            "English-only checkpoints must not detect languages"
        )


def test_multilingual_prompt_carries_each_rows_language_and_the_task(tmp_path: Path) -> None:
    path = build_random_whisper(tmp_path / "m", "large-v3-turbo")
    processor, model = load(path)
    clips = [np.random.default_rng(i).standard_normal(16_000).astype(np.float32) for i in range(2)]
    features = processor(clips, sampling_rate=16_000, return_tensors="pt")
    prompts: list[list[str]] = []
    forward = model.forward

    def spy(*args, **kwargs):
        if not prompts:  # the first decoder step sees the whole forced prompt
            ids = kwargs["decoder_input_ids"]
            prompts.extend(processor.tokenizer.convert_ids_to_tokens(row) for row in ids)
        return forward(*args, **kwargs)

    model.forward = spy
    model.generate(
        input_features=features.input_features,
        language=["fr", "de"],
        task="translate",
        max_new_tokens=2,
    )
    assert prompts == [
        ["<|startoftranscript|>", "<|fr|>", "<|translate|>", "<|notimestamps|>"],
        ["<|startoftranscript|>", "<|de|>", "<|translate|>", "<|notimestamps|>"],
    ]


def test_building_twice_is_a_no_op_and_a_broken_build_is_redone(tmp_path: Path) -> None:
    dest = build_random_whisper(tmp_path / "w", "tiny.en")
    stamp = (dest / "model.safetensors").stat().st_mtime_ns
    build_random_whisper(dest, "tiny.en")
    assert (dest / "model.safetensors").stat().st_mtime_ns == stamp
    (dest / ".complete").write_text(json.dumps({"variant": "half-written"}), encoding="utf-8")
    build_random_whisper(dest, "tiny.en")
    assert (dest / "model.safetensors").stat().st_mtime_ns != stamp
    load(dest)


def test_unknown_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown Whisper variant"):
        build_random_whisper(tmp_path / "x", "medium.xx")
