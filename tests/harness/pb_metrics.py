"""pb_utils.MetricFamily and Metric with tritonserver 2.51's rules and error messages.

The rules: counters only go up, only gauges `set`, only histograms `observe` (and need a list
of strictly sorted buckets), labels are a dict of str with Prometheus names, a family name is
a valid Prometheus name used with one kind only, and a Metric whose MetricFamily object was
garbage-collected fails every operation.

What breaking them does on 2.51 was checked on the real server. The checks the stub makes
itself raise TritonModelException (the contract probes compare them). The ones the server
makes are worse: it answers with TritonModelException(<message>) in some runs and aborts the
whole process in others (boost::interprocess::lock_exception, every model down), and an
invalid family name always aborts it. So those raise ServerCrash, carrying the message: a model
must not depend on any of them.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from tests.harness import stub
from tests.harness.errors import ServerCrash
from tests.harness.pb_errors import TritonModelException
from tests.harness.pybind import CPP_MODULE, incompatible, is_str_like, make_enum

MetricKind = make_enum("MetricKind", {"COUNTER": 0, "GAUGE": 1, "HISTOGRAM": 2})
COUNTER = MetricKind.COUNTER  # type: ignore[attr-defined]
GAUGE = MetricKind.GAUGE  # type: ignore[attr-defined]
HISTOGRAM = MetricKind.HISTOGRAM  # type: ignore[attr-defined]

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DELETED = (
    "Invalid metric operation as the corresponding 'MetricFamily' has been deleted. The "
    "'MetricFamily' object should be deleted AFTER its corresponding 'Metric' objects have "
    "been deleted."
)


@dataclass
class Series:
    """The values of one labelled series, as the server's Prometheus registry holds them."""

    value: float = 0.0
    observations: list[float] = field(default_factory=list)
    buckets: list[float] | None = None


@dataclass
class Registry:
    """The server-wide registry: family name -> kind (kept for good) and series by labels."""

    kinds: dict[str, Any] = field(default_factory=dict)
    series: dict[str, dict[str, Series]] = field(default_factory=dict)
    live: dict[str, int] = field(default_factory=dict)  # live MetricFamily objects per name
    lock: threading.Lock = field(default_factory=threading.Lock)


REGISTRY = Registry()


def series(name: str, labels: dict[str, str] | None = None) -> Series | None:
    """A test's view of a series (None if never created): what /metrics would show."""
    return REGISTRY.series.get(name, {}).get(json.dumps(labels or {}, sort_keys=True))


def _server_error(action: str, detail: str) -> ServerCrash:
    instance = stub.current().instance_name
    message = f"{action}: Failed to process the request for model '{instance}', message: {detail}"
    return ServerCrash(
        f"{message!r}: tritonserver 2.51 raises TritonModelException with this message or "
        "aborts the whole server (seen in this project's contract runs); fix the call"
    )


class Metric:
    """One labelled series of a family; holds no reference that keeps its family alive."""

    __module__ = CPP_MODULE
    __slots__ = ("__weakref__", "_cleared", "_key", "_kind", "_name", "_series_key")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{CPP_MODULE}.Metric: No constructor defined!")

    @classmethod
    def _create(cls, name: str, kind: Any, key: str) -> Metric:
        metric = object.__new__(cls)
        metric._name, metric._kind, metric._key, metric._cleared = name, kind, key, False
        return metric

    def _series(self, verb: str) -> Series:
        if self._cleared:
            raise TritonModelException(f"Failed to {verb} metric value: {_DELETED}")
        return REGISTRY.series[self._name][self._key]

    def increment(self, *args: Any, **kwargs: Any) -> None:
        value = _number("increment", args, kwargs)
        target = self._series("increment")
        action = "Failed to increment metric value"
        if self._kind == HISTOGRAM:
            raise _server_error(
                action, "TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Increment"
            )
        if self._kind == COUNTER and value < 0:
            raise _server_error(
                action,
                "TRITONSERVER_METRIC_KIND_COUNTER can only be incremented monotonically by "
                "non-negative values.",
            )
        target.value += value

    def set(self, *args: Any, **kwargs: Any) -> None:
        value = _number("set", args, kwargs)
        target = self._series("set")
        if self._kind != GAUGE:
            raise _server_error(
                "Failed to set metric value",
                f"TRITONSERVER_METRIC_KIND_{self._kind.name} does not support Set",
            )
        target.value = value

    def observe(self, *args: Any, **kwargs: Any) -> None:
        value = _number("observe", args, kwargs)
        target = self._series("observe")
        if self._kind != HISTOGRAM:
            raise _server_error(
                "Failed to observe metric value",
                f"TRITONSERVER_METRIC_KIND_{self._kind.name} does not support Observe",
            )
        target.observations.append(value)

    def value(self) -> float:
        target = self._series("get")
        if self._kind == HISTOGRAM:
            raise _server_error(
                "Failed to get metric value",
                "TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Value",
            )
        return float(target.value)


