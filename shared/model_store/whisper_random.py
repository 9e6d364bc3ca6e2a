"""Small random-weight Whisper checkpoints of the real architectures, built without a hub.

They exercise the exact loading and serving code (config, safetensors, tokenizer, processor,
generation config with Whisper's special-token layout) in tests that must stay fast; their
transcripts are babble. Two shapes cover the family's differences that the serving code sees:
English-only with 80 mel bins (tiny.en) and multilingual with 128 mel bins (large-v3-turbo:
languages, the translate task, few decoder layers).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shared.model_store.wheels import progress, remove_stale_temp_dirs

MARKER = ".complete"
REVISION = 5

# Text to train the byte-level BPE on: any English will do, the merges only need to exist.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. My name is John and I live in London.
Please call Stella and ask her to bring these things with her from the store: six spoons of
fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob.
Open the door and turn on the lights. Thank you very much for your help. The weather today
is sunny and warm, with a light wind from the west and clouds later in the evening.
A large language model can answer questions about the weather, the news and the time.
Speech recognition turns audio into text; text to speech turns text back into audio.
"""


@dataclass(frozen=True)
class Variant:
    """The shape of one random checkpoint."""

    multilingual: bool
    num_mel_bins: int
    d_model: int = 64
    encoder_layers: int = 2
    decoder_layers: int = 2
    heads: int = 4
    ffn: int = 256


VARIANTS: dict[str, Variant] = {
    # tiny.en: English-only, 80 mel bins (the real one: d_model 384, 4 + 4 layers).
    "tiny.en": Variant(multilingual=False, num_mel_bins=80),
    # large-v3-turbo: multilingual (100 languages), 128 mel bins, a deep encoder and a shallow
    # decoder (the real one: 32 + 4 layers, d_model 1280).
    "large-v3-turbo": Variant(
        multilingual=True, num_mel_bins=128, encoder_layers=4, decoder_layers=1
    ),
}


def _special_tokens(multilingual: bool) -> tuple[list[str], list[str]]:
    """Whisper's special tokens in the real order, then its timestamp tokens."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    languages = [f"<|{code}|>" for code in LANGUAGES]
    if not multilingual:
        languages = [t for t in languages if t != "<|yue|>"]  # yue arrived with large-v3
    specials = [
        "<|startoftranscript|>",
        *languages,
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nocaptions|>",
        "<|notimestamps|>",
    ]
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    return specials, timestamps


def _tokenizer(multilingual: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, WhisperTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator([_CORPUS], trainer)
    state = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(state["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges)
    specials, timestamps = _special_tokens(multilingual)
    tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(t, special=True, normalized=False) for t in specials
            ]
        }
    )
    # Timestamps are ordinary added tokens: transformers finds the first one as the last
    # special id + 1, so they must not be special.
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in timestamps])
    return tokenizer


def _write(dest: Path, variant: Variant, seed: int) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    tokenizer = _tokenizer(variant.multilingual)
    ids = tokenizer.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    space = tokenizer.encode(" ", add_special_tokens=False)
    # Random weights would emit language and task tokens mid-text, which a trained model never
    # does; suppressed, as the real checkpoints suppress non-speech tokens.
    not_text = list(range(sot + 1, ids("<|notimestamps|>") + 1))
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=variant.num_mel_bins,
        d_model=variant.d_model,
        encoder_layers=variant.encoder_layers,
        decoder_layers=variant.decoder_layers,
        encoder_attention_heads=variant.heads,
        decoder_attention_heads=variant.heads,
        encoder_ffn_dim=variant.ffn,
        decoder_ffn_dim=variant.ffn,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        begin_suppress_tokens=[*space, eot],
        suppress_tokens=not_text,
        # Wider than the 0.02 default, so that different audio gives different babble and
        # tests can tell batched rows apart.
        init_std=0.3,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    model.save_pretrained(dest, safe_serialization=True)

    specials, _ = _special_tokens(variant.multilingual)
    generation = GenerationConfig.from_model_config(config)
    whisper_fields = {
        "is_multilingual": variant.multilingual,
        "no_timestamps_token_id": ids("<|notimestamps|>"),
        "prev_sot_token_id": ids("<|startofprev|>"),
        "max_initial_timestamp_index": 50,
        "max_length": 448,
        "alignment_heads": [[variant.decoder_layers - 1, h] for h in range(variant.heads)],
        "return_timestamps": False,
    }
    if variant.multilingual:
        # Only multilingual checkpoints carry these: with lang_to_id present, generate()
        # detects a language even for an English-only model.
        whisper_fields["lang_to_id"] = {
            t: ids(t) for t in specials if t.strip("<|>") in _language_codes()
        }
        whisper_fields["task_to_id"] = {
            "transcribe": ids("<|transcribe|>"),
            "translate": ids("<|translate|>"),
        }
    for name, value in whisper_fields.items():  # update() would skip unknown attributes
        setattr(generation, name, value)
    generation._from_model_config = False  # else transformers drops no_timestamps_token_id
    generation.save_pretrained(dest)

    extractor = WhisperFeatureExtractor(feature_size=variant.num_mel_bins)
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(dest)


def _language_codes() -> set[str]:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return set(LANGUAGES)


def build_random_whisper(dest: Path, variant: str, seed: int = 0) -> Path:
    """Write a random-weight Whisper of `variant` shape to `dest`; a no-op when complete."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown Whisper variant {variant!r}; known: {sorted(VARIANTS)}")
    dest = Path(dest)
    expected = {"variant": variant, "seed": seed, "revision": REVISION}
    marker = dest / MARKER
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == expected:
        progress(f"{dest} is complete; skipping")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(dest.parent, f".{dest.name}-")
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}-", dir=dest.parent) as tmp:
        work = Path(tmp) / "ckpt"
        _write(work, VARIANTS[variant], seed)
        (work / MARKER).write_text(json.dumps(expected), encoding="utf-8")
        if dest.exists():
            os.replace(dest, Path(tmp) / "stale")
        os.replace(work, dest)
    progress(f"built random-weight Whisper ({variant}) in {dest}")
    return dest
