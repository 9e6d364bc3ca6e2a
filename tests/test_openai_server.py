"""The OpenAI door driven by the official `openai` client against a real tritonserver.

All six models run on their shipped defaults: the real SmolLM2-135M-Instruct text in the chat
models, the real whisper-tiny.en, the real Piper voice. Recordings are made with espeak-ng
(tests/speech.py). Nothing here builds HTTP by hand except where a client would (the curl
examples of docs/openai.md, run as they are written).
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import soundfile as sf

from tests import openai_fixtures
from tests.chat_client import image, model_statistics, served_and_executions
from tests.conftest import ROOT
from tests.openai_fixtures import MAX_JSON_BYTES, MAX_UPLOAD_BYTES, Served, start_door
from tests.speech import SENTENCES, encode, espeak_available, speak, word_error_rate
from tools.local_server import free_port
from tools.openai_door import OpenAIDoor

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng makes the recordings"),
]
served = openai_fixtures.served

QUESTION = "What is the capital of France?"
CANCELLED = "multimodal_generation_cancelled_total"


def ask(question: str) -> list[Any]:
    return [{"role": "user", "content": question}]


def recording(text: str) -> bytes:
    samples, rate = speak(text)
    return encode(samples, rate)


# --- models --------------------------------------------------------------------------------------


def test_models_are_the_triton_names_and_openais_aliases(served: Served) -> None:
    ids = {model.id for model in served.client().models.list()}
    assert {"vlm", "llm", "stt", "tts", "whisper-1", "tts-1", "tts-1-hd"} <= ids
    assert served.client().models.retrieve("whisper-1").id == "whisper-1"


# --- chat ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["llm", "vlm"])
def test_chat_answers_a_fact_with_real_token_counts(served: Served, model: str) -> None:
    answer = served.client().chat.completions.create(
        model=model, messages=ask(QUESTION), max_tokens=24, user="tester"
    )
    choice = answer.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 10 and 0 < answer.usage.completion_tokens < 24
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_streamed_chunks_join_to_the_unary_answer(served: Served) -> None:
    client = served.client()
    options: dict[str, Any] = {"model": "vlm", "messages": ask(QUESTION), "max_tokens": 24}
    unary = client.chat.completions.create(**options)
    chunks = list(
        client.chat.completions.create(
            **options, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1, "the answer came in pieces"
    assert "".join(pieces) == unary.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == unary.usage


def test_an_image_part_goes_to_the_model(served: Served) -> None:
    url = "data:image/png;base64," + base64.b64encode(image(64, 48, 1)).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    client = served.client()
    with_image = client.chat.completions.create(
        model="vlm", messages=[{"role": "user", "content": content}], max_tokens=24
    )
    without = client.chat.completions.create(model="vlm", messages=ask(QUESTION), max_tokens=24)
    assert with_image.usage is not None and without.usage is not None
    # The default checkpoint's processor makes 64 tokens of one 512 px view.
    assert with_image.usage.prompt_tokens >= without.usage.prompt_tokens + 64
    assert "Paris" in (with_image.choices[0].message.content or "")


def test_the_session_extension_keeps_history_on_the_server(served: Served) -> None:
    client = served.client()

    def turn(text: str, **extra: Any) -> str:
        answer = client.chat.completions.create(
            model="llm",
            messages=ask(text),
            max_tokens=24,
            extra_body={"session_id": "door", **extra},
        )
        return answer.choices[0].message.content or ""

    turn("My cat's name is Whiskers.")
    assert "Whiskers" in turn("What is my cat's name?")
    turn("", reset_session=True)
    assert "Whiskers" not in turn("What is my cat's name?")


def test_a_client_that_disconnects_stops_generation(served: Served) -> None:
    before = served.metric(CANCELLED, "vlm_stream")
    stream = served.client().chat.completions.create(
        model="vlm",
        messages=ask("Count from 1 to 1000, one number per line."),
        max_tokens=1000,
        stream=True,
    )
    for received, _chunk in enumerate(stream):
        if received == 3:
            break
    stream.close()
    deadline = time.monotonic() + 120
    while served.metric(CANCELLED, "vlm_stream") == before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert served.metric(CANCELLED, "vlm_stream") == before + 1
    # The model goes on serving.
    answer = served.client().chat.completions.create(
        model="vlm", messages=ask(QUESTION), max_tokens=24
    )
    assert "Paris" in (answer.choices[0].message.content or "")


# --- transcriptions ------------------------------------------------------------------------------

SRT_BLOCK = re.compile(
    r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(.+)\n"
)
VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n(.+)\n")


def seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def cues(body: str, fmt: str) -> list[tuple[float, float, str]]:
    """Subtitle cues (start, end, text), parsed strictly: the whole body must be cues."""
    if fmt == "srt":
        found = [(seconds(*m[1:5]), seconds(*m[5:9]), m[9]) for m in SRT_BLOCK.findall(body)]
        numbers = [int(m[0]) for m in SRT_BLOCK.findall(body)]
        assert numbers == list(range(1, len(found) + 1))
        assert SRT_BLOCK.sub("", body).strip() == ""
    else:
        assert body.startswith("WEBVTT\n\n")
        found = [(seconds(*m[0:4]), seconds(*m[4:8]), m[8]) for m in VTT_CUE.findall(body)]
        assert VTT_CUE.sub("", body[len("WEBVTT") :]).strip() == ""
    return found


def assert_monotonic(times: list[tuple[float, float, str]], duration: float) -> None:
    assert times, "no cues"
    previous_end = 0.0
    for start, end, _ in times:
        assert previous_end <= start <= end <= duration + 0.05
        previous_end = end


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_a_recording_is_transcribed_in_every_format(served: Served, fmt: str) -> None:
    sentence = SENTENCES[1]
    audio = recording(sentence)
    duration = sf.info(io.BytesIO(audio)).duration
    result: Any = served.client().audio.transcriptions.create(
        model="whisper-1",
        file=("hello.wav", audio, "audio/wav"),
        response_format=fmt,
    )
    if fmt in ("json", "verbose_json"):
        text = result.text
    elif fmt == "text":
        text = result
    else:
        found = cues(result, fmt)
        assert_monotonic(found, duration)
        text = " ".join(cue for _, _, cue in found)
    assert word_error_rate(sentence, text) <= 0.2, text
    if fmt == "verbose_json":
        assert result.task == "transcribe" and abs(result.duration - duration) < 0.01
        spans = [(s.start, s.end, s.text) for s in result.segments]
        assert_monotonic(spans, duration)
        assert word_error_rate(sentence, " ".join(t for *_, t in spans)) <= 0.2


def test_a_long_recording_is_transcribed_whole_with_segments(served: Served) -> None:
    pause = np.zeros(int(22050 * 0.5), dtype=np.float32)
    parts = []
    for sentence in SENTENCES * 2:
        samples, rate = speak(sentence)
        parts += [samples, pause]
    audio = encode(np.concatenate(parts), rate, fmt="FLAC")
    duration = sf.info(io.BytesIO(audio)).duration
    assert duration > 30, "longer than one Whisper window"
    result = served.client().audio.transcriptions.create(
        model="whisper-1",
        file=("long.flac", audio, "audio/flac"),
        response_format="verbose_json",
        timestamp_granularities=["segment"],
    )
    assert word_error_rate(" ".join(SENTENCES * 2), result.text) <= 0.2, result.text
    spans = [(s.start, s.end, s.text) for s in result.segments or []]
    assert len(spans) > 2
    assert_monotonic(spans, duration)
    assert spans[-1][1] > 30


# --- speech --------------------------------------------------------------------------------------

SPOKEN = "The weather is nice today. Please open the window."


def hear(served: Served, audio: bytes, name: str) -> str:
    """The door's own transcription of `audio`."""
    return served.client().audio.transcriptions.create(model="whisper-1", file=(name, audio)).text


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "flac", "pcm"])
def test_speech_is_heard_back_by_the_doors_transcription(served: Served, fmt: str) -> None:
    audio = (
        served.client()
        .audio.speech.create(
            model="tts-1",
            voice="alloy",
            input=SPOKEN,
            response_format=fmt,
        )
        .content
    )
    if fmt == "pcm":  # raw 16-bit little-endian at 24 kHz, as OpenAI's
        samples = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768
        audio = encode(samples, 24000)
        fmt = "wav"
    else:
        expected = {"wav": "WAV", "mp3": "MP3", "opus": "OGG", "flac": "FLAC"}[fmt]
        assert sf.info(io.BytesIO(audio)).format == expected
    assert word_error_rate(SPOKEN, hear(served, audio, f"speech.{fmt}")) <= 0.2