def _number(function: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
    """pybind11 takes one positional float (int, bool and numpy numbers convert; str does not)."""
    if kwargs or len(args) != 1 or isinstance(args[0], str | bytes):
        raise incompatible(function, *args, **kwargs)
    try:
        return float(args[0])
    except (TypeError, ValueError):
        raise incompatible(function, *args) from None


class MetricFamily:
    """A Prometheus metric family registered with the server for as long as the object lives."""

    __module__ = CPP_MODULE
    __slots__ = ("__weakref__", "_kind", "_metrics", "_name")
    COUNTER = COUNTER
    GAUGE = GAUGE
    HISTOGRAM = HISTOGRAM

    def __init__(self, name: Any, description: Any, kind: Any) -> None:
        if (
            not is_str_like(name)
            or not is_str_like(description)
            or not isinstance(kind, MetricKind)
        ):
            raise incompatible("__init__", name, description, kind)
        name = name.decode() if isinstance(name, bytes) else name
        if not _METRIC_NAME.match(name):
            raise ServerCrash(
                f"MetricFamily name {name!r} is not a valid Prometheus metric name: "
                "tritonserver 2.51 aborts (the whole server process dies, every model with it)"
            )
        with REGISTRY.lock:
            known = REGISTRY.kinds.get(name)
            if known is not None and known != kind:
                # The server keeps a name's kind after its families are deleted.
                raise _server_error(
                    "Error when creating MetricFamily",
                    "Family name already exists with different type",
                )
            REGISTRY.kinds[name] = kind
            REGISTRY.series.setdefault(name, {})
            REGISTRY.live[name] = REGISTRY.live.get(name, 0) + 1
        self._name, self._kind = name, kind
        self._metrics: list[Metric] = []
        weakref.finalize(self, _family_deleted, name, self._metrics)

    def Metric(self, labels: Any = None, buckets: Any = None) -> Metric:
        if labels is not None and not isinstance(labels, dict):
            raise TritonModelException("Failed to create metric. Labels must be a dictionary.")
        if buckets is not None:
            if not isinstance(buckets, list):
                raise TritonModelException("Failed to create metric. Buckets must be a list.")
            if self._kind != HISTOGRAM:
                raise TritonModelException("Failed to create metric. Unexpected buckets found.")
            try:
                buckets = [float(b) for b in buckets]
            except (TypeError, ValueError):
                raise RuntimeError(
                    "Unable to cast Python instance of type <class 'list'> to C++ type "
                    "'std::vector<double, std::allocator<double> >'"
                ) from None
        elif self._kind == HISTOGRAM:
            raise TritonModelException("Failed to create metric. Missing required buckets.")
        action = "Error when creating Metric"
        for label, value in (labels or {}).items():
            if not isinstance(value, str):
                raise _server_error(action, "attempt to access JSON non-string as string")
            if not _LABEL_NAME.match(str(label)) or str(label).startswith("__"):
                raise _server_error(action, "Invalid label name")
        if buckets is not None and any(a >= b for a, b in itertools.pairwise(buckets)):
            raise _server_error(action, "Bucket Boundaries must be strictly sorted")
        key = json.dumps({str(k): v for k, v in (labels or {}).items()}, sort_keys=True)
        with REGISTRY.lock:
            REGISTRY.series[self._name].setdefault(key, Series(buckets=buckets))
        metric = Metric._create(self._name, self._kind, key)
        self._metrics.append(metric)
        return metric


def _family_deleted(name: str, metrics: list[Metric]) -> None:
    """The server deletes a family's metrics with it; the Metric objects then fail."""
    for metric in metrics:
        metric._cleared = True
    with REGISTRY.lock:
        REGISTRY.live[name] -= 1
        if REGISTRY.live[name] == 0:  # its series go; its kind stays registered
            del REGISTRY.live[name], REGISTRY.series[name]
