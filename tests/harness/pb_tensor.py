"""pb_utils.Tensor as tritonserver 2.51 defines it (pb_tensor.cc, pb_stub_utils.cc).

Only numpy types Triton has are accepted, compared the way the stub compares them (so '<U'
and big-endian arrays are refused); a non-contiguous array is copied, a contiguous one kept;
BYTES are object (or S) arrays. `triton_dtype()` raises, as it does in 2.51. DLPack works
through torch, as on the server; `from_dlpack` on a numpy array kills the real stub.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.harness.errors import ServerCrash
from tests.harness.pb_errors import TritonModelException
from tests.harness.pybind import CPP_MODULE, as_str, incompatible, is_str_like

_NUMPY_TO_TRITON = [
    (np.bool_, "BOOL"), (np.uint8, "UINT8"), (np.uint16, "UINT16"), (np.uint32, "UINT32"),
    (np.uint64, "UINT64"), (np.int8, "INT8"), (np.int16, "INT16"), (np.int32, "INT32"),
    (np.int64, "INT64"), (np.float16, "FP16"), (np.float32, "FP32"), (np.float64, "FP64"),
]  # fmt: skip


def triton_type_of(dtype: np.dtype) -> str | None:
    """The TRITONSERVER data type of a numpy dtype, by the real stub's comparisons.

    Equality with the numpy scalar types, so a big-endian '>f4' or '<U' array is refused.
    """
    for numpy_type, name in _NUMPY_TO_TRITON:
        if dtype == numpy_type:
            return name
    if dtype == np.object_ or dtype == np.bytes_ or dtype.type == np.bytes_:
        return "BYTES"
    return None


class Tensor:
    """pb_utils.Tensor(name, numpy_array): a named array; BYTES as object (or S) arrays."""

    __module__ = CPP_MODULE
    __slots__ = ("_array", "_name", "_torch", "_type")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs or len(args) != 2 or not is_str_like(args[0]):
            raise incompatible("__init__", *args, **kwargs)
        name, array = as_str(args[0]), args[1]
        if not isinstance(array, np.ndarray):
            raise incompatible("__init__", *args)
        if name == "":
            raise TritonModelException("Tensor name cannot be an empty string.")
        triton_type = triton_type_of(array.dtype)
        if triton_type is None:
            raise TritonModelException("NumPy dtype is not supported.")
        if not array.flags["C_CONTIGUOUS"]:  # copied; a contiguous array is kept as it is
            array = np.ascontiguousarray(array)
        self._name, self._array, self._type, self._torch = name, array, triton_type, None

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        if self._type == "BF16":
            raise TritonModelException(
                "Tensor dtype is BF16 and cannot be converted to NumPy. Use to_dlpack() and "
                "from_dlpack() instead."
            )
        return self._array

    def shape(self) -> list[int]:
        source = self._torch if self._torch is not None else self._array
        return [int(d) for d in source.shape]

    def is_cpu(self) -> bool:
        return True

    def triton_dtype(self) -> Any:
        # 2.51 binds TritonDtype() without registering its enum: every call fails.
        raise TypeError(
            "Unable to convert function return value to a Python type! The signature was\n"
            "\t(self: c_python_backend_utils.Tensor) -> TRITONSERVER_datatype_enum"
        )

    def to_dlpack(self) -> Any:
        if self._type == "BYTES":
            raise TritonModelException("DLPack does not have support for string tensors.")
        if self._torch is not None:
            import torch.utils.dlpack

            return torch.utils.dlpack.to_dlpack(self._torch)
        return self._array.__dlpack__()

    def __dlpack__(self, stream: Any = None) -> Any:
        return self.to_dlpack()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU, device 0

    def from_dlpack(name: Any, tensor: Any) -> Tensor:  # bound as a plain function
        """Tensor.from_dlpack(name, x): called on the class, like the real binding."""
        return _from_dlpack(name, tensor)


def _from_dlpack(name: Any, tensor: Any) -> Tensor:
    if not is_str_like(name):
        raise incompatible("from_dlpack", name, tensor)
    name = as_str(name)
    if name == "":
        raise TritonModelException("Tensor name cannot be an empty string.")
    is_capsule = type(tensor).__name__ == "PyCapsule"
    if not is_capsule and not (
        hasattr(tensor, "__dlpack__") and hasattr(tensor, "__dlpack_device__")
    ):
        raise TritonModelException(
            "Provided tensor is not supported. Tensor must be a DLPack capsule         or have "
            "`__dlpack__` and `__dlpack_device__` attributes"
        )
    if isinstance(tensor, np.ndarray):
        raise ServerCrash(
            "Tensor.from_dlpack() on a numpy array kills the 2.51 stub (every later request: "
            "\"Stub process '<model>_0_0' is not healthy\"); use pb_utils.Tensor(name, array)"
        )
    if not is_capsule:
        device = int(tensor.__dlpack_device__()[0])
        if device == 2:
            raise TritonModelException(
                "DLPack capsule passed pointer to memory allocated on GPU device, when GPU is "
                "not available (the harness runs on CPU)"
            )
        if device not in (1, 3):
            raise TritonModelException(f"DLDevice type {device} is not support by Python backend.")
    import torch
    import torch.utils.dlpack

    source = torch.utils.dlpack.from_dlpack(tensor)
    if not source.is_contiguous():
        raise TritonModelException(
            "DLPack tensor is not contiguous. Only contiguous DLPack tensors that are stored "
            "in C-Order are supported."
        )
    result = object.__new__(Tensor)
    if source.dtype == torch.bfloat16:
        result._name, result._type, result._torch = name, "BF16", source
        result._array = np.empty(0, dtype=np.float32)
    else:
        result._name, result._torch, result._array = name, None, source.numpy()
        result._type = triton_type_of(result._array.dtype) or "BYTES"
    return result
