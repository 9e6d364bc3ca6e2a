"""The Triton side of the TTS models: settings, request parsing and output tensors.

`model_repository/tts` (one response per request) and `model_repository/tts_stream` (audio
sentence by sentence) take the same inputs and settings and answer with the same tensors; this
module holds them once, so each `model.py` is only its execution pattern. Like
`shared.triton`, it is imported only inside the Python backend stub or the test harness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from backends.tts import TextLimits, TtsEngine, TtsRow, load_engine
from shared import triton
from shared.audio import check_output_format, check_output_rate, encode_speech, resample
from shared.errors import invalid
from shared.loading import plan_load
from shared.params import Param, load_params

#: The default voice: Piper's en_US "joe" (tools/model_store/piper_voice.py builds it).
DEFAULT_VOICE = "piper-en_US-joe-medium"


PARAMS = [
    *load_params(default_model_path=DEFAULT_VOICE),
    Param(
        "vocoder_path",
        "",
        doc="SpeechT5 only: the HiFi-GAN vocoder in the store; empty: <model_path>/vocoder",
    ),
    Param(
        "noise_scale",
        None,
        parse=float,
        minimum=0.0,
        maximum=2.0,
        doc="VITS: how much the voice varies (timbre, intonation); empty: the checkpoint's "
        "own (Piper's noise_scale, 0.667 for en_US-joe); 0: none",
    ),
    Param(
        "noise_w",
        None,
        parse=float,
        minimum=0.0,
        maximum=2.0,
        doc="VITS: how much the rhythm varies (VitsModel's noise_scale_duration, Piper's "
        "noise_w); empty: the checkpoint's own (0.8 for en_US-joe); 0: none",
    ),
    Param(
        "max_text_chars", 2000, parse=int, minimum=1, maximum=100_000, doc="longest text accepted"
    ),
    Param(
        "max_sentence_chars",
        300,
        parse=int,
        minimum=20,
        maximum=2000,
        doc="longer sentences are split at clauses, then spaces",
    ),
    Param(
        "sentence_pause_seconds",
        0.2,
        parse=float,
        minimum=0.0,
        maximum=5.0,
        doc="silence between the sentences of one text",
    ),
    Param(
        "max_batch_sentences",
        32,
        parse=int,
        minimum=1,
        maximum=1024,
        doc="sentences per forward pass; more are run in several passes (bounds memory)",
    ),
]


@dataclass(frozen=True)
class SpeechRow:
    """One validated row: what to synthesise, and how to encode it for the client."""

    speech: TtsRow
    format: str
    sample_rate: int | None  # None: the model's own rate


def load(args: dict[str, str]) -> tuple[TtsEngine, dict[str, Any]]:
    """The engine for the checkpoint this model's settings name, and the settings."""
    plan = plan_load(args, PARAMS)
    settings = plan.settings
    limits = TextLimits(
        max_text_chars=settings["max_text_chars"],
        max_sentence_chars=settings["max_sentence_chars"],
        sentence_pause_seconds=settings["sentence_pause_seconds"],
        max_batch_sentences=settings["max_batch_sentences"],
    )
    return load_engine(plan.model_dir, plan.placement, limits, settings), settings


def parse(
    request: Any, engine: TtsEngine, settings: dict[str, Any], max_rows: int | None = None
) -> list[SpeechRow]:
    """A request's rows, each checked; any bad value fails the request with INVALID_ARG."""
    rows = triton.request_rows(request, "text")
    if max_rows is not None and rows > max_rows:
        raise invalid(f"input 'text' has {rows} rows; this model takes at most {max_rows}")
    text = triton.text_column(request, "text", rows, max_chars=settings["max_text_chars"])
    assert text is not None  # request_rows found it
    voice = triton.text_column(request, "voice", rows, max_chars=256) or [None] * rows
    rate = triton.number_column(request, "speaking_rate", rows, float) or [None] * rows
    seed = triton.number_column(request, "seed", rows, int) or [None] * rows
    fmt = triton.text_column(request, "format", rows, max_chars=32) or [None] * rows
    sample_rate = triton.number_column(request, "sample_rate", rows, int) or [None] * rows
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
    return [
        triton.bytes_tensor("audio", encoded),
        pb_utils.Tensor("sample_rate", np.array(rates, dtype=np.int32).reshape(-1, 1)),
    ]
