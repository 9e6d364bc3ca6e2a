"""`vlm` and `llm`: unary chat as a front over the chat engine model (`vlm_stream`).

Why a front: the three chat models serve one checkpoint. Each loading it cost a copy of the
weights per stub (about 1 GB resident each for a 256M-parameter model) and three running
batches that could not share a decoding step. Only the engine model (setting `engine_model`,
decoupled, continuous batching) loads the weights and owns the running batch and the
sessions; here each row of a unary request becomes one BLS stream to it, and the pieces it
streams are joined into the one response the client waits for. So unary and streamed
requests share decoding steps, memory and conversation history. This stub loads no torch.

The front is not decoupled (clients keep Triton's unary API, perf_analyzer without
`--streaming`), but answers through each request's response sender: `execute()` hands the
request to a worker thread and returns, so one execute() never waits for a generation and
the next requests reach the engine while it runs.

What tritonserver 2.51's BLS does not carry, and what is done instead (as in `serving.voice`):
- the engine's error code: its message arrives with INTERNAL; the code is read back from the
  message (`serving.errors.code_of_message`);
- cancelling a call: when the client cancels (or a `cancel_id` request names the request), a
  second call with `cancel_id` naming the call's request id stops the generation. A request
  is seen cancelled between two pieces, so one still waiting for its prompt pass stops once it
  is admitted.
"""

from __future__ import annotations

import collections
import json
import re
import secrets
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
import triton_python_backend_utils as pb_utils

from serving import tensors
from serving.bls import FinishedStreams
from serving.chat_protocol import (
    CANCEL_ID_CHARS,
    CANCEL_INPUT,
    OUTPUTS,
    TEXT_ONLY_INPUT,
    completion_tensors,
)
from serving.errors import (
    ErrorCounter,
    code_of_message,
    error_response,
    internal_error,
    log_exception,
)
from serving.protocols import Request, Response
from shared.chat import Completion
from shared.errors import UNLOADING_MESSAGE, ErrorCode, RequestError, cancelled
from shared.params import Param, resolve

#: Requests in flight to the engine at once; more wait here, in order. The engine admits
#: `max_batch_rows` (16) into its running batch and queues the rest: this keeps its queue fed.
MAX_IN_FLIGHT = 64


