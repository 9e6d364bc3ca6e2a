"""Real whisper-tiny.en served by tritonserver, held against references nobody here wrote.

* transformers' own ASR pipeline on the same checkpoint and audio (greedy) is the reference
  for the served text, over HTTP and gRPC;
* word error rate on speech made with espeak-ng (10 sentences, several voices and rates) is the
  reference for accuracy, for each quantization the package offers on the CPU.

The pipeline runs in float32, so the text held against it is float32's (`float32_server`):
`dtype=auto` (bfloat16 on a CPU with native bf16) hears the same words within 0.01 of
float32's word error rate, which `test_the_default_dtype_hears_as_well_as_float32` holds, but
not always word for word (it heard "stellar" for "Stella" on a degraded clip).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from shared.audio import decode_audio
from tests.conftest import start_server, start_stt
from tests.speech import encode, espeak_available, speak, word_error_rate, words
from tools.local_server import LocalTritonServer

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng makes the speech"),
]

# Ten sentences, each spoken by one of three voices at rates from 140 to 180 words a minute.
CORPUS = [
    ("My name is John and I live in London.", "en-us", 150),
    ("Please call Stella and ask her to bring these things with her from the store.", "en-us", 175),
    ("Open the door and turn on the lights.", "en-gb", 160),
    ("A large language model can answer questions about the weather.", "en-us", 140),
    ("Thank you very much for your help.", "en-gb-x-rp", 180),
    ("Please send the report to the office by Friday.", "en-us", 160),
    ("The children played in the garden until it was dark.", "en-gb", 150),
    ("We need more water and some bread for the trip.", "en-us", 170),
    ("She opened the window to let in some fresh air.", "en-us", 155),
    ("I would like a cup of coffee with milk, please.", "en-gb-x-rp", 165),
]
# Containers, rates and channel counts a client may send, one per sentence in turn.
ENCODINGS = [
    ("WAV", 16_000, 1), ("FLAC", 22_050, 2), ("OGG", 48_000, 1), ("WAV", 44_100, 2),
    ("FLAC", 16_000, 1), ("OGG", 32_000, 2), ("WAV", 24_000, 1), ("FLAC", 48_000, 2),
    ("OGG", 16_000, 1), ("WAV", 8_000, 1),
]  # fmt: skip


@pytest.fixture(scope="module")
def clips() -> list[tuple[str, bytes]]:
    out = []
    for (text, voice, rate), (fmt, target, channels) in zip(CORPUS, ENCODINGS, strict=True):
        samples, source_rate = speak(text, voice, rate)
        out.append(
            (text, encode(samples, source_rate, fmt=fmt, target_rate=target, channels=channels))
        )
    return out


def http_text(
    server: LocalTritonServer, data: bytes, timestamps: bool = False
) -> tuple[str, list | None]:
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=600)
    audio = httpclient.InferInput("audio", [1, 1], "BYTES")
    audio.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    inputs = [audio]
    if timestamps:
        flag = httpclient.InferInput("return_timestamps", [1, 1], "BOOL")
        flag.set_data_from_numpy(np.array([[True]]))
        inputs.append(flag)
    result = client.infer("stt", inputs)
    client.close()
    return result.as_numpy("text")[0, 0].decode(), json.loads(result.as_numpy("segments")[0, 0])


def grpc_text(server: LocalTritonServer, data: bytes) -> str:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    audio = grpcclient.InferInput("audio", [1, 1], "BYTES")
    audio.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    text = client.infer("stt", [audio]).as_numpy("text")[0, 0].decode()
    client.close()
    return text


@pytest.fixture(scope="module")
def reference(model_store: Path):
    """transformers' ASR pipeline on the same checkpoint, greedy."""
    from transformers import pipeline

    asr = pipeline(
        "automatic-speech-recognition", model=str(model_store / "whisper-tiny.en"), device="cpu"
    )

    def transcribe(data: bytes, long_form: bool = False) -> str:
        audio = decode_audio(data, target_rate=16_000, max_seconds=3600, max_bytes=1 << 30)
        kwargs = {"return_timestamps": True} if long_form else {}
        out = asr(
            {"raw": audio, "sampling_rate": 16_000},
            generate_kwargs={"num_beams": 1, "do_sample": False},
            **kwargs,
        )
        return out["text"].strip()

    return transcribe


