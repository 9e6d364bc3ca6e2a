"""Letting go of decoupled BLS calls without killing tritonserver 2.51's stub.

`request.exec(decoupled=True)` returns a response iterator that two owners hold: the model,
and the stub's map of open streams (python_backend r24.10, `Stub::response_iterator_map_`).
Reading the final response queues a cleanup message; the stub's stub-to-parent thread erases
the map's reference when it sends it. Whichever owner lets go last destroys the iterator and
the responses it kept. When that is the stub's thread, their numpy arrays are freed there
without the GIL, and the stub's heap is corrupted: under the chat fronts' load most
iterators died that way (gdb: 617 of 918) and the stub crashed within minutes (SIGSEGV in
pymalloc, or glibc's "unaligned fastbin chunk"). r24.12 (tritonserver 2.53) takes the GIL in
`~PbTensor`; 2.51 does not.

So the model must be the last owner. `request.is_cancelled()` goes through the same
stub-to-parent queue, in order, and waits for its answer: once one queued after a stream's
cleanup has come back, the map holds that stream no more, and dropping it here frees it on
this Python thread. A request already seen cancelled answers from a cache without queueing
anything; its streams are kept until another request's check has made the round trip.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from serving.protocols import Request


class FinishedStreams:
    """Where a model's decoupled BLS calls end: read to their end, dropped once safe.

    One per model instance. The checks of `release` run one at a time, and the model must
    not check the same request on another thread meanwhile: a check already under way is
    answered by the round trip it started, which may have been queued before the streams'
    cleanups.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checking = threading.Lock()
        self._kept: list[Iterator[Any]] = []

    def release(self, streams: Iterable[Iterator[Any]], request: Request) -> None:
        """Read what is left of each stream (blocking until its final response), then drop
        them, and the streams kept before, once the stub has forgotten them."""
        finished = list(streams)
        for stream in finished:
            collections.deque(stream, 0)
        with self._lock:
            finished += self._kept
            self._kept = []
        with self._checking:
            maybe_cached = request.is_cancelled()  # True may come from a cache, no round trip
        if maybe_cached:
            with self._lock:
                self._kept += finished
        # else: `finished` is dropped here, on this thread, with the GIL

    def kept(self) -> int:
        """Streams waiting for another request's round trip (for tests)."""
        with self._lock:
            return len(self._kept)
