"""Retries with exponential backoff and full jitter, inside the call's deadline."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tritonclient.utils import InferenceServerException

from multimodal_client.errors import TritonError, from_exception, retryable

T = TypeVar("T")

#: What a failed attempt is: the server's answer, or a connection that failed (OSError).
FAILURES = (InferenceServerException, TritonError, OSError)


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a call is retried when the server is unavailable.

    Attempt n (from 0) waits a random time between 0 and min(max_delay, base_delay * 2**n)
    before the next ("full jitter": many clients that failed together do not come back
    together). No wait runs past the call's deadline. `on_retry(attempt, error, delay)` is
    told of each retry (the CLI shows it).
    """

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0
    on_retry: Callable[[int, TritonError, float], None] | None = None

    def delay(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.max_delay, self.base_delay * 2**attempt))

    def _next(self, attempt: int, error: TritonError, deadline: float | None) -> float | None:
        """The wait before the next attempt, or None when `error` must be raised."""
        if not retryable(error) or attempt + 1 >= self.attempts:
            return None
        wait = self.delay(attempt)
        if deadline is not None and time.monotonic() + wait >= deadline:
            return None
        if self.on_retry is not None:
            self.on_retry(attempt + 1, error, wait)
        return wait

    def call(self, attempt: Callable[[], T], deadline: float | None = None) -> T:
        """`attempt()` until it succeeds, fails for good, or the retries are spent."""
        for n in range(self.attempts):
            try:
                return attempt()
            except FAILURES as exc:
                error = from_exception(exc)
                wait = self._next(n, error, deadline)
                if wait is None:
                    raise error from exc
                time.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def acall(self, attempt: Callable[[], Awaitable[T]], deadline: float | None = None) -> T:
        """`call` for coroutines."""
        for n in range(self.attempts):
            try:
                return await attempt()
            except FAILURES as exc:
                error = from_exception(exc)
                wait = self._next(n, error, deadline)
                if wait is None:
                    raise error from exc
                await asyncio.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")