def test_wav_speech_streams_from_tts_stream_and_speed_shortens_it(served: Served) -> None:
    before = model_statistics(served.triton, "tts_stream")
    client = served.client()
    lengths = {}
    for speed in (1.0, 2.0):
        with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=SPOKEN, response_format="wav", speed=speed
        ) as response:
            assert response.headers.get("transfer-encoding") == "chunked"
            audio = b"".join(response.iter_bytes())
        assert audio[4:8] == b"\xff\xff\xff\xff", "a streamed WAV leaves its length open"
        samples, _ = sf.read(io.BytesIO(audio))
        lengths[speed] = len(samples)
    assert served_and_executions(served.triton, "tts_stream", before, 2)[0] == 2
    assert lengths[2.0] < 0.8 * lengths[1.0]
    voices = {
        v["id"]: v["voice"]
        for v in json.load(urllib.request.urlopen(f"{served.door.url}/v1/audio/voices"))["data"]
    }
    assert voices["alloy"] == "0"


def test_speech_as_server_sent_events(served: Served) -> None:
    with served.client().audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input=SPOKEN,
        response_format="pcm",
        extra_body={"stream_format": "sse"},
    ) as response:
        events = [
            json.loads(line[len("data: ") :])
            for line in response.iter_lines()
            if line.startswith("data: ")
        ]
    assert [e["type"] for e in events] == ["speech.audio.delta"] * (len(events) - 1) + [
        "speech.audio.done"
    ]
    assert len(events) > 2, "one delta per sentence"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    assert word_error_rate(SPOKEN, hear(served, encode(samples, 24000), "speech.wav")) <= 0.2


