"""SpeechT5 as a batched TTS engine: an autoregressive mel decoder, then a HiFi-GAN vocoder.

What differs from VITS, and why this engine exists next to it:

* voices are speaker embeddings (512-value x-vectors), not ids: the checkpoint directory holds
  them in `voices.safetensors` (one tensor per voice name; safetensors, so no pickle);
* the spectrogram comes from an autoregressive decoder that stops when its stop-token
  probability crosses a threshold, so rows of a batch finish at different steps;
* the waveform comes from a separate vocoder checkpoint (`vocoder_path`);
* there is no duration model, so `speaking_rate` stretches the mel spectrogram in time before
  the vocoder (the pitch stays; each frame is a spectral slice).

`_decode` is `transformers`' `_generate_speech` loop, batched for independent rows:

* a row stops by its own stop probability or at its own length limit (`maxlenratio` times its
  own token count; transformers takes the padded batch's), and it gets the postnet on exactly
  its frames, as transformers does (rows that stop at the same step share one postnet call);
* the decoder prenet's dropout, which SpeechT5 applies at inference too, draws each row's mask
  from the row's own generator, and only for the newest frame, the only one the step uses
  (transformers redraws one mask, shared by the whole batch, for every past frame each step:
  the same distribution for the frame that matters, at a quadratic cost);
* the vocoder sees every row followed by zero frames (`hifigan_context_frames`), alone or
  batched, and each waveform is cut to its row's frames.

So a row's audio does not depend on its batch, and with the dropout switched off it is what
`generate_speech` returns for it alone (tests/test_tts_engine.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from backends.tts.engine import (
    FrontEnd,
    TextLimits,
    TokenizerFrontEnd,
    TtsEngine,
    Utterance,
    hifigan_context_frames,
)
from shared.errors import ModelLoadError
from shared.loading import (
    Loaded,
    LoadPlan,
    load_pretrained,
    model_store_root,
    resolve_model_dir,
)
from shared.logs import quiet_repeated_warnings
from shared.quantization import Placement, pretrained_kwargs

#: The speaker embeddings a SpeechT5 checkpoint directory must hold (voice name -> vector).
VOICES_FILE = "voices.safetensors"
#: Where the vocoder is looked for when the `vocoder_path` setting is empty.
DEFAULT_VOCODER_DIR = "vocoder"


class SpeechT5Engine(TtsEngine):
    """A loaded SpeechT5 text-to-speech checkpoint with its vocoder and voices."""

    #: transformers' generate_speech defaults: stop probability, and the decoder steps allowed
    #: per input token (at least minlenratio, at most maxlenratio, over the reduction factor).
    threshold = 0.5
    minlenratio = 0.0
    maxlenratio = 20.0

    def __init__(
        self,
        loaded: Loaded,
        vocoder: Any,
        voices: Mapping[str, Any],
        front_end: FrontEnd,
        limits: TextLimits,
    ) -> None:
        config = loaded.model.config
        # Text positions hold the sentence, SentencePiece's leading "▁" and </s>.
        super().__init__(front_end, limits, max_sentence_chars=config.max_text_positions - 2)
        self._loaded = loaded
        self.model = loaded.model
        self.vocoder = vocoder
        self.voices = tuple(voices)
        import torch

        self._speakers = torch.stack([voices[name] for name in self.voices]).to(
            self.model.device, self.model.dtype
        )
        self.sampling_rate = int(vocoder.config.sampling_rate)
        self.hop = int(np.prod(vocoder.config.upsample_rates))
        self.margin_frames = hifigan_context_frames(
            vocoder.config.upsample_rates,
            vocoder.config.upsample_kernel_sizes,
            vocoder.config.resblock_kernel_sizes,
            vocoder.config.resblock_dilation_sizes,
        )

    @classmethod
    def load(cls, plan: LoadPlan) -> SpeechT5Engine:
        from transformers import AutoTokenizer, SpeechT5ForTextToSpeech, SpeechT5HifiGan

        model_dir, placement = plan.model_dir, plan.placement
        if placement.device == "cpu" and placement.quantization in ("nf4", "fp4"):
            # Checked here, not at the first request: the load would succeed and every
            # synthesis fail.
            raise ModelLoadError(
                f"quantization {placement.quantization!r} cannot run SpeechT5 on the CPU: "
                "bitsandbytes' CPU 4-bit kernels need every quantized layer's input width to be "
                "a multiple of 64, and the decoder prenet reads 80 mel bins; use int8 here, or a GPU"
            )
        quiet_repeated_warnings()
        loaded = load_pretrained(SpeechT5ForTextToSpeech, AutoTokenizer, model_dir, placement)
        vocoder_path = plan.settings["vocoder_path"] or str(
            Path(model_dir).resolve() / DEFAULT_VOCODER_DIR
        )
        vocoder_dir = resolve_model_dir(vocoder_path, model_store_root())
        # Convolutions only: bitsandbytes has nothing to quantize, so it loads unquantized.
        unquantized = Placement(placement.device, placement.dtype, "none")
        try:
            vocoder = SpeechT5HifiGan.from_pretrained(
                vocoder_dir,
                local_files_only=True,
                trust_remote_code=False,
                use_safetensors=True,
                **pretrained_kwargs(unquantized),
            ).eval()
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"loading the vocoder {vocoder_dir} failed: {exc}") from exc
        voices = load_voices(model_dir / VOICES_FILE, loaded.model.config.speaker_embedding_dim)
        front_end = TokenizerFrontEnd(loaded.processor)
        return cls(loaded, vocoder, voices, front_end, TextLimits.from_settings(plan.settings))

    def describe(self) -> str:
        return (
            f"speecht5 voices={len(self.voices)} rate={self.sampling_rate} Hz "
            f"{self._loaded.describe()}"
        )

    # --- synthesis ------------------------------------------------------------------------------

    def _forward(self, ids: list[list[int]], utterances: list[Utterance]) -> list[np.ndarray]:
        import torch

        device = self.model.device
        input_ids = torch.full((len(ids), max(map(len, ids))), self._pad_id(), dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for r, row in enumerate(ids):
            input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        generators = [torch.Generator(device=device).manual_seed(u.seed) for u in utterances]
        speakers = self._speakers[[u.voice for u in utterances]]
        with torch.inference_mode():
            spectrograms = self._decode(input_ids.to(device), mask.to(device), speakers, generators)
            spectrograms = [
                _stretch(s, u.speaking_rate) for s, u in zip(spectrograms, utterances, strict=True)
            ]
            frames = [s.shape[0] for s in spectrograms]
            padded = torch.zeros(
                (len(ids), max(frames) + self.margin_frames, spectrograms[0].shape[1]),
                device=device,
                dtype=self.vocoder.dtype,
            )
            for r, spectrogram in enumerate(spectrograms):
                padded[r, : frames[r]] = spectrogram
            waveform = self.vocoder(padded).float().cpu().numpy()
        return [waveform[r, : n * self.hop].copy() for r, n in enumerate(frames)]

    def predict_frames(self, ids: list[list[int]], utterances: list[Utterance]) -> list[int]:
        """A bound, not a prediction: the decoder stops by its own stop probability, known only
        once it runs, but never after `maxlenratio` steps per token or its positional table
        (`_decode`); each step makes `reduction_factor` frames, then `_stretch` rescales them."""
        config = self.model.config
        reduction = config.reduction_factor
        limit = config.max_speech_positions - 1
        return [
            max(
                1,
                round(
                    min(int(len(row) * self.maxlenratio / reduction), limit)
                    * reduction
                    / u.speaking_rate
                ),
            )
            for row, u in zip(ids, utterances, strict=True)
        ]

    def _pad_id(self) -> int:
        pad = self.model.config.pad_token_id
        return 0 if pad is None else int(pad)

    def _decode(self, input_ids: Any, mask: Any, speakers: Any, generators: list[Any]) -> list[Any]:
        """Each row's mel spectrogram (frames x mel bins), after the postnet."""
        import torch

        model = self.model
        config = model.config
        rows = input_ids.shape[0]
        reduction = config.reduction_factor
        encoder = model.speecht5.encoder(input_values=input_ids, attention_mask=mask)
        hidden = encoder.last_hidden_state
        tokens = mask.sum(dim=1).tolist()
        limit = config.max_speech_positions - 1  # the prenet's positional table
        max_steps = [min(int(n * self.maxlenratio / reduction), limit) for n in tokens]
        min_steps = [int(n * self.minlenratio / reduction) for n in tokens]
        postnet = model.speech_decoder_postnet

        frame = hidden.new_zeros((rows, config.num_mel_bins))  # decoding starts from silence
        past = None
        spectra: list[Any] = []
        stops: dict[int, list[int]] = {}  # step -> rows that stop there
        going = set(range(rows))
        step = 0
        while going:
            step += 1
            prenet = self._prenet(frame, step - 1, speakers, generators)
            out = model.speecht5.decoder.wrapped_decoder(
                hidden_states=prenet,
                attention_mask=None,
                encoder_hidden_states=hidden,
                encoder_attention_mask=mask,
                past_key_values=past,
                use_cache=True,
                return_dict=True,
            )
            last = out.last_hidden_state.squeeze(1)
            past = out.past_key_values
            spectrum = postnet.feat_out(last).view(rows, reduction, config.num_mel_bins)
            spectra.append(spectrum)
            frame = spectrum[:, -1, :]
            probability = torch.sigmoid(postnet.prob_out(last)).sum(dim=-1).tolist()
            for r in sorted(going):
                if step < min_steps[r]:
                    continue
                if probability[r] >= self.threshold or step >= max_steps[r]:
                    stops.setdefault(step, []).append(r)
                    going.discard(r)
        stacked = torch.stack(spectra, dim=1).flatten(1, 2)  # rows x (steps * reduction) x mel
        result: dict[int, Any] = {}
        for stop, stopped in stops.items():
            refined = postnet.postnet(stacked[stopped, : stop * reduction])
            result.update(zip(stopped, refined, strict=True))
        return [result[r] for r in range(rows)]

    def _prenet(self, frame: Any, position: int, speakers: Any, generators: list[Any]) -> Any:
        """The decoder prenet for the newest frame only, each row with its own dropout mask.

        SpeechT5SpeechDecoderPrenet.forward, restricted to one position: linear layers with
        ReLU and dropout (always on, p = speech_decoder_prenet_dropout), the final layer, the
        scaled positional encoding at `position`, then the speaker embedding.
        """
        import torch
        from torch import nn

        prenet = self.model.speecht5.decoder.prenet
        p = self.model.config.speech_decoder_prenet_dropout
        hidden = frame
        for layer in prenet.layers:
            hidden = nn.functional.relu(layer(hidden))
            keep = torch.stack(
                [torch.bernoulli(hidden[r], p, generator=gen) for r, gen in enumerate(generators)]
            )
            hidden = self._dropout(hidden, keep, p)
        hidden = prenet.final_layer(hidden)
        positions = prenet.encode_positions
        hidden = hidden + positions.alpha * positions.pe[0, position]
        normalized = nn.functional.normalize(speakers)
        hidden = nn.functional.relu(
            prenet.speaker_embeds_layer(torch.cat([hidden, normalized], dim=-1))
        )
        return hidden.unsqueeze(1)

    @staticmethod
    def _dropout(hidden: Any, keep: Any, p: float) -> Any:
        """As SpeechT5's `_consistent_dropout`: `keep` is 1 where a unit survives."""
        import torch

        return torch.where(keep == 1, hidden, 0) * 1 / (1 - p)


def _stretch(spectrogram: Any, speaking_rate: float) -> Any:
    """The mel spectrogram resampled in time to `1 / speaking_rate` of its length."""
    if speaking_rate == 1.0:
        return spectrogram
    from torch import nn

    frames = max(1, round(spectrogram.shape[0] / speaking_rate))
    stretched = nn.functional.interpolate(
        spectrogram.T.unsqueeze(0), size=frames, mode="linear", align_corners=False
    )
    return stretched[0].T


def load_voices(path: Path, dim: int) -> dict[str, Any]:
    """Voice name -> speaker embedding, from a safetensors file of 1-D float tensors."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing: a SpeechT5 checkpoint needs its voices as speaker embeddings, "
            f"a safetensors file of one {dim}-value tensor per voice name (docs/models/tts.md)"
        )
    try:
        voices = load_file(str(path))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot read the voices in {path}: {exc}") from exc
    bad = sorted(name for name, vector in voices.items() if tuple(vector.shape) != (dim,))
    if not voices or bad:
        raise ModelLoadError(
            f"{path} must hold one {dim}-value tensor per voice; "
            + (f"these are not: {bad}" if bad else "it holds none")
        )
    return {name: voices[name].float() for name in sorted(voices)}
