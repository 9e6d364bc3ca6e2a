"""Triton helpers every `model.py` uses: reading inputs, building responses, mapping errors.

This is the one module of `shared` that imports `triton_python_backend_utils`; it is imported
only by `model.py` files, inside the Python backend stub or the test harness.

The execution pattern (`run_batch`) is what keeps one bad request from failing its neighbours:
each request is parsed on its own, the valid rows of all requests go to the engine in one call,
and every problem is turned into that request's own error response. Nothing escapes
`execute()`: an exception there would fail every request of the batch with a traceback.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import triton_python_backend_utils as pb_utils

from shared.errors import ErrorCode, RequestError, invalid

Row = TypeVar("Row")
Result = TypeVar("Result")


def triton_error(error: RequestError) -> Any:
    """The pb_utils.TritonError for a RequestError, with the matching code."""
    return pb_utils.TritonError(error.message, getattr(pb_utils.TritonError, error.code.value))


def error_response(error: RequestError) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=triton_error(error))


def request_rows(request: Any, name: str) -> int:
    """The batch size of a request, read from its required input `name`."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise invalid(f"input '{name}' is required")
    return int(tensor.as_numpy().shape[0])


def _column(request: Any, name: str, rows: int) -> np.ndarray | None:
    """One value per row of input `name` (dims [1]), or None when the client left it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    array = tensor.as_numpy()
    if array.shape[0] != rows or array.size != rows:
        raise invalid(
            f"input '{name}' has shape {list(array.shape)}; expected [{rows}, 1], one value per row"
        )
    return array.reshape(rows)


def bytes_column(request: Any, name: str, rows: int, *, max_bytes: int) -> list[bytes] | None:
    """The raw bytes of a BYTES input per row, each checked against `max_bytes`."""
    column = _column(request, name, rows)
    if column is None:
        return None
    values = [bytes(value) for value in column]
    for value in values:
        if len(value) > max_bytes:
            raise invalid(f"input '{name}' is {len(value)} bytes; the limit is {max_bytes} bytes")
    return values


def text_column(request: Any, name: str, rows: int, *, max_chars: int) -> list[str] | None:
    """A BYTES input decoded as UTF-8 per row, each at most `max_chars` characters."""
    raw = bytes_column(request, name, rows, max_bytes=4 * max_chars)
    if raw is None:
        return None
    texts = []
    for value in raw:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise invalid(f"input '{name}' is not valid UTF-8 text: {exc}") from exc
        if len(text) > max_chars:
            raise invalid(f"input '{name}' is {len(text)} characters; the limit is {max_chars}")
        texts.append(text)
    return texts


def number_column(request: Any, name: str, rows: int, cast: type) -> list[Any] | None:
    """A numeric input per row, as Python numbers of type `cast`."""
    column = _column(request, name, rows)
    return None if column is None else [cast(value) for value in column]


def bytes_tensor(name: str, values: Sequence[str | bytes]) -> Any:
    """A BYTES output tensor of shape [rows, 1]."""
    encoded = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
    array = np.empty((len(encoded), 1), dtype=np.object_)
    for i, value in enumerate(encoded):
        array[i, 0] = value
    return pb_utils.Tensor(name, array)


def json_tensor(name: str, values: Sequence[Any]) -> Any:
    return bytes_tensor(name, [json.dumps(v, ensure_ascii=False) for v in values])


class ErrorCounter:
    """A Prometheus counter of requests answered with an error, by model and code.

    Triton counts a response that carries a TritonError as a success in its own
    `nv_inference_request_success`; this counter is how operators see per-request failures.
    """

    NAME = "multimodal_request_errors_total"

    def __init__(self, model_name: str) -> None:
        self._model = model_name
        self._family = pb_utils.MetricFamily(
            name=self.NAME,
            description="Requests answered with an error, by model and Triton error code",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self._metrics: dict[str, Any] = {}
        # Built here, in initialize(), not at import: Triton imports model.py (and so this
        # module) for auto-complete before the C++ half of pb_utils, TritonError included, exists.
        self._names = {getattr(pb_utils.TritonError, code.value): code.value for code in ErrorCode}

    def count_errors(self, responses: Sequence[Any]) -> None:
        for response in responses:
            if response.has_error():
                self.count(self._names.get(response.error().code(), "UNKNOWN"))

    def count(self, code: str) -> None:
        metric = self._metrics.get(code)
        if metric is None:
            metric = self._family.Metric(labels={"model": self._model, "code": code})
            self._metrics[code] = metric
        metric.increment(1)


def run_batch(
    requests: Sequence[Any],
    parse: Callable[[Any], list[Row]],
    run: Callable[[list[Row]], list[Result]],
    respond: Callable[[Any, list[Result]], Any],
    model_name: str,
    errors: ErrorCounter | None = None,
) -> list[Any]:
    """Parse each request, run all valid rows in one engine call, respond to each request.

    `parse` turns a request into its rows or raises RequestError (only that request fails).
    `run` is the engine's batched call. `respond` builds the InferenceResponse of one request
    from its rows' results. A request its client already cancelled is answered CANCELLED
    without running. An unexpected exception fails the affected requests with INTERNAL and a
    short message; the traceback goes to the server log, not to clients.
    """
    responses = _run_batch(requests, parse, run, respond, model_name)
    if errors is not None:
        errors.count_errors(responses)
    return responses


def _run_batch(
    requests: Sequence[Any],
    parse: Callable[[Any], list[Row]],
    run: Callable[[list[Row]], list[Result]],
    respond: Callable[[Any, list[Result]], Any],
    model_name: str,
) -> list[Any]:
    responses: list[Any] = [None] * len(requests)
    rows: list[Row] = []
    spans: list[tuple[int, int, int]] = []  # (request index, first row, row count)
    for index, request in enumerate(requests):
        if request.is_cancelled():
            responses[index] = error_response(
                RequestError("the request was cancelled", ErrorCode.CANCELLED)
            )
            continue
        try:
            parsed = parse(request)
        except RequestError as error:
            responses[index] = error_response(error)
            continue
        except Exception as exc:
            responses[index] = _internal(model_name, "parsing the request", exc)
            continue
        spans.append((index, len(rows), len(parsed)))
        rows.extend(parsed)
    if not spans:
        return responses
    try:
        results = run(rows)
    except RequestError as error:
        for index, _, _ in spans:
            responses[index] = error_response(error)
        return responses
    except Exception as exc:
        log_exception(model_name, "running the model", exc)
        for index, _, _ in spans:  # one response object per request, never shared
            responses[index] = error_response(internal_error(model_name, "running the model", exc))
        return responses
    for index, start, count in spans:
        try:
            responses[index] = respond(requests[index], results[start : start + count])
        except RequestError as error:
            responses[index] = error_response(error)
        except Exception as exc:
            responses[index] = _internal(model_name, "building the response", exc)
    return responses


def _internal(model_name: str, stage: str, exc: Exception) -> Any:
    log_exception(model_name, stage, exc)
    return error_response(internal_error(model_name, stage, exc))


def log_exception(model_name: str, stage: str, exc: Exception) -> None:
    """The traceback goes to the server log; clients get `internal_error`'s short message."""
    pb_utils.Logger.log_error(
        f"{model_name}: {stage} failed: {''.join(traceback.format_exception(exc))}"
    )


def internal_error(model_name: str, stage: str, exc: Exception) -> RequestError:
    return RequestError(
        f"{model_name}: internal error while {stage} ({type(exc).__name__}); see the server log",
        ErrorCode.INTERNAL,
    )
