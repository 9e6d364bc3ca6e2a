"""Piper voices in transformers' VitsModel: the decoder's "ResBlock2", the loader, the front end.

A Piper voice is a VITS model; transformers' `VitsModel` computes all of it except one detail:
HiFi-GAN has two kinds of residual block, and VitsModel builds only "ResBlock1" (two convs per
dilation) while Piper's medium voices use "ResBlock2" (one conv per dilation:
`x = x + conv(leaky_relu(x))`). `PiperVitsModel` is VitsModel with those blocks swapped in when
the checkpoint's config says `"resblock": "2"`; nothing else of transformers is copied or
changed, and the weights load through `from_pretrained` (dtype, device map and quantization
work as for any transformers model).

The voice speaks IPA phonemes made by espeak-ng, not text: `PiperFrontend` turns text into the
voice's phoneme ids (shared.phonemes), and refuses text with nothing to say in it.

The checkpoints come from `tools.model_store.piper_voice`; their config.json carries, besides
VitsConfig's fields, `resblock` and a `piper` section (phoneme id map, espeak-ng voice, Piper's
inference settings, source).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import VitsConfig, VitsModel

from shared.errors import ModelLoadError, invalid
from shared.phonemes import (
    check_voice,
    clean_text,
    is_speakable,
    phoneme_ids,
    phonemize_batch,
)

#: HiFi-GAN residual-block kinds, by the names HiFi-GAN's and Piper's configs give them.
RESBLOCK_KINDS = ("1", "2")
#: Parameters only training uses, absent from a Piper export: the posterior encoder, the
#: duration predictor's posterior flows, and its flow 1, which reverse (inference) flow skips.
TRAINING_ONLY = (
    r"^posterior_encoder\.",
    r"^duration_predictor\.post_",
    r"^duration_predictor\.flows\.1\.",
)


class HifiGanResidualBlock2(nn.Module):
    """HiFi-GAN's "ResBlock2": per dilation, `x = x + conv(leaky_relu(x))`, lengths kept."""

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        dilation: Sequence[int],
        leaky_relu_slope: float = 0.1,
    ) -> None:
        super().__init__()
        self.leaky_relu_slope = leaky_relu_slope
        self.convs = nn.ModuleList(
            nn.Conv1d(
                channels,
                channels,
                kernel_size,
                dilation=d,
                padding=(kernel_size * d - d) // 2,
            )
            for d in dilation
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            activated = nn.functional.leaky_relu(hidden_states, self.leaky_relu_slope)
            hidden_states = hidden_states + conv(activated)
        return hidden_states


def resblock_kind(config: VitsConfig | Mapping[str, Any]) -> str:
    """The decoder's residual-block kind a config asks for ("1", VitsModel's own, by default)."""
    value = (
        config.get("resblock", "1")
        if isinstance(config, Mapping)
        else getattr(config, "resblock", "1")
    )
    kind = str(value)
    if kind not in RESBLOCK_KINDS:
        raise ValueError(
            f"resblock {value!r} is not a HiFi-GAN residual-block kind {RESBLOCK_KINDS}"
        )
    return kind


class PiperVitsModel(VitsModel):
    """VitsModel whose HiFi-GAN decoder uses "ResBlock2" blocks when `config.resblock == "2"`.

    The blocks are replaced in `__init__`, so `from_pretrained` fills them like any other
    module. Training-only parameters a Piper export lacks (`TRAINING_ONLY`) are expected to be
    missing; `load_piper_vits` refuses any other missing one.
    """

    _keys_to_ignore_on_load_missing: ClassVar[list[str]] = list(TRAINING_ONLY)  # type: ignore[misc]

    def __init__(self, config: VitsConfig) -> None:
        super().__init__(config)
        if resblock_kind(config) == "2":
            blocks = []
            for stage in range(len(config.upsample_rates)):
                channels = config.upsample_initial_channel // (2 ** (stage + 1))
                for kernel, dilation in zip(
                    config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True
                ):
                    blocks.append(
                        HifiGanResidualBlock2(channels, kernel, dilation, config.leaky_relu_slope)
                    )
            self.decoder.resblocks = nn.ModuleList(blocks)


def _config_dict(config_or_dir: VitsConfig | Mapping[str, Any] | str | os.PathLike) -> dict:
    if isinstance(config_or_dir, VitsConfig):
        return config_or_dir.to_dict()
    if isinstance(config_or_dir, Mapping):
        return dict(config_or_dir)
    path = Path(config_or_dir)
    path = path / "config.json" if path.is_dir() else path
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = json.load(handle)
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def is_piper_checkpoint(config_or_dir: VitsConfig | Mapping[str, Any] | str | os.PathLike) -> bool:
    """Whether a config (object, dict, config.json or checkpoint directory) is a Piper voice.

    Such a checkpoint needs `load_piper_vits` (its decoder may be "ResBlock2") and
    `PiperFrontend` (it reads phoneme ids, not a tokenizer's).
    """
    config = _config_dict(config_or_dir)
    piper = config.get("piper")
    return (
        config.get("model_type") == "vits"
        and isinstance(piper, Mapping)
        and isinstance(piper.get("phoneme_id_map"), Mapping)
    )


def load_piper_vits(model_dir: str | os.PathLike, **from_pretrained_kwargs: Any) -> PiperVitsModel:
    """Load a Piper checkpoint from the model store, in eval mode, every inference weight checked.

    `from_pretrained_kwargs` are passed on (`dtype`, `device_map`, `quantization_config`, as
    `shared.quantization.pretrained_kwargs` makes them); the secure defaults are not options:
    local files only, safetensors only, no remote code. Raises `ModelLoadError` when the
    directory is no Piper checkpoint or lacks a weight inference needs.
    """
    model_dir = Path(model_dir)
    if not is_piper_checkpoint(model_dir):
        raise ModelLoadError(
            f"{model_dir} is not a Piper voice checkpoint (no 'piper' section in config.json)"
        )
    kwargs = {
        **from_pretrained_kwargs,
        "local_files_only": True,
        "use_safetensors": True,
        "trust_remote_code": False,
        "output_loading_info": True,
    }
    try:
        loaded: Any = PiperVitsModel.from_pretrained(model_dir, **kwargs)
        model, info = loaded
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        raise ModelLoadError(f"loading {model_dir} failed: {type(exc).__name__}: {exc}") from exc
    problems = {
        name: sorted(keys)[:8]
        for name in ("missing_keys", "unexpected_keys", "mismatched_keys")
        if (keys := info.get(name))
    }
    if problems:
        raise ModelLoadError(f"{model_dir}: the weights do not fit PiperVitsModel: {problems}")
    model.eval()
    return model


class PiperFrontend:
    """Text to a Piper voice's phoneme ids: espeak-ng IPA, then the voice's own id map.

    The TTS engine's front end (`backends.tts.FrontEnd`): `check` gives the text the voice
    will be given, `encode` the id rows of a batch of checked texts (one espeak-ng process per
    text, a few at a time), refusing a text with nothing speakable in it.
    """

    def __init__(self, phoneme_id_map: Mapping[str, Sequence[int]], espeak_voice: str) -> None:
        self.phoneme_id_map = {str(k): [int(i) for i in v] for k, v in phoneme_id_map.items()}
        self.espeak_voice = check_voice(espeak_voice)
        phoneme_ids("", self.phoneme_id_map)  # refuses a map without Piper's BOS, EOS and PAD

    @classmethod
    def from_config(
        cls, config_or_dir: VitsConfig | Mapping[str, Any] | str | os.PathLike
    ) -> PiperFrontend:
        """The front end a Piper checkpoint's config describes."""
        config = _config_dict(config_or_dir)
        if not is_piper_checkpoint(config):
            raise ModelLoadError("the config has no 'piper' section with a phoneme_id_map")
        piper = config["piper"]
        return cls(piper["phoneme_id_map"], piper.get("espeak_voice", "en-us"))

    def check(self, text: str) -> str:
        """The text espeak-ng will be given: control characters and unsupported symbols dropped.

        It does not refuse: the engine skips a sentence with no letter or digit left and
        refuses the request when none is left (`shared.text`); `encode` refuses such a text.
        """
        return clean_text(text)

    def phonemes(self, texts: Sequence[str]) -> list[str]:
        """The IPA phonemes of each text, as the voice reads them."""
        return phonemize_batch(texts, self.espeak_voice)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """The voice's phoneme ids for each sentence; INVALID_ARG naming one that gives none."""
        for index, text in enumerate(texts):
            if not is_speakable(text):
                raise invalid(
                    f"sentence {index} ({text[:40]!r}) has nothing speakable: no letter or digit is "
                    f"left after dropping control characters and unsupported symbols"
                )
        ids = [phoneme_ids(p, self.phoneme_id_map) for p in self.phonemes(texts)]
        for index, row in enumerate(ids):
            if not row:
                raise invalid(
                    f"sentence {index} ({texts[index][:40]!r}) gives no phoneme this voice knows"
                )
        return ids
