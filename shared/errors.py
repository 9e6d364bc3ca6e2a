"""Per-request errors that carry the Triton status code a client should see.

Engines and preprocessing raise `RequestError`; `serving.errors` turns it into a
`pb_utils.TritonError` for that one request. Keeping the code here, as a plain enum, lets code
that never imports Triton decide between "your input is wrong" (INVALID_ARG, HTTP 400) and "we
failed" (INTERNAL, HTTP 500).
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """The subset of TritonError codes this package emits (names match TritonError's)."""

    INVALID_ARG = "INVALID_ARG"
    UNSUPPORTED = "UNSUPPORTED"
    UNAVAILABLE = "UNAVAILABLE"
    CANCELLED = "CANCELLED"
    NOT_FOUND = "NOT_FOUND"
    INTERNAL = "INTERNAL"


class RequestError(Exception):
    """An error that fails exactly one request and tells its client why."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INVALID_ARG) -> None:
        super().__init__(message)
        self.code = code

    @property
    def message(self) -> str:
        return str(self)


#: Messages a model that called another one over BLS reads back as codes
#: (`serving.errors.code_of_message`).
CANCELLED_MESSAGE = "the request was cancelled"
UNLOADING_MESSAGE = "the model is unloading"


def cancelled() -> RequestError:
    """The error of a request whose client cancelled it."""
    return RequestError(CANCELLED_MESSAGE, ErrorCode.CANCELLED)


def invalid(message: str) -> RequestError:
    """Shorthand for the common case: the client's input is wrong."""
    return RequestError(message, ErrorCode.INVALID_ARG)


class ModelLoadError(RuntimeError):
    """The model cannot be loaded as configured; the message names the path or setting."""