@pytest.fixture(scope="module")
def float32_server(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[LocalTritonServer]:
    """stt as conftest's `stt_server`, but dtype=float32: the reference pipeline's dtype."""
    server = start_stt(tmp_path_factory, model_store, STT_DTYPE="float32")
    yield server
    server.stop()


def test_served_text_equals_the_transformers_pipeline(float32_server, clips, reference) -> None:
    for _, data in clips[:5]:
        expected = reference(data)
        assert http_text(float32_server, data)[0] == expected
        assert grpc_text(float32_server, data) == expected


@pytest.fixture(scope="module")
def minute_recording(clips) -> tuple[bytes, float]:
    rate = 16_000
    pause = np.zeros(rate, dtype=np.float32)
    parts = []
    for (text, voice, wpm), _ in zip(CORPUS, clips, strict=True):
        samples, source_rate = speak(text, voice, wpm)
        parts += [
            decode_audio(
                encode(samples, source_rate), target_rate=rate, max_seconds=60, max_bytes=1 << 26
            ),
            pause,
        ]
    samples = np.concatenate(parts * 2)
    return encode(samples, rate, fmt="FLAC"), samples.shape[0] / rate


def test_a_minute_long_recording_comes_back_whole_and_in_order(
    stt_server, minute_recording, reference
) -> None:
    data, seconds = minute_recording
    assert seconds >= 60
    text, segments = http_text(stt_server, data)
    # Every sentence, both rounds, in order: walk the transcript sentence by sentence, each
    # found (most of its words, in order) after the one before.
    heard, position = words(text), 0
    for sentence in ([*words(s)] for s, _, _ in CORPUS * 2):
        window = heard[position : position + 2 * len(sentence) + 4]
        matcher = difflib.SequenceMatcher(a=sentence, b=window, autojunk=False)
        blocks = [b for b in matcher.get_matching_blocks() if b.size]
        assert sum(b.size for b in blocks) >= 0.5 * len(sentence), (" ".join(sentence), text)
        position += blocks[-1].b + blocks[-1].size
    assert word_error_rate(" ".join(s for s, _, _ in CORPUS * 2), text) <= 0.2
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts)
    assert all(0 <= s["start"] <= s["end"] <= seconds + 0.5 for s in segments), segments
    # The reference pipeline, long-form, hears the same words.
    assert word_error_rate(reference(data, long_form=True), text) <= 0.05


@pytest.fixture(scope="module", params=["int8", "nf4"])
def quantized_server(request, tmp_path_factory, model_store) -> Iterator[LocalTritonServer]:
    server = start_server(
        tmp_path_factory,
        ["stt"],
        env={"MODEL_STORE": str(model_store), "STT_QUANTIZATION": request.param},
    )
    server.quantization = request.param  # type: ignore[attr-defined]
    yield server
    server.stop()


def corpus_wer(server: LocalTritonServer, clips: list[tuple[str, bytes]]) -> float:
    client = httpclient.InferenceServerClient(
        server.http_url, concurrency=len(clips), network_timeout=600
    )
    pending = []
    for _, data in clips:
        audio = httpclient.InferInput("audio", [1, 1], "BYTES")
        audio.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        pending.append(client.async_infer("stt", [audio]))
    texts = [p.get_result().as_numpy("text")[0, 0].decode() for p in pending]
    client.close()
    references = " ".join(t for t, _ in clips)
    return word_error_rate(references, " ".join(texts))


def test_word_error_rate_unquantized(stt_server, clips) -> None:
    assert corpus_wer(stt_server, clips) <= 0.2


def test_the_default_dtype_hears_as_well_as_float32(stt_server, float32_server, clips) -> None:
    """The shipped dtype=auto keeps quality: its word error rate within 0.01 of float32's
    (the bound docs/benchmarks.md's "The fast default" measures), and the load line says what
    auto chose and why."""
    assert corpus_wer(stt_server, clips) <= corpus_wer(float32_server, clips) + 0.01
    log = stt_server.log_path.read_text(encoding="utf-8", errors="replace")
    assert re.search(r"stt: loaded .* dtype=(float32|bfloat16) \(auto: [^)]+\) device=cpu", log)


def test_word_error_rate_quantized(quantized_server, clips) -> None:
    wer = corpus_wer(quantized_server, clips)
    assert wer <= 0.2, f"{quantized_server.quantization}: WER {wer:.2f}"
    log = quantized_server.log_path.read_text(encoding="utf-8", errors="replace")
    assert f"quantization={quantized_server.quantization}" in log
    # Logs a person can read: a per-call library warning appears at most once.
    assert log.count("MatMul8bitLt") <= 1
    assert log.count("Passing `generation_config` together with") <= 1
