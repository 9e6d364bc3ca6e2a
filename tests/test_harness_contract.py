"""The harness's fidelity: the same cases through the harness and a real tritonserver agree.

Outputs, dtypes, shapes, error codes (as HTTP status and gRPC status) and messages must match;
where the server adds a traceback to a message, the part before it must match.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shared.local_server import LocalTritonServer
from tests.conftest import start_server
from tests.harness.runner import GRPC_STATUS, ModelHarness, Result

CONTRACT = Path(__file__).parent / "contract_models"


def text_inputs(
    *texts: str, mode: str | None = None, value: float | None = None
) -> dict[str, np.ndarray]:
    rows = len(texts)
    inputs = {"text": np.array([[t.encode()] for t in texts], dtype=np.object_)}
    if mode is not None:
        inputs["mode"] = np.array([[mode.encode()]] * rows, dtype=np.object_)
    if value is not None:
        inputs["value"] = np.full((rows, 1), value, dtype=np.float32)
    return inputs


CASES: dict[str, dict[str, Any]] = {
    "echo": {"inputs": text_inputs("a", mode="echo", value=1.5)},
    "two rows, optional input left out": {"inputs": text_inputs("x", "yz")},
    "unicode": {"inputs": text_inputs("grüße, 東京", value=-2.0)},
    "parameters and id": {
        "inputs": text_inputs("p"),
        "request_id": "req-7",
        "parameters": {"lang": "fr", "n": 3},
    },
    "requested subset": {"inputs": text_inputs("s"), "outputs": ["text_out"]},
    "config seen by the model": {"inputs": text_inputs("c", mode="config")},
    **{
        f"error {code}": {"inputs": text_inputs("e", mode=f"error:{code}")}
        for code in [
            "INVALID_ARG",
            "UNAVAILABLE",
            "NOT_FOUND",
            "UNSUPPORTED",
            "INTERNAL",
            "CANCELLED",
        ]
    },
    "error without a code": {"inputs": text_inputs("e", mode="noerrorcode")},
}


@pytest.fixture(scope="module")
def harness() -> Iterator[ModelHarness]:
    with ModelHarness(CONTRACT / "contract") as h:
        yield h


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTritonServer]:
    s = start_server(tmp_path_factory, ["contract", "contract_decoupled"], repository=CONTRACT)
    yield s
    s.stop()


def http_infer(server: LocalTritonServer, case: dict[str, Any]) -> Result | tuple[str, str]:
    client = httpclient.InferenceServerClient(server.http_url)
    inputs = []
    for name, array in case["inputs"].items():
        tensor = httpclient.InferInput(
            name, list(array.shape), "BYTES" if array.dtype == object else "FP32"
        )
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(n) for n in case.get("outputs", [])] or None
    try:
        result = client.infer(
            "contract",
            inputs,
            outputs=outputs,
            request_id=case.get("request_id", ""),
            parameters=case.get("parameters"),
        )
    except InferenceServerException as exc:
        return str(exc.status()), exc.message()
    names = [o["name"] for o in result.get_response()["outputs"]]
    return Result(outputs={n: result.as_numpy(n) for n in names})


def harness_infer(harness: ModelHarness, case: dict[str, Any]) -> Result:
    return harness.infer(
        case["inputs"],
        request_id=case.get("request_id", ""),
        parameters=case.get("parameters"),
        requested_outputs=case.get("outputs"),
    )


@pytest.mark.server
@pytest.mark.parametrize("name", list(CASES))
def test_harness_and_server_agree(
    harness: ModelHarness, server: LocalTritonServer, name: str
) -> None:
    case = CASES[name]
    mine = harness_infer(harness, case)
    theirs = http_infer(server, case)
    if mine.error is not None:
        assert isinstance(theirs, tuple), (
            f"server succeeded where the harness failed: {mine.message}"
        )
        assert theirs == (str(mine.http_status), mine.message)
        return
    assert isinstance(theirs, Result), f"server failed where the harness succeeded: {theirs}"
    assert sorted(mine.outputs) == sorted(theirs.outputs)
    for output in mine.outputs:
        a, b = mine.outputs[output], theirs.outputs[output]
        assert a.shape == b.shape and a.dtype == b.dtype, (output, a, b)
        if output == "info":
            assert json.loads(a[0, 0]) == json.loads(b[0, 0])
        else:
            assert np.array_equal(a, b), (output, a, b)


@pytest.mark.server
def test_grpc_status_codes_match_the_harness_table(server: LocalTritonServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for code, grpc_name in GRPC_STATUS.items():
        if code in ("UNKNOWN", "ALREADY_EXISTS"):
            continue
        array = text_inputs("g", mode=f"error:{code}")
        inputs = []
        for name, value in array.items():
            tensor = grpcclient.InferInput(name, list(value.shape), "BYTES")
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        with pytest.raises(InferenceServerException) as info:
            client.infer("contract", inputs)
        assert info.value.status() == f"StatusCode.{grpc_name}"


@pytest.mark.server
def test_an_exception_in_execute_fails_the_whole_batch_alike(
    harness: ModelHarness, server: LocalTritonServer
) -> None:
    # Triton batches only requests with the same inputs: every request carries `mode`.
    batch = [
        text_inputs("ok-1", mode="echo"),
        text_inputs("bad", mode="raise"),
        text_inputs("ok-2", mode="echo"),
    ]
    mine = harness.execute([harness.request(inputs) for inputs in batch])
    client = httpclient.InferenceServerClient(server.http_url, concurrency=3)
    pending = []
    for inputs in batch:
        tensors = []
        for name, array in inputs.items():
            tensor = httpclient.InferInput(name, list(array.shape), "BYTES")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        pending.append(client.async_infer("contract", tensors))
    theirs = []
    for p in pending:
        with pytest.raises(InferenceServerException) as info:
            p.get_result()
        theirs.append((str(info.value.status()), info.value.message()))
    client.close()
    # The server appends the traceback ("\n\nAt:\n ...") to what the harness reports.
    assert [status for status, _ in theirs] == [str(r.http_status) for r in mine] == ["500"] * 3
    for (_, message), result in zip(theirs, mine, strict=True):
        assert message.startswith(result.message), (message, result.message)


def stream(
    server: LocalTritonServer, count: int
) -> list[tuple[list[int] | None, bool, str | None]]:
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    tensor = grpcclient.InferInput("count", [1], "INT32")
    tensor.set_data_from_numpy(np.array([count], dtype=np.int32))
    client.async_stream_infer("contract_decoupled", [tensor], enable_empty_final_response=True)
    seen = []
    while True:
        result, error = responses.get(timeout=30)
        if error is not None:
            seen.append((None, True, error.message()))
            break
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        index = result.as_numpy("index")
        seen.append((None if index is None else index.tolist(), final, None))
        if final:
            break
    client.stop_stream()
    return seen


@pytest.mark.server
@pytest.mark.parametrize("count", [0, 3, -1])
def test_decoupled_streams_agree(server: LocalTritonServer, count: int) -> None:
    with ModelHarness(CONTRACT / "contract_decoupled") as harness:
        (results,) = harness.execute(
            [harness.request({"count": np.array([count], dtype=np.int32)})]
        )
    mine = [
        (
            None
            if r.error is not None or "index" not in r.outputs
            else r.outputs["index"].tolist(),
            r.final,
            r.message,
        )
        for r in results
    ]
    assert mine == stream(server, count)
