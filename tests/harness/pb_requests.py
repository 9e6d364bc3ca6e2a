"""Requests, responses and response senders as tritonserver 2.51 defines them.

(infer_request.cc, infer_response.cc, response_sender.cc, pb_stub.cc.) The server side of the
stub is here too, kept off the model-facing API: `server_request()` builds what execute()
receives, and each sender records what its client received (`Delivery`), converted as the
wire converts it.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tests.harness import stub
from tests.harness.errors import ServerCrash
from tests.harness.pb_errors import TritonError, TritonModelException
from tests.harness.pb_tensor import Tensor
from tests.harness.pybind import CPP_MODULE, as_str, incompatible, is_str_like, make_enum

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2


class InferenceResponse:
    """pb_utils.InferenceResponse(output_tensors=[], error=None); 2.51 has no `parameters`."""

    __module__ = CPP_MODULE
    __slots__ = ("_error", "_tensors")

    def __init__(self, output_tensors: Any = (), error: Any = None) -> None:
        if isinstance(output_tensors, str | bytes) or not isinstance(output_tensors, Sequence):
            raise incompatible("__init__", output_tensors=output_tensors, error=error)
        if any(t is not None and not isinstance(t, Tensor) for t in output_tensors):
            raise incompatible("__init__", output_tensors=output_tensors, error=error)
        if error is not None and not isinstance(error, TritonError):
            raise incompatible("__init__", output_tensors=output_tensors, error=error)
        if any(t is None for t in output_tensors):
            raise TritonModelException("Output tensor for inference response should not be empty.")
        self._tensors: list[Tensor] = list(output_tensors)
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return list(self._tensors)  # a new list each call, as pybind11 converts it

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


@dataclass
class Delivery:
    """What reached the client from one send: outputs as the client decodes them, or an error."""

    outputs: dict[str, np.ndarray] | None  # None: the flag was sent without a response
    error: TritonError | None
    final: bool


def client_outputs(tensors: Sequence[Tensor]) -> dict[str, np.ndarray]:
    """The arrays a client receives: copies, BYTES serialised and read back like the wire does.

    So an object array of str arrives as UTF-8 bytes, of ints as b"5", and np.bytes_ values
    lose their trailing zero bytes. Two outputs with one name: the client keeps the last.
    """
    from tests.harness.pb_utils import module  # the shipped serialisation helpers

    pb = module()
    outputs: dict[str, np.ndarray] = {}
    for tensor in tensors:
        if tensor._type == "BF16":
            outputs[tensor.name()] = tensor._torch.float().numpy().copy()
        elif tensor._type == "BYTES":
            array = tensor._array
            raw = pb.serialize_byte_tensor(array)
            values = pb.deserialize_bytes_tensor(raw) if array.size else np.empty(0, object)
            outputs[tensor.name()] = values.reshape(array.shape)
        else:
            outputs[tensor.name()] = np.array(tensor._array, copy=True)
    return outputs


class _Cancellation:
    """A request's cancelled state; the request and its sender each keep a PbCancel, which
    answers from its cache once it has seen the request cancelled."""

    __slots__ = ("cancelled", "seen_by")

    def __init__(self) -> None:
        self.cancelled = False
        self.seen_by: set[str] = set()

    def check(self, by: str) -> bool:
        """PbCancel::IsCancelled for `by` ("request" or "sender")."""
        if by in self.seen_by:
            return True
        cancelled = self.cancelled
        instance = stub.current_or_none()
        if instance is not None:
            instance.stub_to_parent.round_trip()
        if cancelled:
            self.seen_by.add(by)
        return cancelled


class InferenceResponseSender:
    """The response sender of one request, with the real flag, count and closing rules.

    Not exported as `pb_utils.InferenceResponseSender` (the real module does not export it).
    """

    __module__ = CPP_MODULE
    __slots__ = (
        "_cancel", "_closed", "_decoupled", "_deliveries", "_done", "_lock", "_requested",
        "_sent", "_sink",
    )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{CPP_MODULE}.InferenceResponseSender: No constructor defined!")

    @classmethod
    def _create(
        cls, decoupled: bool | None, requested: set[str], cancel: _Cancellation
    ) -> InferenceResponseSender:
        sender = object.__new__(cls)
        sender._decoupled, sender._requested, sender._cancel = decoupled, requested, cancel
        sender._closed, sender._sent = False, 0
        sender._deliveries: list[Delivery] = []
        sender._lock, sender._done = threading.Lock(), threading.Event()
        # Where a BLS request's responses go, instead of a client (ModelHarness.serve_bls).
        sender._sink: Callable[[Delivery], None] | None = None
        return sender

    def send(self, response: Any = None, flags: Any = 0) -> None:
        if response is not None and not isinstance(response, InferenceResponse):
            raise incompatible("send", response, flags)
        if not isinstance(flags, int) or not 0 <= flags < 2**32:
            raise incompatible("send", response, flags)
        if flags not in (0, TRITONSERVER_RESPONSE_COMPLETE_FINAL):
            raise TritonModelException("Unable to send response. Unsupported flag provided.")
        if flags == 0 and response is None:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is set to zero."
            )
        self._update_state(response, flags)
        self._prune_unlocked(response)
        self._deliver(response, flags)

    def is_cancelled(self) -> bool:
        return self._cancel.check("sender")

    # The server side (not model API): the stub's bookkeeping and what the client receives.

    def _update_state(self, response: InferenceResponse | None, flags: int) -> None:
        """ResponseSender::UpdateStateAndCounters: the order of checks is the real one."""
        if self._decoupled is None:
            raise TritonModelException(
                "Unable to send response. Response sender has no reference to the decoupled "
                "state of the model."
            )
        with self._lock:
            if not self._decoupled:
                if response is not None and self._sent > 0:
                    raise TritonModelException(
                        "Unable to send response. Non-decoupled model cannot send more than "
                        "one response."
                    )
                if (
                    response is None
                    and flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL
                    and not self._sent
                ):
                    raise TritonModelException(
                        "Unable to send response. Non-decoupled model cannot send complete "
                        "final before sending a response."
                    )
            if self._closed:
                raise TritonModelException(
                    "Unable to send response. Response sender has been closed."
                )
            if flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                self._closed = True
            self._sent += 1

    def _prune_unlocked(self, response: InferenceResponse | None) -> None:
        """ResponseSender::Send prunes unrequested outputs with the GIL released: a tensor
        freed there corrupts the stub's heap (2.51), so sending one is a crash here."""
        if response is None or response.has_error():
            return
        unrequested = sorted({t.name() for t in response._tensors} - self._requested)
        if unrequested:
            crash = ServerCrash(
                f"a response sent through the response sender carries outputs the request "
                f"did not ask for ({', '.join(unrequested)}): 2.51's stub drops them in "
                f"send() without the GIL, freeing their arrays unlocked, and the stub can die "
                f"later with a segfault; send only requested_output_names()"
            )
            stub.current().crashes.append(crash)
            raise crash

    def _deliver(self, response: InferenceResponse | None, flags: int) -> None:
        final = flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if self._cancel.cancelled:  # the client has gone: nothing sent now reaches it
            if final:
                self._done.set()
            return
        if response is None:
            delivery = Delivery(None, None, final)
        elif response.has_error():
            delivery = Delivery({}, response.error(), final)
        else:
            response._tensors[:] = [t for t in response._tensors if t.name() in self._requested]
            delivery = Delivery(client_outputs(response._tensors), None, final)
        self._record(delivery)

    def _record(self, delivery: Delivery) -> None:
        with self._lock:
            self._deliveries.append(delivery)
        if self._sink is not None:
            self._sink(delivery)
        if delivery.final:
            self._done.set()

    def _fail(self, error: TritonError) -> bool:
        """The server answers a request the batch error caught; False if already complete."""
        with self._lock:
            self._closed = True
            if self._done.is_set():
                return False
        if self._cancel.cancelled:
            self._done.set()
        else:
            self._record(Delivery({}, error, True))
        return True


