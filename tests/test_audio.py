"""Audio decoding: formats, rates, channels, and every kind of bad input a client can send."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from shared.audio import decode_audio
from shared.errors import ErrorCode, RequestError
from tests.speech import encode

RATE = 16_000
LIMITS = {"target_rate": RATE, "max_seconds": 30.0, "max_bytes": 8 << 20}


def tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
@pytest.mark.parametrize("rate", [8_000, 16_000, 22_050, 44_100, 48_000])
@pytest.mark.parametrize("channels", [1, 2])
def test_decodes_any_format_rate_and_channel_count(fmt: str, rate: int, channels: int) -> None:
    data = encode(tone(1.5, rate), rate, fmt=fmt, channels=channels)
    audio = decode_audio(data, **LIMITS)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.shape[0] - 1.5 * RATE) <= RATE * 0.01
    # The tone survives decoding and resampling: its energy is where it was.
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * RATE / audio.shape[0] - 440) < 5


def test_stereo_is_averaged_not_truncated_to_one_channel() -> None:
    left = tone(1.0, RATE)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    audio = decode_audio(encode(stereo, RATE, subtype="FLOAT"), **LIMITS)
    np.testing.assert_allclose(audio, left / 2, atol=1e-6)


def error_of(data: bytes, **overrides: object) -> RequestError:
    with pytest.raises(RequestError) as info:
        decode_audio(data, **{**LIMITS, **overrides})  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.INVALID_ARG
    assert "input 'audio'" in info.value.message
    return info.value


def test_empty_input() -> None:
    assert "is empty" in error_of(b"").message


def test_corrupt_bytes() -> None:
    assert "not a readable audio file" in error_of(b"RIFF\x00\x00garbage" * 10).message


def test_mp3_garbage_gets_a_clear_reason() -> None:
    """libsndfile says "File does not exist" of an MP3 frame header with garbage behind it."""
    message = error_of(b"\xff\xfb\x90\x00" + b"\x11" * 500).message
    assert "does not exist" not in message
    assert message.endswith("no audio frame of a known format was found in it")


def test_zero_length_audio() -> None:
    data = encode(np.zeros(0, dtype=np.float32), RATE)
    assert "no audio samples" in error_of(data).message


def test_nan_samples() -> None:
    samples = tone(0.5, RATE)
    samples[100] = np.nan
    assert "NaN or infinite" in error_of(encode(samples, RATE, subtype="FLOAT")).message


def test_too_long_names_the_limit() -> None:
    message = error_of(encode(tone(3.0, RATE), RATE), max_seconds=2.0).message
    assert "3.0 s long" in message and "limit is 2 s" in message and "max_audio_seconds" in message


def test_too_many_bytes_names_the_limit() -> None:
    message = error_of(encode(tone(1.0, RATE), RATE), max_bytes=2048).message
    assert "limit is 2048 bytes" in message


def test_truncated_file_is_rejected_or_shorter_never_garbage() -> None:
    data = encode(tone(1.0, RATE), RATE, fmt="FLAC")
    with pytest.raises(RequestError):
        decode_audio(data[:40], **LIMITS)


def test_a_header_over_the_sample_budget_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Frames x channels from the header: a small FLAC of silence can declare hundreds of MB."""
    data = encode(np.zeros((48_000, 8), np.float32), 48_000, fmt="FLAC")
    reads: list[int] = []
    read = sf.SoundFile.read
    monkeypatch.setattr(
        sf.SoundFile, "read", lambda self, *a, **k: reads.append(1) or read(self, *a, **k)
    )
    message = error_of(data, max_samples=200_000).message
    assert "would decode to 384000 samples (48000 frames x 8 channels at 48000 Hz)" in message
    assert "the limit is 200000 (max_audio_samples)" in message
    assert reads == []


def test_absurd_sample_rates_are_refused() -> None:
    wav = bytearray(encode(tone(0.1, RATE), RATE))
    wav[24:28] = (2_000_000_000).to_bytes(4, "little")  # the fmt chunk's sample rate
    message = error_of(bytes(wav)).message
    assert "declares a sample rate of 2000000000 Hz; allowed: 1000 to 384000 Hz" in message


def test_a_truncated_wav_is_refused_not_transcribed_as_if_whole() -> None:
    whole = encode(tone(3.7, RATE), RATE)  # 16-bit mono: 2 bytes a frame, 44 bytes of header
    cut = whole[: 44 + 2 * int(0.04 * RATE)]
    message = error_of(cut).message
    assert message == (
        "input 'audio' is a truncated WAV file: its header declares 3.70 s of audio; "
        "0.04 s are present"
    )
    assert decode_audio(whole, **LIMITS).shape[0] == int(3.7 * RATE)


