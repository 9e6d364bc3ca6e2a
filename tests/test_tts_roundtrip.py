"""The real voice through the real server, judged by the real speech recognizer.

One tritonserver serves `tts` and `tts_stream` (the Piper en_US "joe" voice, their default) and
`stt` (whisper-tiny.en, its default). What `tts` says, `stt` must hear: ten sentences with a
word error rate of at most 0.15, in every output format and at a resampled rate; a paragraph
with all its sentences in order; and `tts_stream`'s pieces joined, the same words as `tts`'s
whole answer. Neither model was written to agree with the other, so agreement means speech.

Word error rates use tests/speech.py's normalisation (lower case, punctuation dropped), as
tests/test_stt_accuracy.py does. Requests go out concurrently, so the batches stay few. Whisper
pads every clip to a 30-second window, so its encoder, not the voice, is the cost: the ten
sentences are heard one by one as WAV files exactly as `tts` returns them; for the other
formats and the resampled rate, the client's decoded audio of the same ten sentences (checked
sample by sample against the WAV answer) is heard in two recordings of five sentences each.

The voice runs in dtype=float32 (FLOAT32): the sample-by-sample checks (formats against the WAV
answer, streamed pieces against the whole answer, each batched differently) hold float32's
exactness; bfloat16, what dtype=auto means on a CPU with native bf16, moves samples by up to
0.01. The shipped default voice is heard at float32's word error rate, within 0.01
(`test_the_default_dtype_is_heard_as_well_as_float32`).
"""

from __future__ import annotations

import difflib
import io
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests import speech
from tests.conftest import start_server
from tests.speech import espeak_available, word_error_rate, words
from tools.local_server import LocalTritonServer

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng makes the voice's phonemes"),
]

VOICE_RATE = 22_050
SENTENCES = [
    *speech.SENTENCES,
    "Please send the report to the office by Friday.",
    "The children played in the garden until it was dark.",
    "We need more water and some bread for the trip.",
    "She opened the window to let in some fresh air.",
    "I would like a cup of coffee with milk, please.",
]
PARAGRAPH = [
    "The library opens early in the morning.",
    "Children can borrow three books every week.",
    "The reading room is quiet and bright.",
    "Please bring your books back on time.",
    "We hope to see you again soon.",
]
MAX_WER = 0.15
#: The same text and seed give the same waveform in every format: to float rounding (a padded
#: batch runs other shapes: 5e-4, tests/test_tts_engine.py) plus 16-bit steps of 1 / 32768.
ATOL = 1e-3


FLOAT32 = {"TTS_DTYPE": "float32", "TTS_STREAM_DTYPE": "float32"}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[LocalTritonServer]:
    """tts and tts_stream in float32 (FLOAT32), stt as shipped."""
    running = start_server(
        tmp_path_factory,
        ["tts", "tts_stream", "stt"],
        env={"MODEL_STORE": str(model_store), **FLOAT32},
    )
    yield running
    running.stop()


def text_inputs(module: Any, text: str, seed: int, fmt: str, rate: int = 0) -> list[Any]:
    """One row of `text` with a seed, a format and an output rate, as `module`'s InferInputs."""
    values = {
        "text": (np.array([[text.encode()]], dtype=np.object_), "BYTES"),
        "seed": (np.array([[seed]], dtype=np.int64), "INT64"),
        "format": (np.array([[fmt.encode()]], dtype=np.object_), "BYTES"),
        "sample_rate": (np.array([[rate]], dtype=np.int32), "INT32"),
    }
    out = []
    for name, (value, datatype) in values.items():
        tensor = module.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        out.append(tensor)
    return out


def decode(data: bytes, fmt: str, rate: int) -> np.ndarray:
    """A client's decoding of `audio`: files with soundfile, raw PCM at the returned rate."""
    if fmt == "pcm_s16":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768
    if fmt == "pcm_f32":
        return np.frombuffer(data, dtype="<f4").copy()
    samples, file_rate = sf.read(io.BytesIO(data), dtype="float32")
    assert file_rate == rate and samples.ndim == 1
    return samples


def wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def speak(
    server: LocalTritonServer, texts: list[str], fmt: str, rate: int = 0
) -> list[tuple[bytes, int]]:
    """`tts`'s audio and its rate for each text, sent as concurrent requests (seed = index)."""
    client = httpclient.InferenceServerClient(
        server.http_url, concurrency=len(texts), network_timeout=600
    )
    pending = [
        client.async_infer("tts", text_inputs(httpclient, text, i, fmt, rate))
        for i, text in enumerate(texts)
    ]
    out = []
    for request in pending:
        result = request.get_result()
        out.append((result.as_numpy("audio")[0, 0], int(result.as_numpy("sample_rate")[0, 0])))
    client.close()
    return out


def transcribe(server: LocalTritonServer, clips: list[bytes]) -> list[str]:
    """`stt`'s text for each audio file, sent as concurrent requests."""
    client = httpclient.InferenceServerClient(
        server.http_url, concurrency=len(clips), network_timeout=600
    )
    pending = []
    for data in clips:
        audio = httpclient.InferInput("audio", [1, 1], "BYTES")
        audio.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        pending.append(client.async_infer("stt", [audio]))
    texts = [p.get_result().as_numpy("text")[0, 0].decode() for p in pending]
    client.close()
    return texts


def corpus_wer(said: list[str], heard: list[str]) -> float:
    return word_error_rate(" ".join(said), " ".join(heard))


@pytest.fixture(scope="module")
def spoken_wav(server: LocalTritonServer) -> list[bytes]:
    """The ten sentences as `tts` answers them by default: WAV files at the voice's rate."""
    spoken = speak(server, SENTENCES, "wav")
    assert {rate for _, rate in spoken} == {VOICE_RATE}
    return [data for data, _ in spoken]


