"""Load a model directory the way tritonserver 2.51 does and drive it like the server.

What the server does around a model is mirrored, because a unit test that skips it passes code
that fails in production:
  * import: `<version>.model` (so relative imports work) with the version and model
    directories appended to sys.path and the mock `triton_python_backend_utils` in
    sys.modules; the C++ half of pb_utils (Tensor, TritonError, Logger, ...) is attached only
    after the import, as the stub does; all of it is undone after each call into the model, so
    several models can live in one test process without seeing each other's modules;
  * `initialize(args)`: the same args dict, every value a string, `model_config` the exact
    JSON the server writes (tests.harness.config);
  * requests: the server's own checks first (`ServerRejected`, tests.harness.validation),
    inputs as the model receives them (BYTES as object arrays of bytes), `parameters()` as the
    server's compact JSON;
  * `execute()`: the batch must be one the dynamic batcher forms (`UnrealisticBatch`); what it
    returns is checked like the stub checks it, with the stub's messages; an exception fails
    every unanswered request of the batch with INTERNAL and the server's message, traceback
    included; unrequested outputs are pruned; BYTES outputs go through the wire format;
    async execute() runs on an event loop thread, as in the stub;
  * decoupled models: the responses sent through each request's sender, with their flags,
    until the final one (`ClientWouldHang` if it never comes).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import sys
import threading
import time
import traceback
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.harness import config as model_config
from tests.harness import pb_metrics, stub, validation
from tests.harness import pb_utils as mock
from tests.harness.errors import (
    ClientWouldHang,
    DecoupledOverUnary,
    ProtocolViolation,
    ServerRejected,
    UnrealisticBatch,
)
from tests.harness.pybind import cpp_type_name

__all__ = [
    "GRPC_STATUS",
    "HTTP_STATUS",
    "ClientWouldHang",
    "DecoupledOverUnary",
    "ModelHarness",
    "ProtocolViolation",
    "Result",
    "ServerRejected",
    "UnrealisticBatch",
    "pb_utils_module",
]

HARNESS_DIR = Path(__file__).resolve().parent

# How a response's TritonError code reaches clients (tritonserver 2.51, checked on the server).
HTTP_STATUS = {
    "UNKNOWN": 400, "INTERNAL": 500, "NOT_FOUND": 404, "INVALID_ARG": 400, "UNAVAILABLE": 503,
    "UNSUPPORTED": 501, "ALREADY_EXISTS": 400, "CANCELLED": 400,
}  # fmt: skip
GRPC_STATUS = {
    "UNKNOWN": "UNKNOWN", "INTERNAL": "INTERNAL", "NOT_FOUND": "NOT_FOUND",
    "INVALID_ARG": "INVALID_ARGUMENT", "UNAVAILABLE": "UNAVAILABLE",
    "UNSUPPORTED": "UNIMPLEMENTED", "ALREADY_EXISTS": "ALREADY_EXISTS", "CANCELLED": "CANCELLED",
}  # fmt: skip


def pb_utils_module() -> types.ModuleType:
    """The process's mock `triton_python_backend_utils` (not installed in sys.modules)."""
    return mock.module()


@dataclass
class Result:
    """What a client receives for one response."""

    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    error: Any = None  # a pb_utils.TritonError
    final: bool = True  # decoupled: the response carried COMPLETE_FINAL
    null_response: bool = False  # decoupled: the final flag came without a response object
    cancelled: bool = False  # the test cancelled the request
    on_stream: bool = False  # a response on a gRPC stream (a decoupled model's)
    # Not a response: the client's own cancellation, which ends what it receives (responses
    # the model sends after it never reach the client).
    client_cancelled: bool = False

    @property
    def code(self) -> str | None:
        return None if self.error is None else self.error.code().name

    @property
    def message(self) -> str | None:
        return None if self.error is None else self.error.message()

    @property
    def http_status(self) -> int:
        return 200 if self.code is None else HTTP_STATUS[self.code]

    @property
    def grpc_status(self) -> str | None:
        """None for a model's error on a stream: it reaches the client without a status."""
        if self.on_stream and self.error is not None and not self.client_cancelled:
            return None
        return "OK" if self.code is None else GRPC_STATUS[self.code]

    def text(self, name: str, row: int = 0) -> str:
        return self.outputs[name].reshape(-1)[row].decode("utf-8")


