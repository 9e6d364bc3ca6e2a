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
        if reason.startswith("File does not exist"):  # what it says of an MP3 with no frame
            reason = "no audio frame of a known format was found in it"
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


# --- Encoding synthesised speech for clients ----------------------------------------------------

#: Output formats: a WAV or FLAC file (16-bit PCM, mono), or raw little-endian samples
#: (`pcm_s16`: int16, `pcm_f32`: float32) for clients that play or stream them directly.
OUTPUT_FORMATS = ("wav", "flac", "pcm_s16", "pcm_f32")
#: Output rates a client may ask for: telephony (8 kHz) to studio (48 kHz).
MIN_OUTPUT_RATE = 8_000
MAX_OUTPUT_RATE = 48_000

_SOUNDFILE_FORMAT = {
    "wav": {"format": "WAV", "subtype": "PCM_16"},
    "flac": {"format": "FLAC", "subtype": "PCM_16"},
    "pcm_s16": {"format": "RAW", "subtype": "PCM_16", "endian": "LITTLE"},
    "pcm_f32": {"format": "RAW", "subtype": "FLOAT", "endian": "LITTLE"},
}


def check_output_format(fmt: str | None, name: str = "format") -> str:
    """A client's output format, lower-cased; "wav" when not given."""
    if fmt is None or fmt.strip() == "":
        return "wav"
    lowered = fmt.strip().lower()
    if lowered not in OUTPUT_FORMATS:
        raise invalid(f"input '{name}' is {fmt!r}; allowed: {', '.join(OUTPUT_FORMATS)}")
    return lowered


def check_output_rate(rate: int | None, name: str = "sample_rate") -> int | None:
    """A client's output sample rate; None (or 0) keeps the model's own rate."""
    if rate is None or rate == 0:
        return None
    if not MIN_OUTPUT_RATE <= rate <= MAX_OUTPUT_RATE:
        raise invalid(
            f"input '{name}' is {rate}; allowed: {MIN_OUTPUT_RATE} to {MAX_OUTPUT_RATE} Hz, "
            "or 0 for the model's own rate"
        )
    return int(rate)


def resample(waveform: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Mono float32 `waveform` at `target_rate`, with soxr's high-quality resampler."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if rate == target_rate or waveform.shape[0] == 0:
        return waveform
    return soxr.resample(waveform, rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def encode_speech(waveform: np.ndarray, rate: int, fmt: str) -> bytes:
    """Mono float32 samples in one of OUTPUT_FORMATS, clipped to [-1, 1] first.

    Clipping is explicit because libsndfile wraps out-of-range floats when it writes integer
    PCM, and a resampler's overshoot can leave a sample just past full scale.
    """
    if fmt not in _SOUNDFILE_FORMAT:
        raise ValueError(f"unknown output format {fmt!r}; known: {OUTPUT_FORMATS}")
    samples = np.clip(np.asarray(waveform, dtype=np.float32), -1.0, 1.0)
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, **_SOUNDFILE_FORMAT[fmt])
    return buffer.getvalue()
