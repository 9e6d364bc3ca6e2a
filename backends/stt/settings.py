"""The settings of the speech-to-text models (config.pbtxt parameters or environment)."""

from __future__ import annotations

from shared.audio import MAX_SAMPLES
from shared.params import Param, load_params


def stt_params(default_model_path: str) -> list[Param]:
    """Every setting of an STT model, with the checkpoint it serves by default."""
    return [
        *load_params(default_model_path=default_model_path),
        Param("max_audio_seconds", 1800.0, parse=float, minimum=1.0, doc="longest accepted audio"),
        Param("max_audio_bytes", 64 << 20, parse=int, minimum=1024, doc="largest accepted file"),
        Param(
            "max_audio_samples",
            MAX_SAMPLES,
            parse=int,
            minimum=16_000,
            doc="most samples (frames x channels) a file may decode to, read from its header "
            "before decoding",
        ),
        Param("max_new_tokens", 440, parse=int, minimum=1, doc="upper bound per 30 s window"),
        Param(
            "max_pass_audio_seconds",
            1800.0,
            parse=float,
            minimum=30.0,
            doc="rows x longest row (seconds of audio) one generate() call may hold; a larger "
            "batch is split, so its features and activations stay bounded",
        ),
        Param(
            "max_batch_audio_seconds",
            1800.0,
            parse=float,
            minimum=1.0,
            doc="decoded audio one execute() holds at once (as the files' headers declare "
            "it); a larger batch is decoded and run in groups, a larger request is refused",
        ),
    ]
