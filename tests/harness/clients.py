"""What a client sees, from a real server or from the harness, in one comparable form.

A view is ("ok", {output: (datatype, shape, values)}) or ("error", status, message): the
harness's `Result` and a tritonclient answer turn into the same tuple when they agree.
"""

from __future__ import annotations

import queue
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.harness.errors import ServerRejected
from tests.harness.runner import Result
from tests.harness.validation import client_datatype

View = tuple[Any, ...]
LOG_LINE = re.compile(r'^([IWEV])\d{4} [\d:.]+ +\d+ [^\]]+\] "(.*)"$')
LOG_LEVELS = {"I": "INFO", "W": "WARNING", "E": "ERROR", "V": "VERBOSE"}


def harness_view(result: Result) -> View:
    if result.error is not None:
        return ("error", str(result.http_status), result.message)
    return (
        "ok",
        {
            name: (client_datatype(name, array), list(array.shape), array.tolist())
            for name, array in result.outputs.items()
        },
    )


def rejected_view(exc: ServerRejected) -> View:
    return ("error", str(exc.http_status), exc.message)


def _inputs(module: Any, inputs: Mapping[str, np.ndarray]) -> list[Any]:
    tensors = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), client_datatype(name, array))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def http_view(
    url: str,
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None = None,
    request_id: str = "",
    parameters: Mapping[str, Any] | None = None,
) -> View:
    """One HTTP request, as the view a test compares."""
    client = httpclient.InferenceServerClient(url, network_timeout=60)
    try:
        requested = [httpclient.InferRequestedOutput(n, binary_data=True) for n in outputs or []]
        result = client.infer(
            model,
            _inputs(httpclient, inputs),
            outputs=requested or None,
            request_id=request_id,
            parameters=dict(parameters) if parameters else None,
        )
    except InferenceServerException as exc:
        return ("error", str(exc.status()), exc.message())
    finally:
        client.close()
    return (
        "ok",
        {
            o["name"]: (o["datatype"], o["shape"], result.as_numpy(o["name"]).tolist())
            for o in result.get_response()["outputs"]
        },
    )


def grpc_status(url: str, model: str, inputs: Mapping[str, np.ndarray]) -> tuple[str, str]:
    """The gRPC status name and message of a failing request (("OK", "") if it succeeds)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        client.infer(model, _inputs(grpcclient, inputs))
    except InferenceServerException as exc:
        return str(exc.status()).removeprefix("StatusCode."), exc.message()
    finally:
        client.close()
    return "OK", ""


def stream_view(url: str, model: str, inputs: Mapping[str, np.ndarray]) -> list[View]:
    """A decoupled request over a gRPC stream, with empty final responses enabled.

    Each response is ("data", {output: values}, final) or ("error", message); the stream ends
    at the final flag or at an error that ends it (the server sends no final flag after one).
    """
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    client.async_stream_infer(model, _inputs(grpcclient, inputs), enable_empty_final_response=True)
    seen: list[View] = []
    try:
        while True:
            # After an error the stream may be over (no final flag follows an ending error).
            wait = 1.0 if seen and seen[-1][0] == "error" else 30.0
            try:
                result, error = responses.get(timeout=wait)
            except queue.Empty:
                if wait == 1.0:
                    break
                raise
            if error is not None:
                seen.append(("error", error.message()))
                continue
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            outputs = {o.name: result.as_numpy(o.name).tolist() for o in response.outputs}
            seen.append(("data", outputs, final))
            if final:
                break
    finally:
        client.stop_stream()
        client.close()
    return seen


def harness_stream_view(results: Sequence[Result]) -> list[View]:
    return [
        ("error", r.message)
        if r.error is not None
        else ("data", {n: a.tolist() for n, a in r.outputs.items()}, r.final)
        for r in results
    ]


def log_records(log_text: str) -> list[tuple[str, str]]:
    """The (level, message) of each line a model logged, from the server's log."""
    records = []
    for line in log_text.splitlines():
        match = LOG_LINE.match(line)
        if match:
            records.append((LOG_LEVELS[match.group(1)], match.group(2)))
    return records