class _BackendError(Exception):
    """An error the stub raises in C++ (PythonBackendException): no type name, no traceback."""


def pybind_error_string(exc: BaseException, stop: types.FrameType | None) -> str:
    """pybind11's text for a Python exception, as the stub puts it in its error message.

    "<Type>: <message>" ("<EMPTY MESSAGE>" when empty), then "\\n\\nAt:\\n" and one line per
    frame from the innermost outwards, stopping where the server would have called in (the
    stub calls execute() from C++). The harness's own frames are left out.
    """
    try:
        text = str(exc)
    except Exception:  # what pybind11 prints then is not worth mirroring
        text = ""
    result = f"{cpp_type_name(type(exc))}: {text or '<EMPTY MESSAGE>'}"
    tb = exc.__traceback__
    if tb is None:
        return result
    while tb.tb_next is not None:
        tb = tb.tb_next
    lines = []
    frame: types.FrameType | None = tb.tb_frame
    while frame is not None and frame is not stop:
        filename = frame.f_code.co_filename
        if not Path(filename).resolve().is_relative_to(HARNESS_DIR):
            lines.append(f"  {filename}({frame.f_lineno}): {frame.f_code.co_name}\n")
        frame = frame.f_back
    return result + "\n\nAt:\n" + "".join(lines)


