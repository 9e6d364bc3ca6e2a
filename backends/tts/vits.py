"""VITS (the MMS-TTS family) as a batched TTS engine: one padded forward pass per call.

transformers' `VitsModel.forward` synthesises a padded batch, but three things it does cannot
serve a batch of independent requests:

* it draws its noise (the stochastic duration predictor's and the prior's) for the whole batch
  from the global generator, so a row's audio depends on its neighbours and their lengths;
* it takes one speaker id and one speaking rate for the whole batch;
* its HiFi-GAN decoder has no padding mask, so a short row's last samples hear the padding
  that follows it in the batch.

So `VitsEngine._synthesize` runs the same modules in the same order as `VitsModel.forward`
(text encoder, duration predictor, alignment expansion, flow, decoder), with each row's noise
drawn from its own `torch.Generator`, in the shapes and order the model draws it for a batch
of one, a speaker embedding and length scale per row, and every row followed by
`hifigan_context_frames` zero frames before the decoder. A row's audio is then what the
model gives for it alone (tests/test_tts_engine.py checks both), and each waveform is cut to the
row's own predicted length (`sequence_lengths`), with no padding tail.

Model construction (`load_model`) and the text front end (`front_end_for`) are separate
overridable steps, so a VITS with another decoder variant or a phoneme front end reuses the
batching here unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
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
from shared.loading import Loaded, LoadPlan, load_pretrained
from shared.logs import quiet_repeated_warnings
from shared.quantization import Placement


@dataclass(frozen=True)
class _Durations:
    """What the text encoder and the duration predictor give a batch (torch tensors)."""

    encoded: Any  # the text encoder's output (prior means and log-variances)
    speakers: Any  # the rows' speaker embeddings, or None
    padding_mask: Any  # (rows, 1, tokens)
    duration: Any  # frames per token, (rows, 1, tokens)
    frames: Any  # frames per row, (rows,)


class VitsEngine(TtsEngine):
    """A loaded VITS checkpoint: voices are speaker ids ("0", "1", ...), one for MMS-TTS."""

    def __init__(
        self,
        loaded: Loaded,
        front_end: FrontEnd,
        limits: TextLimits,
        noise_scale: float | None = None,
        noise_scale_duration: float | None = None,
    ) -> None:
        super().__init__(front_end, limits, max_sentence_chars=limits.max_sentence_chars)
        self._loaded = loaded
        self.model = loaded.model
        config = self.model.config
        # The noise settings (None: the checkpoint's own, which VitsModel copied from its
        # config): how much the prior's noise varies the voice, and the duration predictor's
        # how much it varies the rhythm (Piper calls them noise_scale and noise_w).
        self.noise_scale = float(self.model.noise_scale if noise_scale is None else noise_scale)
        self.noise_scale_duration = float(
            self.model.noise_scale_duration
            if noise_scale_duration is None
            else noise_scale_duration
        )
        if config.use_stochastic_duration_prediction:
            # Durations are computed in float32 whatever the model's dtype: in bfloat16 the
            # predictor's rational-quadratic spline can round its discriminant below zero
            # (transformers then raises ValueError for that sentence: measured with the Piper
            # voice), and sums and cumulative sums of frame counts above 256 are not exact.
            # The predictor is small (convolutions only): float32 costs nothing measurable.
            self.model.duration_predictor.float()
        self.sampling_rate = int(config.sampling_rate)
        self.voices = self.voice_names(config)
        self.hop = int(np.prod(config.upsample_rates))
        self.margin_frames = hifigan_context_frames(
            config.upsample_rates,
            config.upsample_kernel_sizes,
            config.resblock_kernel_sizes,
            config.resblock_dilation_sizes,
        )

    # --- loading: each step overridable -------------------------------------------------------

    @classmethod
    def load(cls, plan: LoadPlan) -> VitsEngine:
        loaded = cls.load_model(plan.model_dir, plan.placement)
        return cls(
            loaded,
            cls.front_end_for(plan.model_dir, loaded),
            TextLimits.from_settings(plan.settings),
            noise_scale=plan.settings["noise_scale"],
            noise_scale_duration=plan.settings["noise_w"],
        )

    @classmethod
    def load_model(cls, model_dir: Path, placement: Placement) -> Loaded:
        """The model and its tokenizer, with the project's secure loading defaults."""
        from transformers import AutoTokenizer, VitsModel

        quiet_repeated_warnings()
        return load_pretrained(VitsModel, AutoTokenizer, model_dir, placement)

    @classmethod
    def front_end_for(cls, model_dir: Path, loaded: Loaded) -> FrontEnd:
        """The checkpoint's tokenizer (MMS-TTS: characters, with blanks between them)."""
        return TokenizerFrontEnd(loaded.processor)

    @staticmethod
    def voice_names(config: Any) -> tuple[str, ...]:
        return tuple(str(i) for i in range(max(1, int(config.num_speakers))))

    def describe(self) -> str:
        return (
            f"vits voices={len(self.voices)} rate={self.sampling_rate} Hz "
            f"{self._noise_settings()} {self._loaded.describe()}"
        )

    def _noise_settings(self) -> str:
        return f"noise_scale={self.noise_scale:g} noise_w={self.noise_scale_duration:g}"

    # --- synthesis ------------------------------------------------------------------------------

    def _forward(self, ids: list[list[int]], utterances: list[Utterance]) -> list[np.ndarray]:
        import torch

        input_ids, mask, generators = self._inputs(ids, utterances)
        with torch.inference_mode():
            waveform, samples = self._synthesize(input_ids, mask, utterances, generators)
        waveform = waveform.float().cpu().numpy()
        return [waveform[r, :n].copy() for r, n in enumerate(samples)]

    def predict_frames(self, ids: list[list[int]], utterances: list[Utterance]) -> list[int]:
        """The frames the duration predictor gives each row: exactly what `_forward` makes,
        since each row draws its noise from its own generator (the text encoder and the
        predictor are a small part of the work; the flow and the vocoder are not run)."""
        import torch

        input_ids, mask, generators = self._inputs(ids, utterances)
        with torch.inference_mode():
            durations = self._durations(input_ids, mask, utterances, generators)
        return [int(n) for n in durations.frames.tolist()]

    def _inputs(self, ids: list[list[int]], utterances: list[Utterance]) -> tuple[Any, Any, Any]:
        """Padded ids, their mask, and a generator per row seeded from its utterance."""
        import torch

        device = self.model.device
        input_ids = torch.zeros((len(ids), max(len(row) for row in ids)), dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for r, row in enumerate(ids):
            input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        generators = [torch.Generator(device=device).manual_seed(u.seed) for u in utterances]
        return input_ids.to(device), mask.to(device), generators

    def _durations(
        self, input_ids: Any, mask: Any, utterances: list[Utterance], generators: list[Any]
    ) -> _Durations:
        """The first half of VitsModel.forward: text encoder, then each token's frames."""
        import torch

        model = self.model
        config = model.config
        device = input_ids.device
        dtype = model.text_encoder.embed_tokens.weight.dtype
        rows = input_ids.shape[0]
        lengths = mask.sum(dim=1).tolist()

        padding_mask = mask.unsqueeze(-1).to(dtype)
        speakers = None
        if config.num_speakers > 1:
            voice_ids = torch.tensor([u.voice for u in utterances], device=device)
            speakers = model.embed_speaker(voice_ids).unsqueeze(-1)
        encoded = model.text_encoder(
            input_ids=input_ids, padding_mask=padding_mask, attention_mask=mask, return_dict=True
        )
        hidden = encoded.last_hidden_state.transpose(1, 2)
        padding_mask = padding_mask.transpose(1, 2)

        if config.use_stochastic_duration_prediction:
            # As the predictor draws it for a batch of one: (1, 2, tokens), float32; the
            # predictor itself runs in float32 (see __init__).
            noise = torch.zeros((rows, 2, input_ids.shape[1]), device=device)
            for r, (n, gen) in enumerate(zip(lengths, generators, strict=True)):
                noise[r, :, :n] = torch.randn((2, n), generator=gen, device=device)
            log_duration = self._stochastic_log_durations(
                hidden.float(),
                padding_mask.float(),
                None if speakers is None else speakers.float(),
                noise * self.noise_scale_duration,
            )
        else:
            log_duration = model.duration_predictor(hidden, padding_mask, speakers)

        # frame counts in float32 (exact integers), whatever the model's dtype
        rates = torch.tensor([u.speaking_rate for u in utterances], device=device)
        length_scale = (1.0 / (model.speaking_rate * rates)).view(rows, 1, 1)
        duration = torch.ceil(torch.exp(log_duration.float()) * padding_mask.float() * length_scale)
        frames = torch.clamp_min(torch.sum(duration, [1, 2]), 1).long()
        return _Durations(encoded, speakers, padding_mask, duration, frames)

    def _synthesize(
        self, input_ids: Any, mask: Any, utterances: list[Utterance], generators: list[Any]
    ) -> tuple[Any, list[int]]:
        """VitsModel.forward for a batch of independent rows (see the module docstring).

        Returns the padded waveforms (rows x samples) and each row's own sample count.
        """
        import torch
        from torch import nn

        model = self.model
        device = input_ids.device
        dtype = model.text_encoder.embed_tokens.weight.dtype
        rows = input_ids.shape[0]
        durations = self._durations(input_ids, mask, utterances, generators)
        encoded, speakers = durations.encoded, durations.speakers
        padding_mask, duration, frames = (
            durations.padding_mask,
            durations.duration,
            durations.frames,
        )

        # Expand the prior over the predicted frames, exactly as VitsModel.forward does.
        indices = torch.arange(int(frames.max()), dtype=frames.dtype, device=device)
        output_mask = (indices.unsqueeze(0) < frames.unsqueeze(1)).unsqueeze(1).to(dtype)
        attn_mask = torch.unsqueeze(padding_mask, 2) * torch.unsqueeze(output_mask, -1)
        _, _, output_length, input_length = attn_mask.shape
        cum_duration = torch.cumsum(duration, -1).view(rows * input_length, 1)
        positions = torch.arange(output_length, dtype=duration.dtype, device=device)
        valid = (positions.unsqueeze(0) < cum_duration).to(dtype)
        valid = valid.view(rows, input_length, output_length)
        starts = valid - nn.functional.pad(valid, [0, 0, 1, 0, 0, 0])[:, :-1]
        attn = starts.unsqueeze(1).transpose(2, 3) * attn_mask
        means = torch.matmul(attn.squeeze(1), encoded.prior_means).transpose(1, 2)
        log_variances = torch.matmul(attn.squeeze(1), encoded.prior_log_variances).transpose(1, 2)

        # randn_like(prior_means) for a batch of one: prior_means is a transposed view there,
        # and normal_ fills a strided tensor in another order than a contiguous one.
        noise = torch.zeros_like(means)
        channels = means.shape[1]
        for r, (n, gen) in enumerate(zip(frames.tolist(), generators, strict=True)):
            drawn = torch.empty_strided((channels, n), (1, channels), device=device, dtype=dtype)
            noise[r, :, :n] = drawn.normal_(generator=gen)
        prior = means + noise * torch.exp(log_variances) * self.noise_scale
        latents = model.flow(prior, output_mask, speakers, reverse=True)
        spectrogram = nn.functional.pad(latents * output_mask, (0, self.margin_frames))
        waveform = model.decoder(spectrogram, speakers).squeeze(1)
        return waveform, [n * self.hop for n in frames.tolist()]

    def _stochastic_log_durations(
        self, hidden: Any, padding_mask: Any, speakers: Any, noise: Any
    ) -> Any:
        """VitsStochasticDurationPredictor in reverse, with the caller's noise."""
        import torch

        predictor = self.model.duration_predictor
        inputs = predictor.conv_pre(hidden)
        if speakers is not None:
            inputs = inputs + predictor.cond(speakers)
        inputs = predictor.conv_dds(inputs, padding_mask)
        inputs = predictor.conv_proj(inputs) * padding_mask
        flows = list(reversed(predictor.flows))
        flows = [*flows[:-2], flows[-1]]  # as transformers: the unused flow is skipped
        latents = noise
        for flow in flows:
            latents = torch.flip(latents, [1])
            latents, _ = flow(latents, padding_mask, global_conditioning=inputs, reverse=True)
        log_duration, _ = torch.split(latents, [1, 1], dim=1)
        return log_duration