MemoryType = make_enum("MemoryType", {"TRITONSERVER_MEMORY_GPU": 0, "TRITONSERVER_MEMORY_CPU": 1})


class PreferredMemory:
    """Where a BLS request prefers its outputs (kept, not acted on: the harness is CPU-only)."""

    __module__ = CPP_MODULE
    __slots__ = ("preferred_device_id", "preferred_memory_type")

    def __init__(self, preferred_memory_type: Any, preferred_device_id: Any = 0) -> None:
        if not isinstance(preferred_memory_type, MemoryType) or not isinstance(
            preferred_device_id, int
        ):
            raise incompatible("__init__", preferred_memory_type, preferred_device_id)
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


class InferenceTrace:
    """A request's trace; the harness traces nothing, so the context is None."""

    __module__ = CPP_MODULE
    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{CPP_MODULE}.InferenceTrace: No constructor defined!")

    def get_context(self) -> str | None:
        return None


class _StreamCleanup:
    """Whether the stub still holds a BLS stream, for the stream's finalizer."""

    __slots__ = ("instance", "place")

    def __init__(self, instance: stub.Instance | None) -> None:
        self.instance = instance
        self.place: int | None = None  # in the stub-to-parent queue, once read to its end

    def queue(self) -> None:
        if self.instance is not None and self.place is None:
            self.place = self.instance.stub_to_parent.queue_cleanup()

    def let_go(self) -> None:
        """The model let go of the stream. Before its cleanup was sent, the stub's reference
        is the last: the stub frees the stream on its own thread, without the GIL."""
        if self.instance is None or self.place is None:
            return  # never read to its end: the stub keeps it (a leak, not a crash)
        if not self.instance.stub_to_parent.sent(self.place):
            self.instance.crashes.append(
                ServerCrash(
                    "a BLS stream (exec(decoupled=True)) was let go after its final response "
                    "but before the stub had sent its cleanup: 2.51's stub then frees it, "
                    "with its responses' arrays, on its own thread without the GIL, and can "
                    "die later with a segfault; let streams go through "
                    "serving.bls.FinishedStreams (a request.is_cancelled() round trip after "
                    "the final response)"
                )
            )


