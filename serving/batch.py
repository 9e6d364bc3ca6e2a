"""The unary execution pattern: one engine call for the valid rows of every request.

What keeps one bad request from failing its neighbours: each request is parsed on its own, the
valid rows of all requests go to the engine in one call, and every problem is turned into that
request's own error response. Nothing escapes `execute()`: an exception there would fail every
request of the batch with a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from serving.errors import (
    ErrorCounter,
    cancelled_response,
    error_response,
    internal_error,
    log_exception,
)
from serving.protocols import Request, Response
from shared.errors import RequestError

Row = TypeVar("Row")
Result = TypeVar("Result")


def run_batch(
    requests: Sequence[Request],
    parse: Callable[[Request], list[Row]],
    run: Callable[[list[Row]], list[Result]],
    respond: Callable[[Request, list[Result]], Response],
    model_name: str,
    errors: ErrorCounter | None = None,
) -> list[Response]:
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
    requests: Sequence[Request],
    parse: Callable[[Request], list[Row]],
    run: Callable[[list[Row]], list[Result]],
    respond: Callable[[Request, list[Result]], Response],
    model_name: str,
) -> list[Response]:
    responses: list[Any] = [None] * len(requests)  # each slot is set below, on every path
    rows: list[Row] = []
    spans: list[tuple[int, int, int]] = []  # (request index, first row, row count)
    for index, request in enumerate(requests):
        if request.is_cancelled():
            responses[index] = cancelled_response()
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


def _internal(model_name: str, stage: str, exc: Exception) -> Response:
    log_exception(model_name, stage, exc)
    return error_response(internal_error(model_name, stage, exc))
