"""multimodal_client (the library and its CLI) against real tritonservers.

One server serves every model of the repository, as ./scripts/serve does (chat answers kept
short); each call is made over gRPC and HTTP, streaming over gRPC, by `Client` and
`AsyncClient`; a bad request fails at once with its code; a deadline is kept; a call made
before its server is up succeeds once it is, after retries; the CLI turns a recorded question
into a spoken answer file that the served `stt` hears.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from multimodal_client import AsyncClient, Client, Retry, TritonError
from multimodal_client.calls import join_wav
from tests import speech
from tests.conftest import ROOT, start_server
from tools.local_server import LocalTritonServer, free_port

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng says the questions"),
]

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[LocalTritonServer]:
    every = sorted(p.parent.name for p in (ROOT / "model_repository").glob("*/config.pbtxt"))
    served = start_server(
        tmp_path_factory, every, env={"MODEL_STORE": str(model_store), "MAX_NEW_TOKENS": "48"}
    )
    yield served
    served.stop()


@pytest.fixture(scope="module")
def question() -> bytes:
    samples, rate = speech.speak(QUESTION)
    return speech.encode(samples, rate)


def frames(wav: bytes) -> int:
    with wave.open(io.BytesIO(wav), "rb") as reader:
        return reader.getnframes()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_each_unary_call(server: LocalTritonServer, question: bytes, protocol: str) -> None:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with Client(url, protocol=protocol, timeout=300) as client:
        client.wait_ready(models=["stt", "llm", "vlm", "tts"])
        assert client.transcribe(question) == QUESTION
        assert client.segments(question)[0]["text"].strip() == QUESTION
        assert "Paris" in client.chat(QUESTION)
        image = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 30, 30)).save(image, format="PNG")
        assert client.chat("What colour is this picture?", images=[image.getvalue()])
        wav = client.speak("The capital of France is Paris.")
        assert frames(wav) > 0
        assert "paris" in client.transcribe(wav).lower()


def test_streaming_calls(server: LocalTritonServer, question: bytes, tmp_path: Path) -> None:
    with Client(server.grpc_url, timeout=300) as client:
        pieces = list(client.chat(QUESTION, stream=True))
        assert len(pieces) > 1 and "".join(pieces) == client.chat(QUESTION)
        chunks = list(client.speak("One sentence. And another one.", stream=True))
        assert len(chunks) == 2 and all(frames(c) > 0 for c in chunks)
        path = tmp_path / "question.wav"
        path.write_bytes(question)
        events = list(client.voice_chat(path))
    assert events[0].transcript == QUESTION
    spoken = [e.speech for e in events if e.speech is not None]
    assert spoken and "Paris" in " ".join(s.text for s in spoken)
    assert events[-1].finish_reason in ("stop", "length")


def test_the_async_client(server: LocalTritonServer, question: bytes) -> None:
    async def calls() -> tuple[str, str, list[str], bytes, list[bytes], list[object]]:
        async with AsyncClient(server.grpc_url, timeout=300) as client:
            await client.wait_ready(models=["voice_chat"])
            heard = await client.transcribe(question)
            answer = await client.chat(QUESTION)
            pieces = [p async for p in client.chat(QUESTION, stream=True)]
            wav = await client.speak("Hello there.")
            chunks = [c async for c in client.speak("Hi. Bye.", stream=True)]
            events = [e async for e in client.voice_chat(question)]
        return heard, answer, pieces, wav, chunks, events

    heard, answer, pieces, wav, chunks, events = asyncio.run(calls())
    assert heard == QUESTION and "".join(pieces) == answer and "Paris" in answer
    assert frames(wav) > 0 and len(chunks) == 2
    assert events[0].transcript == QUESTION and events[-1].finish_reason  # type: ignore[attr-defined]
    async_http = AsyncClient(server.http_url, protocol="http", timeout=300)
    assert asyncio.run(_transcribe_and_close(async_http, question)) == QUESTION


async def _transcribe_and_close(client: AsyncClient, audio: bytes) -> str:
    try:
        return await client.transcribe(audio)
    finally:
        await client.close()


def test_a_bad_request_is_not_retried(server: LocalTritonServer) -> None:
    retries: list[int] = []
    policy = Retry(attempts=5, on_retry=lambda n, e, d: retries.append(n))
    for url, protocol in [(server.grpc_url, "grpc"), (server.http_url, "http")]:
        with Client(url, protocol=protocol, retry=policy) as client:
            with pytest.raises(TritonError) as refused:
                client.transcribe(b"not audio")
            assert refused.value.code == "INVALID_ARGUMENT"
            assert refused.value.message.startswith("input 'audio' is not a readable audio")
    with Client(server.grpc_url, retry=policy) as client, pytest.raises(TritonError) as bad:
        list(client.voice_chat(b"not audio"))
    assert "stt: input 'audio'" in bad.value.message  # a stream's error carries no status
    assert retries == []


def test_a_deadline_is_kept(server: LocalTritonServer) -> None:
    with Client(server.grpc_url) as client, pytest.raises(TritonError) as late:
        client.chat("Tell me a long story.", max_new_tokens=48, timeout=0.001)
    assert late.value.code == "DEADLINE_EXCEEDED"


def test_a_call_waits_for_a_server_that_comes_up_late(
    tmp_path: Path, model_store: Path, question: bytes
) -> None:
    port = free_port()
    retries: list[float] = []
    policy = Retry(attempts=1000, max_delay=1.0, on_retry=lambda n, e, d: retries.append(d))
    late = LocalTritonServer(
        models=["stt"],
        grpc_port=port,
        log_path=tmp_path / "late.log",
        env_overrides={"MODEL_STORE": str(model_store)},
    )
    with Client(f"127.0.0.1:{port}", retry=policy, timeout=600) as client:
        with pytest.raises(TritonError) as down:
            Client(f"127.0.0.1:{port}", retry=Retry(attempts=1)).transcribe(question)
        assert down.value.code == "UNAVAILABLE"
        late.start()
        try:
            assert client.transcribe(question) == QUESTION
        finally:
            late.stop()
    assert retries, "the first attempts found no server"


def test_the_cli_answers_a_recorded_question_with_a_spoken_file(
    server: LocalTritonServer, question: bytes, tmp_path: Path
) -> None:
    recorded = tmp_path / "question.wav"
    recorded.write_bytes(question)
    answer = tmp_path / "answer.wav"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "multimodal_client", "--url", server.grpc_url, *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)

    heard = cli("transcribe", str(recorded))
    assert heard.returncode == 0 and heard.stdout.strip() == QUESTION, heard.stderr
    spoken = cli("voice-chat", str(recorded), "-o", str(answer))
    assert spoken.returncode == 0, spoken.stderr
    assert "heard: What is the capital of France?" in spoken.stderr
    with Client(server.grpc_url) as client:
        assert "paris" in client.transcribe(answer).lower()
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    failed = cli("transcribe", str(bad))
    assert failed.returncode == 1 and "error INVALID_ARGUMENT: input 'audio'" in failed.stderr
    assert join_wav([answer.read_bytes()]) == answer.read_bytes()
