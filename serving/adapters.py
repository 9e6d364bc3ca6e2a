"""The two shapes of a served model: unary batched, and decoupled streaming.

Every `model.py` subclasses one of them and declares what differs: its settings (`params`),
how its engine loads (`load_engine`, one signature for all: a `LoadPlan` in, an engine out),
and its steps. `initialize` and `execute` are written once, here:

- `initialize`: settings -> engine load -> metrics -> one log line;
- `execute`: `serving.batch.run_batch` (unary: `parse`, `run`, `respond`) or
  `serving.streaming.run_stream_batch` (decoupled: `parse`, `run` with one stream per row),
  with the time it started (`started`, what the models' latency metrics count from) and the
  rows of each engine call recorded.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import triton_python_backend_utils as pb_utils

from serving import metrics
from serving.batch import run_batch
from serving.errors import ErrorCounter, SplitCounter
from serving.protocols import Request, Response
from serving.streaming import Stream, run_stream_batch
from shared.loading import LoadPlan, plan_load
from shared.params import Param


class Engine(Protocol):
    def describe(self) -> str:
        """One line for the load log: architecture, placement, footprint, load time."""
        ...

    @property
    def footprint_bytes(self) -> int:
        """Bytes of weights and buffers the loaded model holds."""
        ...


E = TypeVar("E", bound=Engine)
Row = TypeVar("Row")
Result = TypeVar("Result")


class ServedModel(ABC, Generic[E]):
    """What both shapes share: loading and the per-model metrics (`serving.metrics`)."""

    #: The model's settings: config.pbtxt parameters, overridden by environment variables.
    params: ClassVar[Sequence[Param]]

    name: str
    settings: dict[str, Any]
    engine: E
    instance: str
    errors: ErrorCounter
    splits: SplitCounter
    batch_rows: metrics.Family
    #: time.perf_counter() when the running execute() began.
    started: float = 0.0

    def initialize(self, args: dict[str, str]) -> None:
        self.name = args["model_name"]
        self.instance = args["model_instance_name"]
        plan = plan_load(args, self.params)
        self.settings = plan.settings
        begin = time.perf_counter()
        self.engine = self.load_engine(plan)
        seconds = time.perf_counter() - begin
        self.start_metrics()
        load = metrics.Family(metrics.LOAD_SECONDS, self.name, instance=self.instance)
        footprint = metrics.Family(metrics.FOOTPRINT, self.name, instance=self.instance)
        load.set(seconds)
        footprint.set(self.engine.footprint_bytes)
        self._load_gauges = (load, footprint)  # kept: Triton drops a family's series with it
        pb_utils.Logger.log_info(
            f"{self.name}: loaded {self.engine.describe()} from {plan.model_dir}"
        )

    @staticmethod
    @abstractmethod
    def load_engine(plan: LoadPlan) -> E:
        """The engine the resolved settings describe; every engine loads this one way
        (`WhisperEngine.load`, `ChatService.load`, `backends.tts.engine.load_engine`)."""

    def start_metrics(self) -> None:
        """Create the model's metric families; every model counts its errors by code, its
        cancellations, its split batches and the rows of its engine calls. Called from
        `initialize`, never at import: pb_utils' C++ half is attached after the import."""
        self.errors = ErrorCounter(self.name)
        self.splits = SplitCounter(self.name)
        self.batch_rows = metrics.Family(metrics.BATCH_ROWS, self.name)

    def elapsed(self) -> float:
        """Seconds since the running execute() began."""
        return time.perf_counter() - self.started


class UnaryModel(ServedModel[E], Generic[E, Row, Result]):
    """One response per request; the rows of every request of a batch run as one call."""

    def execute(self, requests: list[Request]) -> list[Response]:
        """The responses, in request order."""
        self.started = time.perf_counter()
        return list(
            run_batch(
                requests, self.parse, self._run, self.respond, self.name, self.errors, self.splits
            )
        )

    def _run(self, rows: list[Row]) -> list[Result]:
        self.batch_rows.observe(len(rows))
        return self.run(rows)

    @abstractmethod
    def parse(self, request: Request) -> list[Row]:
        """The request's rows, checked; `shared.errors.RequestError` fails only this request."""

    @abstractmethod
    def run(self, rows: list[Row]) -> list[Result]:
        """One engine call for the rows of all valid requests, one result per row."""

    @abstractmethod
    def respond(self, request: Request, results: list[Result]) -> Response:
        """The response of one request, from its rows' results."""


class StreamingModel(ServedModel[E], Generic[E, Row]):
    """Decoupled: pieces as they are made, then exactly one final flag per request."""

    def execute(self, requests: list[Request]) -> None:
        self.started = time.perf_counter()
        run_stream_batch(requests, self.parse, self._run, self.name, self.errors, self.splits)

    def _run(self, rows: list[Row], streams: list[Stream]) -> None:
        self.batch_rows.observe(len(rows))
        self.run(rows, streams)

    @abstractmethod
    def parse(self, request: Request) -> list[Row]:
        """The request's rows, checked; `shared.errors.RequestError` fails only this request."""

    @abstractmethod
    def run(self, rows: list[Row], streams: list[Stream]) -> None:
        """One engine call for all rows; each row's pieces go to its request's stream."""
