"""A Piper voice as a TTS engine: VitsEngine's batching with Piper's decoder and front end.

A Piper voice is a VITS model, so everything `VitsEngine` does for a batch holds for it
unchanged: per-row noise generators, per-row speaking rates, and the zero frames after every
row that keep a padded batch's vocoder from hearing a neighbour (`hifigan_context_frames` is
computed for HiFi-GAN's "ResBlock1", two convolutions per dilation, so it bounds the reach of
Piper's one-convolution "ResBlock2" too; tests/test_tts_piper.py checks a row's audio alone and
inside a batch). Only two steps differ, and they are the overridable ones:

* `load_model`: `backends.tts.piper_model.load_piper_vits` (VitsModel with "ResBlock2"
  blocks), with the placement's `from_pretrained` arguments (dtype, device map, bitsandbytes
  quantization);
* `front_end_for`: `backends.tts.piper_model.PiperFrontend` (espeak-ng IPA, then the voice's
  phoneme ids), tried once at load so that a missing or broken espeak-ng fails the load, not
  every request.

The voice's inference settings come from its config.json (Piper's `.onnx.json`): VitsModel's
`noise_scale` is Piper's noise_scale, `noise_scale_duration` its noise_w and `speaking_rate`
the inverse of its length_scale; the `noise_scale` and `noise_w` settings of the TTS models
override the first two (`VitsEngine.load`), and a request's `speaking_rate` multiplies the third.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from backends.tts.engine import FrontEnd
from backends.tts.piper_model import PiperFrontend, load_piper_vits
from backends.tts.vits import VitsEngine
from shared.errors import ModelLoadError
from shared.loading import Loaded, finish_load
from shared.logs import quiet_repeated_warnings
from shared.phonemes import PhonemizerError
from shared.quantization import Placement, pretrained_kwargs

#: Spoken once at load: proves espeak-ng runs and knows the voice's language.
_PROBE_TEXT = "Ready."


class PiperEngine(VitsEngine):
    """A loaded Piper voice (one speaker, voice "0"), batched as any VITS."""

    @classmethod
    def load_model(cls, model_dir: Path, placement: Placement) -> Loaded:
        """The voice with the placement's dtype, device and quantization; no tokenizer (the
        front end is built from config.json by `front_end_for`)."""
        quiet_repeated_warnings()
        started = time.perf_counter()
        model = load_piper_vits(model_dir, **pretrained_kwargs(placement))
        return finish_load(model, None, placement, started)

    @classmethod
    def front_end_for(cls, model_dir: Path, loaded: Loaded) -> FrontEnd:
        front_end = PiperFrontend.from_config(model_dir)
        try:
            front_end.encode([_PROBE_TEXT])
        except PhonemizerError as exc:
            raise ModelLoadError(f"the Piper voice in {model_dir} cannot speak: {exc}") from exc
        return front_end

    def describe(self) -> str:
        piper: dict[str, Any] = getattr(self.model.config, "piper", None) or {}
        return (
            f"piper voice={piper.get('voice', '?')} voices={len(self.voices)} "
            f"rate={self.sampling_rate} Hz {self._noise_settings()} {self._loaded.describe()}"
        )
