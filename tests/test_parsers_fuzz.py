"""Property-based fuzzing of the request parsers: whatever a client sends, nothing escapes
but a `RequestError` (which fails only its request, with a message), and what is accepted keeps
its promises.

The parsers are the ones that read untrusted bytes and text before any engine runs: audio files
(`shared.audio`), images (`shared.image`), chat messages JSON (`shared.chat`), TTS text
(`shared.text`) and stop strings (`backends.chat.sampling`). Inputs are random bytes and text,
and valid files with bytes of their header replaced (where a parser trusts what it reads).
The run is deterministic; `FUZZ_EXAMPLES=5000 pytest tests/test_parsers_fuzz.py` searches
longer with fresh examples.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from backends.chat.sampling import Sampling, _Row
from shared.audio import declared_seconds, decode_audio
from shared.chat import ImageLimits, parse_prompt
from shared.errors import RequestError
from shared.image import decode_image, encode_image
from shared.text import check_length, is_speakable, normalize_text, split_sentences
from tests.speech import encode

#: A fixed set of examples in the test run; FUZZ_EXAMPLES=5000 searches longer (and afresh).
_EXAMPLES = os.environ.get("FUZZ_EXAMPLES", "")
FUZZ = settings(
    max_examples=int(_EXAMPLES or 150),
    derandomize=not _EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
AUDIO_LIMITS: dict[str, Any] = {
    "target_rate": 16_000,
    "max_seconds": 30.0,
    "max_bytes": 1 << 20,
    "max_samples": 2_000_000,
}
IMAGE_LIMITS: dict[str, Any] = {"max_pixels": 1_000_000, "max_bytes": 1 << 20, "name": "input 'x'"}


def _tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


VALID_AUDIO = [
    encode(_tone(0.3, 16_000), 16_000),
    encode(_tone(0.3, 22_050), 22_050, fmt="FLAC", channels=2),
    encode(_tone(0.3, 16_000), 16_000, subtype="FLOAT"),
    encode(_tone(0.3, 16_000), 16_000, fmt="OGG"),
]
VALID_IMAGES = [
    encode_image(Image.new("RGB", (12, 9), (10, 20, 30)), fmt)
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP")
]


def mutated(valid: list[bytes], head: int = 64) -> st.SearchStrategy[bytes]:
    """A valid file with some of its first `head` bytes replaced, or cut short."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(valid)))
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, min(head, len(data)) - 1))] = draw(st.integers(0, 255))
        return bytes(data[: draw(st.integers(1, len(data)))])

    return build()


def accepted_or_refused(parse: Any, *args: Any, **kwargs: Any) -> Any:
    """The parser's result, or None when it refused with a RequestError (with a message)."""
    try:
        return parse(*args, **kwargs)
    except RequestError as error:
        assert error.message
        return None


# --- audio ------------------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.binary(max_size=2048), mutated(VALID_AUDIO)))
def test_audio_bytes_decode_or_are_refused(data: bytes) -> None:
    # What stt weighs a request by before decoding (max_batch_audio_seconds) never raises.
    seconds = declared_seconds(data)
    assert np.isfinite(seconds) and seconds >= 0.0
    audio = accepted_or_refused(decode_audio, data, **AUDIO_LIMITS)
    if audio is not None:
        assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size > 0
        assert np.isfinite(audio).all()
        assert audio.size <= AUDIO_LIMITS["max_seconds"] * 16_000 + 16


# --- images -----------------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.binary(max_size=2048), mutated(VALID_IMAGES)))
def test_image_bytes_decode_or_are_refused(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about odd files it still reads
        image = accepted_or_refused(decode_image, data, **IMAGE_LIMITS)
    if image is not None:
        assert image.mode == "RGB" and image.width * image.height <= IMAGE_LIMITS["max_pixels"]


# --- chat messages JSON -----------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30) | JSON}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": JSON | st.text(max_size=40)}),
    st.fixed_dictionaries({"type": st.sampled_from(["image", "audio", ""])}),
    JSON,
)
MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "user", "assistant", "tool", ""]) | JSON,
            "content": st.text(max_size=30) | st.lists(PART, max_size=4) | JSON,
        }
    ),
    JSON,
)


