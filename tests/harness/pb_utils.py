"""The `triton_python_backend_utils` module for tests, as strict as the real one.

The real module is two halves: `triton_python_backend_utils.py` shipped with the Python backend
(pure Python: BYTES serialisation, `get_input_tensor_by_name`, config helpers, constants), and
classes defined in C++ (pb_stub.cc, pb_tensor.cc, infer_request.cc, infer_response.cc,
response_sender.cc) that the stub copies onto the module at start-up. `build_module()` does the
same: it executes the shipped .py from the installed Python backend, unchanged, and adds the
classes below. There is no MagicMock: what the real module lacks (say `Logger.log_warning`) is
an AttributeError here too.
"""

from __future__ import annotations

import enum
import json
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


def shipped_module_path() -> Path:
    """The pure-Python half of pb_utils, as installed with the server (nvidia-pytriton)."""
    import pytriton

    path = (
        Path(pytriton.__file__).parent
        / "tritonserver/backends/python/triton_python_backend_utils.py"
    )
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is nvidia-pytriton installed?")
    return path


class TritonModelException(Exception):
    """Raised by the real module for misuse of its API (as in pb_stub.cc)."""


class TritonError:
    """An error carried by a response; not an exception (as in the real module)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        if code not in CODE_NAMES:
            raise TritonModelException(f"unknown TritonError code {code!r}")
        self._message = message
        self._code = code

    def code(self) -> int:
        return self._code

    def message(self) -> str:
        return self._message

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, {CODE_NAMES[self._code]})"


CODE_NAMES = {
    value: name
    for name, value in vars(TritonError).items()
    if name.isupper() and isinstance(value, int)
}

_ACCEPTED_KINDS = {"b", "i", "u", "f", "O", "S"}


class Tensor:
    """pb_utils.Tensor: a named numpy array, with the real constructor's checks."""

    def __init__(self, name: str, array: np.ndarray) -> None:
        if not isinstance(name, str) or name == "":
            raise TritonModelException("Tensor name cannot be an empty string.")
        if not isinstance(array, np.ndarray):
            raise TritonModelException("Tensor must be constructed from a numpy array.")
        if array.dtype.kind not in _ACCEPTED_KINDS or (
            array.dtype.kind == "f" and array.dtype.itemsize > 8
        ):
            raise TritonModelException("NumPy dtype is not supported.")
        self._name = name
        self._array = np.ascontiguousarray(array)  # the real one copies non-contiguous arrays

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True

    def triton_dtype(self) -> int:
        return _TRITON_DTYPE_CODES[_triton_type_name(self._array.dtype)]

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={self.shape()}, dtype={self._array.dtype})"


# TRITONSERVER_DataType values (tritonserver.h).
_TRITON_DTYPE_CODES = {
    "BOOL": 1, "UINT8": 2, "UINT16": 3, "UINT32": 4, "UINT64": 5, "INT8": 6, "INT16": 7,
    "INT32": 8, "INT64": 9, "FP16": 10, "FP32": 11, "FP64": 12, "BYTES": 13, "BF16": 14,
}  # fmt: skip


def _triton_type_name(dtype: np.dtype) -> str:
    if dtype.kind in ("O", "S"):
        return "BYTES"
    names = {
        np.bool_: "BOOL", np.uint8: "UINT8", np.uint16: "UINT16", np.uint32: "UINT32",
        np.uint64: "UINT64", np.int8: "INT8", np.int16: "INT16", np.int32: "INT32",
        np.int64: "INT64", np.float16: "FP16", np.float32: "FP32", np.float64: "FP64",
    }  # fmt: skip
    return names[dtype.type]


