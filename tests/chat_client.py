"""Client side of the chat models (`vlm`, `vlm_stream`, `llm`) for the real-server tests.

What a user's client does, through tritonclient: build the input tensors of one request,
read a response's four outputs, stream over gRPC, and read the server's batching statistics.
"""

from __future__ import annotations

import queue
import time
from functools import partial
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import np_to_triton_dtype

from shared.image import encode_image
from tools.local_server import LocalTritonServer

#: A response as (text, finish_reason, prompt_tokens, completion_tokens).
Answer = tuple[str, str, int, int]


def image(width: int, height: int, seed: int) -> bytes:
    """A PNG of random pixels (different seeds, different pictures)."""
    rng = np.random.default_rng(seed)
    return encode_image(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))


def arrays(prompt: str, images: tuple[bytes, ...] = (), **options: Any) -> dict[str, np.ndarray]:
    """One request's inputs (batch dimension 1); `stop` takes a tuple of strings."""
    inputs = {"prompt": np.array([[prompt.encode()]], dtype=np.object_)}
    if images:
        inputs["images"] = np.array([list(images)], dtype=np.object_)
    for name, value in options.items():
        if isinstance(value, tuple):
            inputs[name] = np.array([[v.encode() for v in value]], dtype=np.object_)
        elif isinstance(value, str):
            inputs[name] = np.array([[value.encode()]], dtype=np.object_)
        elif isinstance(value, bool):
            inputs[name] = np.array([[value]], dtype=bool)
        elif isinstance(value, int):
            inputs[name] = np.array([[value]], dtype=np.int64 if name == "seed" else np.int32)
        else:
            inputs[name] = np.array([[value]], dtype=np.float32)
    return inputs


def tensors(module: Any, inputs: dict[str, np.ndarray]) -> list[Any]:
    """`inputs` as InferInputs of `module` (tritonclient.http or tritonclient.grpc)."""
    result = []
    for name, value in inputs.items():
        tensor = module.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        result.append(tensor)
    return result


def answer(result: Any) -> Answer:
    """A response's outputs; the text is decoded strictly (broken UTF-8 raises)."""
    return (
        result.as_numpy("text")[0, 0].decode("utf-8"),
        result.as_numpy("finish_reason")[0, 0].decode("utf-8"),
        int(result.as_numpy("prompt_tokens")[0, 0]),
        int(result.as_numpy("completion_tokens")[0, 0]),
    )


def http(server: LocalTritonServer, model: str, inputs: dict[str, np.ndarray]) -> Answer:
    """One unary request over HTTP."""
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=300)
    try:
        return answer(client.infer(model, tensors(httpclient, inputs)))
    finally:
        client.close()


def stream_results(
    server: LocalTritonServer, requests: list[dict[str, np.ndarray]]
) -> list[tuple[list[str], Any]]:
    """Each request's (text pieces, final result) through one gRPC stream to `vlm_stream`.

    The final result is the response flagged COMPLETE_FINAL; pieces are decoded strictly.
    """
    responses: queue.Queue = queue.Queue()

    def callback(sink: queue.Queue, result: Any, error: Any) -> None:
        sink.put((result, error))

    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=partial(callback, responses))
    try:
        for index, inputs in enumerate(requests):
            client.async_stream_infer(
                "vlm_stream",
                tensors(grpcclient, inputs),
                request_id=str(index),
                enable_empty_final_response=True,
            )
        pieces: dict[str, list[str]] = {str(i): [] for i in range(len(requests))}
        finals: dict[str, Any] = {}
        while len(finals) < len(requests):
            result, error = responses.get(timeout=120)
            if error is not None:
                raise error
            response = result.get_response()
            if response.parameters["triton_final_response"].bool_param:
                finals[response.id] = result
            else:
                pieces[response.id].append(result.as_numpy("text")[0, 0].decode("utf-8"))
        return [(pieces[str(i)], finals[str(i)]) for i in range(len(requests))]
    finally:
        client.stop_stream()
        client.close()


def model_statistics(server: LocalTritonServer, model: str) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        return client.get_inference_statistics(model)["model_stats"][0]
    finally:
        client.close()


def served_and_executions(
    server: LocalTritonServer, model: str, before: dict[str, Any], expected: int
) -> tuple[int, int]:
    """Requests served and execute() calls since `before` (fewer calls: requests were batched).

    Triton updates its statistics after the responses are out: wait (10 s at most) until it
    counted the `expected` requests.
    """
    deadline = time.monotonic() + 10
    while True:
        after = model_statistics(server, model)
        served = after["inference_count"] - before["inference_count"]
        if served >= expected or time.monotonic() > deadline:
            return served, after["execution_count"] - before["execution_count"]
        time.sleep(0.1)
