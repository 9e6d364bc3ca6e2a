"""How pybind11 objects behave from Python, for the classes the real module defines in C++.

The real `TritonError.INVALID_ARG`, `Logger.INFO` and `MetricFamily.COUNTER` are `py::enum_`
values: not ints (a constructor given `3` raises TypeError) yet equal to their int and hashable
like it. Plain `enum.IntEnum` would accept arithmetic and `TritonError("x", 3)`; these do not.
"""

from __future__ import annotations

from typing import Any, ClassVar

# The module the real classes report (repr, error messages): `c_python_backend_utils.Tensor`.
CPP_MODULE = "c_python_backend_utils"


class PybindEnum:
    """One value of a pybind11 enum (no arithmetic, equal to its int, repr `<Type.NAME: 1>`)."""

    __slots__ = ("_name", "_value")
    __members__: ClassVar[dict[str, PybindEnum]]

    def __init__(self, name: str, value: int) -> None:
        self._name = name
        self._value = value

    @property
    def name(self) -> str:
        return self._name

    @property
    def value(self) -> int:
        return self._value

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def __eq__(self, other: object) -> bool:
        if type(other) is type(self):
            return self._value == other._value  # type: ignore[attr-defined]
        if isinstance(other, int):
            return self._value == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self._name}: {self._value}>"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self._name}"


def make_enum(type_name: str, members: dict[str, int]) -> type[PybindEnum]:
    """A pybind11-like enum type; its values are attributes and in `__members__`."""
    cls = type(type_name, (PybindEnum,), {"__slots__": (), "__module__": CPP_MODULE})
    values = {name: cls(name, value) for name, value in members.items()}
    for name, value in values.items():
        setattr(cls, name, value)
    cls.__members__ = values
    return cls


def incompatible(function: str, *args: Any, **kwargs: Any) -> TypeError:
    """The TypeError pybind11 raises when no overload accepts the arguments."""
    shown = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
    return TypeError(
        f"{function}(): incompatible function arguments. Invoked with: {shown}"
        " (mirrors pybind11: the real module accepts only the documented types)"
    )


def cpp_type_name(cls: type) -> str:
    """The name pybind11 prints for an exception type: CPython's `tp_name`.

    Classes defined in Python (heap types) report their bare name (`ValueError`, `Custom`,
    `TritonModelException`); static C types outside builtins report `module.Name`.
    """
    heap_type = bool(cls.__flags__ & (1 << 9))  # Py_TPFLAGS_HEAPTYPE
    if heap_type or cls.__module__ == "builtins":
        return cls.__name__
    return f"{cls.__module__}.{cls.__name__}"


def is_str_like(value: object) -> bool:
    """What pybind11 accepts for a `std::string` argument: str, and bytes as raw bytes."""
    return isinstance(value, str | bytes)


def as_str(value: str | bytes) -> str:
    return value.decode("utf-8", errors="surrogateescape") if isinstance(value, bytes) else value