class InferenceResponse:
    """pb_utils.InferenceResponse: output tensors or an error, never reused across requests."""

    def __init__(
        self,
        output_tensors: Sequence[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        tensors = list(output_tensors or [])
        for tensor in tensors:
            if not isinstance(tensor, Tensor):
                raise TritonModelException(
                    f"output_tensors must hold pb_utils.Tensor objects, got {type(tensor).__name__}"
                )
        if error is not None and not isinstance(error, TritonError):
            raise TritonModelException("error must be a pb_utils.TritonError")
        self._tensors = tensors
        self._error = error
        self._parameters = (
            parameters if isinstance(parameters, str) else json.dumps(parameters or {})
        )

    def output_tensors(self) -> list[Tensor]:
        return self._tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return self._parameters


class InferenceResponseSender:
    """The sender of one request: the real rules for flags, counts and closing."""

    def __init__(self, decoupled: bool) -> None:
        self._decoupled = decoupled
        self._closed = False
        self.sent: list[tuple[InferenceResponse | None, int]] = []
        self.cancelled = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        if flags not in (0, TRITONSERVER_RESPONSE_COMPLETE_FINAL):
            raise TritonModelException(
                "Unable to send response. Unsupported flag provided: " + str(flags)
            )
        if flags == 0 and response is None:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is set to zero"
            )
        if not self._decoupled:
            if flags != TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                raise TritonModelException(
                    "Non-decoupled model must send the response with the "
                    "TRITONSERVER_RESPONSE_COMPLETE_FINAL flag"
                )
            if self.sent:
                raise TritonModelException("Non-decoupled model cannot send more than one response")
        if response is not None and any(r is response for r, _ in self.sent):
            raise TritonModelException("The same response object cannot be sent twice")
        self.sent.append((response, flags))
        if flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self._closed = True

    def is_cancelled(self) -> bool:
        return self.cancelled

    @property
    def closed(self) -> bool:
        return self._closed


class InferenceRequest:
    """An inference request as `execute()` receives it (BLS execution is not simulated)."""

    def __init__(
        self,
        inputs: Sequence[Tensor],
        request_id: str = "",
        correlation_id: int | str = 0,
        requested_output_names: Sequence[str] = (),
        flags: int = 0,
        timeout: int = 0,
        parameters: dict[str, Any] | None = None,
        *,
        decoupled: bool = False,
    ) -> None:
        self._inputs = list(inputs)
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._requested = list(requested_output_names)
        self._flags = flags
        self._timeout = timeout
        self._parameters = json.dumps(parameters or {})
        self._sender = InferenceResponseSender(decoupled)
        self.release_flags = TRITONSERVER_REQUEST_RELEASE_ALL

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return self._parameters

    def requested_output_names(self) -> list[str]:
        return self._requested

    def get_response_sender(self) -> InferenceResponseSender:
        return self._sender

    def is_cancelled(self) -> bool:
        return self._sender.cancelled

    def set_release_flags(self, flags: int) -> None:
        self.release_flags = flags

    def cancel(self) -> None:
        """Test helper (not in the real API): the client cancels this request."""
        self._sender.cancelled = True

    def exec(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the harness does not run BLS requests; test those on the server")

    async_exec = exec


class Logger:
    """pb_utils.Logger: static logging methods; what was logged is kept in `records`."""

    class LogLevel(enum.Enum):
        INFO = 0
        WARNING = 1
        ERROR = 2
        VERBOSE = 3

    records: ClassVar[list[tuple[str, str]]] = []

    @staticmethod
    def log(message: str, level: LogLevel = LogLevel.INFO) -> None:
        Logger.records.append((level.name, str(message)))

    @staticmethod
    def log_info(message: str) -> None:
        Logger.log(message, Logger.LogLevel.INFO)

    @staticmethod
    def log_warn(message: str) -> None:
        Logger.log(message, Logger.LogLevel.WARNING)

    @staticmethod
    def log_error(message: str) -> None:
        Logger.log(message, Logger.LogLevel.ERROR)

    @staticmethod
    def log_verbose(message: str) -> None:
        Logger.log(message, Logger.LogLevel.VERBOSE)


class Metric:
    """One labelled series of a MetricFamily, with the real kind rules."""

    def __init__(
        self, family: MetricFamily, labels: dict[str, str], buckets: list[float] | None
    ) -> None:
        self._family = family
        self.labels = labels
        self._value = 0.0
        self.buckets = buckets
        self.observations: list[float] = []

    def increment(self, value: float) -> None:
        if self._family.kind == MetricFamily.HISTOGRAM:
            raise TritonModelException("increment is not supported for histograms")
        if self._family.kind == MetricFamily.COUNTER and value < 0:
            raise TritonModelException("a counter cannot be incremented by a negative value")
        self._value += value

    def set(self, value: float) -> None:
        if self._family.kind != MetricFamily.GAUGE:
            raise TritonModelException("set is only supported for gauges")
        self._value = value

    def observe(self, value: float) -> None:
        if self._family.kind != MetricFamily.HISTOGRAM:
            raise TritonModelException("observe is only supported for histograms")
        self.observations.append(value)

    def value(self) -> float:
        if self._family.kind == MetricFamily.HISTOGRAM:
            raise TritonModelException("value is not supported for histograms")
        return self._value


class MetricFamily:
    """pb_utils.MetricFamily(name, description, kind)."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2
    families: ClassVar[dict[str, MetricFamily]] = {}

    def __init__(self, name: str, description: str, kind: int) -> None:
        if kind not in (self.COUNTER, self.GAUGE, self.HISTOGRAM):
            raise TritonModelException(f"unknown metric kind {kind!r}")
        self.name, self.description, self.kind = name, description, kind
        self.metrics: list[Metric] = []
        MetricFamily.families[name] = self

    def Metric(
        self, labels: dict[str, str] | None = None, buckets: list[float] | None = None
    ) -> Metric:
        if self.kind == self.HISTOGRAM and not buckets:
            raise TritonModelException("histogram metrics need buckets")
        metric = Metric(self, dict(labels or {}), buckets)
        self.metrics.append(metric)
        return metric


TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1

_CPP_PART = {
    "TritonError": TritonError,
    "TritonModelException": TritonModelException,
    "Tensor": Tensor,
    "InferenceRequest": InferenceRequest,
    "InferenceResponse": InferenceResponse,
    "InferenceResponseSender": InferenceResponseSender,
    "Logger": Logger,
    "MetricFamily": MetricFamily,
}


CPP_NAMES = tuple(_CPP_PART)


def build_module() -> types.ModuleType:
    """A fresh `triton_python_backend_utils`: the shipped .py plus the C++ half above."""
    module = types.ModuleType("triton_python_backend_utils")
    path = shipped_module_path()
    module.__file__ = str(path)
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), module.__dict__)
    vars(module).update(_CPP_PART)
    Logger.records = []
    MetricFamily.families = {}
    return module
