"""Per-request errors as Triton sees them, and the counter operators read them from.

Engines and the library raise `shared.errors.RequestError` (a message and a code, no Triton);
here it becomes the `pb_utils.TritonError` of that one request. Unexpected exceptions become
INTERNAL with a short message naming the model and the stage; the traceback goes to the server
log, never to clients.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from typing import Any

import triton_python_backend_utils as pb_utils

from serving.protocols import Response
from shared.errors import ErrorCode, RequestError


def triton_error(error: RequestError) -> Any:
    """The pb_utils.TritonError for a RequestError, with the matching code."""
    return pb_utils.TritonError(error.message, getattr(pb_utils.TritonError, error.code.value))


def error_response(error: RequestError) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=triton_error(error))


def cancelled_response() -> Any:
    """The answer to a request whose client cancelled before it ran."""
    return error_response(RequestError("the request was cancelled", ErrorCode.CANCELLED))


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

    def count_errors(self, responses: Sequence[Response]) -> None:
        for response in responses:
            if response.has_error():
                self.count(self._names.get(response.error().code(), "UNKNOWN"))

    def count(self, code: str) -> None:
        metric = self._metrics.get(code)
        if metric is None:
            metric = self._family.Metric(labels={"model": self._model, "code": code})
            self._metrics[code] = metric
        metric.increment(1)


class SplitCounter:
    """A Prometheus counter of batches split after their engine call failed, by model.

    Each split is one failed call retried as two smaller ones (`serving.batch.isolate`): a
    count that keeps growing means a request keeps poisoning batches, or the engine is broken.
    """

    NAME = "multimodal_batch_splits_total"

    def __init__(self, model_name: str) -> None:
        self._family = pb_utils.MetricFamily(
            name=self.NAME,
            description="Failed engine calls retried as two smaller ones, by model",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self._metric = self._family.Metric(labels={"model": model_name})

    def count(self) -> None:
        self._metric.increment(1)


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
