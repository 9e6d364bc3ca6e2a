"""Random-weight Whisper checkpoints: complete, loadable through Auto*, with Whisper's layout.

Their transcripts are babble, so the tests assert what serving relies on instead: the files
and ids are those of a real checkpoint, batching does not change any row's tokens, the forced
decoder prompt carries each row's language and the task, and long-form decoding terminates.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from tools.model_store.whisper_random import (
    MARKER,
    VARIANTS,
    build_random_whisper,
    special_tokens,
    timestamp_tokens,
)

RATE = 16_000
FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    MARKER,
}


def clip(seconds: float, seed: int) -> np.ndarray:
    """Quiet noise: random weights only need inputs that differ."""
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)


def load(path: Path) -> tuple[Any, Any]:
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model, info = AutoModelForSpeechSeq2Seq.from_pretrained(
        path, local_files_only=True, use_safetensors=True, output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    return processor, model.eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("random-whisper")
    return {v: build_random_whisper(root / VARIANTS[v].store_name, v) for v in VARIANTS}


@pytest.fixture(scope="module")
def loaded(built: dict[str, Path]) -> dict[str, tuple[Any, Any]]:
    return {variant: load(path) for variant, path in built.items()}


def generate(model: Any, features: Any, **kwargs: Any) -> list[list[int]]:
    """Greedy token rows, cut at <|endoftext|>: a batch pads finished rows with it, and with
    timestamps a lone row's <|endoftext|> is dropped."""
    with torch.inference_mode():
        out = model.generate(
            features.input_features,
            attention_mask=features.attention_mask,
            do_sample=False,
            **kwargs,
        )
    eot = model.generation_config.eos_token_id
    rows = (out["sequences"] if isinstance(out, dict) else out).tolist()
    return [row[: row.index(eot)] if eot in row else row for row in rows]


