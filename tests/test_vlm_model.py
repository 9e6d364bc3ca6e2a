"""model_repository/vlm_stream (the chat engine) and its unary fronts vlm and llm through
the pb_utils harness, linked over BLS as on one tritonserver.

Parsing, per-request errors, batching, sessions, streaming order and cancellation, settings.
Tiny random checkpoints: answers are babble, but deterministic babble.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.image import encode_image
from tests.harness.runner import ModelHarness, ServerRejected
from tests.harness.server import HarnessServer

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "model_repository"
TINY = {
    "model_path": "smolvlm-tiny-random",
    "max_new_tokens": "8",
    "max_history": "2",
    "max_images": "3",
    "max_image_pixels": "200000",
}


def load(name: str, model_store: Path, **parameters: str) -> ModelHarness:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODEL_STORE", str(model_store))
        return ModelHarness(REPO / name, parameters={**TINY, **parameters}).load()


@pytest.fixture(scope="module")
def stream(model_store: Path) -> Iterator[ModelHarness]:
    """The engine model: the weights, the running batch and the sessions."""
    harness = load("vlm_stream", model_store, max_new_tokens_limit="4000")
    yield harness
    harness.finalize()


@pytest.fixture(scope="module")
def server(stream: ModelHarness) -> Iterator[HarnessServer]:
    """The engine with its two unary fronts, as on one tritonserver."""
    with ModelHarness(REPO / "vlm") as vlm, ModelHarness(REPO / "llm") as llm:
        yield HarnessServer(stream, vlm, llm)


@pytest.fixture(scope="module")
def vlm(server: HarnessServer) -> ModelHarness:
    return server.model("vlm")


@pytest.fixture(scope="module")
def llm(server: HarnessServer) -> ModelHarness:
    return server.model("llm")


def image(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_image(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))


def text(value: str | bytes) -> np.ndarray:
    return np.array([[value]], dtype=np.object_)


def chat(prompt: str, *images: bytes, **options: np.ndarray) -> dict[str, np.ndarray]:
    inputs = {"prompt": text(prompt)}
    if images:
        inputs["images"] = np.array([list(images)], dtype=np.object_)
    return {**inputs, **options}


def i32(value: int) -> np.ndarray:
    return np.array([[value]], dtype=np.int32)


def f32(value: float) -> np.ndarray:
    return np.array([[value]], dtype=np.float32)


def answer(result) -> tuple[str, str, int, int]:
    return (
        result.text("text"),
        result.text("finish_reason"),
        int(result.outputs["prompt_tokens"][0, 0]),
        int(result.outputs["completion_tokens"][0, 0]),
    )


def test_initialize_logs_the_checkpoint_and_placement(stream: ModelHarness) -> None:
    logged = [m for level, m in stream.logs if level == "INFO"]
    assert any("Idefics3ForConditionalGeneration" in m and "quantization=none" in m for m in logged)


def test_the_fronts_load_no_weights_and_name_their_engine(
    vlm: ModelHarness, llm: ModelHarness
) -> None:
    for front in (vlm, llm):
        assert not hasattr(front.model, "engine")
        logged = [m for level, m in front.logs if level == "INFO"]
        assert any("a front over vlm_stream" in m for m in logged), logged


def test_outputs_and_their_types(vlm: ModelHarness) -> None:
    result = vlm.infer(chat("Describe this.", image(60, 40, 0)))
    assert result.error is None
    assert {k: (v.shape, v.dtype.kind) for k, v in result.outputs.items()} == {
        "text": ((1, 1), "O"),
        "finish_reason": ((1, 1), "O"),
        "prompt_tokens": ((1, 1), "i"),
        "completion_tokens": ((1, 1), "i"),
    }
    _, reason, prompt_tokens, completion_tokens = answer(result)
    assert (reason, completion_tokens) == ("length", 8) and prompt_tokens > 20


def test_a_client_asking_for_some_outputs_gets_those_through_the_response_sender(
    stream: ModelHarness, vlm: ModelHarness, llm: ModelHarness
) -> None:
    """Fronts and engine answer through response senders, whose pruning of unrequested
    outputs kills 2.51's stub (the harness raises ServerCrash): they must send only these."""
    for front in (vlm, llm):
        whole = front.infer(chat("Hi"))
        result = front.infer(chat("Hi"), requested_outputs=["text", "finish_reason"])
        assert result.error is None and set(result.outputs) == {"text", "finish_reason"}
        assert result.text("text") == whole.text("text")
    results = stream.infer(chat("Hi", max_new_tokens=i32(4)), requested_outputs=["text"])
    assert results[-1].final and all(set(r.outputs) == {"text"} for r in results)