@FUZZ
@given(
    st.one_of(
        st.lists(MESSAGE, max_size=5).map(json.dumps),
        st.text(max_size=200),
        st.text(alphabet='[]{}":, 0a', max_size=200),
        st.integers(1, 50_000).map(lambda depth: '[{"role": "user", "content": ' + "[" * depth),
    ),
    st.lists(st.sampled_from([b"", b"junk", VALID_IMAGES[0]]), max_size=3),
)
def test_chat_prompts_parse_or_are_refused(prompt: str, images: list[bytes]) -> None:
    limits = ImageLimits(max_images=2, max_pixels=1_000_000, max_bytes=1 << 20)
    messages = accepted_or_refused(parse_prompt, prompt, images, limits)
    if messages is not None:
        assert messages and messages[-1].role == "user"
        assert sum(len(m.images) for m in messages) <= limits.max_images


# --- TTS text ---------------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=400), st.integers(1, 60))
def test_tts_text_normalises_and_splits_within_its_limits(text: str, max_chars: int) -> None:
    normalized = accepted_or_refused(check_length, normalize_text(text), 300)
    if normalized is None:
        return
    assert normalize_text(normalized) == normalized  # normalising twice changes nothing
    pieces = split_sentences(normalized, max_chars)
    for piece in pieces:  # only an unspeakable piece glued to its neighbour passes the limit
        assert piece and (len(piece) <= max_chars or not all(map(is_speakable, piece.split())))
    # Nothing is lost: every non-space character, in order.
    assert "".join("".join(pieces).split()) == "".join(normalized.split())


# --- stop strings -----------------------------------------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def cancelled(self) -> bool:
        return False

    def send(self, piece: str) -> None:
        self.sent.append(piece)


@FUZZ
@given(
    st.lists(st.text(alphabet="abc\u00e9 ", max_size=6), max_size=12),
    st.lists(st.text(alphabet="abc\u00e9 ", min_size=1, max_size=4), max_size=3),
)
@example(pieces=["c", "\u00e9", "c"], stops=["\u00e9", "c\u00e9c"])  # found by a longer run
def test_stop_strings_cut_at_the_first_and_are_never_sent(
    pieces: list[str], stops: list[str]
) -> None:
    """What is sent is the text up to the stop string that completes first, and no more,
    however the generated text is cut into pieces."""
    sink = _Sink()
    row = _Row(None, Sampling(max_new_tokens=100, stop=tuple(stops)), sink)
    for piece in pieces:
        if row.finish_reason is None:
            row._add(piece)
    if row.finish_reason is None:
        row._finish("length", "")
    text = "".join(pieces)
    # The stop string that completes first (earliest end; then earliest start) is cut.
    found = [(i + len(stop), i) for stop in stops if (i := text.find(stop)) >= 0]
    assert row.text == (text[: min(found)[1]] if found else text)
    assert "".join(sink.sent) == row.text
    assert row.finish_reason == ("stop" if found else "length")
    whole = _Row(None, Sampling(max_new_tokens=100, stop=tuple(stops)), None)
    whole._add(text)
    if whole.finish_reason is None:
        whole._finish("length", "")
    assert whole.text == row.text  # the same text however the pieces cut it


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_deep_json_is_refused_not_a_recursion_error(depth: int) -> None:
    prompt = '[{"role": "user", "content": ' + "[" * depth + "]" * depth + "}]"
    limits = ImageLimits(max_images=0, max_pixels=1, max_bytes=1)
    with pytest.raises(RequestError, match="nested too deeply"):
        parse_prompt(prompt, [], limits)
