"""Random-weight TTS checkpoints of the real architectures, built locally without a hub.

They exercise the exact loading and serving code (config.json, model.safetensors, the real
tokenizer classes and files) in tests and benchmarks; a user's real checkpoint goes through
the same `from_pretrained` path. Their speech is noise. Three of them:

* `mms-tts-eng`: VITS at the full size of facebook/mms-tts-eng (VitsConfig's defaults: 192
  hidden, 6 text-encoder layers, a HiFi-GAN of 512 initial channels upsampling 8, 8, 2, 2,
  16 kHz; 36 M parameters), one speaker, with a VitsTokenizer over MMS-TTS's kind of alphabet
  (lower-case letters, digits, space, apostrophe, hyphen; id 0 is the blank `add_blank`
  inserts between characters). The `tts` models' default and the benchmarks' model.
* `vits-tiny`: the same architecture shrunk (0.8 M parameters) with three speakers, as the
  multi-speaker VITS checkpoints (VCTK) have, so voices are exercised.
* `speecht5-tiny`: SpeechT5ForTextToSpeech shrunk, its SentencePiece character tokenizer
  (`spm_char.model`, trained here with the `sentencepiece` package, ids laid out as the real
  one: <s> 0, <pad> 1, </s> 2, <unk> 3), a SpeechT5HifiGan vocoder in `vocoder/`, and three
  512-value speaker embeddings in `voices.safetensors`.

Random weights do not behave like trained ones in ways serving notices; the builders shape
them where it matters:

* VITS durations: a random duration predictor makes a token last anything from under one
  frame to dozens; the offset of its last (affine) flow is set so that tokens last
  `_FRAMES_PER_TOKEN` frames on average, about what MMS-TTS gives English (a character and a
  blank per token, 16 ms frames: some 13 characters a second);
* SpeechT5's stop token: with random weights the stop probability sits near 0.5 and every row
  would stop after one step. Its bias is lowered so far that it never stops by itself: a row
  ends at its own length limit (`maxlenratio` decoder steps per token, 20 frames, 0.32 s per
  character). A stop that depended on the random decoder's state would depend on nothing the
  text says (that state drifts with the position alone), and flip from platform to platform;
  tests that exercise the stop token raise the bias themselves;
* SpeechT5's vocoder: its own initialisation leaves a waveform around 1e-9, silence in which
  no test could tell two rows apart; its convolutions are He-initialised, as VITS's are.

Everything is a function of the seed: same seed, same bytes.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.model_store import manifest
from tools.model_store.wheels import progress, remove_stale_temp_dirs

#: Bumped whenever the files written here change, so stores built by older code are redone.
REVISION = 1

#: The characters of the VITS vocabulary after the blank (MMS-TTS English has this kind).
_VITS_ALPHABET = " '-" + "0123456789" + "abcdefghijklmnopqrstuvwxyz"
#: What the SpeechT5 SentencePiece model is trained on: every character it should know.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. My name is John and I live in London.
Please call Stella and ask her to bring these things with her from the store: six spoons of
fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob.
THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG! Open the door; turn on the lights (please).
"Thank you very much," she said - it's 10:45 on 2/3 of the days? 0123456789 Zebra Quiz Vex.
"""
#: SpeechT5's stop-token bias in the tiny checkpoint, and the spread of its weights: stop
#: logits stay below -3.5, a stop probability under 0.03 per frame, never the 0.5 that stops.
_STOP_BIAS = -6.0
_STOP_WEIGHT_STD = 0.1
#: The average VITS token duration the random checkpoints are calibrated to, in frames.
_FRAMES_PER_TOKEN = 2.5
_CALIBRATION_TEXT = "the quick brown fox jumps over the lazy dog and my name is john"


@dataclass(frozen=True)
class Variant:
    """One random checkpoint: where it goes in a store and what it stands in for."""

    store_name: str
    mimics: str
    write: Callable[[Path, int], None]


def _vits_tokenizer(dest: Path) -> Any:
    from transformers import VitsTokenizer

    vocab = {"_": 0, **{char: i + 1 for i, char in enumerate(_VITS_ALPHABET)}}
    vocab_file = dest / "vocab.json"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False, indent=2), encoding="utf-8")
    return VitsTokenizer(
        vocab_file=str(vocab_file),
        pad_token="_",
        unk_token="<unk>",
        language="eng",
        add_blank=True,
        normalize=True,
        phonemize=False,
        is_uroman=False,
    )