def test_batch_with_different_image_counts_equals_one_at_a_time(vlm: ModelHarness) -> None:
    inputs = [
        chat("One picture", image(50, 50, 1)),
        chat("Two pictures", image(80, 30, 2), image(30, 80, 3)),
        chat("Three", image(20, 20, 4), image(40, 40, 5), image(60, 60, 6)),
    ]
    together = [answer(r) for r in vlm.execute([vlm.request(i) for i in inputs])]
    alone = [answer(vlm.infer(i)) for i in inputs]
    assert together == alone
    assert len({a[0] for a in alone}) == 3


def test_a_request_of_several_rows_pads_images_with_empty_elements(vlm: ModelHarness) -> None:
    a, b, c = image(40, 40, 7), image(50, 30, 8), image(30, 50, 9)
    rows = {
        "prompt": np.array([[b"first"], [b"second"]], dtype=np.object_),
        "images": np.array([[a, b], [c, b""]], dtype=np.object_),
    }
    result = vlm.infer(rows)
    assert result.outputs["text"].shape == (2, 1)
    assert result.text("text", 0) == vlm.infer(chat("first", a, b)).text("text")
    assert result.text("text", 1) == vlm.infer(chat("second", c)).text("text")


def test_per_request_options_apply_to_their_own_request(vlm: ModelHarness) -> None:
    short = chat("Hi", max_new_tokens=i32(3))
    sampled = chat("Hi", temperature=f32(1.0), seed=np.array([[11]], dtype=np.int64))
    greedy = chat("Hi")
    results = vlm.execute([vlm.request(i) for i in (short, sampled, greedy)], enforce_batcher=False)
    assert [answer(r)[3] for r in results] == [3, 8, 8]
    assert answer(results[2]) == answer(vlm.infer(greedy))
    assert answer(results[1]) == answer(vlm.infer(sampled))
    assert answer(results[1])[0] != answer(results[2])[0]


def test_stop_strings_cut_the_text(vlm: ModelHarness) -> None:
    full = vlm.infer(chat("Tell me more", max_new_tokens=i32(24))).text("text")
    stop = next(full[i : i + 2] for i in range(4, len(full)) if full[i : i + 2].isprintable())
    inputs = chat(
        "Tell me more",
        max_new_tokens=i32(24),
        stop=np.array([[stop.encode(), b""]], dtype=np.object_),
    )
    result = vlm.infer(inputs)
    assert answer(result)[:2] == (full[: full.index(stop)], "stop")


def test_sessions_carry_history_and_reset(vlm: ModelHarness) -> None:
    sid = {"session_id": text("harness-session")}
    first = answer(vlm.infer(chat("My cat is called Tom.", **sid)))
    second = answer(vlm.infer(chat("What is my cat called?", **sid)))
    fresh = answer(vlm.infer(chat("What is my cat called?")))
    assert second[2] > fresh[2] + first[3] and second[0] != fresh[0]
    reset = vlm.infer(chat("", **sid, reset_session=np.array([[True]])))
    assert answer(reset) == ("", "stop", 0, 0)
    assert answer(vlm.infer(chat("What is my cat called?", **sid))) == fresh