def first_decoder_prompts(model: Any, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Spy on forward(): the decoder ids of the first call that sees a whole prompt.

    Language detection, when it runs, calls forward() with <|startoftranscript|> alone first.
    """
    prompts: list[list[int]] = []
    forward: Callable[..., Any] = model.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("decoder_input_ids")
        if not prompts and ids is not None and ids.shape[1] > 1:
            prompts.extend(ids.tolist())
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    return prompts


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_loads_through_auto_classes_with_the_declared_shape(
    built: dict[str, Path], loaded: dict[str, tuple[Any, Any]], variant: str
) -> None:
    path, (processor, model) = built[variant], loaded[variant]
    spec = VARIANTS[variant]
    assert type(processor).__name__ == "WhisperProcessor"
    assert type(processor.tokenizer).__name__ == "WhisperTokenizer"  # the tokenizers-backed one
    assert type(model).__name__ == "WhisperForConditionalGeneration"
    config = model.config
    assert config.num_mel_bins == processor.feature_extractor.feature_size == spec.num_mel_bins
    assert (config.d_model, config.encoder_ffn_dim, config.decoder_ffn_dim) == (
        spec.d_model,
        spec.ffn,
        spec.ffn,
    )
    assert (config.encoder_layers, config.decoder_layers) == (
        spec.encoder_layers,
        spec.decoder_layers,
    )
    assert config.encoder_attention_heads == config.decoder_attention_heads == spec.heads
    assert (config.max_source_positions, config.max_target_positions) == (1500, 448)
    assert config.vocab_size == len(processor.tokenizer) == len(processor.tokenizer.get_vocab())
    assert config.tie_word_embeddings
    # Safetensors only, nothing else, readable by a server running as another user.
    assert {p.name for p in path.iterdir()} == FILES
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in path.iterdir())
    assert sum(p.stat().st_size for p in path.iterdir()) < 4 << 20


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_token_ids_follow_the_real_whisper_layout(
    loaded: dict[str, tuple[Any, Any]], variant: str
) -> None:
    processor, model = loaded[variant]
    tok, gen = processor.tokenizer, model.generation_config
    multilingual = VARIANTS[variant].multilingual
    ids = tok.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    # <|endoftext|> closes the BPE vocabulary, then specials and timestamps follow in order.
    layout = special_tokens(multilingual) + timestamp_tokens()
    assert [ids(t) for t in layout] == list(range(eot, eot + len(layout)))
    assert eot + len(layout) == model.config.vocab_size
    assert len(layout) - 1501 - 8 == (100 if multilingual else 99)
    assert ("<|yue|>" in layout) is multilingual
    # transformers derives the first timestamp two ways; both must land on <|0.00|>.
    assert ids("<|0.00|>") == tok.all_special_ids[-1] + 1 == gen.no_timestamps_token_id + 1
    assert tok.all_special_ids[0] == eot  # get_prompt_ids() takes this as the first special
    assert gen.decoder_start_token_id == ids("<|startoftranscript|>")
    assert gen.eos_token_id == gen.pad_token_id == gen.bos_token_id == eot
    assert gen.prev_sot_token_id == ids("<|startofprev|>")
    assert gen.begin_suppress_tokens == [*tok.encode(" ", add_special_tokens=False), eot]
    assert {ids("<|startoftranscript|>"), ids("<|translate|>")} <= set(gen.suppress_tokens)
    assert not set(gen.suppress_tokens) & {eot, *tok.encode(" ", add_special_tokens=False)}
    assert bool(gen.is_multilingual) is multilingual and gen.return_timestamps is False
    if multilingual:
        # The tokenizer finds a language as <|startoftranscript|> + 1 + its index in LANGUAGES.
        assert gen.lang_to_id == {
            f"<|{code}|>": ids("<|startoftranscript|>") + 1 + i for i, code in enumerate(LANGUAGES)
        }
        assert gen.task_to_id == {
            "translate": ids("<|translate|>"),
            "transcribe": ids("<|transcribe|>"),
        }
        assert tok.get_decoder_prompt_ids(language="fr", task="translate") == [
            (1, ids("<|fr|>")),
            (2, ids("<|translate|>")),
            (3, ids("<|notimestamps|>")),
        ]
    else:
        # With lang_to_id present, generate() would detect a language for an English model.
        assert not getattr(gen, "lang_to_id", None) and not getattr(gen, "task_to_id", None)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("timestamps", [False, True], ids=["text", "timestamps"])
def test_a_mixed_length_batch_decodes_each_clip_as_alone(
    loaded: dict[str, tuple[Any, Any]], variant: str, timestamps: bool
) -> None:
    processor, model = loaded[variant]
    clips = [clip(seconds, seed) for seed, seconds in enumerate([0.4, 2.5, 7.0])]
    features = processor(clips, sampling_rate=RATE, return_tensors="pt", return_attention_mask=True)
    mels = VARIANTS[variant].num_mel_bins
    # Short-form: every clip is padded to one 30 s window; the mask says how much is audio.
    assert tuple(features.input_features.shape) == (3, mels, 3000)
    assert [int(n) for n in features.attention_mask.sum(-1)] == [len(c) // 160 for c in clips]
    options: dict[str, Any] = {"max_new_tokens": 10, "return_timestamps": timestamps}
    if VARIANTS[variant].multilingual:
        options.update(language="en", task="transcribe")
    together = generate(model, features, **options)
    alone = [
        generate(
            model,
            processor([c], sampling_rate=RATE, return_tensors="pt", return_attention_mask=True),
            **options,
        )[0]
        for c in clips
    ]
    assert together == alone
    assert len({tuple(row) for row in together}) > 1, "distinct clips give distinct babble"
    first_timestamp = model.generation_config.no_timestamps_token_id + 1
    if timestamps:
        # Each text starts at a timestamp of at most 1 s (max_initial_timestamp_index 50).
        assert all(first_timestamp <= row[0] <= first_timestamp + 50 for row in together)
    else:
        # Like a trained model, no timestamps unless asked: one pass, max_new_tokens holds.
        assert all(t < first_timestamp for row in together for t in row)
        assert all(len(row) <= 10 for row in together)


def test_multilingual_prompt_carries_each_rows_language_and_the_task(
    loaded: dict[str, tuple[Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    processor, model = loaded["large-v3-turbo"]
    ids = processor.tokenizer.convert_tokens_to_ids
    features = processor(
        [clip(1.0, 0), clip(2.0, 1), clip(0.5, 2)],
        sampling_rate=RATE,
        return_tensors="pt",
        return_attention_mask=True,
    )

    def prompts(**options: Any) -> list[list[str]]:
        with monkeypatch.context() as patch:
            seen = first_decoder_prompts(model, patch)
            generate(model, features, max_new_tokens=2, **options)
        return [processor.tokenizer.convert_ids_to_tokens(row) for row in seen]

    start, translate, no_ts = "<|startoftranscript|>", "<|translate|>", "<|notimestamps|>"
    assert prompts(language=["fr", "de", "yue"], task="translate") == [
        [start, "<|fr|>", translate, no_ts],
        [start, "<|de|>", translate, no_ts],
        [start, "<|yue|>", translate, no_ts],
    ]
    assert (
        prompts(language="French", task="transcribe")
        == [[start, "<|fr|>", "<|transcribe|>", no_ts]] * 3
    )
    # Timestamps: <|notimestamps|> leaves the prompt.
    assert prompts(language=["ja", "en", "fr"], task="translate", return_timestamps=True) == [
        [start, f"<|{code}|>", translate] for code in ("ja", "en", "fr")
    ]
    # Neither given: as the Hub's large-v3-turbo (forced_decoder_ids [[1, None], [2,
    # transcribe]]), the language is detected per row and the task is transcribe.
    detected = prompts()
    assert [row[2:] for row in detected] == [["<|transcribe|>", no_ts]] * 3
    assert all(ids(row[1]) in model.generation_config.lang_to_id.values() for row in detected)
    with pytest.raises(ValueError, match="length of the list must match the batch size"):
        generate(model, features, language=["fr", "de"], max_new_tokens=2)


def test_english_only_prompt_and_refusals(
    loaded: dict[str, tuple[Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    processor, model = loaded["tiny.en"]
    features = processor(
        [clip(1.0, 0)], sampling_rate=RATE, return_tensors="pt", return_attention_mask=True
    )
    with monkeypatch.context() as patch:
        seen = first_decoder_prompts(model, patch)
        generate(model, features, max_new_tokens=2)
    assert processor.tokenizer.convert_ids_to_tokens(seen[0]) == [
        "<|startoftranscript|>",
        "<|notimestamps|>",
    ]
    with pytest.raises(ValueError, match="English-only"):
        generate(model, features, language="fr", max_new_tokens=2)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_long_form_terminates_and_covers_the_audio(
    loaded: dict[str, tuple[Any, Any]], variant: str
) -> None:
    processor, model = loaded[variant]
    audio = clip(70.0, 7)
    features = processor(
        audio,
        sampling_rate=RATE,
        return_tensors="pt",
        truncation=False,
        padding="longest",
        return_attention_mask=True,
    )
    assert features.input_features.shape[-1] == 7000  # long-form: past one 3000-frame window
    seeks: list[int] = []
    options: dict[str, Any] = {}
    if VARIANTS[variant].multilingual:
        options.update(language="fr", task="translate")
    with torch.inference_mode():
        out = model.generate(
            features.input_features,
            attention_mask=features.attention_mask,
            return_timestamps=True,
            return_segments=True,
            max_new_tokens=6,
            do_sample=False,
            monitor_progress=lambda progress: seeks.append(int(progress[0, 0])),
            **options,
        )
    assert seeks == sorted(set(seeks)) and 2 <= len(seeks) <= 10, seeks
    segments = out["segments"][0]
    assert segments and float(segments[-1]["start"]) >= 40.0, segments
    text = processor.batch_decode(out["sequences"], skip_special_tokens=True)[0]
    assert "<|" not in text


def test_long_form_batch_decodes_each_clip_as_alone_for_whole_hops(
    loaded: dict[str, tuple[Any, Any]],
) -> None:
    """Holds for lengths in whole hops (160 samples) only.

    For other lengths the batch's attention mask counts ceil(n / 160) frames while a lone
    clip has floor(n / 160), so the batched row's last window sees one frame more (padded
    audio instead of zeros) and its tokens may differ.
    """
    processor, model = loaded["tiny.en"]
    clips = [clip(seconds, seed) for seed, seconds in enumerate([61.0, 33.5])]

    def segments(batch: list[np.ndarray]) -> list[list[tuple[float, float, list[int]]]]:
        features = processor(
            batch,
            sampling_rate=RATE,
            return_tensors="pt",
            truncation=False,
            padding="longest",
            return_attention_mask=True,
        )
        with torch.inference_mode():
            out = model.generate(
                features.input_features,
                attention_mask=features.attention_mask,
                return_timestamps=True,
                return_segments=True,
                max_new_tokens=6,
                do_sample=False,
            )
        return [
            [(float(s["start"]), float(s["end"]), s["tokens"].tolist()) for s in row]
            for row in out["segments"]
        ]

    assert segments(clips) == [segments([c])[0] for c in clips]


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    a = build_random_whisper(tmp_path / "a", "tiny.en", seed=3)
    b = build_random_whisper(tmp_path / "b", "tiny.en", seed=3)
    c = build_random_whisper(tmp_path / "c", "tiny.en", seed=4)
    for name in FILES - {MARKER}:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()


def test_building_twice_is_a_no_op_and_a_broken_build_is_redone(tmp_path: Path) -> None:
    dest = build_random_whisper(tmp_path / "w", "tiny.en")
    weights = dest / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build_random_whisper(dest, "tiny.en") == dest
    assert weights.stat().st_mtime_ns == stamp
    size = weights.stat().st_size
    weights.write_bytes(b"half")  # a truncated file: the marker's sizes no longer match
    build_random_whisper(dest, "tiny.en")
    assert weights.stat().st_size == size
    (dest / MARKER).unlink()  # killed before the marker was written
    build_random_whisper(dest, "tiny.en")
    manifest = json.loads((dest / MARKER).read_text(encoding="utf-8"))
    assert manifest["variant"] == "tiny.en" and manifest["seed"] == 0
    build_random_whisper(dest, "tiny.en", seed=1)  # another seed replaces it
    assert json.loads((dest / MARKER).read_text(encoding="utf-8"))["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporary dirs left
    load(dest)


def test_unknown_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown Whisper variant"):
        build_random_whisper(tmp_path / "x", "medium.xx")
    assert not (tmp_path / "x").exists()
