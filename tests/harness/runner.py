"""Load a model directory the way tritonserver does and drive `execute()` like the server.

What the server does around `execute()` is mirrored, because a unit test that skips it passes
code that fails in production:
  * `initialize(args)` gets the same args dict: every value a string, `model_config` the JSON of
    the model's real `config.pbtxt` parsed through Triton's protobuf schema (with int64 fields as
    numbers, as Triton writes them);
  * the checks the server makes before the model sees a request (unknown input, wrong dtype or
    shape, batch over max_batch_size, missing inputs when no input is optional) raise
    `ServerRejected` here instead of reaching the model;
  * an exception escaping `execute()` fails every request of the batch with INTERNAL and the
    server's message; a wrong number of responses fails them too;
  * unrequested outputs are pruned and BYTES outputs go through the real serialisation.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import time
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from tests.harness import pb_utils as mock

_module: types.ModuleType | None = None
_counter = itertools.count()

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

_NUMPY_FOR_TYPE = {
    "TYPE_BOOL": np.bool_, "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32, "TYPE_UINT64": np.uint64, "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}  # fmt: skip


def pb_utils_module() -> types.ModuleType:
    """The one mock `triton_python_backend_utils` of this process, installed in sys.modules.

    Like the real stub, a process has one such module: `shared.triton` binds it at import.
    """
    global _module
    if _module is None:
        _module = mock.build_module()
    sys.modules["triton_python_backend_utils"] = _module
    return _module


class ServerRejected(Exception):
    """tritonserver itself refuses the request; the model never sees it."""


@dataclass
class Result:
    """What a client receives for one request."""

    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    error: mock.TritonError | None = None
    final: bool = True  # decoupled: whether this response carried COMPLETE_FINAL

    @property
    def code(self) -> str | None:
        return None if self.error is None else mock.CODE_NAMES[self.error.code()]

    @property
    def message(self) -> str | None:
        return None if self.error is None else self.error.message()

    @property
    def http_status(self) -> int:
        return 200 if self.error is None else HTTP_STATUS[self.code]

    def text(self, name: str, row: int = 0) -> str:
        return self.outputs[name].reshape(-1)[row].decode("utf-8")


def _int64_fields_as_numbers(message: Any, data: Any) -> Any:
    """protobuf's JSON writes int64 as strings; Triton's model config JSON has numbers."""
    if isinstance(data, dict):
        for fd in message.DESCRIPTOR.fields:
            name = fd.name
            if name not in data:
                continue
            value = getattr(message, name)
            if fd.type == fd.TYPE_MESSAGE:
                if fd.message_type.GetOptions().map_entry:
                    value_fd = fd.message_type.fields_by_name["value"]
                    if value_fd.type == value_fd.TYPE_MESSAGE:
                        for key in data[name]:
                            _int64_fields_as_numbers(value[key], data[name][key])
                elif fd.label == fd.LABEL_REPEATED:
                    for sub, sub_data in zip(value, data[name], strict=True):
                        _int64_fields_as_numbers(sub, sub_data)
                else:
                    _int64_fields_as_numbers(value, data[name])
            elif fd.type in (fd.TYPE_INT64, fd.TYPE_UINT64, fd.TYPE_SINT64, fd.TYPE_FIXED64):
                data[name] = (
                    [int(v) for v in data[name]]
                    if isinstance(data[name], list)
                    else int(data[name])
                )
    return data


def load_config(
    model_dir: Path, parameters: Mapping[str, str] | None = None
) -> model_config_pb2.ModelConfig:
    config = text_format.Parse(
        (model_dir / "config.pbtxt").read_text(encoding="utf-8"), model_config_pb2.ModelConfig()
    )
    if not config.name:
        config.name = model_dir.name
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    return config


def config_json(config: model_config_pb2.ModelConfig) -> str:
    data = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return json.dumps(_int64_fields_as_numbers(config, data))


class ModelHarness:
    """One model instance under test: `initialize()`, `execute()`, `finalize()` as Triton calls them."""

    def __init__(
        self,
        model_dir: Path,
        *,
        parameters: Mapping[str, str] | None = None,
        instance_kind: str = "CPU",
        device_id: int = 0,
    ) -> None:
        self.model_dir = Path(model_dir).resolve()
        self.config = load_config(self.model_dir, parameters)
        self.name = self.config.name
        self.instance_kind = instance_kind
        self.device_id = device_id
        self.pb_utils = pb_utils_module()
        self.decoupled = self.config.model_transaction_policy.decoupled
        self.model: Any = None

    # --- lifecycle -----------------------------------------------------------------------------

    def args(self) -> dict[str, str]:
        """The `initialize()` argument, as the stub builds it (all values are strings)."""
        return {
            "model_config": config_json(self.config),
            "model_instance_kind": self.instance_kind,
            "model_instance_name": f"{self.name}_0_0",
            "model_instance_device_id": str(self.device_id),
            "model_repository": str(self.model_dir),
            "model_version": "1",
            "model_name": self.name,
        }

    def load(self) -> ModelHarness:
        version_dir = self.model_dir / "1"
        module_name = f"_harness_{self.name}_{next(_counter)}.model"
        spec = importlib.util.spec_from_file_location(module_name, version_dir / "model.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        with _on_sys_path([str(version_dir), str(self.model_dir)]):
            # Triton first imports model.py for auto-complete, when pb_utils has only its
            # pure-Python half: code that touches TritonError & co. at import time fails there.
            with _without_cpp_half(self.pb_utils):
                spec.loader.exec_module(module)
            self.model = module.TritonPythonModel()
            if hasattr(self.model, "initialize"):
                self.model.initialize(self.args())
        return self

    def finalize(self) -> None:
        if self.model is not None and hasattr(self.model, "finalize"):
            self.model.finalize()
        self.model = None

    def __enter__(self) -> ModelHarness:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.finalize()

    # --- requests ------------------------------------------------------------------------------

    def request(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        request_id: str = "",
        parameters: Mapping[str, Any] | None = None,
        requested_outputs: Sequence[str] | None = None,
    ) -> mock.InferenceRequest:
        """Build one request, after the checks the server makes before the model sees it."""
        self._check(inputs)
        outputs = list(requested_outputs or [o.name for o in self.config.output])
        tensors = [mock.Tensor(name, _as_server_array(array)) for name, array in inputs.items()]
        return mock.InferenceRequest(
            tensors,
            request_id=request_id,
            requested_output_names=outputs,
            parameters=dict(parameters or {}),
            decoupled=self.decoupled,
        )

    def execute(
        self, requests: Sequence[mock.InferenceRequest], timeout: float = 60.0
    ) -> list[Any]:
        """Run one batch. Non-decoupled: a Result per request; decoupled: a list of Results each."""
        if not requests:
            return []
        if len(requests) > max(self.config.max_batch_size, 1) and not self.decoupled:
            raise ServerRejected("the dynamic batcher never forms a batch over max_batch_size")
        try:
            returned = self.model.execute(list(requests))
        except Exception as exc:  # the server's handling of an exception out of execute()
            message = (
                f"Failed to process the request(s) for model '{self.name}_0_0', "
                f"message: {type(exc).__name__}: {exc}"
            )
            error = mock.TritonError(message, mock.TritonError.INTERNAL)
            return [
                [Result(error=error)] if self.decoupled else Result(error=error) for _ in requests
            ]
        if self.decoupled:
            if returned is not None:
                raise AssertionError("a decoupled model's execute() must return None")
            return [self._collect_stream(r, timeout) for r in requests]
        return self._non_decoupled(requests, returned)

    def infer(self, inputs: Mapping[str, np.ndarray], **kwargs: Any) -> Any:
        """One request alone in its batch."""
        return self.execute([self.request(inputs, **kwargs)])[0]

    # --- internals -----------------------------------------------------------------------------

    def _non_decoupled(
        self, requests: Sequence[mock.InferenceRequest], returned: Any
    ) -> list[Result]:
        if not isinstance(returned, list) or len(returned) != len(requests):
            got = len(returned) if isinstance(returned, list) else type(returned).__name__
            error = mock.TritonError(
                f"Failed to process the request(s) for model '{self.name}_0_0', message: "
                f"Expected {len(requests)} responses, got {got}",
                mock.TritonError.INTERNAL,
            )
            return [Result(error=error) for _ in requests]
        seen: set[int] = set()
        results = []
        for request, response in zip(requests, returned, strict=True):
            if response is None:  # the model answered through the response sender
                sent = request.get_response_sender().sent
                response = sent[0][0] if sent else None
            if response is None:
                raise AssertionError("execute() returned None for a request it never answered")
            if id(response) in seen:
                raise AssertionError("one InferenceResponse object was returned for two requests")
            seen.add(id(response))
            results.append(self._result(request, response))
        return results

    def _collect_stream(self, request: mock.InferenceRequest, timeout: float) -> list[Result]:
        sender = request.get_response_sender()
        deadline = time.monotonic() + timeout
        while not sender.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        if not sender.closed:
            raise AssertionError(
                f"no COMPLETE_FINAL sent within {timeout} s: the client would hang"
            )
        results = []
        for response, flags in sender.sent:
            final = flags == mock.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            if response is None:
                results.append(Result(final=final))
            else:
                result = self._result(request, response)
                result.final = final
                results.append(result)
        return results

    def _result(self, request: mock.InferenceRequest, response: mock.InferenceResponse) -> Result:
        if response.has_error():
            return Result(error=response.error())
        wanted = set(request.requested_output_names())
        outputs = {}
        for tensor in response.output_tensors():
            if tensor.name() not in wanted:
                continue  # pruned by the server
            array = tensor.as_numpy()
            if array.dtype.kind in ("O", "S"):  # what crosses the wire and reaches the client
                raw = self.pb_utils.serialize_byte_tensor(array)
                array = self.pb_utils.deserialize_bytes_tensor(raw).reshape(array.shape)
            outputs[tensor.name()] = array
        return Result(outputs=outputs)

    def _check(self, inputs: Mapping[str, np.ndarray]) -> None:
        declared = {i.name: i for i in self.config.input}
        batching = self.config.max_batch_size > 0
        for name, array in inputs.items():
            if name not in declared:
                raise ServerRejected(f"unexpected inference input '{name}' for model '{self.name}'")
            spec = declared[name]
            data_type = model_config_pb2.DataType.Name(spec.data_type)
            expected = _NUMPY_FOR_TYPE[data_type]
            array = np.asarray(array)
            ok = (
                array.dtype.kind in ("O", "S")
                if expected is np.object_
                else array.dtype == expected
            )
            if not ok:
                raise ServerRejected(
                    f"inference input '{name}' data-type is '{array.dtype}', but model "
                    f"'{self.name}' expects '{data_type}'"
                )
            shape = list(array.shape)
            if batching:
                if not shape or not 1 <= shape[0] <= self.config.max_batch_size:
                    raise ServerRejected(
                        f"inference request batch-size must be <= {self.config.max_batch_size} "
                        f"for '{self.name}'"
                    )
                shape = shape[1:]
            dims = list(spec.dims)
            if len(shape) != len(dims) or any(
                d != -1 and d != s for d, s in zip(dims, shape, strict=False)
            ):
                raise ServerRejected(f"unexpected shape for input '{name}' for model '{self.name}'")
        if batching and len({np.asarray(a).shape[0] for a in inputs.values()}) > 1:
            raise ServerRejected("inputs of one request must have the same batch size")
        required = [i.name for i in self.config.input if not i.optional]
        missing = [n for n in required if n not in inputs]
        # Checked on 2.51: with any optional input in the config, the server lets a request
        # without a required input through to execute(); without one, it refuses it.
        if missing and not any(i.optional for i in self.config.input):
            raise ServerRejected(f"expected {len(required)} inputs but got {len(inputs)} inputs")


def _as_server_array(array: np.ndarray) -> np.ndarray:
    """BYTES arrive as object arrays of bytes, whatever the client sent (str included)."""
    array = np.asarray(array)
    if array.dtype.kind in ("O", "S", "U"):
        out = np.empty(array.shape, dtype=np.object_)
        for index, value in np.ndenumerate(array):
            out[index] = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return out
    return array


@contextmanager
def _without_cpp_half(module: types.ModuleType) -> Iterator[None]:
    saved = {name: getattr(module, name) for name in mock.CPP_NAMES if hasattr(module, name)}
    for name in saved:
        delattr(module, name)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


@contextmanager
def _on_sys_path(paths: list[str]) -> Iterator[None]:
    sys.path[:0] = paths
    try:
        yield
    finally:
        for path in paths:
            sys.path.remove(path)
