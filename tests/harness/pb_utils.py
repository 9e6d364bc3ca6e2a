"""`triton_python_backend_utils` for tests, as strict as tritonserver 2.51's (r24.10).

The real module has two halves. Its pure-Python half (BYTES serialisation, the *_by_name
helpers, ModelConfig, constants) ships with the Python backend: `build_module()` executes that
file, unchanged, from the installed nvidia-pytriton. The other half is defined in C++
(pb_stub.cc, pb_tensor.cc, infer_request.cc, infer_response.cc, response_sender.cc) and copied
onto the module by the stub after it has imported model.py. pb_errors, pb_tensor, pb_requests,
pb_logging and pb_metrics provide that half, with the same rules and messages (checked against
a real server by tests/test_harness_contract.py); this module assembles the two.

There is no MagicMock: what the real module lacks fails here too (`Logger.log_warning`,
`InferenceResponse(parameters=...)` and `.parameters()`, which 2.51 does not have,
`pb_utils.InferenceResponseSender`). `Tensor.triton_dtype()` raises TypeError, as it does in
2.51. Test-only controls live on `tests.harness.runner.ModelHarness`, never on these objects.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.harness import stub
from tests.harness.pb_errors import ErrorCode, TritonError, TritonModelException
from tests.harness.pb_logging import Logger
from tests.harness.pb_metrics import MetricFamily
from tests.harness.pb_requests import (
    TRITONSERVER_REQUEST_RELEASE_ALL,
    TRITONSERVER_REQUEST_RELEASE_RESCHEDULE,
    TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    InferenceRequest,
    InferenceResponse,
    InferenceResponseSender,
    MemoryType,
    PreferredMemory,
    ResponseIterator,
    bls_response,
    cancel,
    server_request,
)
from tests.harness.pb_tensor import Tensor
from tests.harness.pybind import as_str, incompatible, is_str_like

__all__ = [
    "CPP_HALF",
    "TRITONSERVER_REQUEST_RELEASE_ALL",
    "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "ErrorCode",
    "InferenceRequest",
    "InferenceResponse",
    "InferenceResponseSender",
    "Logger",
    "MetricFamily",
    "ResponseIterator",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "bls_response",
    "build_module",
    "cancel",
    "module",
    "server_request",
    "shipped_module_path",
]


def shipped_module_path() -> Path:
    """The pure-Python half of pb_utils as installed with the server (nvidia-pytriton)."""
    import pytriton

    path = (
        Path(pytriton.__file__).parent
        / "tritonserver/backends/python/triton_python_backend_utils.py"
    )
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is nvidia-pytriton installed?")
    return path


def get_model_dir() -> str:
    return str(stub.current().version_dir)


def is_model_ready(model_name: Any, model_version: Any = "") -> bool:
    if not is_str_like(model_name) or not is_str_like(model_version):
        raise incompatible("is_model_ready", model_name, model_version)
    instance = stub.current()
    return as_str(model_name) in (instance.model_name, *instance.bls_models)


def _model_control(action: str) -> Callable[..., None]:
    def control(model_name: Any, *args: Any, **kwargs: Any) -> None:
        if not is_str_like(model_name):
            raise incompatible(action.replace(" ", "_"), model_name, *args)
        instance = stub.current().instance_name
        raise TritonModelException(
            f"Failed to {action}: Failed to process the request for model '{instance}', "
            f"message: the harness has no model repository to {action} '{as_str(model_name)}' "
            "from; test model control against a real server"
        )

    return control


load_model = _model_control("load model")
unload_model = _model_control("unload model")

# What the stub copies onto the module after importing model.py (pb_stub.cc: StubSetup and
# Initialize). A model that uses one of these at import time fails on the real server too.
CPP_HALF: dict[str, Any] = {
    "TritonError": TritonError,
    "TritonModelException": TritonModelException,
    "Tensor": Tensor,
    "InferenceRequest": InferenceRequest,
    "InferenceResponse": InferenceResponse,
    "Logger": Logger,
    "PreferredMemory": PreferredMemory,
    "TRITONSERVER_MEMORY_GPU": MemoryType.TRITONSERVER_MEMORY_GPU,  # type: ignore[attr-defined]
    "TRITONSERVER_MEMORY_CPU": MemoryType.TRITONSERVER_MEMORY_CPU,  # type: ignore[attr-defined]
    "MetricFamily": MetricFamily,
    "load_model": load_model,
    "unload_model": unload_model,
    "is_model_ready": is_model_ready,
    "get_model_dir": get_model_dir,
}


_module: types.ModuleType | None = None


def module() -> types.ModuleType:
    """The process's one mock module (a stub process has one): built on first use."""
    global _module
    if _module is None:
        _module = build_module()
    return _module


def build_module() -> types.ModuleType:
    """A fresh `triton_python_backend_utils`: the shipped .py, then the C++ half."""
    module = types.ModuleType("triton_python_backend_utils")
    path = shipped_module_path()
    module.__file__ = str(path)
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), module.__dict__)
    vars(module).update(CPP_HALF)
    return module
