"""The OpenAI door's pure parts, without a server: format writers, request mapping, settings,
and the guards driven as ASGI apps."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from openai_api import subtitles
from openai_api.chat import ChatCompletionRequest, refused, triton_inputs
from openai_api.errors import ApiError
from openai_api.guards import ApiKeys, BodyLimit, TooLarge
from openai_api.models import CHAT, SPEECH, TRANSCRIPTION, listed, resolve
from openai_api.settings import ALL_MODELS, SettingError, Settings
from openai_api.speech import SpeechRequest, speech_format, tts_inputs, wav_header
from openai_api.transcription import stt_inputs

# --- transcription formats ---------------------------------------------------------------------


def test_srt_and_vtt_number_and_time_every_segment() -> None:
    items = [subtitles.Segment(0.0, 1.5, "Hello."), subtitles.Segment(1.5, 3661.25, "Bye.")]
    assert subtitles.srt(items) == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello.\n\n2\n00:00:01,500 --> 01:01:01,250\nBye.\n"
    )
    assert subtitles.vtt(items) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello.\n\n00:00:01.500 --> 01:01:01.250\nBye.\n"
    )


def test_segments_close_an_open_end_and_never_run_backwards() -> None:
    raw = json.dumps(
        [
            {"start": 0.0, "end": 2.0, "text": " One."},
            {"start": 1.8, "end": 4.0, "text": " Two."},
            {"start": 4.0, "end": None, "text": " Three."},
        ]
    )
    items = subtitles.segments(raw, "One. Two. Three.", duration=5.5)
    assert [(s.start, s.end, s.text) for s in items] == [
        (0.0, 2.0, "One."),
        (2.0, 4.0, "Two."),
        (4.0, 5.5, "Three."),
    ]


def test_without_segments_the_whole_text_is_one() -> None:
    assert subtitles.segments("null", " Hi. ", 2.0) == [subtitles.Segment(0.0, 2.0, "Hi.")]
    assert subtitles.segments("null", "", 2.0) == []


def test_verbose_json_has_openais_fields() -> None:
    items = [subtitles.Segment(0.0, 1.0, "Hi.")]
    body = subtitles.verbose_json("Hi.", items, task="transcribe", language="en", duration=1.2)
    assert body == {
        "task": "transcribe",
        "language": "en",
        "duration": 1.2,
        "text": "Hi.",
        "segments": [{"id": 0, "start": 0.0, "end": 1.0, "text": "Hi."}],
    }


def test_stt_inputs_ask_for_timestamps_only_when_a_format_needs_them() -> None:
    plain = stt_inputs(
        b"RIFF",
        task="transcribe",
        language=None,
        temperature=None,
        response_format="json",
        granularities=[],
    )
    assert set(plain) == {"audio"}
    timed = stt_inputs(
        b"RIFF",
        task="translate",
        language="fr",
        temperature=0.2,
        response_format="srt",
        granularities=[],
    )
    assert set(timed) == {"audio", "task", "language", "temperature", "return_timestamps"}
    assert timed["task"][0, 0] == b"translate" and timed["audio"].shape == (1, 1)


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"response_format": "tsv"}, "response_format"),
        ({"granularities": ["word"]}, "timestamp_granularities"),
        ({"temperature": 1.5}, "temperature"),
    ],
)
def test_stt_inputs_refuse_what_stt_cannot_do(options: dict[str, Any], param: str) -> None:
    arguments: dict[str, Any] = {
        "task": "transcribe",
        "language": None,
        "temperature": None,
        "response_format": "json",
        "granularities": [],
    }
    with pytest.raises(ApiError) as caught:
        stt_inputs(b"RIFF", **{**arguments, **options})
    assert (caught.value.status, caught.value.param) == (400, param)


# --- chat request mapping ----------------------------------------------------------------------


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "vlm", "messages": [{"role": "user", "content": "Hi"}], **fields}
    )


def test_chat_maps_openai_options_to_the_model_inputs() -> None:
    request = chat(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
        ],
        max_completion_tokens=12,
        max_tokens=99,
        temperature=0.5,
        top_p=0.9,
        stop="\n",
        seed=7,
        session_id="s1",
    )
    inputs = triton_inputs(request, "vlm")
    assert json.loads(inputs["prompt"][0, 0]) == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
    ]
    assert inputs["max_new_tokens"][0, 0] == 12  # max_completion_tokens wins, as in OpenAI's API
    assert inputs["max_new_tokens"].dtype == np.int32 and inputs["seed"].dtype == np.int64
    assert inputs["temperature"][0, 0] == np.float32(0.5)
    assert inputs["stop"].tolist() == [[b"\n"]]
    assert inputs["session_id"][0, 0] == b"s1"
    assert "reset_session" not in inputs


def test_chat_refuses_urls_it_would_have_to_fetch() -> None:
    url = "http://169.254.169.254/latest/meta-data"
    request = chat(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    )
    with pytest.raises(ApiError) as caught:
        triton_inputs(request, "vlm")
    assert caught.value.status == 400 and url in caught.value.message
    assert caught.value.param == "messages[0].content[0].image_url.url"


def test_chat_refuses_images_for_the_text_model_and_unknown_roles() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(ApiError, match="takes no images"):
        triton_inputs(chat(messages=[{"role": "user", "content": [image]}]), "llm")
    with pytest.raises(ApiError, match="'tool' is not supported"):
        triton_inputs(chat(messages=[{"role": "tool", "content": "42"}]), "vlm")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_chat_refuses_features_the_models_lack(fields: dict[str, Any], param: str) -> None:
    error = refused(chat(**fields))
    assert error is not None and error.param == param
    assert refused(chat(n=1, response_format={"type": "text"})) is None


# --- model ids -----------------------------------------------------------------------------------


def test_openai_names_are_aliases_and_unknown_ids_are_404() -> None:
    assert resolve(TRANSCRIPTION, "whisper-1", ALL_MODELS, "transcription").unary == "stt"
    assert resolve(SPEECH, "tts-1-hd", ALL_MODELS, "speech").stream == "tts_stream"
    assert resolve(CHAT, "vlm", ALL_MODELS, "chat").stream == "vlm_stream"
    with pytest.raises(ApiError) as caught:
        resolve(CHAT, "gpt-4o", ALL_MODELS, "chat")
    assert (caught.value.status, caught.value.code) == (404, "model_not_found")
    with pytest.raises(ApiError):
        resolve(CHAT, "llm", ("vlm", "vlm_stream"), "chat")  # not served by this door
    assert listed(("stt",), {"stt", "tts"}) == ["stt", "whisper-1"]


# --- speech --------------------------------------------------------------------------------------


def speech(**fields: Any) -> SpeechRequest:
    return SpeechRequest.model_validate(
        {"model": "tts-1", "input": "Hi.", "voice": "alloy", **fields}
    )


def test_speech_maps_voice_speed_and_format() -> None:
    request = speech(voice="echo", speed=1.5, response_format="pcm")
    fmt = speech_format(request)
    inputs = tts_inputs(request, fmt, {"echo": "3"})
    assert inputs["voice"][0, 0] == b"3" and inputs["speaking_rate"][0, 0] == np.float32(1.5)
    assert inputs["format"][0, 0] == b"pcm_s16" and inputs["sample_rate"][0, 0] == 24000
    # A name the mapping does not know is the checkpoint's own voice.
    assert tts_inputs(speech(voice="7"), fmt, {})["voice"][0, 0] == b"7"


def test_speech_names_the_formats_that_exist() -> None:
    with pytest.raises(ApiError) as caught:
        speech_format(speech(response_format="aac"))
    assert "wav, pcm, flac, mp3, opus" in caught.value.message
    with pytest.raises(ApiError):
        speech_format(speech(response_format="mp3", stream_format="sse"))


def test_the_streamed_wav_header_reads_as_a_wav_file() -> None:
    samples = (np.sin(np.arange(2205) / 5) * 8000).astype("<i2")
    data, rate = sf.read(io.BytesIO(wav_header(22050) + samples.tobytes()), dtype="int16")
    assert rate == 22050 and np.array_equal(data, samples)


# --- settings ------------------------------------------------------------------------------------


def test_settings_defaults_and_environment() -> None:
    default = Settings.from_environment({})
    assert (default.host, default.port, default.api_keys) == ("127.0.0.1", 9000, frozenset())
    assert default.voices["alloy"] == "0"
    custom = Settings.from_environment(
        {
            "OPENAI_PORT": "9100",
            "OPENAI_API_KEYS": "a, b",
            "OPENAI_MODELS": "stt,tts",
            "OPENAI_VOICES": "alloy=1",
            "OPENAI_HOST": "",
        }
    )
    assert custom.port == 9100 and custom.api_keys == {"a", "b"} and custom.host == "127.0.0.1"
    assert custom.models == ("stt", "tts") and dict(custom.voices) == {"alloy": "1"}


@pytest.mark.parametrize(
    ("name", "value"),
    [("OPENAI_PORT", "x"), ("OPENAI_PORT", "0"), ("OPENAI_MODELS", "gpt"), ("OPENAI_VOICES", "a")],
)
def test_a_bad_setting_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(SettingError, match=name):
        Settings.from_environment({name: value})


# --- guards, driven as ASGI apps -----------------------------------------------------------------


def call(app: Any, headers: dict[str, str], chunks: list[bytes], path: str = "/v1/x") -> list[Any]:
    """Run one HTTP request through `app`; the messages it sent back."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    incoming = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


