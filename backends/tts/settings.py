"""The settings of the TTS models `tts` and `tts_stream` (config.pbtxt or environment)."""

from __future__ import annotations

from shared.params import Param, load_params


def tts_params(default_model_path: str) -> list[Param]:
    """Every setting of a TTS model, with the voice it serves by default."""
    return [
        *load_params(default_model_path=default_model_path),
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
            "max_text_chars",
            2000,
            parse=int,
            minimum=1,
            maximum=100_000,
            doc="longest text accepted, counted once normalised (NFKC)",
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
            "max_audio_seconds",
            600.0,
            parse=float,
            minimum=1.0,
            maximum=86_400.0,
            doc="most audio one request may ask for, predicted before synthesis",
        ),
        Param(
            "max_pass_audio_seconds",
            60.0,
            parse=float,
            minimum=1.0,
            maximum=86_400.0,
            doc="most audio one padded forward pass holds (rows x longest row; bounds memory); "
            "a longer sentence is refused",
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
