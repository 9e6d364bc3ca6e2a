"""voice_chat through the harness: its BLS calls reach the real stt, vlm_stream and tts models,
each loaded by its own harness in one HarnessServer (their default checkpoints: whisper-tiny.en,
SmolLM2-135M-Instruct, the Piper "joe" voice), as on one tritonserver.

What is checked: the order and content of the responses, errors named by their stage with
the right code, and a client that cancels hearing nothing more. The real server's side
(overlap in time, a session's follow-up, speech heard back) is tests/test_voice_chat_server.py.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests import speech
from tests.harness.runner import ModelHarness, Result
from tests.harness.server import HarnessServer

REPO = Path(__file__).resolve().parents[1] / "model_repository"
QUESTION = "What is the capital of France?"

pytestmark = pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng says the question")


@pytest.fixture(scope="module")
def server(model_store: Path) -> Iterator[HarnessServer]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODEL_STORE", str(model_store))
        with (
            ModelHarness(REPO / "stt") as stt,
            ModelHarness(REPO / "vlm_stream", parameters={"max_new_tokens": "48"}) as chat,
            ModelHarness(REPO / "tts") as tts,
            ModelHarness(REPO / "voice_chat") as voice_chat,
        ):
            yield HarnessServer(stt, chat, tts, voice_chat)


def question(text: str = QUESTION, **extra: Any) -> dict[str, np.ndarray]:
    samples, rate = speech.speak(text)
    inputs = {"audio": np.array([[speech.encode(samples, rate)]], dtype=np.object_)}
    for name, value in extra.items():
        dtype = np.int32 if isinstance(value, int) else np.object_
        inputs[name] = np.array([[value]], dtype=dtype)
    return inputs


def sentences(results: list[Result]) -> list[tuple[str, bytes]]:
    return [
        (r.text("text"), bytes(r.outputs["audio"].reshape(-1)[0]))
        for r in results
        if "audio" in r.outputs
    ]


def test_a_spoken_question_is_answered_sentence_by_sentence(server: HarnessServer) -> None:
    results = server.stream("voice_chat", question())
    first, *middle, last = results
    assert set(first.outputs) == {"transcript"} and not first.final
    assert "capital of france" in first.text("transcript").lower()
    said = sentences(middle)
    assert said and len(said) == len(middle) and not any(r.final for r in middle)
    assert "Paris" in " ".join(text for text, _ in said)
    for text, audio in said:
        samples, rate = sf.read(io.BytesIO(audio))
        assert rate == 22_050 and samples.size > 0, text
        assert "*" not in text and "#" not in text
    assert last.final and last.error is None and set(last.outputs) == {"finish_reason"}
    assert last.text("finish_reason") in ("stop", "length")


def test_format_and_system_reach_their_stages(server: HarnessServer) -> None:
    results = server.stream(
        "voice_chat",
        question(format="flac", system="Answer in one short sentence.", max_new_tokens=24),
    )
    said = sentences(results)
    assert said and all(audio.startswith(b"fLaC") for _, audio in said)
    assert results[-1].error is None


def test_a_stage_error_names_the_stage_with_its_code(server: HarnessServer) -> None:
    (bad_audio,) = server.stream("voice_chat", {"audio": np.array([[b"not audio"]], np.object_)})
    assert bad_audio.final and bad_audio.code == "INVALID_ARG"
    assert bad_audio.message.startswith("stt: input 'audio' is not a readable audio file")

    transcript, bad_voice = server.stream("voice_chat", question(voice="nobody"))
    assert "transcript" in transcript.outputs
    assert bad_voice.final and bad_voice.code == "INVALID_ARG"
    assert bad_voice.message.startswith("tts: input 'voice'")

    transcript, too_long = server.stream("voice_chat", question(max_new_tokens=10**6))
    assert too_long.final and too_long.code == "INVALID_ARG"
    assert too_long.message.startswith("vlm_stream: input 'max_new_tokens'")


def test_a_request_with_two_questions_is_refused(server: HarnessServer) -> None:
    audio = question()["audio"]
    (refused,) = server.stream("voice_chat", {"audio": np.concatenate([audio, audio])})
    assert refused.code == "INVALID_ARG" and "one question" in refused.message


def test_a_client_that_cancels_hears_nothing_more(server: HarnessServer) -> None:
    voice_chat, tts = server.model("voice_chat"), server.model("tts")
    spoken: list[int] = []
    run = tts.model.execute

    def counted(requests: Any) -> Any:
        spoken.append(len(requests))
        return run(requests)

    tts.model.execute = counted
    cancelled = "multimodal_generation_cancelled_total"
    before = chat_counter(cancelled)
    request = voice_chat.request(question("Tell me a long story about a dragon."))

    def client() -> None:  # hangs up once it has the transcript
        while not request._sender._deliveries:
            time.sleep(0.001)
        voice_chat.cancel(request)

    watcher = threading.Thread(target=client)
    watcher.start()
    try:
        (results,) = voice_chat.execute([request])
    finally:
        watcher.join()
        tts.model.execute = run
    assert [set(r.outputs) for r in results] == [{"transcript"}, set()]
    assert results[-1].client_cancelled
    assert sum(spoken) <= 1  # at most the sentence that was complete as the client left
    # The chat model stopped generating too: voice_chat withdrew its call (`cancel_id`).
    deadline = time.monotonic() + 60
    while chat_counter(cancelled) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert chat_counter(cancelled) == before + 1


def chat_counter(name: str) -> float:
    series = ModelHarness.metric(name, {"model": "vlm_stream"})
    return 0.0 if series is None else series.value
