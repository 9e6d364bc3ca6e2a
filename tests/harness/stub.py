"""The state the real Python backend stub holds for the model instance it runs.

In tritonserver each model instance has its own stub process, so `Logger`, metrics errors and
`get_model_dir()` always know which instance they belong to. The harness runs several models
in one process, so `ModelHarness` activates its `Instance` around every call into the model,
per thread (a model's BLS call runs another model's execute() on a thread of its own). A
thread started while an instance is active belongs to that instance, as a thread a model
starts stays in its stub process (threads it starts belong to it too); any other thread
uses the instance activated last.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple


class LogRecord(NamedTuple):
    """One `pb_utils.Logger` call: level name (INFO, WARNING, ERROR, VERBOSE) and message."""

    level: str
    message: str


class StubToParentQueue:
    """The stub's stub-to-parent message queue, as far as BLS streams need it.

    One thread sends its messages in order. A decoupled BLS stream read to its end queues a
    cleanup; sending it erases the stub's own reference to the stream. A cancellation check
    (`is_cancelled()` not answered from its cache) queues a message and waits for its answer,
    so every message queued before it has been sent by then. The harness sends nothing else
    on its own: a cleanup counts as sent only once a later check has come back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued = 0
        self._sent = 0

    def queue_cleanup(self) -> int:
        """Queue a stream's cleanup; its place in the queue."""
        with self._lock:
            self._queued += 1
            return self._queued

    def round_trip(self) -> None:
        """A cancellation check came back: everything queued before it was sent."""
        with self._lock:
            self._queued += 1
            self._sent = self._queued

    def sent(self, place: int) -> bool:
        with self._lock:
            return place <= self._sent


@dataclass
class Instance:
    """One model instance as its stub sees it."""

    model_name: str
    instance_name: str  # e.g. "contract_0_0": what the server puts in its error messages
    version_dir: Path  # what pb_utils.get_model_dir() returns
    decoupled: bool
    logs: list[LogRecord] = field(default_factory=list)
    server_log: list[str] = field(default_factory=list)  # what the stub logs as errors
    # Other models a BLS request may reach: name -> a ModelHarness whose model answers it
    # (ModelHarness.serve_bls), or a handler(request) -> response(s).
    bls_models: dict[str, Any] = field(default_factory=dict)
    executing: int = 0  # execute() calls (and async execute() coroutines) under way
    serving: bool = False  # initialize() has returned and finalize() has not begun
    # What would have killed the real stub, raised on any of its threads (a ServerCrash raised
    # on a worker thread may be swallowed there; the runner raises it to the test).
    crashes: list[BaseException] = field(default_factory=list)
    stub_to_parent: StubToParentQueue = field(default_factory=StubToParentQueue)

    @property
    def bls_allowed(self) -> bool:
        """BLS is allowed, as InferRequest::Exec checks it: the stub is initialized and not
        finalizing. Not only inside execute(): a thread the model started may call too."""
        return self.serving


_lock = threading.RLock()
_local = threading.local()  # .active: the instances activated on this thread, innermost last
_last: Instance | None = None
# Everything logged through pb_utils.Logger in this process, as the server log holds it.
all_logs: list[LogRecord] = []


@contextmanager
def activate(instance: Instance, *, executing: bool = False) -> Iterator[Instance]:
    """Make `instance` the one the mock module acts for, for the duration of a call."""
    global _last
    active = _active()
    with _lock:
        active.append(instance)
        _last = instance
        instance.executing += executing
    try:
        yield instance
    finally:
        with _lock:
            instance.executing -= executing
            active.remove(instance)


def _active() -> list[Instance]:
    if not hasattr(_local, "active"):
        _local.active = []
    active: list[Instance] = _local.active
    return active


def _own() -> Instance | None:
    """The instance this thread acts for: the innermost activated here, else its starter's."""
    active = _active()
    with _lock:
        return active[-1] if active else _started_by.get(threading.current_thread())


def current_or_none() -> Instance | None:
    """The instance being called on this thread (or that started it), else the last one
    called, else None."""
    own = _own()
    with _lock:
        return own if own is not None else _last


_started_by: weakref.WeakKeyDictionary[threading.Thread, Instance] = weakref.WeakKeyDictionary()
_thread_start = threading.Thread.start


def _start(thread: threading.Thread) -> None:
    """threading.Thread.start, noting the instance the new thread belongs to."""
    owner = _own()
    if owner is not None:
        with _lock:
            _started_by[thread] = owner
    _thread_start(thread)


threading.Thread.start = _start  # type: ignore[method-assign]


def current() -> Instance:
    """The instance being called, else the last one called (background threads)."""
    instance = current_or_none()
    if instance is not None:
        return instance
    raise RuntimeError(
        "no model instance is active: pb_utils is only usable from a model loaded by "
        "tests.harness.runner.ModelHarness (as inside tritonserver's stub)"
    )


def log(record: LogRecord) -> None:
    all_logs.append(record)
    instance = current_or_none()
    if instance is not None:
        instance.logs.append(record)
