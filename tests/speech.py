"""Real speech made locally with espeak-ng, encoded the ways clients send it."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import soundfile as sf
import soxr

# Sentences espeak-ng says clearly enough for whisper-tiny.en to get (nearly) every word.
SENTENCES = [
    "My name is John and I live in London.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Open the door and turn on the lights.",
    "A large language model can answer questions about the weather.",
    "Thank you very much for your help.",
]


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, voice: str = "en-us", words_per_minute: int = 160) -> tuple[np.ndarray, int]:
    """Synthesise `text`; returns mono float32 samples and their rate (22 050 Hz)."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "--stdout", "--", text],
        check=True,
        capture_output=True,
    ).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return samples, rate


def encode(
    samples: np.ndarray,
    rate: int,
    *,
    fmt: str = "WAV",
    target_rate: int | None = None,
    channels: int = 1,
    subtype: str | None = None,
) -> bytes:
    """Resample, spread to `channels` and encode as `fmt` (WAV, FLAC, OGG, MP3)."""
    if target_rate and target_rate != rate:
        samples = soxr.resample(samples, rate, target_rate)
        rate = target_rate
    if channels > 1:
        samples = np.repeat(samples[:, None], channels, axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, for comparing transcripts."""
    cleaned = "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower())
    return cleaned.split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    distance = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, distance[0] = distance[0], i
        for j, h in enumerate(hyp, 1):
            previous, distance[j] = (
                distance[j],
                min(distance[j] + 1, distance[j - 1] + 1, previous + (r != h)),
            )
    return distance[len(hyp)] / max(len(ref), 1)