def _model_name(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", raw):
        raise ValueError(f"{raw!r} is not a model name (letters, digits, '_', '.', '-')")
    return raw


PARAMS = [
    Param(
        "engine_model",
        "vlm_stream",
        parse=_model_name,
        doc="the decoupled chat model that holds the weights, the running batch and the sessions",
    ),
]


class ChatFront:
    """The whole model of `vlm` and `llm`, which differ only in `text_only`."""

    params: ClassVar[Sequence[Param]] = PARAMS
    #: True: image parts and the `images` input are refused (`llm`).
    text_only: ClassVar[bool] = False

    name: str
    engine_model: str
    errors: ErrorCounter

    def initialize(self, args: dict[str, str]) -> None:
        self.name = args["model_name"]
        settings = resolve(self.params, json.loads(args["model_config"]), self.name)
        self.engine_model = settings["engine_model"]
        self.errors = ErrorCounter(self.name)
        self._pool = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix=f"{self.name}-front")
        self._live: collections.Counter[str] = collections.Counter()
        self._live_lock = threading.Lock()
        self._streams = FinishedStreams()
        self._closing = False
        pb_utils.Logger.log_info(
            f"{self.name}: ready; a front over {self.engine_model} (its weights, running batch "
            f"and sessions){'; text only' if self.text_only else ''}"
        )

    def execute(self, requests: list[Request]) -> list[Response | None]:
        """Withdrawals are answered here; every other request on a worker thread (None), with
        its inputs read here, while execute() holds them."""
        answers: list[Response | None] = []
        for request in requests:
            if tensors.has_input(request, CANCEL_INPUT):
                answers.append(self._withdrawal(request))
                continue
            try:
                rows = self._row_inputs(request)
            except RequestError as error:
                self.errors.count(error.code.value)
                answers.append(error_response(error))
                continue
            self._pool.submit(self._serve, request, rows)
            answers.append(None)
        return answers

    def finalize(self) -> None:
        """Unloading: the requests in flight finish; those still waiting for a worker are
        answered UNAVAILABLE (the stub refuses BLS calls while it finalizes)."""
        self._closing = True
        self._pool.shutdown(wait=True)

    # --- one request, on a worker thread -------------------------------------------------------

    def _serve(self, request: Request, rows: list[dict[str, np.ndarray]]) -> None:
        """Run the request's rows on the engine and send its one response (always)."""
        try:
            if request.is_cancelled():
                raise cancelled()
            if self._closing:
                raise RequestError(UNLOADING_MESSAGE, ErrorCode.UNAVAILABLE)
            results = self._generate(request, rows)
            response = tensors.sent_response(request, completion_tensors(results))
        except RequestError as error:
            response = error_response(error)
        except Exception as exc:
            log_exception(self.name, "answering", exc)
            response = error_response(internal_error(self.name, "answering", exc))
        self.errors.count_errors([response])
        sender = request.get_response_sender()
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _generate(self, request: Request, rows: list[dict[str, np.ndarray]]) -> list[Completion]:
        """One engine stream per row, all started before any is read; the request's result.

        The call's id is the client's when that one is cancellable (so a `cancel_id` request
        naming it reaches the engine as it is), a random one otherwise.
        """
        own_id = str(request.request_id())
        call_id = own_id if len(own_id) >= CANCEL_ID_CHARS else secrets.token_hex(16)
        calls = [self._call(inputs, call_id).exec(decoupled=True) for inputs in rows]
        with self._live_lock:
            self._live[own_id] += 1
        try:
            results = [self._read(responses, request, call_id) for responses in calls]
        except RequestError:
            if len(calls) > 1:  # the request's answer is this error: its other rows stop
                self._withdraw_call(call_id, request)
            raise
        finally:
            with self._live_lock:
                self._live[own_id] -= 1
                if self._live[own_id] <= 0:
                    del self._live[own_id]
            # what a failed or cancelled row left unread is read here
            self._streams.release(calls, request)
        if any(r.finish_reason == "cancelled" for r in results):
            raise cancelled()
        return results

    def _row_inputs(self, request: Request) -> list[dict[str, np.ndarray]]:
        """Each row's inputs (copies) as a request of one row: the engine streams one prompt."""
        count = tensors.request_rows(request, "prompt")
        given = {t.name(): np.array(t.as_numpy(), copy=True) for t in request.inputs()}
        rows = []
        for row in range(count):
            inputs = {name: array[row : row + 1] for name, array in given.items()}
            if self.text_only:
                inputs[TEXT_ONLY_INPUT] = np.array([[True]])
            rows.append(inputs)
        return rows

    def _call(self, inputs: dict[str, np.ndarray], call_id: str) -> Any:
        return pb_utils.InferenceRequest(
            model_name=self.engine_model,
            inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
            requested_output_names=list(OUTPUTS),
            request_id=call_id,
        )

    def _read(self, responses: Iterator[Any], request: Request, call_id: str) -> Completion:
        """Join one row's stream; when the client cancels, withdraw the call and read on."""
        pieces: list[str] = []
        withdrawn = False
        for response in responses:
            if response.has_error():
                message = str(response.error().message())
                raise RequestError(message, code_of_message(message))
            reason = _text(response, "finish_reason")
            if reason:
                return Completion(
                    "".join(pieces),
                    reason,
                    _number(response, "prompt_tokens"),
                    _number(response, "completion_tokens"),
                )
            pieces.append(_text(response, "text"))
            if not withdrawn and request.is_cancelled():
                self._withdraw_call(call_id, request)
                withdrawn = True
        raise RequestError(
            f"{self.name}: {self.engine_model} ended the stream without its final response",
            ErrorCode.INTERNAL,
        )

    # --- cancellation by request id ----------------------------------------------------------

    def _withdrawal(self, request: Request) -> Response:
        """A `cancel_id` request: withdraw the live request it names (NOT_FOUND if none)."""
        try:
            (target,) = tensors.text_column(request, CANCEL_INPUT, 1, max_chars=256) or [""]
        except RequestError as error:
            self.errors.count(error.code.value)
            return error_response(error)
        with self._live_lock:
            live = len(target) >= CANCEL_ID_CHARS and self._live[target] > 0
        if not live:
            self.errors.count(ErrorCode.NOT_FOUND.value)
            return error_response(
                RequestError(
                    f"input '{CANCEL_INPUT}': no request with that id is running or waiting here",
                    ErrorCode.NOT_FOUND,
                )
            )
        self._withdraw_call(target, request)
        return tensors.response(*completion_tensors([Completion("", "cancelled", 0, 0)]))

    def _withdraw_call(self, call_id: str, request: Request) -> None:
        """Stop the engine's rows of `call_id` at their next token, on behalf of `request`;
        the answer is not needed (the call may have finished already)."""
        withdrawal = self._call(
            {
                "prompt": np.array([[b""]], np.object_),
                CANCEL_INPUT: np.array([[call_id.encode()]], np.object_),
            },
            call_id="",
        )
        self._streams.release([withdrawal.exec(decoupled=True)], request)


def _text(response: Any, name: str) -> str:
    tensor = pb_utils.get_output_tensor_by_name(response, name)
    return "" if tensor is None else bytes(tensor.as_numpy().reshape(-1)[0]).decode("utf-8")


def _number(response: Any, name: str) -> int:
    tensor = pb_utils.get_output_tensor_by_name(response, name)
    return 0 if tensor is None else int(tensor.as_numpy().reshape(-1)[0])
