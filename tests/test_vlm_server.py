"""vlm, vlm_stream and llm in a real tritonserver, over HTTP, gRPC and gRPC streaming.

One server for the module (tests/conftest.py `vlm_server`), tiny random checkpoints, a few
tokens per answer.
"""

from __future__ import annotations

import base64
import json
import queue
import time
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.chat_client import (
    answer,
    arrays,
    http,
    image,
    model_statistics,
    served_and_executions,
    stream_results,
    tensors,
)
from tests.harness.server_fixture import wait_for_log
from tests.served import metric
from tools.local_server import LocalTritonServer

pytestmark = pytest.mark.server


def test_http_round_trip_with_images(vlm_server: LocalTritonServer) -> None:
    text, reason, prompt_tokens, completion_tokens = http(
        vlm_server, "vlm", arrays("Describe the pictures.", (image(60, 40, 0), image(30, 90, 1)))
    )
    assert (reason, completion_tokens) == ("length", 8)  # MAX_NEW_TOKENS=8
    assert prompt_tokens > 50 and text


def test_messages_with_a_data_uri_equal_the_images_input(vlm_server: LocalTritonServer) -> None:
    picture = image(50, 50, 2)
    uri = "data:image/png;base64," + base64.b64encode(picture).decode("ascii")
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": uri}},
                {"type": "text", "text": "What is it?"},
            ],
        }
    ]
    via_messages = http(vlm_server, "vlm", arrays(json.dumps(messages)))
    via_input = http(vlm_server, "vlm", arrays("What is it?", (picture,)))
    assert via_messages == via_input


def test_grpc_equals_http(vlm_server: LocalTritonServer) -> None:
    inputs = arrays("Hello", (image(40, 40, 3),), temperature=0.8, seed=7)
    client = grpcclient.InferenceServerClient(vlm_server.grpc_url)
    try:
        via_grpc = answer(client.infer("vlm", tensors(grpcclient, inputs)))
    finally:
        client.close()
    assert via_grpc == http(vlm_server, "vlm", inputs)


def test_concurrent_requests_are_batched_and_equal_one_at_a_time(
    vlm_server: LocalTritonServer,
) -> None:
    requests = [
        arrays(
            f"Question {i}",
            tuple(image(30 + 10 * i, 40, 10 + k) for k in range(i % 3 + 1)),
            max_new_tokens=6,
        )
        for i in range(8)
    ]
    alone = [http(vlm_server, "vlm", inputs) for inputs in requests]
    client = httpclient.InferenceServerClient(
        vlm_server.http_url, concurrency=len(requests), network_timeout=300
    )
    try:
        # The batching that counts is the engine's (vlm is a front over vlm_stream): its
        # dynamic batcher takes the rows of different image counts together.
        before = model_statistics(vlm_server, "vlm_stream")
        pending = [client.async_infer("vlm", tensors(httpclient, inputs)) for inputs in requests]
        together = [answer(p.get_result()) for p in pending]
    finally:
        client.close()
    served, executions = served_and_executions(vlm_server, "vlm_stream", before, len(requests))
    assert together == alone
    assert served == len(requests)
    assert executions < served, "requests with different image counts were never batched"


