"""Conversation history per session, with hard bounds on what the server keeps.

A chat client names its conversation with a `session_id`; the server keeps the last
`max_turns` turns of it and puts them in front of the next request, so the client sends only
its new message. What is kept is bounded four ways, because clients come and go without
saying goodbye and every byte kept is server memory:

* `max_turns` per session (older turns are dropped first);
* `max_sessions` sessions: the least recently used one is evicted to make room;
* `max_bytes` in all (a turn's size is what the caller says it holds, decoded images
  included): least recently used sessions are evicted until the store fits again;
* sessions idle for `idle_seconds` expire.

A turn is opaque here (the chat models store their messages). The store is safe to share
between threads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Session:
    turns: deque[tuple[Any, int]] = field(default_factory=deque)  # (turn, size in bytes)
    size: int = 0
    last_used: float = 0.0


@dataclass
class SessionStats:
    """Counts operators and tests read: how sessions end."""

    evicted: int = 0  # least recently used, to stay within max_sessions or max_bytes
    expired: int = 0  # idle for idle_seconds
    reset: int = 0  # by the client


class SessionStore:
    """The last `max_turns` turns of each session, within the bounds in the module doc."""

    def __init__(
        self,
        *,
        max_turns: int,
        max_sessions: int,
        max_bytes: int,
        idle_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_turns = max_turns
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.idle_seconds = idle_seconds
        self.stats = SessionStats()
        self._clock = clock
        self._sessions: OrderedDict[str, _Session] = OrderedDict()  # least recently used first
        self._size = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_turns > 0 and self.max_sessions > 0

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._sessions)

    @property
    def size_bytes(self) -> int:
        return self._size

    def history(self, session_id: str) -> list[Any]:
        """The session's kept turns, oldest first (empty for an unknown session)."""
        with self._lock:
            self._expire()
            session = self._sessions.get(session_id)
            if session is None:
                return []
            self._touch(session_id, session)
            return [turn for turn, _ in session.turns]

    def append(self, session_id: str, turn: Any, size: int) -> None:
        """Add a turn at the end of the session (created if new) and enforce every bound."""
        if not self.enabled:
            return
        with self._lock:
            self._expire()
            session = self._sessions.get(session_id)
            if session is None:
                session = self._sessions[session_id] = _Session()
            self._touch(session_id, session)
            session.turns.append((turn, size))
            session.size += size
            self._size += size
            while len(session.turns) > self.max_turns:
                self._drop_oldest_turn(session)
            while len(self._sessions) > self.max_sessions or self._size > self.max_bytes:
                oldest = next(iter(self._sessions))
                if oldest == session_id and len(self._sessions) == 1:
                    # Alone and still too big: keep its newest turns that fit, if any.
                    while session.turns and self._size > self.max_bytes:
                        self._drop_oldest_turn(session)
                    if not session.turns:
                        self._remove(session_id)
                    break
                self._remove(oldest)
                self.stats.evicted += 1

    def reset(self, session_id: str) -> bool:
        """Forget a session; True if there was one."""
        with self._lock:
            if session_id not in self._sessions:
                return False
            self._remove(session_id)
            self.stats.reset += 1
            return True

    def _touch(self, session_id: str, session: _Session) -> None:
        session.last_used = self._clock()
        self._sessions.move_to_end(session_id)

    def _drop_oldest_turn(self, session: _Session) -> None:
        _, size = session.turns.popleft()
        session.size -= size
        self._size -= size

    def _remove(self, session_id: str) -> None:
        session = self._sessions.pop(session_id)
        self._size -= session.size

    def _expire(self) -> None:
        deadline = self._clock() - self.idle_seconds
        while self._sessions:
            session_id, session = next(iter(self._sessions.items()))
            if session.last_used > deadline:
                break
            self._remove(session_id)
            self.stats.expired += 1