class ModelHarness:
    """One model instance, loaded from its directory as tritonserver loads it.

    `parameters` override `config.pbtxt` parameters (string values, as in the file);
    `instance_kind` ("CPU", "GPU", "MODEL") overrides every instance group's kind;
    `response_timeout` is how long execute() waits for responses sent from other threads.
    """

    def __init__(
        self,
        model_dir: Path | str,
        *,
        parameters: Mapping[str, str] | None = None,
        instance_kind: str | None = None,
        device_id: int = 0,
        response_timeout: float = 60.0,
    ) -> None:
        self.model_dir = Path(model_dir).resolve()
        self._overrides = {
            "parameters": dict(parameters or {}),
            "instance_kind": instance_kind,
            "device_id": device_id,
        }
        self.config = model_config.complete(
            model_config.read(self.model_dir), self.model_dir, **self._overrides
        )
        versions = model_config.served_versions(self.config, self.model_dir)
        if not versions:
            raise FileNotFoundError(f"{self.model_dir} has no version directory its policy serves")
        self.version = versions[-1]  # what a request without a version reaches
        self.version_dir = self.model_dir / str(self.version)
        self.name = self.config.name
        self.instance_name = model_config.instance_name(self.config)
        self.decoupled = self.config.model_transaction_policy.decoupled
        self.response_timeout = response_timeout
        self.pb_utils = pb_utils_module()
        self.instance = stub.Instance(
            model_name=self.name,
            instance_name=self.instance_name,
            version_dir=self.version_dir,
            decoupled=self.decoupled,
        )
        self.module: types.ModuleType | None = None
        self.model: Any = None
        self._own_modules: dict[str, types.ModuleType] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._import_depth = 0
        self._execute_lock = threading.Lock()  # one execute() at a time, as in one stub
        self._bls_threads: list[threading.Thread] = []  # this model answering BLS requests
        self._crash_raised = False  # a crash of the instance has reached the test

    # --- what tests read ---------------------------------------------------------------------

    @property
    def logs(self) -> list[stub.LogRecord]:
        """What this model logged through pb_utils.Logger: (level, message) records."""
        return self.instance.logs

    @property
    def server_log(self) -> list[str]:
        """What the stub logged about this model: errors after a response was complete, etc."""
        return self.instance.server_log

    @property
    def bls_models(self) -> dict[str, Any]:
        """Models a BLS request may reach: name -> a ModelHarness (see `link`), or a
        handler(request) -> response(s)."""
        return self.instance.bls_models

    def link(self, *others: ModelHarness) -> ModelHarness:
        """Let this model's BLS requests reach the models of `others`, as on one server."""
        for other in others:
            self.bls_models[other.name] = other
        return self

    def args(self) -> dict[str, str]:
        """The `initialize()` argument, as the stub builds it (every value a string)."""
        return {
            "model_config": model_config.to_json(self.config),
            "model_instance_kind": model_config.instance_kind(self.config),
            "model_instance_name": self.instance_name,
            "model_instance_device_id": str(self._overrides["device_id"]),
            "model_repository": str(self.model_dir),
            "model_version": str(self.version),
            "model_name": self.name,
        }

    @staticmethod
    def cancel(request: Any) -> None:
        """The client cancels `request`: is_cancelled() is true for it and its sender."""
        mock.cancel(request)

    @staticmethod
    def metric(name: str, labels: Mapping[str, str] | None = None) -> pb_metrics.Series | None:
        """A metric series as the server holds it (`.value`, `.observations`), or None."""
        return pb_metrics.series(name, dict(labels or {}))

    # --- lifecycle -----------------------------------------------------------------------------

    def load(self) -> ModelHarness:
        """Import model.py, run auto_complete_config if defined, then initialize(args)."""
        with self._context():
            self.module = self._import_model()
            model_class = self.module.TritonPythonModel
            if hasattr(model_class, "auto_complete_config"):
                self._auto_complete(model_class)
            self.model = model_class()
            if hasattr(self.model, "initialize"):
                self.model.initialize(self.args())
        self.instance.serving = True
        return self

    def finalize(self) -> None:
        """finalize() if defined; like the stub, an exception in it is only logged."""
        if self.model is None:
            return
        self.instance.serving = False
        for thread in self._bls_threads:  # a BLS caller may have left before the answer's end
            thread.join(self.response_timeout)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None
        with self._context():
            if hasattr(self.model, "finalize"):
                try:
                    self.model.finalize()
                except Exception as exc:
                    self.server_log.append(pybind_error_string(exc, sys._getframe()))
        self.model = None
        self._own_modules.clear()

    def __enter__(self) -> ModelHarness:
        return self.load()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        """Unload; a crash after the last answer (a stream let go late) reaches the test here."""
        self.finalize()
        if exc_type is None and self.instance.crashes and not self._crash_raised:
            self._raise_crash()

    def _raise_crash(self) -> None:
        self._crash_raised = True
        raise self.instance.crashes[0]

    # --- requests ------------------------------------------------------------------------------

    def request(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        request_id: str = "",
        parameters: Mapping[str, bool | int | float | str] | None = None,
        requested_outputs: Sequence[str] | None = None,
        correlation_id: int | str = 0,
        flags: int = 0,
        timeout: int = 0,
    ) -> Any:
        """One request as the model receives it, after the checks the server makes first."""
        requested = list(requested_outputs or [])
        validation.check_request(self.config, inputs, requested, request_id)
        for key, value in (parameters or {}).items():
            if not isinstance(value, bool | int | float | str):
                raise TypeError(f"request parameter {key!r}: clients send bool/int/float/str")
        # request.inputs() lists them in the order the client added them.
        tensors = [mock.Tensor(name, _as_received(array)) for name, array in inputs.items()]
        return mock.server_request(
            tensors,
            request_id=request_id,
            requested=set(requested or [o.name for o in self.config.output]),
            parameters=json.dumps(
                dict(parameters or {}), separators=(",", ":"), ensure_ascii=False
            ),
            decoupled=self.decoupled,
            model_name=self.name,
            correlation_id=correlation_id,
            flags=flags,
            timeout=timeout,
        )

    def infer(self, inputs: Mapping[str, np.ndarray], **kwargs: Any) -> Any:
        """One request alone in its batch: a Result (decoupled: the list of Results)."""
        return self.execute([self.request(inputs, **kwargs)])[0]

    def infer_unary(self, inputs: Mapping[str, np.ndarray], **kwargs: Any) -> Result:
        """A unary infer call (HTTP, or gRPC ModelInfer): a decoupled model is refused."""
        if self.decoupled:
            raise DecoupledOverUnary()
        result: Result = self.infer(inputs, **kwargs)
        return result

    def serve_bls(self, bls: Any, decoupled: bool) -> Any:
        """Answer another model's BLS request as the server does (request_executor.cc, 2.51).

        The server's checks first, then this model's execute() on a thread of its own (the
        callee runs in its own stub process). Unary: the response once it is complete.
        `decoupled`: a ResponseIterator filled as the model sends (an error not carrying the
        final flag does not reach the caller; a final flag sent alone is an empty response).
        """
        prefix = f"Model {self.name} - Error when running inference: "

        def refused(message: str) -> Any:
            response = mock.InferenceResponse(error=mock.TritonError(prefix + message))
            return mock.ResponseIterator([response]) if decoupled else response

        if self.decoupled and not decoupled:
            return refused(
                f"Model {self.name} is using the decoupled. The current BLS request call "
                "doesn't support models using the decoupled transaction policy. Please use "
                "'decoupled=True' argument to the 'exec' or 'async_exec' calls for decoupled "
                "models.'"
            )
        try:
            request = self.request(
                {t.name(): t.as_numpy() for t in bls.inputs()},
                request_id=bls.request_id(),
                parameters=json.loads(bls.parameters()),
                requested_outputs=sorted(bls.requested_output_names()),
                correlation_id=bls.correlation_id(),
                flags=bls.flags(),
                timeout=bls.timeout(),
            )
        except ServerRejected as exc:
            return refused(exc.message)
        responses = mock.ResponseIterator(stub_held=decoupled)

        def arrived(delivery: Any) -> None:
            if delivery.final or delivery.error is None or not self.decoupled:
                responses._put(mock.bls_response(delivery), delivery.final or not self.decoupled)

        request._sender._sink = arrived

        def run() -> None:
            error = self._run_execute([request], imports=False)
            if error is not None:
                self._fail_batch([request], error)

        thread = threading.Thread(target=run, name=f"bls-{self.name}", daemon=True)
        self._bls_threads = [t for t in self._bls_threads if t.is_alive()] + [thread]
        thread.start()
        if decoupled:
            return responses
        return next(responses)

    def execute(
        self,
        requests: Sequence[Any],
        *,
        timeout: float | None = None,
        enforce_batcher: bool = True,
    ) -> list[Any]:
        """Run one batch: a Result per request (decoupled: a list of Results per request).

        `enforce_batcher=False` runs a batch the dynamic batcher would never form.
        """
        if self.model is None:
            raise RuntimeError("load() the model first (or use `with ModelHarness(...)`)")
        if not requests:
            return []
        if enforce_batcher:
            validation.check_batch(self.config, [_inputs_of(r) for r in requests])
        if self.config.max_batch_size > 0 and not any(_rows(r) for r in requests):
            raise ClientWouldHang("the Python backend skips a batch of 0 rows: no response comes")
        error = self._run_execute(list(requests))
        if error is not None:
            self._fail_batch(requests, error)
        deadline = time.monotonic() + (self.response_timeout if timeout is None else timeout)
        for index, request in enumerate(requests):
            done = request.get_response_sender()._done
            while not done.wait(0.05):
                if self.instance.crashes:  # the real stub is dead: no answer is coming
                    self._raise_crash()
                if time.monotonic() >= deadline:
                    raise ClientWouldHang(
                        f"request {index} got no final response: its client would wait "
                        "forever (send COMPLETE_FINAL, or return a response, for every request)"
                    )
        if self.instance.crashes:
            self._raise_crash()
        if self.decoupled:
            return [self._stream(r) for r in requests]
        return [self._unary(i, r) for i, r in enumerate(requests)]

    # --- internals -----------------------------------------------------------------------------

    def _run_execute(self, requests: list[Any], *, imports: bool = True) -> str | None:
        """Call execute() as Stub::ProcessRequests does; the error string if it failed.

        `imports=False` (BLS, on a thread of its own) leaves sys.modules and sys.path alone:
        they are the process's, and another model's thread may be swapping them right now.
        """
        stop = sys._getframe()
        context = (
            self._context(executing=True)
            if imports
            else stub.activate(self.instance, executing=True)
        )
        with self._execute_lock, context:
            try:
                if not hasattr(self.model, "execute"):
                    raise _BackendError(
                        f"Python model {self.version_dir / 'model.py'} does not implement "
                        "`execute` method."
                    )
                returned = self.model.execute(requests)
                if asyncio.iscoroutine(returned):
                    if self.decoupled:  # the stub does not wait for it
                        self._run_in_background(returned)
                        return None
                    returned = asyncio.run_coroutine_threadsafe(
                        self._executing(returned), self._event_loop()
                    ).result()
                self._take_returned(requests, returned)
            except _BackendError as exc:
                return str(exc)
            except Exception as exc:
                return pybind_error_string(exc, stop)
        return None

    def _take_returned(self, requests: list[Any], returned: Any) -> None:
        """Stub::ProcessReturnedResponses: its checks, its messages, then the responses."""
        if returned is None:
            return
        if self.decoupled:
            raise _BackendError(
                f"Python model '{self.instance_name}' is using the decoupled mode and the "
                "execute function must return None."
            )
        if not isinstance(returned, list):
            raise _BackendError(
                f"Expected a list in the execute return, found type '{type(returned)}'."
            )
        if len(returned) != len(requests):
            raise _BackendError(
                "Number of InferenceResponse objects do not match the number of "
                f"InferenceRequest objects. InferenceRequest(s) size is:{len(requests)}, and "
                f"InferenceResponse(s) size is:{len(returned)}\n"
            )
        for request, response in zip(requests, returned, strict=True):
            if response is None:
                continue
            if request._release_flags == mock.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
                raise _BackendError(
                    "Expected a None object in the execute function return list for "
                    f"reschduled request, found type '{type(response)}'."
                )
            if not isinstance(response, mock.InferenceResponse):
                raise _BackendError(
                    "Expected an 'InferenceResponse' object in the execute function return "
                    f"list, found type '{type(response)}'."
                )
            try:
                request._sender._update_state(response, mock.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except mock.TritonModelException as exc:
                raise _BackendError(str(exc)) from None
        for request, response in zip(requests, returned, strict=True):
            if response is not None:
                request._sender._deliver(response, mock.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _fail_batch(self, requests: Sequence[Any], error_string: str) -> None:
        """Every request not yet complete gets the error; a complete one keeps its response."""
        message = (
            f"Failed to process the request(s) for model '{self.instance_name}', message: "
            f"{error_string}"
        )
        self.server_log.append(message)
        error = mock.TritonError(message, mock.TritonError.INTERNAL)
        for index, request in enumerate(requests):
            sender = request._sender
            partial = any(not d.final for d in sender._deliveries)
            if sender._fail(error) and partial and not self.decoupled:
                raise ProtocolViolation(
                    f"request {index} was sent a response without COMPLETE_FINAL, then the "
                    f"batch failed ({message!r}): the real server sends two responses to a "
                    "non-decoupled request, which an HTTP client reads as a corrupt body"
                )

    def _unary(self, index: int, request: Any) -> Result:
        for delivery in request._sender._deliveries:
            if delivery.outputs is not None or delivery.error is not None:
                return Result(
                    outputs=delivery.outputs or {},
                    error=delivery.error,
                    cancelled=request.is_cancelled(),
                )
        if request.is_cancelled():
            return _client_cancellation(on_stream=False)
        raise ProtocolViolation(f"request {index} was completed without any response")

    def _stream(self, request: Any) -> list[Result]:
        results = [
            Result(
                outputs=d.outputs or {},
                error=d.error,
                final=d.final,
                null_response=d.outputs is None and d.error is None,
                cancelled=request.is_cancelled(),
                on_stream=True,
            )
            for d in request._sender._deliveries
        ]
        if request.is_cancelled() and not any(r.final for r in results):
            results.append(_client_cancellation(on_stream=True))
        return results

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The stub's event loop for async execute(): one per instance, on a daemon thread."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True).start()
            self._loop = loop
        return self._loop

    async def _executing(self, coroutine: Any) -> Any:
        """An async execute() on the loop's thread, acting for this instance (Logger, BLS)
        until it ends, as in its own stub."""
        with stub.activate(self.instance, executing=True):
            return await coroutine

    def _run_in_background(self, coroutine: Any) -> None:
        future = asyncio.run_coroutine_threadsafe(self._executing(coroutine), self._event_loop())

        def done(f: Any) -> None:
            exc = f.exception()
            if exc is not None:  # the stub only logs it; the client gets nothing
                self.server_log.append("".join(traceback.format_exception(exc)))

        future.add_done_callback(done)

    def _auto_complete(self, model_class: Any) -> None:
        pb = self.pb_utils
        completed = model_class.auto_complete_config(
            pb.ModelConfig(model_config.to_json(self.config))
        )
        if not isinstance(completed, pb.ModelConfig):
            raise mock.TritonModelException(
                f"auto_complete_config function in model '{self.name}' must return a valid "
                "pb.ModelConfig object."
            )
        self.config = model_config.complete(
            model_config.from_dict(completed.as_dict()), self.model_dir, **self._overrides
        )
        self.decoupled = self.instance.decoupled = self.config.model_transaction_policy.decoupled

    def _import_model(self) -> types.ModuleType:
        """`import <version>.<file>` with only the pure-Python half of pb_utils present."""
        pb = vars(self.pb_utils)
        attached = {name: pb.pop(name) for name in mock.CPP_HALF if name in pb}
        try:
            stem = Path(self.config.default_model_filename or "model.py").stem
            importlib.invalidate_caches()  # model files a test wrote after the last import
            return importlib.import_module(f"{self.version}.{stem}")
        finally:
            pb.update(attached)

    @contextmanager
    def activated(self, *, executing: bool = True) -> Iterator[types.ModuleType]:
        """Run test code as if inside this model's stub, inside execute() by default.

        For unit tests of helpers that use pb_utils (say `serving.tensors`): the mock module is
        importable as `triton_python_backend_utils`, and Logger, metrics and BLS act for this
        model. Yields the mock module.
        """
        with self._context(executing=executing):
            yield self.pb_utils

    @contextmanager
    def _context(self, *, executing: bool = False) -> Iterator[None]:
        """What the model's own stub process would provide, for the duration of one call."""
        with stub.activate(self.instance, executing=executing), self._imports():
            yield

    @contextmanager
    def _imports(self) -> Iterator[None]:
        """sys.path and sys.modules as the model's stub has them; reentrant, undone at the end."""
        if self._import_depth:
            self._import_depth += 1
            try:
                yield
            finally:
                self._import_depth -= 1
            return
        # The stub appends the version dir, the model dir and the backend dir (where the real
        # triton_python_backend_utils.py lies): site-packages come first.
        paths = [str(self.version_dir), str(self.model_dir), str(mock.shipped_module_path().parent)]
        added_paths = [p for p in paths if p not in sys.path]
        sys.path.extend(added_paths)
        previous_pb = sys.modules.get("triton_python_backend_utils")
        sys.modules["triton_python_backend_utils"] = self.pb_utils
        displaced = {n: sys.modules[n] for n in self._own_modules if n in sys.modules}
        sys.modules.update(self._own_modules)
        before = set(sys.modules)
        self._import_depth = 1
        try:
            yield
        finally:
            self._import_depth = 0
            for name in (set(sys.modules) - before) | set(self._own_modules):
                module = sys.modules.get(name)
                if module is not None and self._owns(module):
                    self._own_modules[name] = sys.modules.pop(name)
            sys.modules.update(displaced)
            if previous_pb is None:
                sys.modules.pop("triton_python_backend_utils", None)
            else:
                sys.modules["triton_python_backend_utils"] = previous_pb
            for path in added_paths:
                sys.path.remove(path)

    def _owns(self, module: types.ModuleType) -> bool:
        """A module imported from this model's directory (model.py, its package, helpers)."""
        locations = [getattr(module, "__file__", None)]
        # Packages and namespace packages ("1"); not a package, or an exotic __path__: skip.
        with contextlib.suppress(AttributeError, TypeError):
            locations.extend(module.__path__)
        return any(loc and Path(loc).resolve().is_relative_to(self.model_dir) for loc in locations)


def _client_cancellation(*, on_stream: bool) -> Result:
    """What a tritonclient gRPC client reports once it cancelled (2.51, checked)."""
    error = mock.TritonError("Locally cancelled by application!", mock.TritonError.CANCELLED)
    return Result(error=error, cancelled=True, on_stream=on_stream, client_cancelled=True)


def _inputs_of(request: Any) -> dict[str, np.ndarray]:
    return {t.name(): t._array for t in request._inputs}


def _rows(request: Any) -> int:
    shapes = [t.shape() for t in request._inputs]
    return shapes[0][0] if shapes and shapes[0] else 0


def _as_received(array: np.ndarray) -> np.ndarray:
    """An input as the model gets it: a copy; BYTES as an object array of bytes (str as UTF-8)."""
    array = np.asarray(array)
    if array.dtype.kind in ("O", "S", "U"):
        out = np.empty(array.shape, dtype=np.object_)
        for index, value in np.ndenumerate(array):
            # tritonclient sends bytes as they are and anything else as UTF-8 of str(value)
            out[index] = value if isinstance(value, bytes) else str(value).encode("utf-8")
        return out
    return np.array(array, dtype=array.dtype.newbyteorder("="), copy=True, order="C")
