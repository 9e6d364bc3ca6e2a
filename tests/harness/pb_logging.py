"""pb_utils.Logger as tritonserver 2.51 defines it (pb_stub.cc), recording what was logged.

Only `log`, `log_info`, `log_warn`, `log_error` and `log_verbose` exist (no `log_warning`),
messages must be str (or bytes), levels must be `Logger.LogLevel` values, and the class has no
constructor. What is logged goes to `ModelHarness.logs` for tests to assert on.
"""

from __future__ import annotations

from typing import Any

from tests.harness import stub
from tests.harness.pybind import CPP_MODULE, as_str, incompatible, is_str_like, make_enum

LogLevel = make_enum("LogLevel", {"INFO": 0, "WARNING": 1, "ERROR": 2, "VERBOSE": 3})


class Logger:
    """Static logging methods; each call is one line of the server log."""

    __module__ = CPP_MODULE
    __slots__ = ()
    LogLevel = LogLevel
    # py::enum_(...).export_values() puts the levels on the class too.
    INFO = LogLevel.INFO  # type: ignore[attr-defined]
    WARNING = LogLevel.WARNING  # type: ignore[attr-defined]
    ERROR = LogLevel.ERROR  # type: ignore[attr-defined]
    VERBOSE = LogLevel.VERBOSE  # type: ignore[attr-defined]

    def __init__(self) -> None:
        raise TypeError(f"{CPP_MODULE}.Logger: No constructor defined!")

    @staticmethod
    def log(message: Any, level: Any = LogLevel.INFO) -> None:  # type: ignore[attr-defined]
        if not is_str_like(message) or not isinstance(level, LogLevel):
            raise incompatible("log", message, level)
        stub.log(stub.LogRecord(level.name, as_str(message)))

    @staticmethod
    def log_info(message: Any) -> None:
        _log_at("log_info", message, "INFO")

    @staticmethod
    def log_warn(message: Any) -> None:
        _log_at("log_warn", message, "WARNING")

    @staticmethod
    def log_error(message: Any) -> None:
        _log_at("log_error", message, "ERROR")

    @staticmethod
    def log_verbose(message: Any) -> None:
        _log_at("log_verbose", message, "VERBOSE")


def _log_at(function: str, message: Any, level: str) -> None:
    if not is_str_like(message):
        raise incompatible(function, message)
    stub.log(stub.LogRecord(level, as_str(message)))
