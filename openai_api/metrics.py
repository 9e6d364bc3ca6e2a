"""The door's own Prometheus metrics: requests, latency and errors by route.

Triton's metrics (:8002) count model work; these count what clients of the door see, including
what never reaches Triton (a 401, a 413, a refused URL). Labels are the route templates, never
raw paths, so a scanner probing random URLs cannot grow the series without bound. Each app has
its own registry, so two doors in one process (tests) do not collide.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from openai_api.guards import ASGIApp, Message, Receive, Scope, Send

#: Latency buckets from a health check (milliseconds) to a long transcription (minutes).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """The door's counters and histogram, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "openai_requests",
            "Requests answered by the OpenAI door",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "openai_request_errors",
            "Requests the OpenAI door answered with an error status (4xx, 5xx)",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "openai_request_duration_seconds",
            "Time from a request's arrival to the end of its response body",
            ["route"],
            buckets=BUCKETS,
            registry=self.registry,
        )

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, str(status)).inc()

    async def endpoint(self, _request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Times every HTTP request to the end of its body and records it by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app fails before it answers

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.record(route, scope["method"], status, time.perf_counter() - start)