class ResponseIterator:
    """What `InferenceRequest.exec(decoupled=True)` returns: the BLS responses in order.

    As in pb_response_iterator.cc: `next()` blocks until the callee sends its next response;
    the one carrying the final flag is the last (an empty one when the callee sent the flag
    alone); once finished, a new `iter()` starts again from the first response. Reading the
    final response queues the stream's cleanup (`stub.StubToParentQueue`); letting go of the
    stream before the cleanup was sent is a crash, as in the real stub.
    """

    __module__ = CPP_MODULE
    __slots__ = ("__weakref__", "_cleanup", "_finished", "_index", "_pending", "_responses")

    def __init__(
        self, responses: Sequence[InferenceResponse] = (), *, stub_held: bool = True
    ) -> None:
        """`stub_held=False`: the harness's own carrier of a unary BLS answer, which the
        real stub holds in no map (so nothing to clean up)."""
        self._pending: queue.Queue[tuple[InferenceResponse, bool]] = queue.Queue()
        self._responses: list[InferenceResponse] = []
        self._finished, self._index = False, 0
        self._cleanup = _StreamCleanup(stub.current_or_none() if stub_held else None)
        weakref.finalize(self, self._cleanup.let_go)
        for index, response in enumerate(responses):
            self._put(response, index == len(responses) - 1)

    def _put(self, response: InferenceResponse, last: bool) -> None:
        """The server side: the callee's next response arrived."""
        self._pending.put((response, last))

    def __iter__(self) -> ResponseIterator:
        if self._finished and self._index >= len(self._responses):
            self._index = 0
        return self

    def __next__(self) -> InferenceResponse:
        if self._finished:
            if self._index < len(self._responses):
                self._index += 1
                return self._responses[self._index - 1]
            raise StopIteration
        response, last = self._pending.get()
        self._responses.append(response)
        self._finished = last
        self._index = len(self._responses)
        if last:
            self._cleanup.queue()
        return response


_REQUIRED = object()
_NO_TRACE = object.__new__(InferenceTrace)


