"""Audio decoding for requests: any container libsndfile reads, any rate, any channel count.

Untrusted bytes are checked in the order that keeps a hostile request cheap: the byte size
before decoding; a WAV file's data chunk against the bytes present (a truncated upload is
refused, not transcribed as if whole); then the header: its sample rate, its duration, and the
samples it would decode (frames x channels, a decompression bomb's measure: a 340 KB FLAC can
declare 8 channels at 655 kHz); only then the samples, in blocks, each downmixed to mono and
resampled as it comes, so memory holds one block and the mono result at the target rate, never
the whole file at its own rate and width. Samples that are not finite or far beyond full scale
are refused. Every failure is a `RequestError` naming the input and the limit.
"""

from __future__ import annotations

import io
import math

import numpy as np
import soundfile as sf
import soxr

from shared.errors import invalid

#: Sample rates a file may declare: telephony's 8 kHz down to 1 kHz, studio's 384 kHz at most.
MIN_INPUT_RATE = 1_000
MAX_INPUT_RATE = 384_000
#: Float files put full scale at 1; beyond 16 (+24 dB) a sample is not a recording's.
MAX_SAMPLE_MAGNITUDE = 16.0
#: Samples (frames x channels) a file may decode to by default: 30 minutes of 48 kHz stereo.
MAX_SAMPLES = 1800 * 48_000 * 2
#: Frames decoded at a time.
_BLOCK_FRAMES = 1 << 16


def decode_audio(
    data: bytes,
    *,
    target_rate: int,
    max_seconds: float,
    max_bytes: int,
    max_samples: int = MAX_SAMPLES,
    name: str = "audio",
) -> np.ndarray:
    """Decode an encoded audio file to mono float32 at `target_rate`.

    Channels are averaged (a stereo call recording keeps both speakers) and the rate is
    converted with soxr's high-quality resampler. `max_samples` bounds frames x channels.
    """
    if len(data) == 0:
        raise invalid(f"input '{name}' is empty")
    if len(data) > max_bytes:
        raise invalid(
            f"input '{name}' is {len(data)} bytes; the limit is {max_bytes} bytes (max_audio_bytes)"
        )
    check_wav_data(data, name)
    try:
        with sf.SoundFile(io.BytesIO(data)) as sound:
            limit = _check_header(sound, max_seconds, max_samples, name)
            return _read_mono(sound, target_rate, limit, name)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        # libsndfile's own reason, without soundfile's "Error opening <BytesIO at 0x...>".
        reason = getattr(exc, "error_string", None) or str(exc)
        if reason.startswith("File does not exist"):  # what it says of an MP3 with no frame
            reason = "no audio frame of a known format was found in it"
        raise invalid(
            f"input '{name}' is not a readable audio file (WAV, FLAC, OGG/Vorbis/Opus, MP3): {reason}"
        ) from exc


def declared_seconds(data: bytes) -> float:
    """The duration an encoded file's header declares, without decoding a sample; 0 for
    bytes libsndfile cannot open (decoding them refuses them with the reason). For most
    formats exact; for MP3 libsndfile's estimate (decoding still stops at the limits)."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as sound:
            rate, frames = sound.samplerate, sound.frames
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return 0.0
    return frames / rate if rate > 0 and frames > 0 else 0.0


def check_wav_data(data: bytes, name: str = "audio") -> None:
    """Refuse a WAV file whose data chunk declares more bytes than the file holds.

    libsndfile quietly shortens such a file to what is there, so a cut upload would be served
    as if whole. Sizes of 0 and 0xFFFFFFFF mean "unknown" (writers that stream) and pass.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    position, frame_bytes, rate = 12, 0, 0
    while position + 8 <= len(data):
        chunk = data[position : position + 4]
        size = int.from_bytes(data[position + 4 : position + 8], "little")
        body = position + 8
        if chunk == b"fmt " and size >= 16 and body + 16 <= len(data):
            rate = int.from_bytes(data[body + 4 : body + 8], "little")
            frame_bytes = int.from_bytes(data[body + 12 : body + 14], "little")
        if chunk == b"data":
            present = len(data) - body
            if size in (0, 0xFFFFFFFF) or size - present < max(frame_bytes, 1):
                return
            if frame_bytes and rate:
                declared, held = size / frame_bytes / rate, present / frame_bytes / rate
                amount = f"{declared:.2f} s of audio; {held:.2f} s are present"
            else:
                amount = f"{size} bytes of audio; {present} are present"
            raise invalid(f"input '{name}' is a truncated WAV file: its header declares {amount}")
        position = body + size + (size & 1)


