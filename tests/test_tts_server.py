"""tts and tts_stream in a real tritonserver, over HTTP and gRPC (streaming too), with tritonclient.

One server for the module, both models on the tiny random VITS.
"""

from __future__ import annotations

import io
import queue
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import start_server
from tools.local_server import LocalTritonServer

pytestmark = pytest.mark.server

TEXT = "Hello there. This is the second sentence, a longer one. Bye!"
ATOL = 5e-4  # batched and alone: the same audio to float rounding (tests/test_tts_engine.py)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_store: Any
) -> Iterator[LocalTritonServer]:
    # dtype=float32: batched, streamed and alone are held to the same audio (ATOL), which
    # float32 keeps and bfloat16 (dtype=auto on a CPU with native bf16) does not.
    tiny = {"MODEL_PATH": "vits-tiny-random", "MAX_TEXT_CHARS": "300", "DTYPE": "float32"}
    env = {
        f"{model}_{key}": value for model in ("TTS", "TTS_STREAM") for key, value in tiny.items()
    }
    running = start_server(
        tmp_path_factory, ["tts", "tts_stream"], env={**env, "MODEL_STORE": str(model_store)}
    )
    yield running
    running.stop()


def tensors(module: Any, text: str | bytes, **options: Any) -> list[Any]:
    """`text` and options as one-row inputs of `module` (tritonclient.http or .grpc)."""
    values: dict[str, np.ndarray] = {
        "text": np.array([[text.encode() if isinstance(text, str) else text]], dtype=np.object_)
    }
    for name, value in options.items():
        if isinstance(value, str):
            values[name] = np.array([[value.encode()]], dtype=np.object_)
        else:
            dtype = {"seed": np.int64, "sample_rate": np.int32, "speaking_rate": np.float32}[name]
            values[name] = np.array([[value]], dtype=dtype)
    out = []
    for name, value in values.items():
        kind = {"O": "BYTES", "i": "INT32" if value.dtype == np.int32 else "INT64", "f": "FP32"}
        tensor = module.InferInput(name, list(value.shape), kind[value.dtype.kind])
        tensor.set_data_from_numpy(value)
        out.append(tensor)
    return out


def decode(result: Any) -> tuple[np.ndarray, int, bytes]:
    data = result.as_numpy("audio")[0, 0]
    rate = int(result.as_numpy("sample_rate")[0, 0])
    if data[:4] in (b"RIFF", b"fLaC"):
        audio, file_rate = sf.read(io.BytesIO(data), dtype="float32")
        assert file_rate == rate
        return audio, rate, data
    return np.frombuffer(data, dtype="<f4"), rate, data


@pytest.mark.parametrize(("fmt", "rate"), [("wav", 22_050), ("flac", 0), ("pcm_s16", 8_000)])
def test_http_audio_has_the_asked_format_rate_and_duration(
    server: LocalTritonServer, fmt: str, rate: int
) -> None:
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    result = client.infer("tts", tensors(httpclient, TEXT, seed=1, format=fmt, sample_rate=rate))
    data = result.as_numpy("audio")[0, 0]
    out_rate = int(result.as_numpy("sample_rate")[0, 0])
    assert out_rate == (rate or 16_000)
    if fmt == "pcm_s16":
        frames = len(data) // 2
    else:
        info = sf.info(io.BytesIO(data))
        assert (info.format, info.samplerate, info.channels) == (fmt.upper(), out_rate, 1)
        frames = info.frames
    assert 2.5 < frames / out_rate < 9.0  # three sentences: about 13 letters a second


def test_speaking_rate_scales_the_duration(server: LocalTritonServer) -> None:
    """speaking_rate divides the voice's predicted phoneme durations (the pauses between
    sentences stay): at half the rate the audio is much longer, at twice much shorter."""
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    seconds = {}
    for rate in (0.5, 1.0, 2.0):
        result = client.infer("tts", tensors(httpclient, TEXT, seed=3, speaking_rate=rate))
        audio, sample_rate, _ = decode(result)
        seconds[rate] = len(audio) / sample_rate
    assert seconds[0.5] > 1.4 * seconds[1.0] and seconds[1.0] > 1.4 * seconds[2.0], seconds


def test_grpc_and_http_give_the_same_audio(server: LocalTritonServer) -> None:
    http = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    options = {"seed": 7, "format": "pcm_f32", "voice": "2", "speaking_rate": 1.3}
    via_http = decode(http.infer("tts", tensors(httpclient, TEXT, **options)))[0]
    via_grpc = decode(grpc.infer("tts", tensors(grpcclient, TEXT, **options)))[0]
    np.testing.assert_array_equal(via_http, via_grpc)


def test_concurrent_requests_sound_as_they_do_alone(server: LocalTritonServer) -> None:
    texts = ["First text.", TEXT, "Third, a little longer than the first.", "Four."]
    client = httpclient.InferenceServerClient(server.http_url, concurrency=8, network_timeout=120)
    alone = [
        decode(client.infer("tts", tensors(httpclient, t, seed=i, format="pcm_f32")))[0]
        for i, t in enumerate(texts)
    ]
    pending = [
        client.async_infer("tts", tensors(httpclient, t, seed=i % len(texts), format="pcm_f32"))
        for i, t in enumerate(texts * 2)
    ]
    together = [decode(p.get_result())[0] for p in pending]
    for index, audio in enumerate(together):
        expected = alone[index % len(texts)]
        assert audio.shape == expected.shape
        np.testing.assert_allclose(audio, expected, atol=ATOL, rtol=0)