class InferenceRequest:
    """A request: built by the server for `execute()`, or by the model for BLS."""

    __module__ = CPP_MODULE
    __slots__ = (
        "_cancel", "_correlation_id", "_flags", "_inputs", "_model_name", "_model_version",
        "_owner", "_parameters", "_preferred_memory", "_release_flags", "_request_id",
        "_requested", "_sender", "_timeout", "_trace",
    )  # fmt: skip

    def __init__(
        self,
        request_id: Any = "",
        correlation_id: Any = 0,
        inputs: Any = _REQUIRED,
        requested_output_names: Any = _REQUIRED,
        model_name: Any = _REQUIRED,
        model_version: Any = -1,
        flags: Any = 0,
        timeout: Any = 0,
        preferred_memory: Any = None,
        trace: Any = None,
        parameters: Any = None,
    ) -> None:
        given = dict(
            request_id=request_id, inputs=inputs, requested_output_names=requested_output_names,
            model_name=model_name, model_version=model_version, flags=flags, timeout=timeout,
        )  # fmt: skip
        if (
            _REQUIRED in (inputs, requested_output_names, model_name)
            or not is_str_like(request_id)
            or not is_str_like(model_name)
            or not _sequence_of(inputs, Tensor)
            or not _sequence_of(requested_output_names, str)
            or not all(isinstance(given[k], int) for k in ("model_version", "flags", "timeout"))
            or (preferred_memory is not None and not isinstance(preferred_memory, PreferredMemory))
            or (trace is not None and not isinstance(trace, InferenceTrace))
        ):
            raise incompatible("__init__", **given)
        if parameters is not None and not isinstance(parameters, dict):
            raise TritonModelException(f"Expect N8pybind114dictE, got {type(parameters)}")
        for key, value in (parameters or {}).items():
            if not isinstance(key, str):
                raise TritonModelException(
                    f"Expect parameters keys to have type str, found type {type(key)}"
                )
            if not isinstance(value, bool | int | str):
                raise TritonModelException(
                    f"Expect parameters values to have type bool/int/str, found type {type(value)}"
                )
        if not isinstance(correlation_id, int | str):
            raise TritonModelException("Correlation ID must be integer or string")
        self._request_id, self._correlation_id = as_str(request_id), correlation_id
        self._inputs, self._requested = list(inputs), set(requested_output_names)
        self._model_name, self._model_version = as_str(model_name), model_version
        self._flags, self._timeout = flags, timeout
        self._parameters = json.dumps(parameters or {})
        self._preferred_memory, self._trace = preferred_memory, trace or _NO_TRACE
        self._cancel = _Cancellation()
        self._sender = InferenceResponseSender._create(None, self._requested, self._cancel)
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
        # The model instance that built it: its BLS calls act for that instance, whichever
        # thread makes them (async_exec runs exec() on an executor thread).
        self._owner = stub.current_or_none()

    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: Any) -> None:
        if not isinstance(flags, int):
            raise incompatible("set_flags", flags)
        self._flags = flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return self._parameters

    def trace(self) -> InferenceTrace:
        return self._trace

    def requested_output_names(self) -> set[str]:
        return set(self._requested)  # a set, as pybind11 converts the std::set

    def get_response_sender(self) -> InferenceResponseSender:
        return self._sender

    def is_cancelled(self) -> bool:
        return self._cancel.check("request")

    def set_release_flags(self, flags: Any) -> None:
        if not isinstance(flags, int):
            raise incompatible("set_release_flags", flags)
        self._release_flags = flags

    def exec(self, decoupled: Any = False) -> Any:
        """BLS: answered by the model registered in ModelHarness.bls_models, else not ready."""
        if not isinstance(decoupled, bool):
            raise incompatible("exec", decoupled)
        instance = self._owner or stub.current()
        if not instance.bls_allowed:
            raise TritonModelException("BLS is only supported during the 'execute' function.")
        handler = instance.bls_models.get(self._model_name)
        if hasattr(handler, "serve_bls"):
            return handler.serve_bls(self, decoupled)
        if handler is None:
            name = self._model_name
            responses: Any = InferenceResponse(
                error=TritonError(
                    f"Model {name} - Error when running inference: Failed for execute the "
                    f"inference request. Model '{name}' is not ready."
                )
            )
        else:
            responses = handler(self)
        if decoupled:
            return ResponseIterator(responses if isinstance(responses, list) else [responses])
        return responses

    def async_exec(self, decoupled: Any = False) -> Any:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(None, self.exec, decoupled)


def _sequence_of(value: Any, kind: type) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str | bytes)
        and all(isinstance(v, kind) for v in value)
    )


def server_request(
    inputs: Sequence[Tensor],
    *,
    request_id: str,
    requested: set[str],
    parameters: str,
    decoupled: bool,
    model_name: str,
    correlation_id: int | str = 0,
    flags: int = 0,
    timeout: int = 0,
) -> InferenceRequest:
    """A request as the server hands it to execute() (bypasses the BLS constructor's checks)."""
    request = object.__new__(InferenceRequest)
    request._request_id, request._correlation_id = request_id, correlation_id
    request._inputs, request._requested = list(inputs), set(requested)
    request._model_name, request._model_version = model_name, 1
    request._flags, request._timeout, request._parameters = flags, timeout, parameters
    request._preferred_memory, request._trace = None, _NO_TRACE
    request._cancel = _Cancellation()
    request._sender = InferenceResponseSender._create(
        decoupled, request._requested, request._cancel
    )
    request._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
    request._owner = None
    return request


def bls_response(delivery: Delivery) -> InferenceResponse:
    """A callee's response as its BLS caller gets it (request_executor.cc, 2.51).

    The outputs as the server hands them over (the wire's conversions, unrequested ones
    pruned); an error keeps its message but not its code: every BLS error is INTERNAL.
    """
    if delivery.error is not None:
        return InferenceResponse(error=TritonError(delivery.error.message()))
    return InferenceResponse([Tensor(n, a) for n, a in (delivery.outputs or {}).items()])


def cancel(request: InferenceRequest) -> None:
    """The client cancels `request`: is_cancelled() turns true for the request and its sender."""
    request._cancel.cancelled = True
