"""The errors of pb_utils as tritonserver 2.51 defines them in C++ (pb_stub.cc).

TritonError is carried by a response, not raised; its codes are pybind11 enum values, so
`TritonError("x", 3)` is a TypeError as in the real module. TritonModelException is what the
real module raises when its C++ API is misused.
"""

from __future__ import annotations

from typing import Any

from tests.harness.pybind import CPP_MODULE, as_str, incompatible, is_str_like, make_enum


class TritonModelException(Exception):
    """What the real module raises for misuse of its C++ API (PythonBackendException)."""

    __module__ = CPP_MODULE


ErrorCode = make_enum(
    "__ErrorCode",
    {
        "UNKNOWN": 0,
        "INTERNAL": 1,
        "NOT_FOUND": 2,
        "INVALID_ARG": 3,
        "UNAVAILABLE": 4,
        "UNSUPPORTED": 5,
        "ALREADY_EXISTS": 6,
        "CANCELLED": 7,
    },
)


class TritonError:
    """An error carried by a response; not an exception (raising it is a TypeError)."""

    __module__ = CPP_MODULE
    __slots__ = ("_code", "_message")
    UNKNOWN = ErrorCode.UNKNOWN  # type: ignore[attr-defined]
    INTERNAL = ErrorCode.INTERNAL  # type: ignore[attr-defined]
    NOT_FOUND = ErrorCode.NOT_FOUND  # type: ignore[attr-defined]
    INVALID_ARG = ErrorCode.INVALID_ARG  # type: ignore[attr-defined]
    UNAVAILABLE = ErrorCode.UNAVAILABLE  # type: ignore[attr-defined]
    UNSUPPORTED = ErrorCode.UNSUPPORTED  # type: ignore[attr-defined]
    ALREADY_EXISTS = ErrorCode.ALREADY_EXISTS  # type: ignore[attr-defined]
    CANCELLED = ErrorCode.CANCELLED  # type: ignore[attr-defined]

    def __init__(self, message: Any, code: Any = ErrorCode.INTERNAL) -> None:  # type: ignore[attr-defined]
        # pybind11: the code must be the enum value, an int (even 3) is refused.
        if not is_str_like(message) or not isinstance(code, ErrorCode):
            raise incompatible("__init__", message, code)
        self._message = as_str(message)
        self._code = code

    def code(self) -> Any:
        return self._code

    def message(self) -> str:
        return self._message
