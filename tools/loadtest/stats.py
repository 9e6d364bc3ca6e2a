"""Throughput and latency percentiles from per-request timestamps (standard library only).

perf_analyzer's profile export and the suite's own load generator both yield, per request, the
time it was sent and the times its responses arrived; everything is summarised here, the same
way for both, so a Triton figure and a baseline figure are computed identically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (what perf_analyzer reports too), on an unsorted sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Timing:
    """One request: when it was sent and when each of its responses arrived (nanoseconds)."""

    sent_ns: int
    responses_ns: tuple[int, ...]

    @property
    def latency_ms(self) -> float:
        """Until the last response: the whole answer (a stream's end)."""
        return (self.responses_ns[-1] - self.sent_ns) / 1e6

    @property
    def first_response_ms(self) -> float:
        """Until the first response: what a streaming client waits before it can show anything."""
        return (self.responses_ns[0] - self.sent_ns) / 1e6


def summarize(timings: Sequence[Timing]) -> dict[str, float]:
    """Requests per second over the span from the first send to the last response, and latency
    percentiles. With a fixed request count this span is the honest window: perf_analyzer's own
    figure divides by a window that ends on its next polling tick, not at the last response."""
    if not timings:
        raise ValueError("no requests to summarize")
    missing = sum(1 for t in timings if not t.responses_ns)
    if missing:
        raise ValueError(f"{missing} of {len(timings)} requests got no response")
    first = min(t.sent_ns for t in timings)
    last = max(t.responses_ns[-1] for t in timings)
    span_s = max(1e-9, (last - first) / 1e9)
    latencies = [t.latency_ms for t in timings]
    firsts = [t.first_response_ms for t in timings]
    return {
        "requests": len(timings),
        "seconds": span_s,
        "throughput": len(timings) / span_s,
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "avg_ms": sum(latencies) / len(latencies),
        "first_response_p50_ms": percentile(firsts, 50),
        "first_response_p99_ms": percentile(firsts, 99),
        "responses_per_request": sum(len(t.responses_ns) for t in timings) / len(timings),
    }
