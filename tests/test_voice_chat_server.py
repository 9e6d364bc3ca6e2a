"""voice_chat on a real tritonserver, beside the real stt, vlm_stream and tts it calls.

A question said by espeak-ng comes back as its transcript and a spoken answer that holds the
fact, and the served `stt` hears the answer's audio as its text (WER <= 0.3); a session
carries a follow-up question (the chat model sees the history: its answer changes); the first
sentence's audio reaches the client before the last sentence's text (timestamps compared, no
thresholds), and the sentences are the chat model's own answer.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests import speech
from tests.conftest import start_server
from tests.served import metric
from tools.local_server import LocalTritonServer

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng says the questions"),
]

MAX_WER = 0.3


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[LocalTritonServer]:
    served = start_server(
        tmp_path_factory,
        ["stt", "vlm_stream", "tts", "voice_chat"],
        env={"MODEL_STORE": str(model_store), "VLM_STREAM_MAX_NEW_TOKENS": "64"},
    )
    yield served
    served.stop()


@dataclass
class Turn:
    """What one voice_chat request brought back, each response with its arrival time."""

    started: float
    transcript: str = ""
    transcript_at: float = 0.0
    sentences: list[tuple[str, bytes, float]] = field(default_factory=list)
    finish_reason: str = ""
    error: Any = None

    @property
    def answer(self) -> str:
        return " ".join(text for text, _, _ in self.sentences)


def bytes_input(name: str, value: bytes | str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
    raw = value.encode() if isinstance(value, str) else value
    tensor.set_data_from_numpy(np.array([[raw]], dtype=np.object_))
    return tensor


def ask(server: LocalTritonServer, text: str, **extra: str) -> Turn:
    samples, rate = speech.speak(text)
    inputs = [bytes_input("audio", speech.encode(samples, rate))]
    inputs += [bytes_input(name, value) for name, value in extra.items()]
    got: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: got.put((result, error, time.monotonic())))
    turn = Turn(started=time.monotonic())
    client.async_stream_infer("voice_chat", inputs, enable_empty_final_response=True)
    try:
        while True:
            result, error, at = got.get(timeout=300)
            if error is not None:
                turn.error = error
                break
            names = {o.name for o in result.get_response().outputs}
            if "transcript" in names:
                turn.transcript = result.as_numpy("transcript")[0, 0].decode()
                turn.transcript_at = at
            if "audio" in names:
                text = result.as_numpy("text")[0, 0].decode()
                turn.sentences.append((text, result.as_numpy("audio")[0, 0], at))
            if "finish_reason" in names:
                turn.finish_reason = result.as_numpy("finish_reason")[0, 0].decode()
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    return turn


def heard(server: LocalTritonServer, audio: bytes) -> str:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        result = client.infer("stt", [bytes_input("audio", audio)])
    finally:
        client.close()
    return str(result.as_numpy("text")[0, 0].decode())


def test_a_spoken_question_gets_a_spoken_answer(server: LocalTritonServer) -> None:
    turn = ask(server, "What is the capital of France?")
    assert turn.error is None, turn.error
    assert "capital of france" in turn.transcript.lower()
    assert "paris" in turn.answer.lower(), turn.answer
    assert turn.finish_reason in ("stop", "length")
    # The answer is one short sentence, few words to judge speech by: a second, longer
    # answer is heard too, and the word error rate is that of both.
    longer = ask(server, "Tell me about the city of Paris.")
    assert longer.error is None, longer.error
    answer = f"{turn.answer} {longer.answer}"
    hypothesis = " ".join(heard(server, a) for _, a, _ in turn.sentences + longer.sentences)
    assert speech.word_error_rate(answer, hypothesis) <= MAX_WER, (answer, hypothesis)


def test_a_session_carries_a_follow_up_question(server: LocalTritonServer) -> None:
    first = ask(server, "My name is John and I live in London.", session_id="voice-1")
    assert first.error is None and "john" in first.transcript.lower()
    follow_up = ask(server, "Where do I live?", session_id="voice-1")
    assert follow_up.error is None and follow_up.transcript == "Where do I live?"
    stranger = ask(server, "Where do I live?", session_id="voice-2")
    # Greedy decoding: the same question gives the same answer unless the history differs.
    # (SmolLM2-135M does not reliably answer from the history, so its words are not judged.)
    assert follow_up.answer != stranger.answer


def test_the_answer_is_the_chat_models_spoken_sentence_by_sentence(
    server: LocalTritonServer,
) -> None:
    turn = ask(server, "Tell me about the city of Paris.")
    assert turn.error is None and len(turn.sentences) >= 2, turn.answer
    # The first sentence's audio reached the client before the last sentence's text did.
    assert turn.sentences[0][2] < turn.sentences[-1][2]
    # What was spoken is the chat model's answer to what stt heard: the same prompt straight
    # to vlm_stream (greedy) gives the same words (spoken without markdown symbols).
    got: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    client.async_stream_infer(
        "vlm_stream", [bytes_input("prompt", turn.transcript)], enable_empty_final_response=True
    )
    pieces = []
    try:
        while True:
            result, error = got.get(timeout=300)
            assert error is None, error
            pieces.append(result.as_numpy("text")[0, 0].decode())
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    assert speech.words("".join(pieces)) == speech.words(turn.answer)


def test_a_client_that_cancels_stops_the_chat_models_generation(
    server: LocalTritonServer,
) -> None:
    """voice_chat withdraws its chat call (`cancel_id`): the chat model's cancellation counter
    moves and it generates far fewer tokens than it was allowed."""
    cancelled = metric(server, "multimodal_generation_cancelled_total", "vlm_stream")
    tokens = metric(server, "multimodal_generated_tokens_total", "vlm_stream")
    samples, rate = speech.speak("Tell me a very long story about a dragon and a knight.")
    inputs = [
        bytes_input("audio", speech.encode(samples, rate)),
        grpcclient.InferInput("max_new_tokens", [1, 1], "INT32"),
    ]
    inputs[1].set_data_from_numpy(np.array([[1000]], dtype=np.int32))
    got: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    client.async_stream_infer("voice_chat", inputs)
    result, error = got.get(timeout=300)  # the transcript: the answer is being generated
    assert error is None and result.as_numpy("transcript") is not None
    client.stop_stream(cancel_requests=True)
    client.close()
    deadline = time.monotonic() + 120
    while metric(server, "multimodal_generation_cancelled_total", "vlm_stream") == cancelled:
        assert time.monotonic() < deadline, "the chat model never stopped generating"
        time.sleep(0.2)
    generated = metric(server, "multimodal_generated_tokens_total", "vlm_stream") - tokens
    assert 1 <= generated < 1000