def test_history_across_turns_and_its_bounds(vlm_server: LocalTritonServer) -> None:
    def turn(prompt: str, **options: Any) -> tuple:
        return http(vlm_server, "vlm", arrays(prompt, session_id="server-session", **options))

    fresh = http(vlm_server, "vlm", arrays("What did I say?"))
    first = turn("I said hello.")
    second = turn("What did I say?")
    assert second[2] > fresh[2] + first[3] and second[0] != fresh[0]
    third = turn("One more turn.")
    fourth = turn("And another.")
    fifth = turn("What did I say?")  # MAX_HISTORY=2: only the third and fourth turns remain
    replay = [
        {"role": "user", "content": "One more turn."},
        {"role": "assistant", "content": third[0]},
        {"role": "user", "content": "And another."},
        {"role": "assistant", "content": fourth[0]},
        {"role": "user", "content": "What did I say?"},
    ]
    assert fifth == http(vlm_server, "vlm", arrays(json.dumps(replay)))
    assert turn("", reset_session=True) == ("", "stop", 0, 0)
    assert turn("What did I say?") == fresh


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (arrays("x", (b"not an image",)), "input 'images' item 0 is not a readable image"),
        (arrays("x", (image(600, 600, 0),)), "the limit is 200000 pixels"),
        (arrays("x", tuple(image(8, 8, i) for i in range(9))), "carries 9 images"),
        (arrays("The quick brown fox. " * 1500), "model's context of 4096 tokens"),
        (arrays('[{"role": "user", "content": '), "not valid JSON"),
        (arrays("x", max_new_tokens=0), "input 'max_new_tokens' is 0; allowed: 1 to 4000"),
        (arrays("x", max_new_tokens=5000), "input 'max_new_tokens' is 5000"),
        (arrays("x", temperature=-0.5), "input 'temperature' is -0.5"),
        (arrays("x", top_p=0.0), "input 'top_p' is 0.0"),
        (arrays("x", top_p=1.5), "input 'top_p' is 1.5"),
    ],
    ids=[
        "corrupt",
        "pixels",
        "count",
        "context",
        "json",
        "tokens0",
        "tokens-cap",
        "temp",
        "top_p0",
        "top_p1.5",
    ],
)
def test_bad_input_is_invalid_argument_over_http_and_grpc(
    vlm_server: LocalTritonServer, inputs: dict[str, np.ndarray], expected: str
) -> None:
    client = httpclient.InferenceServerClient(vlm_server.http_url, network_timeout=300)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer("vlm", tensors(httpclient, inputs))
    finally:
        client.close()
    assert caught.value.status() == "400" and expected in caught.value.message()
    grpc = grpcclient.InferenceServerClient(vlm_server.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as caught:
            grpc.infer("vlm", tensors(grpcclient, inputs))
    finally:
        grpc.close()
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert expected in caught.value.message()
    assert http(vlm_server, "vlm", arrays("Still there?"))[1] == "length"


def test_llm_is_the_vlm_engine_without_images(vlm_server: LocalTritonServer) -> None:
    """One engine behind both fronts: the same text prompt gets the same answer."""
    answered = http(vlm_server, "llm", arrays("Hello"))
    assert answered[1::2] == ("length", 8)
    assert answered == http(vlm_server, "vlm", arrays("Hello"))
    client = httpclient.InferenceServerClient(vlm_server.http_url)
    try:
        with pytest.raises(InferenceServerException, match="images"):
            client.infer("llm", tensors(httpclient, arrays("x", (image(8, 8, 0),))))
    finally:
        client.close()


# --- gRPC streaming ------------------------------------------------------------------------


def test_stream_sends_pieces_in_order_and_a_final_response(vlm_server: LocalTritonServer) -> None:
    requests = [
        arrays("Tell me a story", (image(40, 40, 5),), max_new_tokens=12),
        arrays("Hi", (image(20, 50, 6), image(50, 20, 7)), max_new_tokens=6),
    ]
    for inputs, (pieces, final) in zip(requests, stream_results(vlm_server, requests), strict=True):
        unary = http(vlm_server, "vlm", inputs)
        assert len(pieces) > 1 and "".join(pieces) == unary[0]
        assert answer(final)[0] == "" and answer(final)[1:] == unary[1:]


def test_cancelling_a_stream_stops_generation(vlm_server: LocalTritonServer) -> None:
    cancelled_before = metric(vlm_server, "multimodal_generation_cancelled_total", "vlm_stream")
    tokens_before = metric(vlm_server, "multimodal_generated_tokens_total", "vlm_stream")
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(vlm_server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    client.async_stream_infer(
        "vlm_stream", tensors(grpcclient, arrays("Tell me everything", max_new_tokens=3000))
    )
    result, error = responses.get(timeout=120)  # the first piece: the stream is running
    assert error is None and result.as_numpy("text") is not None
    client.stop_stream(cancel_requests=True)
    client.close()
    deadline = time.monotonic() + 60
    while (
        metric(vlm_server, "multimodal_generation_cancelled_total", "vlm_stream")
        == cancelled_before
    ):
        assert time.monotonic() < deadline, "the server never stopped the cancelled generation"
        time.sleep(0.2)
    generated = (
        metric(vlm_server, "multimodal_generated_tokens_total", "vlm_stream") - tokens_before
    )
    assert 1 <= generated < 3000
    wait_for_log(
        vlm_server.log_path,
        lambda log: "vlm_stream: the client cancelled; generation stopped after" in log,
    )
    # The model is free again: a new stream is served at once.
    ((pieces, final),) = stream_results(vlm_server, [arrays("Hi", max_new_tokens=4)])
    _, reason, _, tokens = answer(final)
    assert (reason, tokens) == ("length", 4) and pieces


def test_the_load_generators_stream_client_times_every_piece(
    vlm_server: LocalTritonServer,
) -> None:
    """`scripts/loadtest continuous --stagger-ms`'s client: one gRPC stream per request, the
    pieces joined into the answer the unary front gives, each piece's arrival timed."""
    from tools.loadtest import loadgen
    from tools.loadtest.content import ContentOptions, generator_for
    from tools.loadtest.inputs import read_config
    from tools.local_server import ROOT

    config = read_config(ROOT / "model_repository" / "vlm_stream")
    samples = generator_for(config).make(config, ContentOptions(samples=2, max_new_tokens=8))
    level = loadgen.run_level(
        lambda _: loadgen.TritonStreamTarget(vlm_server.grpc_url, config, samples),
        len(samples),
        2,
        2,
        stagger_s=0.05,
    )
    assert level["requests"] == 2 and level["responses_per_request"] > 2
    assert 0 < level["first_response_p50_ms"] < level["p50_ms"]
    for index, text in level["answers"].items():
        sample = samples[int(index)].inputs
        images = tuple(sample.get("images", ()))
        assert text == http(vlm_server, "vlm", arrays(sample["prompt"], images))[0]