def _check_header(sound: sf.SoundFile, max_seconds: float, max_samples: int, name: str) -> int:
    """The header's rate, duration and frames x channels, checked; the most frames to read."""
    rate, frames, channels = sound.samplerate, sound.frames, sound.channels
    if not MIN_INPUT_RATE <= rate <= MAX_INPUT_RATE:
        raise invalid(
            f"input '{name}' declares a sample rate of {rate} Hz; allowed: {MIN_INPUT_RATE} to "
            f"{MAX_INPUT_RATE} Hz"
        )
    if frames / rate > max_seconds:
        raise invalid(
            f"input '{name}' is {frames / rate:.1f} s long; the limit is {max_seconds:g} s "
            "(max_audio_seconds)"
        )
    if frames * channels > max_samples:
        raise invalid(
            f"input '{name}' would decode to {frames * channels} samples ({frames} frames x "
            f"{channels} channels at {rate} Hz); the limit is {max_samples} (max_audio_samples)"
        )
    # What a header declares is not always what follows (an MP3's length is an estimate):
    # the limits hold for what is read too.
    return min(int(max_seconds * rate), max_samples // channels)


def _read_mono(sound: sf.SoundFile, target_rate: int, limit: int, name: str) -> np.ndarray:
    """The samples block by block: checked, downmixed, and resampled as they come."""
    rate = sound.samplerate
    stream = None
    if rate != target_rate:
        stream = soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ")
    # The result is written into one array sized from the header (checked against the limits
    # above), not gathered in pieces and joined: joining held the result twice at its end.
    # A header that declares too little grows it; pages never written cost no memory.
    result = np.empty(math.ceil(sound.frames * target_rate / rate) + 64, dtype=np.float32)
    filled = read = 0
    while True:
        block = sound.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
        read += block.shape[0]
        if read > limit:
            raise invalid(
                f"input '{name}' holds more audio than its header declares, over the limits "
                "(max_audio_seconds, max_audio_samples)"
            )
        _check_samples(block, name)
        last = block.shape[0] < _BLOCK_FRAMES
        mono = block.mean(axis=1, dtype=np.float32)
        piece = mono if stream is None else stream.resample_chunk(mono, last=last)
        if filled + piece.shape[0] > result.shape[0]:
            grown = np.empty(max(2 * result.shape[0], filled + piece.shape[0]), dtype=np.float32)
            grown[:filled] = result[:filled]
            result = grown
        result[filled : filled + piece.shape[0]] = piece
        filled += piece.shape[0]
        if last:
            break
    if read == 0:
        raise invalid(f"input '{name}' contains no audio samples")
    # A view keeps the whole array: a copy when most of it went unused.
    return result[:filled] if 2 * filled >= result.shape[0] else result[:filled].copy()


def _check_samples(block: np.ndarray, name: str) -> None:
    """Refused rather than clipped: such values come from a broken or forged file, and
    clipping 1e30 to full scale would still be noise for the model."""
    if not np.isfinite(block).all():
        raise invalid(f"input '{name}' contains NaN or infinite samples")
    peak = float(np.abs(block).max(initial=0.0))
    if peak > MAX_SAMPLE_MAGNITUDE:
        raise invalid(
            f"input '{name}' has samples of magnitude {peak:.3g}; the limit is "
            f"{MAX_SAMPLE_MAGNITUDE:g} (full scale is 1)"
        )


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
