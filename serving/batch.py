"""The unary execution pattern: one engine call for the valid rows of every request.

What keeps one bad request from failing its neighbours: each request is parsed on its own, the
valid rows of all requests go to the engine in one call, and every problem is turned into that
request's own error response. A failure that shows only inside the engine call (a value that
passed validation and still breaks the model) is pinned on its request by `isolate`: the call
is retried on halves of the batch until the failing request is alone, and the others are served.
Nothing escapes `execute()`: an exception there would fail every request of the batch with a
traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import triton_python_backend_utils as pb_utils

from serving.errors import (
    ErrorCounter,
    SplitCounter,
    cancelled_response,
    error_response,
    internal_error,
    log_exception,
)
from serving.protocols import Request, Response
from shared.errors import RequestError

Row = TypeVar("Row")
Result = TypeVar("Result")
Unit = TypeVar("Unit")


def run_batch(
    requests: Sequence[Request],
    parse: Callable[[Request], list[Row]],
    run: Callable[[list[Row]], list[Result]],
    respond: Callable[[Request, list[Result]], Response],
    model_name: str,
    errors: ErrorCounter | None = None,
    splits: SplitCounter | None = None,
) -> list[Response]:
    """Parse each request, run all valid rows in one engine call, respond to each request.

    `parse` turns a request into its rows or raises RequestError (only that request fails).
    `run` is the engine's batched call. `respond` builds the InferenceResponse of one request
    from its rows' results. A request its client already cancelled is answered CANCELLED
    without running. When `run` fails, `isolate` retries smaller groups (counted in `splits`)
    until only the request that fails alone gets the error: its own RequestError, or INTERNAL
    with a short message for an unexpected exception (the traceback goes to the server log,
    not to clients).
    """
    responses = _run_batch(requests, parse, run, respond, model_name, splits)
    if errors is not None:
        errors.count_errors(responses)
    return responses


def _run_batch(
    requests: Sequence[Request],
    parse: Callable[[Request], list[Row]],
    run: Callable[[list[Row]], list[Result]],
    respond: Callable[[Request, list[Result]], Response],
    model_name: str,
    splits: SplitCounter | None,
) -> list[Response]:
    responses: list[Any] = [None] * len(requests)  # each slot is set below, on every path
    parsed = _parse_each(requests, parse, responses, model_name)
    results: dict[int, list[Result]] = {}

    def call(group: list[tuple[int, list[Row]]]) -> None:
        out = run([row for _, rows in group for row in rows])
        start = 0
        for index, rows in group:
            results[index] = out[start : start + len(rows)]
            start += len(rows)

    def fail(unit: tuple[int, list[Row]], exc: Exception) -> None:
        responses[unit[0]] = error_response(engine_error(model_name, exc))

    isolate(parsed, call, fail, on_split=split_logger(model_name, splits))
    for index, _ in parsed:
        if index not in results:
            continue  # failed above
        try:
            responses[index] = respond(requests[index], results[index])
        except RequestError as error:
            responses[index] = error_response(error)
        except Exception as exc:
            responses[index] = _internal(model_name, "building the response", exc)
    return responses


def _parse_each(
    requests: Sequence[Request],
    parse: Callable[[Request], list[Row]],
    responses: list[Any],
    model_name: str,
) -> list[tuple[int, list[Row]]]:
    """(request index, its rows) of each valid request; the others' `responses` are set (a
    request already cancelled: CANCELLED; one that fails parsing: its error)."""
    parsed: list[tuple[int, list[Row]]] = []
    for index, request in enumerate(requests):
        if request.is_cancelled():
            responses[index] = cancelled_response()
            continue
        try:
            parsed.append((index, parse(request)))
        except RequestError as error:
            responses[index] = error_response(error)
        except Exception as exc:
            responses[index] = _internal(model_name, "parsing the request", exc)
    return parsed


def isolate(
    units: Sequence[Unit],
    call: Callable[[list[Unit]], None],
    fail: Callable[[Unit, Exception], None],
    *,
    retryable: Callable[[Unit], bool] = lambda unit: True,
    on_split: Callable[[int, Exception], None] | None = None,
) -> None:
    """`call(units)`; when it raises, retry in halves until every failure has its one owner.

    A unit is what must run together: one request's rows. When the call fails, each unit that
    can no longer be retried (`retryable` false: a stream that already sent pieces) gets the
    error at once; the others run again, together if some were set apart, else as two halves
    (`on_split(units, error)` is told), until a call of a single unit fails: only that unit
    gets the error. One poisoned request among n costs about 2 log2(n) more calls; an engine
    that fails every call costs 2n - 1 calls, each failing fast.
    """
    if not units:
        return
    try:
        call(list(units))
        return
    except Exception as exc:
        error = exc
    again = []
    for unit in units:
        if retryable(unit):
            again.append(unit)
        else:
            fail(unit, error)
    if len(again) == 1 and len(units) == 1:
        fail(again[0], error)
    elif 0 < len(again) < len(units):
        isolate(again, call, fail, retryable=retryable, on_split=on_split)
    elif again:
        if on_split is not None:
            on_split(len(again), error)
        half = len(again) // 2
        for part in (again[:half], again[half:]):
            isolate(part, call, fail, retryable=retryable, on_split=on_split)


def split_logger(model_name: str, splits: SplitCounter | None) -> Callable[[int, Exception], None]:
    """What `isolate` does on a split: one log line (no traceback yet) and the counter."""

    def on_split(count: int, error: Exception) -> None:
        pb_utils.Logger.log_warn(
            f"{model_name}: the engine call for {count} requests failed "
            f"({type(error).__name__}); retrying them in two halves"
        )
        if splits is not None:
            splits.count()

    return on_split


def engine_error(model_name: str, exc: Exception) -> RequestError:
    """The error of the one request an engine failure was pinned on: the engine's own
    RequestError, else INTERNAL (with the traceback logged)."""
    if isinstance(exc, RequestError):
        return exc
    log_exception(model_name, "running the model", exc)
    return internal_error(model_name, "running the model", exc)


def _internal(model_name: str, stage: str, exc: Exception) -> Response:
    log_exception(model_name, stage, exc)
    return error_response(internal_error(model_name, stage, exc))