def _write_vits(dest: Path, seed: int, tiny: bool) -> None:
    import torch
    from transformers import VitsConfig, VitsModel

    tokenizer = _vits_tokenizer(dest)
    shape: dict[str, Any] = {}
    if tiny:
        shape = {
            # 64 wide at least: bitsandbytes' CPU 4-bit kernels quantize in blocks of 64
            # input features and fail on narrower linear layers.
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "ffn_dim": 128,
            "flow_size": 16,
            "spectrogram_bins": 33,
            "upsample_initial_channel": 32,
            "prior_encoder_num_wavenet_layers": 2,
            "posterior_encoder_num_wavenet_layers": 2,
            "duration_predictor_filter_channels": 32,
            "num_speakers": 3,
            "speaker_embedding_size": 8,
            # Two residual-block kernels instead of three: the vocoder is most of the cost.
            "resblock_kernel_sizes": [3, 5],
            "resblock_dilation_sizes": [[1, 2], [2, 6]],
        }
    config = VitsConfig(vocab_size=len(tokenizer), pad_token_id=0, **shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VitsModel(config).eval()
        _calibrate_durations(model, tokenizer, seed)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _calibrate_durations(model: Any, tokenizer: Any, seed: int) -> None:
    """Offset the duration predictor so a token lasts `_FRAMES_PER_TOKEN` frames on average.

    In reverse, the predictor's last flow is an affine one: its output is
    (x - translate) * exp(-log_scale), and channel 0 is the log duration. One measurement on a
    calibration sentence sets `translate[0]` (durations are ceil(exp(log duration))).
    """
    import math

    import torch

    ids = tokenizer(_CALIBRATION_TEXT, return_tensors="pt")
    tokens = ids.input_ids.shape[1]
    with torch.no_grad():
        torch.manual_seed(seed)
        frames = float(model(**ids).sequence_lengths[0]) / math.prod(model.config.upsample_rates)
        model.duration_predictor.flows[0].translate[0] += math.log(frames / tokens) - math.log(
            _FRAMES_PER_TOKEN
        )


def _speecht5_tokenizer(dest: Path) -> Any:
    import sentencepiece as spm
    from transformers import SpeechT5Tokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS.splitlines()),
        model_writer=model,
        model_type="char",
        vocab_size=len(set(_CORPUS.replace("\n", "").replace(" ", ""))) + 5,
        character_coverage=1.0,
        bos_id=0,
        pad_id=1,
        eos_id=2,
        unk_id=3,
        num_threads=1,
        minloglevel=2,
    )
    vocab_file = dest / "spm_char.model"
    vocab_file.write_bytes(model.getvalue())
    return SpeechT5Tokenizer(vocab_file=str(vocab_file))


def _write_speecht5(dest: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import (
        SpeechT5Config,
        SpeechT5ForTextToSpeech,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
    )

    tokenizer = _speecht5_tokenizer(dest)
    config = SpeechT5Config(
        vocab_size=len(tokenizer),
        # 64 wide: bitsandbytes' CPU 4-bit kernels need 64 input features at least.
        hidden_size=64,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_layers=2,
        decoder_attention_heads=2,
        decoder_ffn_dim=128,
        speech_decoder_prenet_units=64,
        speech_decoder_postnet_units=32,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
    )
    vocoder_config = SpeechT5HifiGanConfig(upsample_initial_channel=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SpeechT5ForTextToSpeech(config).eval()
        stop = model.speech_decoder_postnet.prob_out
        with torch.no_grad():
            stop.weight.normal_(0.0, _STOP_WEIGHT_STD)
            stop.bias.fill_(_STOP_BIAS)
        vocoder = SpeechT5HifiGan(vocoder_config).eval()
        _audible(vocoder)
        voices = {f"speaker-{name}": torch.randn(config.speaker_embedding_dim) for name in "abc"}
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    vocoder.save_pretrained(dest / "vocoder")
    save_file(voices, str(dest / "voices.safetensors"))


def _audible(vocoder: Any) -> None:
    """He-initialise the vocoder's convolutions, as VITS's own initialisation does.

    SpeechT5HifiGan initialises them with std 0.02, which after a dozen layers leaves a
    waveform around 1e-9: silence, in which no test could tell one row's audio from another's.
    """
    import torch
    from torch import nn

    with torch.no_grad():
        for module in vocoder.modules():
            if isinstance(module, nn.Conv1d | nn.ConvTranspose1d):
                nn.init.kaiming_normal_(module.weight)


VARIANTS: dict[str, Variant] = {
    "mms-tts-eng": Variant(
        "mms-tts-eng-random", "facebook/mms-tts-eng", lambda d, s: _write_vits(d, s, tiny=False)
    ),
    "vits-tiny": Variant(
        "vits-tiny-random", "a multi-speaker VITS", lambda d, s: _write_vits(d, s, tiny=True)
    ),
    "speecht5-tiny": Variant("speecht5-tiny-random", "microsoft/speecht5_tts", _write_speecht5),
}


def _expected(variant: str, seed: int) -> dict[str, Any]:
    return {"builder": "tts_random", "revision": REVISION, "variant": variant, "seed": seed}


def is_complete(dest: Path, variant: str, seed: int = 0) -> bool:
    """True when `dest` holds a finished build of `variant`/`seed` by this revision."""
    return manifest.is_complete(Path(dest), _expected(variant, seed))


def build_random_tts(dest: Path, variant: str, seed: int = 0) -> Path:
    """Write a random-weight TTS checkpoint of `variant` to `dest`; a no-op when complete.

    Written into a temporary directory next to `dest` and published into place when finished,
    the manifest last (`tools.model_store.manifest.publish`), so a reader never sees half of
    one. Returns `dest`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown TTS variant {variant!r}; known: {sorted(VARIANTS)}")
    dest = Path(dest)
    if is_complete(dest, variant, seed):
        progress(f"{dest} is complete; skipping")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(dest.parent, f".{dest.name}-")
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}-", dir=dest.parent) as tmp:
        work = Path(tmp) / "checkpoint"
        work.mkdir()
        VARIANTS[variant].write(work, seed)
        manifest.publish(work, dest, _expected(variant, seed), Path(tmp))
    size_mb = sum(p.stat().st_size for p in manifest.checkpoint_files(dest)) / 1e6
    progress(f"built random-weight TTS ({variant}, seed {seed}) in {dest} ({size_mb:.1f} MB)")
    return dest


def store_entries() -> dict[str, Callable[[Path], Path]]:
    """The model store's build entries (`tools.model_store.__main__.ENTRIES`) for these."""
    return {
        spec.store_name: lambda store, variant=variant, name=spec.store_name: build_random_tts(
            store / name, variant
        )
        for variant, spec in VARIANTS.items()
    }
