"""Errors in OpenAI's shape and with OpenAI's statuses, whatever raised them.

OpenAI clients read `{"error": {"message", "type", "param", "code"}}` and act on the status
(the official client raises BadRequestError for 400, NotFoundError for 404, and retries 503).
Every failure therefore ends here: the door's own checks raise `ApiError`, Triton's gRPC
errors are translated by `from_triton` (its message carried through: it names the input and
the limit), and anything unexpected becomes a 500 whose details stay in the door's log, never
in the answer (no tracebacks, no server paths).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from tritonclient.utils import InferenceServerException

log = logging.getLogger("openai_api")

#: OpenAI's error type for each status the door answers.
TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "invalid_request_error",
    500: "server_error",
    503: "server_error",
    504: "server_error",
}
#: gRPC status (as tritonclient spells it) -> HTTP status. A model Triton does not have
#: loaded is "unavailable" (503): the door knows the id, the server is not serving it now.
GRPC_STATUS = {
    "StatusCode.INVALID_ARGUMENT": 400,
    "StatusCode.OUT_OF_RANGE": 400,
    "StatusCode.FAILED_PRECONDITION": 400,
    "StatusCode.UNIMPLEMENTED": 400,
    "StatusCode.NOT_FOUND": 503,
    "StatusCode.UNAVAILABLE": 503,
    "StatusCode.RESOURCE_EXHAUSTED": 429,
    "StatusCode.CANCELLED": 499,
    "StatusCode.DEADLINE_EXCEEDED": 504,
}


class ApiError(Exception):
    """A request the door answers with an OpenAI error object."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": TYPES.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def invalid(message: str, param: str | None = None) -> ApiError:
    """400: what the client sent is wrong; `param` names the field."""
    return ApiError(400, message, param)


def from_triton(exc: InferenceServerException, model: str) -> ApiError:
    """Triton's answer as the OpenAI error a client expects, its message carried through.

    Errors a decoupled model sends inside a stream carry no status; those are the model's own
    per-request errors, which this package's models raise as INVALID_ARG (their INTERNAL ones
    read "<model>: internal error while ...", serving/errors.py).
    """
    message = exc.message() or "Triton returned an error"
    status = exc.status()
    if status is None:
        code = 500 if "internal error" in message else 400
    else:
        code = GRPC_STATUS.get(status, 500)
    if code == 503:
        message = f"model '{model}' is not available on the Triton server: {message}"
    return ApiError(code, message, code="model_not_available" if code == 503 else None)


def install(app: FastAPI) -> None:
    """Make every error the app can raise answer in OpenAI's shape."""

    async def api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
        param = ".".join(location) or None
        message = first.get("msg", "invalid request")
        return invalid(f"{param}: {message}" if param else message, param).response()

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return ApiError(exc.status_code, str(exc.detail)).response()

    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return ApiError(500, "internal error in the OpenAI door; see its log").response()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
