"""Audio decoding for requests: any container libsndfile reads, any rate, any channel count.

Untrusted bytes are checked in the order that keeps a hostile request cheap: the byte size
before decoding, the header's duration before reading samples, then the samples themselves
(NaN or infinite values). Every failure is a `RequestError` naming the input and the limit.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
import soxr

from shared.errors import invalid


def decode_audio(
    data: bytes,
    *,
    target_rate: int,
    max_seconds: float,
    max_bytes: int,
    name: str = "audio",
) -> np.ndarray:
    """Decode an encoded audio file to mono float32 at `target_rate`.

    Channels are averaged (a stereo call recording keeps both speakers) and the rate is
    converted with soxr's high-quality resampler.
    """
    if len(data) == 0:
        raise invalid(f"input '{name}' is empty")
    if len(data) > max_bytes:
        raise invalid(
            f"input '{name}' is {len(data)} bytes; the limit is {max_bytes} bytes (max_audio_bytes)"
        )
    try:
        with sf.SoundFile(io.BytesIO(data)) as sound:
            rate, frames = sound.samplerate, sound.frames
            if rate <= 0:
                raise invalid(f"input '{name}' declares a sample rate of {rate} Hz")
            seconds = frames / rate
            if seconds > max_seconds:
                raise invalid(
                    f"input '{name}' is {seconds:.1f} s long; the limit is {max_seconds:g} s "
                    "(max_audio_seconds)"
                )
            samples = sound.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        # libsndfile's own reason, without soundfile's "Error opening <BytesIO at 0x...>".
        reason = getattr(exc, "error_string", None) or str(exc)
        raise invalid(
            f"input '{name}' is not a readable audio file (WAV, FLAC, OGG/Vorbis/Opus, MP3): {reason}"
        ) from exc
    if samples.shape[0] == 0:
        raise invalid(f"input '{name}' contains no audio samples")
    if not np.isfinite(samples).all():
        raise invalid(f"input '{name}' contains NaN or infinite samples")
    mono = samples.mean(axis=1, dtype=np.float32)
    if rate != target_rate:
        mono = soxr.resample(mono, rate, target_rate, quality="HQ").astype(np.float32, copy=False)
    return mono


def encode_audio(
    samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None
) -> bytes:
    """Encode samples (frames x channels, or mono) into an audio file in memory."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()
