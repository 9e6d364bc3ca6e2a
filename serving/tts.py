"""The Triton side of the TTS models: request parsing and output tensors.

`tts` (one response per request) and `tts_stream` (audio sentence by sentence) take the same
inputs and answer with the same tensors; this module holds them once, so each `model.py` is
only its execution pattern.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.tts.engine import TtsEngine, TtsRow
from serving import tensors
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