async def reader(scope: Any, receive: Any, send: Any) -> None:
    """An app that reads the whole body, then answers 200."""
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    limited = BodyLimit(reader, json_bytes=10, upload_bytes=100)
    sent = call(limited, {"content-length": "11", "content-type": "application/json"}, [b"x" * 11])
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["type"] == "invalid_request_error"
    sent = call(
        limited, {"content-length": "11", "content-type": "multipart/form-data"}, [b"x" * 11]
    )
    assert sent[0]["status"] == 200  # uploads have their own, larger, limit


def test_a_chunked_body_is_stopped_when_it_passes_the_limit() -> None:
    limited = BodyLimit(reader, json_bytes=10, upload_bytes=100)
    with pytest.raises(TooLarge):
        call(limited, {"content-type": "application/json"}, [b"x" * 6, b"x" * 6, b"x" * 6])
    assert call(limited, {}, [b"x" * 5, b"x" * 5])[0]["status"] == 200


def test_api_keys_are_checked_only_when_configured() -> None:
    guarded = ApiKeys(reader, frozenset({"secret"}))
    assert call(guarded, {}, [b""])[0]["status"] == 401
    assert call(guarded, {"authorization": "Bearer nope"}, [b""])[0]["status"] == 401
    assert call(guarded, {"authorization": "Bearer secret"}, [b""])[0]["status"] == 200
    assert call(guarded, {}, [b""], path="/health")[0]["status"] == 200
    assert call(ApiKeys(reader, frozenset()), {}, [b""])[0]["status"] == 200