# --- errors --------------------------------------------------------------------------------------


def status_error(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    error = caught.value
    assert isinstance(error.body, dict) and set(error.body) >= {"message", "type", "param", "code"}
    assert "Traceback" not in error.message and str(ROOT) not in error.message
    return error


def test_chat_errors_have_openais_shape_and_status(served: Served) -> None:
    chat = served.client().chat.completions.create
    url = "http://example.com/cat.png"
    part = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Hi"}]
    error = status_error(lambda: chat(model="vlm", messages=[{"role": "user", "content": part}]))
    assert error.status_code == 400 and url in error.message
    assert error.body["param"] == "messages[0].content[0].image_url.url"

    error = status_error(lambda: chat(model="gpt-4o", messages=ask("Hi")))
    assert error.status_code == 404 and error.code == "model_not_found"

    error = status_error(lambda: chat(model="vlm", messages=ask("Hi"), temperature=5))
    assert error.status_code == 400 and error.body["param"] == "temperature"

    corrupt = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    error = status_error(lambda: chat(model="vlm", messages=[{"role": "user", "content": corrupt}]))
    assert error.status_code == 400 and "not a readable image" in error.message  # Triton's words

    big = "x" * (MAX_JSON_BYTES + 1)
    error = status_error(lambda: chat(model="vlm", messages=ask(big)))
    assert error.status_code == 413


def test_audio_errors_have_openais_shape_and_status(served: Served) -> None:
    client = served.client()
    error = status_error(
        lambda: client.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"not audio"))
    )
    assert error.status_code == 400 and "not a readable audio file" in error.message
    error = status_error(
        lambda: client.audio.translations.create(
            model="whisper-1", file=("x.wav", recording("Hi."))
        )
    )
    assert error.status_code == 400 and "English-only" in error.message
    too_big = b"\0" * (MAX_UPLOAD_BYTES + 1)
    error = status_error(
        lambda: client.audio.transcriptions.create(model="whisper-1", file=("x.wav", too_big))
    )
    assert error.status_code == 413
    speech = client.audio.speech.create
    error = status_error(
        lambda: speech(model="tts-1", voice="alloy", input="Hi.", response_format="aac")
    )
    assert error.status_code == 400 and "wav, pcm, flac, mp3, opus" in error.message
    error = status_error(lambda: speech(model="tts-1", voice="nobody", input="Hi."))
    assert error.status_code == 400 and "'nobody'" in error.message
    error = status_error(lambda: speech(model="tts-1", voice="alloy", input="Hi.", speed=5))
    assert error.status_code == 400