@pytest.mark.parametrize("value", [1e30, -40.0])
def test_samples_far_beyond_full_scale_are_refused(value: float) -> None:
    samples = tone(0.5, RATE)
    samples[200] = value
    message = error_of(encode(samples, RATE, subtype="FLOAT")).message
    assert (
        f"has samples of magnitude {abs(value):.3g}; the limit is 16 (full scale is 1)" in message
    )


def test_block_decoding_equals_decoding_the_whole_file() -> None:
    """Several blocks, downmixed and resampled as they come: what one pass over it gives."""
    rate = 44_100
    left, right = tone(4.0, rate), tone(4.0, rate)[::-1].copy()
    data = encode(np.stack([left, right], axis=1), rate, subtype="FLOAT")
    whole = soxr.resample((left + right) / 2, rate, RATE, quality="HQ")
    np.testing.assert_allclose(decode_audio(data, **LIMITS), whole, atol=1e-6)


# --- Encoding synthesised speech (shared.audio.encode_speech and friends) -------------------


@pytest.mark.parametrize("fmt", ["wav", "flac", "pcm_s16", "pcm_f32"])
@pytest.mark.parametrize("rate", [8_000, 16_000, 22_050, 48_000])
def test_speech_encodes_to_the_asked_format_and_rate(fmt: str, rate: int) -> None:
    import io

    import soundfile as sf

    from shared.audio import encode_speech, resample

    source = tone(0.5, 16_000)
    samples = resample(source, 16_000, rate)
    assert abs(samples.shape[0] - rate // 2) <= 1
    data = encode_speech(samples, rate, fmt)
    if fmt == "pcm_s16":
        decoded = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768
    elif fmt == "pcm_f32":
        decoded = np.frombuffer(data, dtype="<f4")
    else:
        decoded, decoded_rate = sf.read(io.BytesIO(data), dtype="float32")
        assert decoded_rate == rate
        assert sf.info(io.BytesIO(data)).format == fmt.upper()
    assert decoded.shape == samples.shape
    np.testing.assert_allclose(decoded, samples, atol=1e-4 if fmt != "pcm_f32" else 0)


def test_speech_is_clipped_not_wrapped() -> None:
    from shared.audio import encode_speech

    loud = np.array([1.5, -2.0, 0.5], dtype=np.float32)
    pcm = np.frombuffer(encode_speech(loud, 16_000, "pcm_s16"), dtype="<i2")
    assert pcm[0] == 32767 and pcm[1] == -32768 and abs(pcm[2] - 16384) <= 1
    raw = np.frombuffer(encode_speech(loud, 16_000, "pcm_f32"), dtype="<f4")
    assert raw.tolist() == [1.0, -1.0, 0.5]


def test_output_options_name_the_input_and_the_limit() -> None:
    from shared.audio import check_output_format, check_output_rate

    assert check_output_format(None) == check_output_format(" ") == "wav"
    assert check_output_format("FLAC") == "flac"
    with pytest.raises(RequestError, match="input 'format' is 'mp3'; allowed: wav, flac, pcm_s16"):
        check_output_format("mp3")
    assert check_output_rate(None) is None and check_output_rate(0) is None
    assert check_output_rate(44_100) == 44_100
    for bad in (7_999, 48_001, -1):
        with pytest.raises(RequestError, match=f"input 'sample_rate' is {bad}; allowed: 8000 to"):
            check_output_rate(bad)


#: Decodes 10 minutes of 48 kHz stereo FLAC in a fresh process (a heap that an earlier test
#: left grown would hide what decoding allocates); prints the peak's rise and the result's size.
_DECODE_PEAK = """
import io, sys
from pathlib import Path
import numpy as np, soundfile as sf
from shared.audio import decode_audio

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

out = io.BytesIO()
with sf.SoundFile(out, "w", 48_000, 2, format="FLAC") as flac:
    for _ in range(20):
        flac.write(np.zeros((30 * 48_000, 2), dtype=np.int16))
Path("/proc/self/clear_refs").write_text("5")
rss = status("VmRSS")
audio = decode_audio(out.getvalue(), target_rate=16_000, max_seconds=1800, max_bytes=64 << 20)
print(status("VmHWM") - rss, audio.nbytes)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_decoding_holds_its_result_once() -> None:
    """The 16 kHz result is written into one array sized from the header: gathered in pieces
    and joined, it was held twice at the end (+71 MB for the 37 MB of 10 minutes; +37 MB now)."""
    done = subprocess.run(
        [sys.executable, "-c", _DECODE_PEAK],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    rise, size = map(int, done.stdout.split())
    assert rise < 1.4 * size, f"+{rise >> 20} MB for a result of {size >> 20} MB"
