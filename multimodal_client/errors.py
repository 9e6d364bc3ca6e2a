"""One exception for every failed call, whatever the protocol: the status code and message."""

from __future__ import annotations

from tritonclient.utils import InferenceServerException

#: HTTP statuses as the gRPC status names Triton gives the same errors (tritonserver 2.51).
HTTP_CODES = {
    "400": "INVALID_ARGUMENT",
    "404": "NOT_FOUND",
    "500": "INTERNAL",
    "501": "UNIMPLEMENTED",
    "503": "UNAVAILABLE",
}


class TritonError(Exception):
    """A call failed: `code` is a gRPC status name (INVALID_ARGUMENT, UNAVAILABLE, ...),
    `message` the server's text (or the connection's, for UNAVAILABLE)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def from_exception(exc: BaseException) -> TritonError:
    """A tritonclient exception, or a connection failure, as a TritonError."""
    if isinstance(exc, TritonError):
        return exc
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "").removeprefix("StatusCode.")
        code = HTTP_CODES.get(status, status) or "UNKNOWN"
        return TritonError(code, str(exc.message()))
    if isinstance(exc, TimeoutError):
        return TritonError("DEADLINE_EXCEEDED", f"no answer in time: {exc}")
    # Connection refused or reset, a name that does not resolve: the server is not there (yet).
    return TritonError("UNAVAILABLE", f"{type(exc).__name__}: {exc}")


def retryable(error: TritonError) -> bool:
    """Only a server that is not (yet) there: a bad request fails the same way every time."""
    return error.code == "UNAVAILABLE"