def test_a_door_without_triton_answers_503(tmp_path: Path) -> None:
    door = OpenAIDoor(
        triton_url=f"127.0.0.1:{free_port()}", port=free_port(), log_path=tmp_path / "door.log"
    )
    door.start()
    try:
        openai_fixtures.wait_answering(door)
        with pytest.raises(urllib.error.HTTPError) as health:
            urllib.request.urlopen(f"{door.url}/health")
        assert health.value.code == 503
        client = openai.OpenAI(base_url=f"{door.url}/v1", api_key="x", max_retries=0)
        error = status_error(
            lambda: client.chat.completions.create(model="vlm", messages=ask("Hi"))
        )
        assert error.status_code == 503
    finally:
        door.stop()


def test_api_keys_when_set(served: Served, tmp_path: Path) -> None:
    door = start_door(served.triton, tmp_path / "door.log", OPENAI_API_KEYS="k1,k2")
    try:
        url = f"{door.url}/v1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        assert openai.OpenAI(base_url=url, api_key="k2", max_retries=0).models.list().data
    finally:
        door.stop()


def test_the_doors_own_metrics_count_requests_and_errors(served: Served) -> None:
    with urllib.request.urlopen(f"{served.door.url}/metrics") as response:
        text = response.read().decode()
    assert re.search(
        r'openai_requests_total\{method="POST",route="/v1/chat/completions",status="200"\} [1-9]',
        text,
    )
    assert 'openai_request_duration_seconds_bucket{le="0.005",route="/v1/models"}' in text


# --- the page's curl examples --------------------------------------------------------------------

#: What an example's output must hold, by what its block says (every block meets one or more).
EXPECTED = {
    "/v1/models": "whisper-1",
    "/health": '"ready"',
    "capital of France": "Paris",
    "stream_options": "data: [DONE]",
    "hello.wav": "Stella",
    "response_format=srt": "00:00:00,000 -->",
    "speech.wav": "Stella",
    "/v1/audio/voices": "alloy",
    "example.com": "invalid_request_error",
}


def examples() -> list[str]:
    page = (ROOT / "docs" / "openai.md").read_text(encoding="utf-8")
    return [
        block for block in re.findall(r"```bash\n(.*?)```", page, re.S) if "localhost:9000" in block
    ]


def test_the_pages_curl_examples_run(served: Served, tmp_path: Path) -> None:
    blocks = examples()
    assert len(blocks) >= 6
    port = served.door.url.rsplit(":", 1)[1]
    for block in blocks:
        expected = [output for key, output in EXPECTED.items() if key in block]
        assert expected, f"nothing to check in:\n{block}"
        script = "set -euo pipefail\n" + block.replace("localhost:9000", f"127.0.0.1:{port}")
        run = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, (block, run.stderr)
        for output in expected:
            assert output in run.stdout, (block, run.stdout)
