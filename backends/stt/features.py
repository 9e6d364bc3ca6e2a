"""Whisper's long-form log-mel features, computed a window at a time.

`WhisperFeatureExtractor(audio, truncation=False, padding="longest")` makes the features of a
batch from spectrograms of the whole clips at once: for 30 minutes, a complex STFT of 289 MB,
its magnitudes, squares and several full-size temporaries, about 1.1 GB at its peak for 58 MB
of features. `long_form_features` makes the same numbers (bit for bit: `tests/test_stt_engine.py`
compares them with the extractor's) from one block of frames at a time, so the memory it needs
is the features themselves plus one block's spectrogram. What makes this exact:

- each STFT frame reads only its own n_fft samples (the clip padded with zeros to the batch's
  longest row, reflected at that padded row's two ends, as `torch.stft(center=True)` does);
  a block gets exactly its frames' samples and runs `torch.stft(center=False)`;
- the clamp at 8 below the row's maximum (Whisper's dynamic range) needs that maximum of the
  whole row: the log-mel values are stored first, then clamped and scaled in place once the
  maximum is known.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Frames per block: one model window (30 s) of Whisper's 100 frames a second.
BLOCK_FRAMES = 3000


def long_form_features(
    audio: list[np.ndarray], extractor: Any, block_frames: int = BLOCK_FRAMES
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_features, attention_mask)` as the extractor makes them for `audio` (mono
    float32 rows at its rate), each row first zero-padded to whole hops, then the batch padded
    to its longest row: features (rows, mel bins, frames) float32, mask (rows, frames) int32."""
    hop = int(extractor.hop_length)
    n_fft = int(extractor.n_fft)
    half = n_fft // 2
    # Rows are padded to whole hops (a lone clip and a batched clip then count the same frames).
    padded = [-(-row.shape[0] // hop) * hop for row in audio]
    length = max(padded)  # every row is padded with zeros to this many samples
    frames = length // hop
    if length <= half:
        raise ValueError(f"long-form features need more than {half} samples, got {length}")
    window = torch.hann_window(n_fft)
    mel_filters = torch.from_numpy(extractor.mel_filters).to(torch.float32).T
    features = torch.empty((len(audio), mel_filters.shape[0], frames), dtype=torch.float32)
    mask = torch.zeros((len(audio), frames), dtype=torch.int32)
    for index, row in enumerate(audio):
        mask[index, : padded[index] // hop] = 1
        for start in range(0, frames, block_frames):
            stop = min(frames, start + block_frames)
            samples = _block(row, length, start * hop - half, (stop - 1) * hop + half)
            stft = torch.stft(
                torch.from_numpy(samples), n_fft, hop, window=window, center=False,
                return_complex=True,
            )  # fmt: skip
            power = (stft.abs() ** 2).contiguous()
            features[index, :, start:stop] = torch.clamp(mel_filters @ power, min=1e-10).log10()
        values = features[index]
        torch.maximum(values, values.max() - 8.0, out=values)
        values.add_(4.0).div_(4.0)
    return features, mask


def _block(row: np.ndarray, length: int, first: int, stop: int) -> np.ndarray:
    """Samples `first` to `stop` (exclusive) of `row` padded with zeros to `length` samples,
    reflected at both ends of that padded row (indices below 0 or from `length` on)."""
    index = np.arange(first, stop)
    index = np.abs(index)
    index = np.where(index >= length, 2 * (length - 1) - index, index)
    inside = index < row.shape[0]
    samples = np.zeros(index.shape[0], dtype=np.float32)
    samples[inside] = row[index[inside]]
    return samples