BAD = {
    "empty": ("", {}, "input 'text' is empty"),
    "too long": ("word " * 61, {}, "the limit is 300"),
    "unspeakable": ("?!… 日本語", {}, "has nothing this voice can speak"),
    "format": ("Hi.", {"format": "mp3"}, "input 'format' is 'mp3'"),
    "voice": ("Hi.", {"voice": "99"}, "input 'voice' is '99'"),
    "speaking_rate": ("Hi.", {"speaking_rate": 5.0}, "input 'speaking_rate' is 5.0"),
    "sample_rate": ("Hi.", {"sample_rate": 4_000}, "input 'sample_rate' is 4000"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_input_fails_only_its_own_request(server: LocalTritonServer, case: str) -> None:
    text, options, expected = BAD[case]
    client = httpclient.InferenceServerClient(server.http_url, concurrency=3, network_timeout=120)
    good = tensors(httpclient, "A good one.", seed=1)
    pending = [
        client.async_infer("tts", good),
        client.async_infer("tts", tensors(httpclient, text, **options)),
        client.async_infer("tts", good),
    ]
    ok = [decode(pending[i].get_result())[0] for i in (0, 2)]
    np.testing.assert_array_equal(ok[0], ok[1])
    with pytest.raises(InferenceServerException) as info:
        pending[1].get_result()
    assert info.value.status() == "400"
    assert expected in info.value.message() and "Traceback" not in info.value.message()
    assert client.is_model_ready("tts")


def test_grpc_bad_input_is_invalid_argument(server: LocalTritonServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.infer("tts", tensors(grpcclient, "Hi.", format="ogg"))
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'format' is 'ogg'; allowed: wav, flac, pcm_s16, pcm_f32" in info.value.message()


# --- tts_stream over gRPC streaming -----------------------------------------------------------


def stream(server: LocalTritonServer, inputs: list[Any], cancel_after: int | None = None) -> list:
    """What a gRPC stream callback receives for one request: (result, error) pairs, until the
    response flagged final (or, with `cancel_after`, until that many pieces, then cancel)."""
    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    client.async_stream_infer("tts_stream", inputs, enable_empty_final_response=True)
    events = []
    try:
        while True:
            result, error = received.get(timeout=120)
            events.append((result, error))
            if error is not None:
                break
            final = result.get_response().parameters["triton_final_response"].bool_param
            if final or (cancel_after is not None and len(events) == cancel_after):
                break
    finally:
        client.stop_stream(cancel_requests=cancel_after is not None)
        client.close()
    return events


def test_stream_sends_sentences_in_order_and_flags_the_last(server: LocalTritonServer) -> None:
    events = stream(server, tensors(grpcclient, TEXT, seed=4, format="pcm_f32"))
    assert all(error is None for _, error in events)
    finals = [r.get_response().parameters["triton_final_response"].bool_param for r, _ in events]
    assert finals == [False, False, True]
    pieces = [decode(result)[0] for result, _ in events]
    http = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    whole = decode(http.infer("tts", tensors(httpclient, TEXT, seed=4, format="pcm_f32")))[0]
    joined = np.concatenate(pieces)
    assert joined.shape == whole.shape
    np.testing.assert_allclose(joined, whole, atol=ATOL, rtol=0)
    assert pieces[0].shape[0] < whole.shape[0] / 2  # the first sentence comes on its own


def test_stream_bad_input_ends_the_stream_with_the_error(server: LocalTritonServer) -> None:
    ((result, error),) = stream(server, tensors(grpcclient, "Hi.", voice="nobody"))
    assert result is None and "input 'voice' is 'nobody'" in str(error)


def counter(server: LocalTritonServer, name: str, model: str) -> float:
    """A model's counter on the metrics endpoint."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f'{name}{{model="{model}"}}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_cancelled_stream_stops_synthesis_and_leaves_the_model_serving(
    server: LocalTritonServer,
) -> None:
    """Proven by the model's own count of the audio it made: the whole text once, then the
    same text cancelled after its first sentence makes a fraction of it."""
    long_text = " ".join(f"This is sentence number {n}." for n in range(1, 9))
    made = "multimodal_audio_seconds_total"
    before = counter(server, made, "tts_stream")
    whole = stream(server, tensors(grpcclient, long_text, seed=1))
    assert whole[-1][1] is None and len(whole) == 8
    whole_seconds = counter(server, made, "tts_stream") - before

    before = counter(server, made, "tts_stream")
    cancelled_before = counter(server, "multimodal_requests_cancelled_total", "tts_stream")
    events = stream(server, tensors(grpcclient, long_text, seed=1), cancel_after=1)
    assert len(events) == 1 and events[0][1] is None
    deadline = time.monotonic() + 30  # the model notices the cancellation between sentences
    while counter(server, "multimodal_requests_cancelled_total", "tts_stream") == cancelled_before:
        assert time.monotonic() < deadline, "the cancellation was never counted"
        time.sleep(0.1)
    cancelled_seconds = counter(server, made, "tts_stream") - before
    assert 0 < cancelled_seconds < whole_seconds / 2, (cancelled_seconds, whole_seconds)

    after = stream(server, tensors(grpcclient, "Still here.", seed=2))
    assert len(after) == 1 and after[0][1] is None
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_model_ready("tts_stream") and client.is_model_ready("tts")