def test_bad_requests_fail_alone_with_invalid_arg(vlm: ModelHarness) -> None:
    good = chat("Fine", image(30, 30, 0))
    cases = {
        "corrupt image": (
            chat("x", b"not an image"),
            "input 'images' item 0 is not a readable image",
        ),
        "pixel limit": (
            chat("x", image(500, 500, 1)),
            "500x500 = 250000 pixels; the limit is 200000",
        ),
        "too many images": (chat("x", *[image(8, 8, i) for i in range(4)]), "carries 4 images"),
        "context": (chat("The quick brown fox. " * 1500), "model's context of 4096 tokens"),
        "json": (chat('[{"role": "user", "content": "hi"'), "not valid JSON"),
        "role": (chat('[{"role": "tool", "content": "hi"}]'), "messages[0].role is 'tool'"),
        "image token as text": (chat("look <image> here"), "input 'prompt' contains '<image>'"),
        "max_new_tokens 0": (chat("x", max_new_tokens=i32(0)), "input 'max_new_tokens' is 0"),
        "max_new_tokens cap": (chat("x", max_new_tokens=i32(99999)), "allowed: 1 to 4000"),
        "temperature": (chat("x", temperature=f32(-1.0)), "input 'temperature' is -1.0"),
        "top_p 0": (chat("x", top_p=f32(0.0)), "input 'top_p' is 0.0"),
        "top_p 1.5": (chat("x", top_p=f32(1.5)), "input 'top_p' is 1.5"),
        "utf-8": (chat("x", session_id=text(b"\xff\xfe")), "input 'session_id' is not valid UTF-8"),
        "missing prompt": ({"max_new_tokens": i32(3)}, "input 'prompt' is required"),
    }
    requests = [vlm.request(good)] + [vlm.request(inputs) for inputs, _ in cases.values()]
    before = vlm.metric("multimodal_request_errors_total", {"model": "vlm", "code": "INVALID_ARG"})
    counted_before = before.value if before else 0
    results = vlm.execute(requests, enforce_batcher=False)
    assert results[0].error is None and answer(results[0]) == answer(vlm.infer(good))
    for result, (name, (_, expected)) in zip(results[1:], cases.items(), strict=True):
        assert result.code == "INVALID_ARG", (name, result.message)
        assert expected in result.message, (name, result.message)
        assert result.http_status == 400
    after = vlm.metric("multimodal_request_errors_total", {"model": "vlm", "code": "INVALID_ARG"})
    assert after.value - counted_before == len(cases)


def test_the_server_checks_shapes_and_types_before_the_model(vlm: ModelHarness) -> None:
    with pytest.raises(ServerRejected, match="data-type"):
        vlm.request({"prompt": np.zeros((1, 1), dtype=np.float32)})
    with pytest.raises(ServerRejected, match="batch-size"):
        vlm.request({"prompt": np.array([[b"x"]] * 17, dtype=np.object_)})


def test_llm_serves_text_and_refuses_images(llm: ModelHarness, vlm: ModelHarness) -> None:
    result = llm.infer(chat("Hello"))
    assert answer(result) == answer(vlm.infer(chat("Hello")))
    assert answer(result)[1::2] == ("length", 8)
    uri = "data:image/png;base64,iVBORw0KGgo="
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": uri}]}]
    refused = llm.infer(chat(json.dumps(messages)))
    assert refused.code == "INVALID_ARG" and "reads text only" in refused.message
    with pytest.raises(ServerRejected, match="unexpected inference input 'images'"):
        llm.request(chat("x", image(8, 8, 0)))


def test_the_fronts_share_the_engines_sessions(
    vlm: ModelHarness, llm: ModelHarness, stream: ModelHarness
) -> None:
    """One engine, one conversation: a turn taken on vlm is history on llm and vlm_stream."""
    sid = {"session_id": text("shared-session")}
    vlm.infer(chat("My dog is called Rex.", **sid))
    with_history = answer(llm.infer(chat("What is my dog called?", **sid)))
    fresh = answer(llm.infer(chat("What is my dog called?")))
    assert with_history[2] > fresh[2]
    streamed = stream.infer(chat("And my cat?", **sid))
    assert answer(streamed[-1])[2] > with_history[2]
    stream.infer(chat("", **sid, reset_session=np.array([[True]])))


def test_engine_errors_reach_the_client_with_their_codes(
    stream: ModelHarness, model_store: Path
) -> None:
    """2.51's BLS drops a callee's error code: the front reads it back from the message."""
    with ModelHarness(REPO / "vlm", parameters={"engine_model": "vlm_engine_missing"}) as lost:
        HarnessServer(stream, lost)
        result = lost.infer(chat("Hi"))
        assert result.code == "UNAVAILABLE" and "vlm_engine_missing" in result.message


# --- vlm_stream ----------------------------------------------------------------------------


