"""Decoupled (streaming) execution: pieces as they are made, one final flag per request.

The streaming twin of `serving.batch.run_batch`, for models with
`model_transaction_policy { decoupled: true }`:

- each request is parsed on its own; a request that fails parsing gets its error together with
  TRITONSERVER_RESPONSE_COMPLETE_FINAL and the others go on;
- the rows of all valid requests go to the engine in one call; the engine reports pieces per
  row through the row's `Stream` and asks it whether the client has cancelled;
- when the engine call fails, the requests that have not sent a piece yet are retried in
  smaller groups (`serving.batch.isolate`) until the failure is pinned on one request; a
  request that already sent pieces cannot be retried (its client holds part of an answer that
  a rerun would repeat) and gets the error on its final response;
- every request gets exactly one COMPLETE_FINAL, whatever happens (engine error included):
  a client waiting on a stream that never ends is the worst failure a decoupled model has;
- `execute()` returns None, as the decoupled protocol requires.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import triton_python_backend_utils as pb_utils

from serving import tensors
from serving.batch import engine_error, isolate, split_logger
from serving.errors import (
    ErrorCounter,
    SplitCounter,
    error_response,
    internal_error,
    log_exception,
)
from serving.protocols import Request
from shared.errors import RequestError, cancelled

Row = TypeVar("Row")


class Stream:
    """One decoupled request's response sender: send pieces, then finish exactly once."""

    def __init__(self, request: Request, errors: ErrorCounter | None = None) -> None:
        self.request = request
        self._sender = request.get_response_sender()
        self._errors = errors
        self.finished = False
        self.sent = 0

    def cancelled(self) -> bool:
        """True once the client cancelled (or the stream is already finished): stop working on it."""
        return self.finished or bool(self._sender.is_cancelled())

    def send(self, output_tensors: Sequence[Any]) -> None:
        """One non-final response; dropped once the stream is finished or cancelled."""
        if self.cancelled():
            return
        self._sender.send(tensors.sent_response(self.request, output_tensors))
        self.sent += 1

    def finish(self, output_tensors: Sequence[Any] | None = None) -> None:
        """The final flag, on a last response carrying `output_tensors` when given."""
        if self.finished:
            return
        self.finished = True
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if self._sender.is_cancelled():
            self._sender.send(flags=final)  # the client is gone; this only frees the request
            if self._errors is not None:
                self._errors.count_cancelled()
        elif output_tensors:
            self._sender.send(tensors.sent_response(self.request, output_tensors), flags=final)
            self.sent += 1
        else:
            self._sender.send(flags=final)

    def fail(self, error: RequestError) -> None:
        """An error response carrying the final flag (counted like unary errors)."""
        if self.finished:
            return
        self.finished = True
        self._sender.send(
            error_response(error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        )
        if self._errors is not None:
            self._errors.count(error.code.value)


def run_stream_batch(
    requests: Sequence[Request],
    parse: Callable[[Request], list[Row]],
    run: Callable[[list[Row], list[Stream]], None],
    model_name: str,
    errors: ErrorCounter | None = None,
    splits: SplitCounter | None = None,
) -> None:
    """Parse each request, stream all valid rows from one engine call, finish every stream.

    `parse` returns a request's rows or raises RequestError. `run(rows, streams)` gets the rows
    of all valid requests and, per row, the `Stream` of its request (rows of one request share
    it); it sends pieces and usually finishes each stream with its last response. Streams it
    leaves open are finished here with an empty final response. If it raises, the requests
    that sent nothing yet are retried in smaller groups (counted in `splits`) and the others
    get the error (INTERNAL for unexpected exceptions, logged with the traceback).
    """
    streams = [Stream(request, errors) for request in requests]
    parsed = _parse_each(requests, streams, parse, model_name)

    def call(group: list[tuple[Stream, list[Row]]]) -> None:
        run(
            [row for _, rows in group for row in rows],
            [stream for stream, rows in group for _ in rows],
        )

    def fail(unit: tuple[Stream, list[Row]], exc: Exception) -> None:
        if not unit[0].finished:
            unit[0].fail(engine_error(model_name, exc))

    def retryable(unit: tuple[Stream, list[Row]]) -> bool:
        return not unit[0].finished and unit[0].sent == 0

    isolate(parsed, call, fail, retryable=retryable, on_split=split_logger(model_name, splits))
    for stream in streams:
        stream.finish()


def submit_streams(
    requests: Sequence[Request],
    parse: Callable[[Request], list[Row]],
    submit: Callable[[list[Row], Stream], None],
    model_name: str,
    errors: ErrorCounter | None = None,
) -> None:
    """Continuous batching's `execute()`: parse each request as `run_stream_batch` does and
    hand the valid ones to `submit(rows, stream)`, which finishes each stream later, from the
    engine's thread; nothing here waits for generation."""
    streams = [Stream(request, errors) for request in requests]
    for stream, rows in _parse_each(requests, streams, parse, model_name):
        try:
            submit(rows, stream)
        except Exception as exc:
            stream.fail(engine_error(model_name, exc))


def _parse_each(
    requests: Sequence[Request],
    streams: Sequence[Stream],
    parse: Callable[[Request], list[Row]],
    model_name: str,
) -> list[tuple[Stream, list[Row]]]:
    """Each request's rows; a request already cancelled, or that fails parsing, gets its
    error and COMPLETE_FINAL on its stream and is left out."""
    parsed: list[tuple[Stream, list[Row]]] = []
    for request, stream in zip(requests, streams, strict=True):
        if request.is_cancelled():
            stream.fail(cancelled())
            continue
        try:
            parsed.append((stream, parse(request)))
        except RequestError as error:
            stream.fail(error)
        except Exception as exc:
            log_exception(model_name, "parsing the request", exc)
            stream.fail(internal_error(model_name, "parsing the request", exc))
    return parsed
