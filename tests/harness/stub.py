"""The state the real Python backend stub holds for the model instance it runs.

In tritonserver each model instance has its own stub process, so `Logger`, metrics errors and
`get_model_dir()` always know which instance they belong to. The harness runs several models
in one process, so `ModelHarness` activates its `Instance` around every call into the model;
a background thread the model started after that call uses the instance activated last.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple


class LogRecord(NamedTuple):
    """One `pb_utils.Logger` call: level name (INFO, WARNING, ERROR, VERBOSE) and message."""

    level: str
    message: str


@dataclass
class Instance:
    """One model instance as its stub sees it."""

    model_name: str
    instance_name: str  # e.g. "contract_0_0": what the server puts in its error messages
    version_dir: Path  # what pb_utils.get_model_dir() returns
    decoupled: bool
    logs: list[LogRecord] = field(default_factory=list)
    server_log: list[str] = field(default_factory=list)  # what the stub logs as errors
    # Other models a BLS request may reach: name -> handler(request) -> response(s).
    bls_models: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    in_execute: bool = False


_lock = threading.RLock()
_active: list[Instance] = []
_last: Instance | None = None
# Everything logged through pb_utils.Logger in this process, as the server log holds it.
all_logs: list[LogRecord] = []


@contextmanager
def activate(instance: Instance, *, executing: bool = False) -> Iterator[Instance]:
    """Make `instance` the one the mock module acts for, for the duration of a call."""
    global _last
    with _lock:
        _active.append(instance)
        _last = instance
    previous = instance.in_execute
    instance.in_execute = executing or previous
    try:
        yield instance
    finally:
        instance.in_execute = previous
        with _lock:
            _active.remove(instance)


def current() -> Instance:
    """The instance being called, else the last one called (background threads)."""
    with _lock:
        if _active:
            return _active[-1]
        if _last is not None:
            return _last
    raise RuntimeError(
        "no model instance is active: pb_utils is only usable from a model loaded by "
        "tests.harness.runner.ModelHarness (as inside tritonserver's stub)"
    )


def log(record: LogRecord) -> None:
    all_logs.append(record)
    with _lock:
        instance = _active[-1] if _active else _last
    if instance is not None:
        instance.logs.append(record)