def pieces(results) -> list[str]:
    return [r.text("text") for r in results if not r.final]


def test_stream_sends_pieces_in_order_then_one_final(
    stream: ModelHarness, vlm: ModelHarness
) -> None:
    inputs = [
        chat("Tell me a story", image(40, 40, 3), max_new_tokens=i32(12)),
        chat("Hi", image(20, 60, 4), image(60, 20, 5), max_new_tokens=i32(6)),
    ]
    batch = stream.execute([stream.request(i) for i in inputs])
    for request_inputs, results in zip(inputs, batch, strict=True):
        assert [r.final for r in results].count(True) == 1 and results[-1].final
        assert all(r.error is None for r in results)
        final = results[-1]
        unary = vlm.infer(request_inputs)
        assert "".join(pieces(results)) == unary.text("text")
        assert final.text("text") == ""
        assert answer(final)[1:] == answer(unary)[1:]
        assert len(pieces(results)) > 1


def test_stream_refuses_several_rows(stream: ModelHarness) -> None:
    (result,) = stream.infer({"prompt": np.array([[b"a"], [b"b"]], dtype=np.object_)})
    assert result.final and result.code == "INVALID_ARG" and "one prompt" in result.message


def tokens_at_last_stop(stream: ModelHarness) -> int:
    """Tokens the engine had generated for the last row it stopped (its log line says)."""
    stopped = [m for _, m in stream.logs if "the client cancelled; generation stopped after" in m]
    return int(stopped[-1].split("after ")[1].split(" ")[0])


def test_cancelling_a_stream_stops_its_generation(stream: ModelHarness) -> None:
    labels = {"model": "vlm_stream"}
    before = stream.metric("multimodal_generation_cancelled_total", labels)
    cancelled_before = before.value if before else 0
    request = stream.request(chat("Tell me everything", max_new_tokens=i32(3000)))
    other = stream.request(chat("Tell me everything", max_new_tokens=i32(40)))

    def client() -> None:  # cancels as soon as the first piece arrives
        while not request._sender._deliveries:
            time.sleep(0.001)
        stream.cancel(request)

    watcher = threading.Thread(target=client)
    watcher.start()
    cancelled, finished = stream.execute([request, other])
    watcher.join()
    assert cancelled[-1].final and finished[-1].final
    _, reason, _, tokens = answer(finished[-1])
    assert (reason, tokens) == ("length", 40)
    assert (
        stream.metric("multimodal_generation_cancelled_total", labels).value == cancelled_before + 1
    )
    assert 1 <= tokens_at_last_stop(stream) < 3000


TOKEN = "0123456789abcdef0123456789abcdef"  # a 32-character request id: cancellable by id


def withdraw(harness: ModelHarness, request_id: str) -> Any:
    """The answer to a request whose `cancel_id` names `request_id`."""
    control = chat("", cancel_id=text(request_id))
    if harness.decoupled:
        return harness.infer(control)[-1]
    return harness.infer(control)


def cancelled_count(stream: ModelHarness) -> float:
    """Generations the engine stopped for a cancellation (the fronts' rows included)."""
    counted = stream.metric("multimodal_generation_cancelled_total", {"model": "vlm_stream"})
    return counted.value if counted else 0


def wait_until_decoding(stream: ModelHarness) -> None:
    deadline = time.monotonic() + 60
    while stream.model.engine.scheduler.load[0] == 0:
        time.sleep(0.001)
        assert time.monotonic() < deadline


@pytest.mark.parametrize("name", ["vlm_stream", "llm"])
def test_a_request_is_cancelled_by_another_naming_its_id(
    name: str, stream: ModelHarness, server: HarnessServer
) -> None:
    """What voice_chat does with a chat call it no longer needs (BLS cannot cancel on 2.51):
    the generation stops (the engine's cancelled counter moves), the caller gets
    finish_reason cancelled (a unary caller: CANCELLED), the withdrawal is answered cancelled."""
    harness = server.model(name)
    counted = cancelled_count(stream)
    request = harness.request(
        chat("Tell me everything", max_new_tokens=i32(3000)), request_id=TOKEN
    )
    outcome: list[Any] = []
    running = threading.Thread(target=lambda: outcome.append(harness.execute([request])))
    running.start()
    wait_until_decoding(stream)
    answered = withdraw(harness, TOKEN)
    running.join(60)
    assert answered.error is None, answered.message
    assert answer(answered)[1] == "cancelled"
    (results,) = outcome[0]
    if name == "vlm_stream":
        assert results[-1].error is None and answer(results[-1])[1] == "cancelled"
        assert 1 <= answer(results[-1])[3] < 3000
    else:  # a unary request that was cancelled is answered CANCELLED, as when its client left
        assert results.code == "CANCELLED"
    assert cancelled_count(stream) == counted + 1


