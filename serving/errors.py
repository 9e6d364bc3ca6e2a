"""Per-request errors as Triton sees them, and the counters operators read them from.

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

from serving import metrics
from serving.protocols import Response
from shared.errors import (
    CANCELLED_MESSAGE,
    UNLOADING_MESSAGE,
    ErrorCode,
    RequestError,
    cancelled,
)


def triton_error(error: RequestError) -> Any:
    """The pb_utils.TritonError for a RequestError, with the matching code."""
    return pb_utils.TritonError(error.message, getattr(pb_utils.TritonError, error.code.value))


def error_response(error: RequestError) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=triton_error(error))


def cancelled_response() -> Any:
    """The answer to a request whose client cancelled before it ran."""
    return error_response(cancelled())


class ErrorCounter:
    """Prometheus counters of requests answered with an error (by model and code), and of
    requests whose client cancelled.

    Triton counts a response that carries a TritonError as a success in its own
    `nv_inference_request_success`; this counter is how operators see per-request failures.
    A CANCELLED answer is also a cancellation; a stream whose client left while it ran is
    counted as one by `serving.streaming.Stream`, with no error (its client hears nothing).
    """

    NAME = metrics.ERRORS.name

    def __init__(self, model_name: str) -> None:
        self._errors = metrics.Family(metrics.ERRORS, model_name, [c.value for c in ErrorCode])
        self._cancelled = metrics.Family(metrics.CANCELLED, model_name)
        # Built here, in initialize(), not at import: Triton imports model.py (and so this
        # module) for auto-complete before the C++ half of pb_utils, TritonError included, exists.
        self._names = {getattr(pb_utils.TritonError, code.value): code.value for code in ErrorCode}

    def count_errors(self, responses: Sequence[Response]) -> None:
        for response in responses:
            if response.has_error():
                self.count(self._names.get(response.error().code(), "UNKNOWN"))

    def count(self, code: str) -> None:
        self._errors.increment(1, code=code)
        if code == ErrorCode.CANCELLED.value:
            self.count_cancelled()

    def count_cancelled(self) -> None:
        self._cancelled.increment(1)


class SplitCounter:
    """A Prometheus counter of batches split after their engine call failed, by model.

    Each split is one failed call retried as two smaller ones (`serving.batch.isolate`): a
    count that keeps growing means a request keeps poisoning batches, or the engine is broken.
    """

    NAME = metrics.SPLITS.name

    def __init__(self, model_name: str) -> None:
        self._family = metrics.Family(metrics.SPLITS, model_name)

    def count(self) -> None:
        self._family.increment(1)


def code_of_message(message: str) -> ErrorCode:
    """The code of an error that came back from a BLS call as a message alone.

    Tritonserver 2.51's BLS keeps a callee's message and makes its code INTERNAL. The models
    of this package start every message that blames the client with the input at fault
    ("input 'prompt' ..."): such a message is INVALID_ARG; a cancelled request keeps its code;
    a model that is unloading, not ready or not loaded is UNAVAILABLE; anything else INTERNAL.
    """
    if message.startswith("input '"):
        return ErrorCode.INVALID_ARG
    if message == CANCELLED_MESSAGE:
        return ErrorCode.CANCELLED
    if (
        message == UNLOADING_MESSAGE
        or message.endswith("is not ready.")
        or message.startswith("Request for unknown model")
    ):
        return ErrorCode.UNAVAILABLE
    return ErrorCode.INTERNAL


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