# --- the door benchmark's bookkeeping (tools/loadtest/door.py) -----------------------------------


def test_a_chunk_is_joined_end_to_end_with_its_series() -> None:
    from tools.loadtest.door import shifted
    from tools.loadtest.stats import Timing, summarize

    first = [Timing(0, (100,)), Timing(100, (250,))]
    later = shifted([Timing(10_000, (10_050,)), Timing(10_050, (10_150,))], start_ns=250)
    assert later == [Timing(250, (300,)), Timing(300, (400,))]
    # Throughput counts the series' own sending time, not the other series' turn in between.
    assert summarize(first + later)["seconds"] == 400 / 1e9


def test_the_ratios_are_added_latency_and_throughput() -> None:
    from tools.loadtest.door import ratios

    direct = [
        {"concurrency": 1, "p50_ms": 100.0, "throughput": 10.0, "answers": {"0": "a", "1": "b"}},
        {"concurrency": 16, "p50_ms": 500.0, "throughput": 30.0},
    ]
    door = [
        {"concurrency": 1, "p50_ms": 101.5, "throughput": 9.9, "answers": {"0": "a", "1": "c"}},
        {"concurrency": 16, "p50_ms": 510.0, "throughput": 29.4},
    ]
    assert ratios(direct, door) == {
        "p50 latency added by the door at concurrency 1 (ms)": 1.5,
        "identical answers at concurrency 1 (share of prompts)": 0.5,
        "throughput door / direct at concurrency 16": 0.98,
        "p50 latency added by the door at concurrency 16 (ms)": 10.0,
    }