def test_a_unary_request_whose_client_left_stops_generating(
    vlm: ModelHarness, stream: ModelHarness
) -> None:
    """The front sees its client's cancellation between two pieces and withdraws its call."""
    counted = cancelled_count(stream)
    request = vlm.request(chat("Tell me everything", max_new_tokens=i32(3000)))
    outcome: list[Any] = []
    running = threading.Thread(target=lambda: outcome.append(vlm.execute([request])))
    running.start()
    wait_until_decoding(stream)
    vlm.cancel(request)
    running.join(60)
    (result,) = outcome[0]
    assert result.code == "CANCELLED"
    assert cancelled_count(stream) == counted + 1
    assert tokens_at_last_stop(stream) < 3000


def test_a_row_that_fails_stops_the_other_rows_of_its_request(
    vlm: ModelHarness, stream: ModelHarness
) -> None:
    """A unary request gets one answer: once a row fails, its other rows stop generating."""
    counted = cancelled_count(stream)
    rows = {
        "prompt": np.array([[b"Tell me everything"], [b"Tell me everything"]], dtype=np.object_),
        "max_new_tokens": np.array([[0], [3000]], dtype=np.int32),
    }
    result = vlm.infer(rows)
    assert result.code == "INVALID_ARG" and "input 'max_new_tokens' is 0" in result.message
    assert cancelled_count(stream) == counted + 1
    assert tokens_at_last_stop(stream) < 3000


def test_only_a_live_request_with_a_long_id_can_be_withdrawn(
    stream: ModelHarness, vlm: ModelHarness
) -> None:
    for harness in (stream, vlm):
        unknown = withdraw(harness, TOKEN)
        assert unknown.code == "NOT_FOUND" and "input 'cancel_id'" in unknown.message
    # A short id (a client's own "1") is never cancellable by others: not found while it runs.
    request = stream.request(chat("Tell me everything", max_new_tokens=i32(40)), request_id="1")
    outcome: list[Any] = []
    running = threading.Thread(target=lambda: outcome.append(stream.execute([request])))
    running.start()
    while not request._sender._deliveries:
        time.sleep(0.001)
    refused = withdraw(stream, "1")
    running.join(60)
    assert refused.code == "NOT_FOUND"
    (results,) = outcome[0]
    assert answer(results[-1])[1] == "length" and answer(results[-1])[3] == 40


def test_a_request_cancelled_before_it_runs_gets_cancelled(stream: ModelHarness) -> None:
    request = stream.request(chat("Hi"))
    stream.cancel(request)
    (result,) = stream.execute([request])[0]
    assert result.final and result.code == "CANCELLED"


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "architecture"),
    [
        ({"MODEL_PATH": "qwen2.5-vl-tiny-random"}, "Qwen2_5_VLForConditionalGeneration"),
        (
            {
                "MODEL_PATH": "qwen2.5-vl-tiny-random",
                "VLM_STREAM_MODEL_PATH": "smolvlm-tiny-random",
            },
            "Idefics3ForConditionalGeneration",
        ),
    ],
)
def test_environment_overrides_config_with_the_model_prefix_first(
    model_store: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], architecture: str
) -> None:
    monkeypatch.setenv("MODEL_STORE", str(model_store))
    for key, value in {**env, "TEMPERATURE": "0.5", "MAX_HISTORY": "7"}.items():
        monkeypatch.setenv(key, value)
    with ModelHarness(
        REPO / "vlm_stream", parameters={"model_path": "smolvlm-256m-random"}
    ) as harness:
        assert any(architecture in m for _, m in harness.logs)
        settings = harness.model.engine.settings
        assert (settings["temperature"], settings["max_history"]) == (0.5, 7)
