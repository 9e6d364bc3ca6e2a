"""The Triton side of the TTS models: request parsing and output tensors.

`tts` (one response per request) and `tts_stream` (audio sentence by sentence) take the same
inputs, answer with the same tensors and record the same metrics; this module holds them once,
so each `model.py` is only its execution pattern.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.tts.engine import TtsEngine, TtsRow
from serving import metrics, tensors
from serving.protocols import Request
from shared.audio import check_output_format, check_output_rate, encode_speech, resample
from shared.errors import invalid


@dataclass(frozen=True)
class SpeechRow:
    """One validated row: what to synthesise, and how to encode it for the client."""

    speech: TtsRow
    format: str
    sample_rate: int | None  # None: the model's own rate


def parse(
    request: Request,
    engine: TtsEngine,
    settings: Mapping[str, Any],
    max_rows: int | None = None,
) -> list[SpeechRow]:
    """A request's rows, each checked; any bad value fails the request with INVALID_ARG."""
    rows = tensors.request_rows(request, "text")
    if max_rows is not None and rows > max_rows:
        raise invalid(f"input 'text' has {rows} rows; this model takes at most {max_rows}")
    text = tensors.text_column(request, "text", rows, max_chars=settings["max_text_chars"])
    assert text is not None  # request_rows found it
    voice: Sequence[str | None] = (
        tensors.text_column(request, "voice", rows, max_chars=256) or [None] * rows
    )
    rate = tensors.number_column(request, "speaking_rate", rows, float) or [None] * rows
    seed = tensors.number_column(request, "seed", rows, int) or [None] * rows
    fmt: Sequence[str | None] = (
        tensors.text_column(request, "format", rows, max_chars=32) or [None] * rows
    )
    sample_rate = tensors.number_column(request, "sample_rate", rows, int) or [None] * rows
    return [
        SpeechRow(
            speech=engine.row(text[i], voice=voice[i], speaking_rate=rate[i], seed=seed[i]),
            format=check_output_format(fmt[i]),
            sample_rate=check_output_rate(sample_rate[i]),
        )
        for i in range(rows)
    ]


def output_tensors(
    engine: TtsEngine, rows: Sequence[SpeechRow], waveforms: Sequence[np.ndarray]
) -> list[Any]:
    """`audio` (encoded as each row asked) and `sample_rate`, one row each."""
    encoded, rates = [], []
    for row, waveform in zip(rows, waveforms, strict=True):
        rate = row.sample_rate or engine.sampling_rate
        encoded.append(
            encode_speech(resample(waveform, engine.sampling_rate, rate), rate, row.format)
        )
        rates.append(rate)
    return [tensors.bytes_tensor("audio", encoded), tensors.int_tensor("sample_rate", rates)]


class SpeechMetrics:
    """Audio out, its real-time factor, and on streams the time to first audio."""

    def __init__(self, model_name: str, streams: bool = False) -> None:
        self.audio = metrics.AudioMetrics(model_name)
        self.first_audio = metrics.Family(metrics.FIRST_AUDIO, model_name) if streams else None

    def spoken(self, engine: TtsEngine, waveforms: Sequence[np.ndarray], elapsed: float) -> None:
        """One unary request's waveforms, answered `elapsed` seconds into execute()."""
        self.audio.record(sum(w.shape[0] for w in waveforms) / engine.sampling_rate, elapsed)

    def piece(self, engine: TtsEngine, sent: float, waveform: np.ndarray, elapsed: float) -> float:
        """A stream's next piece, after `sent` seconds of audio; the seconds sent with it."""
        if sent == 0 and self.first_audio is not None:
            self.first_audio.observe(elapsed)
        seconds = waveform.shape[0] / engine.sampling_rate
        self.audio.seconds.increment(seconds)
        return sent + seconds