def test_ten_sentences_come_back_as_said(server: LocalTritonServer, spoken_wav) -> None:
    heard = transcribe(server, spoken_wav)  # the files exactly as a client receives them
    wer = corpus_wer(SENTENCES, heard)
    assert wer <= MAX_WER, list(zip(SENTENCES, heard, strict=True))
    # Speech, not noise: each sentence lasts about as long as it takes to say it.
    for text, data in zip(SENTENCES, spoken_wav, strict=True):
        assert 0.15 < sf.info(io.BytesIO(data)).duration / len(words(text)) < 0.8, text


def test_the_default_dtype_is_heard_as_well_as_float32(
    tmp_path_factory: pytest.TempPathFactory,
    model_store: Path,
    server: LocalTritonServer,
    spoken_wav: list[bytes],
) -> None:
    """The shipped dtype=auto keeps the voice's quality: `stt` hears it at float32's word error
    rate, within 0.01 (the bound docs/benchmarks.md's "The fast default" measures)."""
    default = start_server(tmp_path_factory, ["tts"], env={"MODEL_STORE": str(model_store)})
    try:
        spoken = [data for data, _ in speak(default, SENTENCES, "wav")]
        log = default.log_path.read_text(encoding="utf-8", errors="replace")
    finally:
        default.stop()
    assert "(auto: " in log
    float32_wer = corpus_wer(SENTENCES, transcribe(server, spoken_wav))
    assert corpus_wer(SENTENCES, transcribe(server, spoken)) <= float32_wer + 0.01


@pytest.mark.parametrize(
    ("fmt", "rate"),
    [("flac", 0), ("pcm_s16", 0), ("pcm_f32", 0), ("wav", 16_000), ("pcm_s16", 16_000)],
    ids=["flac", "pcm_s16", "pcm_f32", "wav-16k", "pcm_s16-16k"],
)
def test_every_format_and_a_resampled_rate_are_heard_the_same(
    server: LocalTritonServer, spoken_wav: list[bytes], fmt: str, rate: int
) -> None:
    spoken = speak(server, SENTENCES, fmt, rate)
    out_rate = rate or VOICE_RATE
    assert {r for _, r in spoken} == {out_rate}
    decoded = [decode(data, fmt, out_rate) for data, _ in spoken]
    for samples, data in zip(decoded, spoken_wav, strict=True):
        expected = decode(data, "wav", VOICE_RATE)
        if rate:  # resampled: the same duration at the new rate
            assert abs(samples.shape[0] - expected.shape[0] * rate / VOICE_RATE) <= 2
        else:  # the same waveform, to the format's precision
            assert samples.shape == expected.shape
            np.testing.assert_allclose(samples, expected, atol=ATOL, rtol=0)
    # Five sentences a recording, half a second apart: two 30-second windows for Whisper.
    gap = np.zeros(out_rate // 2, dtype=np.float32)
    halves = [decoded[:5], decoded[5:]]
    recordings = [
        wav(np.concatenate([x for s in half for x in (s, gap)]), out_rate) for half in halves
    ]
    heard = transcribe(server, recordings)
    wer = corpus_wer(SENTENCES, heard)
    assert wer <= MAX_WER, (fmt, rate, heard)


@pytest.fixture(scope="module")
def paragraph(server: LocalTritonServer) -> tuple[bytes, str]:
    """`tts`'s whole answer for the paragraph (a WAV file) and what `stt` hears in it."""
    ((data, rate),) = speak(server, [" ".join(PARAGRAPH)], "wav")
    assert rate == VOICE_RATE
    (heard,) = transcribe(server, [data])
    return data, heard


def test_a_paragraph_comes_back_whole_and_in_order(paragraph: tuple[bytes, str]) -> None:
    data, heard = paragraph
    seconds = sf.info(io.BytesIO(data)).duration
    assert seconds > len(PARAGRAPH) * 1.0  # five sentences and four pauses
    # Walk the transcript sentence by sentence: each found (most of its words, in order)
    # after the one before.
    said, position = words(heard), 0
    for sentence in (words(s) for s in PARAGRAPH):
        window = said[position : position + 2 * len(sentence) + 4]
        matcher = difflib.SequenceMatcher(a=sentence, b=window, autojunk=False)
        blocks = [b for b in matcher.get_matching_blocks() if b.size]
        assert sum(b.size for b in blocks) >= 0.7 * len(sentence), (" ".join(sentence), heard)
        position += blocks[-1].b + blocks[-1].size
    assert word_error_rate(" ".join(PARAGRAPH), heard) <= MAX_WER, heard


def test_streamed_pieces_joined_are_heard_as_the_whole_answer(
    server: LocalTritonServer, paragraph: tuple[bytes, str]
) -> None:
    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    client.async_stream_infer(
        "tts_stream",
        text_inputs(grpcclient, " ".join(PARAGRAPH), 0, "wav"),
        enable_empty_final_response=True,
    )
    pieces = []
    try:
        while True:
            result, error = received.get(timeout=300)
            assert error is None, error
            audio = result.as_numpy("audio")
            if audio is not None:
                rate = int(result.as_numpy("sample_rate")[0, 0])
                pieces.append(decode(audio[0, 0], "wav", rate))
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    assert len(pieces) == len(PARAGRAPH)  # a piece per sentence, as each is synthesised
    joined = np.concatenate(pieces)
    whole_data, whole_heard = paragraph
    whole = decode(whole_data, "wav", VOICE_RATE)
    assert joined.shape == whole.shape
    np.testing.assert_allclose(joined, whole, atol=ATOL, rtol=0)
    (heard,) = transcribe(server, [wav(joined, VOICE_RATE)])
    assert words(heard) == words(whole_heard), (heard, whole_heard)
