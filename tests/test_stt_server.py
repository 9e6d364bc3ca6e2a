"""The stt model in a real tritonserver, driven over HTTP and gRPC with tritonclient."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.speech import SENTENCES, encode, espeak_available, speak, word_error_rate
from tools.local_server import LocalTritonServer

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng makes the speech"),
]


def audio_input(module, data: bytes, name: str = "audio"):
    tensor = module.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    return tensor


def transcribe_http(server: LocalTritonServer, data: bytes, **extra: np.ndarray) -> dict:
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=300)
    inputs = [audio_input(httpclient, data)]
    for name, value in extra.items():
        tensor = httpclient.InferInput(name, list(value.shape), _dtype(value))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    result = client.infer("stt", inputs)
    return {
        "text": result.as_numpy("text")[0, 0].decode("utf-8"),
        "segments": json.loads(result.as_numpy("segments")[0, 0]),
    }


def _dtype(value: np.ndarray) -> str:
    return {"O": "BYTES", "i": "INT32", "f": "FP32", "b": "BOOL"}[value.dtype.kind]


@pytest.fixture(scope="module")
def speech() -> list[tuple[str, np.ndarray, int]]:
    return [(text, *speak(text)) for text in SENTENCES]


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "channels"),
    [
        ("WAV", None, 16_000, 1),
        ("WAV", None, 44_100, 2),
        ("FLAC", None, 22_050, 1),
        ("OGG", None, 48_000, 2),
        ("OGG", "OPUS", 48_000, 1),
        ("MP3", "MPEG_LAYER_III", 44_100, 1),
        ("FLAC", None, 8_000, 1),
    ],
)
def test_http_round_trip_formats_rates_channels(
    stt_server, speech, fmt, subtype, rate, channels
) -> None:
    text, samples, source_rate = speech[0]
    data = encode(
        samples, source_rate, fmt=fmt, target_rate=rate, channels=channels, subtype=subtype
    )
    out = transcribe_http(stt_server, data)
    assert word_error_rate(text, out["text"]) <= 0.25, out["text"]
    assert out["segments"] is None


def test_grpc_round_trip_equals_http(stt_server, speech) -> None:
    text, samples, rate = speech[1]
    data = encode(samples, rate)
    client = grpcclient.InferenceServerClient(stt_server.grpc_url)
    result = client.infer("stt", [audio_input(grpcclient, data)])
    via_grpc = result.as_numpy("text")[0, 0].decode("utf-8")
    assert via_grpc == transcribe_http(stt_server, data)["text"]
    assert word_error_rate(text, via_grpc) <= 0.25, via_grpc


def test_concurrent_requests_are_batched_and_equal_one_at_a_time(stt_server, speech) -> None:
    clips = [encode(samples, rate) for _, samples, rate in speech] * 2
    client = httpclient.InferenceServerClient(stt_server.http_url, concurrency=len(clips))
    # Read before the requests alone: Triton counts a request only after its response is out,
    # so a count read right after them could still miss the last one.
    before = client.get_inference_statistics("stt")["model_stats"][0]
    alone = [transcribe_http(stt_server, clip)["text"] for clip in clips[: len(speech)]]
    pending = [client.async_infer("stt", [audio_input(httpclient, clip)]) for clip in clips]
    together = [p.get_result().as_numpy("text")[0, 0].decode("utf-8") for p in pending]
    assert together == alone * 2
    sent = len(speech) + len(clips)
    deadline = time.monotonic() + 10
    while True:
        after = client.get_inference_statistics("stt")["model_stats"][0]
        requests = after["inference_count"] - before["inference_count"]
        if requests >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    executions = after["execution_count"] - before["execution_count"] - len(speech)
    assert requests == sent
    assert executions < len(clips), "the dynamic batcher never put two requests in one execute()"


def test_long_audio_is_transcribed_whole_with_segments(stt_server, speech) -> None:
    rate = speech[0][2]
    pause = np.zeros(int(1.5 * rate), dtype=np.float32)
    parts = []
    while sum(p.shape[0] for p in parts) < 40 * rate:
        for _, samples, _ in speech:
            parts += [samples, pause]
    samples = np.concatenate(parts)
    out = transcribe_http(stt_server, encode(samples, rate, fmt="FLAC"))
    heard = out["text"].lower()
    assert samples.shape[0] / rate > 40
    assert "london" in heard and heard.count("lights") >= 2, heard
    segments = out["segments"]
    assert segments and segments[-1]["end"] > 30, segments
    assert all(s["start"] <= s["end"] for s in segments)


def test_timestamps_on_request(stt_server, speech) -> None:
    _, samples, rate = speech[2]
    out = transcribe_http(
        stt_server, encode(samples, rate), return_timestamps=np.array([[True]], dtype=np.bool_)
    )
    assert out["segments"] and out["segments"][0]["start"] >= 0
    assert "door" in out["text"].lower()


BAD_AUDIO = {
    "corrupt": (b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x07" * 64, "not a readable audio file"),
    "empty": (b"", "is empty"),
    "zero-length": (encode(np.zeros(0, dtype=np.float32), 16_000), "no audio samples"),
    "nan": (encode(np.full(1600, np.nan, dtype=np.float32), 16_000, subtype="FLOAT"), "NaN"),
    "too long": (encode(np.zeros(8_000 * 130, dtype=np.float32), 8_000), "limit is 120 s"),
    "not audio": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "not a readable audio file"),
}


@pytest.mark.parametrize("case", sorted(BAD_AUDIO))
def test_bad_audio_fails_only_its_own_request(stt_server, speech, case) -> None:
    bad, expected = BAD_AUDIO[case]
    good = encode(speech[0][1], speech[0][2])
    client = httpclient.InferenceServerClient(stt_server.http_url, concurrency=4)
    pending = [
        client.async_infer("stt", [audio_input(httpclient, data)]) for data in (good, bad, good)
    ]
    results, errors = [], []
    for p in pending:
        try:
            results.append(p.get_result().as_numpy("text")[0, 0].decode("utf-8"))
        except InferenceServerException as exc:
            errors.append(exc)
    assert len(results) == 2 and all("london" in r.lower() for r in results), results
    assert len(errors) == 1
    assert errors[0].status() == "400", errors[0]
    assert "input 'audio'" in errors[0].message() and expected in errors[0].message()
    assert "Traceback" not in errors[0].message()
    assert client.is_server_ready() and client.is_model_ready("stt")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("language", np.array([[b"fr"]], dtype=np.object_), "English-only"),
        ("task", np.array([[b"summarise"]], dtype=np.object_), "allowed: transcribe, translate"),
        ("max_new_tokens", np.array([[0]], dtype=np.int32), "allowed: 1 to"),
        ("temperature", np.array([[9.0]], dtype=np.float32), "allowed: 0 (greedy) to 2"),
    ],
)
def test_bad_options_are_invalid_arg_over_grpc(stt_server, speech, name, value, expected) -> None:
    client = grpcclient.InferenceServerClient(stt_server.grpc_url)
    option = grpcclient.InferInput(name, list(value.shape), _dtype(value))
    option.set_data_from_numpy(value)
    audio = audio_input(grpcclient, encode(speech[0][1], speech[0][2]))
    with pytest.raises(InferenceServerException) as info:
        client.infer("stt", [audio, option])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"input '{name}'" in info.value.message() and expected in info.value.message()


def test_server_rejects_wrong_dtype_and_shape_before_the_model(stt_server) -> None:
    client = httpclient.InferenceServerClient(stt_server.http_url)
    wrong_dtype = httpclient.InferInput("audio", [1, 1], "FP32")
    wrong_dtype.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="expected .*BYTES|data-type"):
        client.infer("stt", [wrong_dtype])
    wrong_shape = httpclient.InferInput("audio", [1, 2], "BYTES")
    wrong_shape.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer("stt", [wrong_shape])
    assert client.is_server_ready()


def test_many_hostile_requests_leave_the_server_serving(stt_server, speech) -> None:
    client = httpclient.InferenceServerClient(stt_server.http_url, concurrency=8)
    hostile = [data for data, _ in BAD_AUDIO.values()] * 3
    pending = [client.async_infer("stt", [audio_input(httpclient, data)]) for data in hostile]
    statuses = []
    for p in pending:
        try:
            p.get_result()
            statuses.append("200")
        except InferenceServerException as exc:
            statuses.append(str(exc.status()))
    assert set(statuses) == {"400"}
    text = transcribe_http(stt_server, encode(speech[3][1], speech[3][2]))["text"]
    assert "weather" in text.lower()


@pytest.fixture(scope="module")
def multilingual_server(tmp_path_factory, model_store):
    from tests.conftest import start_server

    server = start_server(
        tmp_path_factory,
        ["stt"],
        env={"MODEL_STORE": str(model_store), "STT_MODEL_PATH": "whisper-large-v3-turbo-random"},
    )
    yield server
    server.stop()


def test_a_multilingual_checkpoint_accepts_language_and_translate(
    multilingual_server, speech
) -> None:
    client = grpcclient.InferenceServerClient(multilingual_server.grpc_url)
    inputs = [audio_input(grpcclient, encode(speech[0][1], speech[0][2]))]
    for name, value in [("language", b"fr"), ("task", b"translate")]:
        tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
        inputs.append(tensor)
    tokens = grpcclient.InferInput("max_new_tokens", [1, 1], "INT32")
    tokens.set_data_from_numpy(np.array([[8]], dtype=np.int32))
    result = client.infer("stt", [*inputs, tokens])  # random weights: the text is babble
    assert isinstance(result.as_numpy("text")[0, 0], bytes)
    with pytest.raises(InferenceServerException, match="does not know"):
        unknown = grpcclient.InferInput("language", [1, 1], "BYTES")
        unknown.set_data_from_numpy(np.array([[b"klingon"]], dtype=np.object_))
        client.infer("stt", [inputs[0], unknown])


def test_per_request_errors_are_counted_in_prometheus_metrics(stt_server) -> None:
    import urllib.request

    def count() -> float:
        url = f"http://127.0.0.1:{stt_server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith("multimodal_request_errors_total{") and 'code="INVALID_ARG"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count()
    client = httpclient.InferenceServerClient(stt_server.http_url)
    with pytest.raises(InferenceServerException):
        client.infer("stt", [audio_input(httpclient, b"junk")])
    assert count() == before + 1
