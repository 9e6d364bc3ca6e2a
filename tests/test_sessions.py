"""Session history (shared.sessions): turns per session and every bound on what is kept."""

from __future__ import annotations

import threading

import pytest

from shared.sessions import SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(clock: Clock | None = None, **bounds: float) -> SessionStore:
    settings = {"max_turns": 3, "max_sessions": 4, "max_bytes": 1000, "idle_seconds": 60.0}
    settings.update(bounds)
    return SessionStore(**settings, clock=clock or Clock())  # type: ignore[arg-type]


def test_turns_accumulate_per_session_oldest_first() -> None:
    sessions = store()
    sessions.append("a", "a1", 10)
    sessions.append("b", "b1", 10)
    sessions.append("a", "a2", 10)
    assert sessions.history("a") == ["a1", "a2"]
    assert sessions.history("b") == ["b1"]
    assert sessions.history("unknown") == []


def test_only_the_last_max_turns_are_kept() -> None:
    sessions = store(max_turns=3)
    for i in range(5):
        sessions.append("a", f"t{i}", 10)
    assert sessions.history("a") == ["t2", "t3", "t4"]
    assert sessions.size_bytes == 30


def test_the_least_recently_used_session_is_evicted() -> None:
    sessions = store(max_sessions=2)
    sessions.append("a", "a1", 10)
    sessions.append("b", "b1", 10)
    sessions.history("a")  # a is now more recent than b
    sessions.append("c", "c1", 10)
    assert sessions.history("b") == []
    assert sessions.history("a") == ["a1"] and sessions.history("c") == ["c1"]
    assert len(sessions) == 2 and sessions.stats.evicted == 1


def test_the_byte_budget_evicts_old_sessions_then_old_turns() -> None:
    sessions = store(max_bytes=100, max_turns=5)
    sessions.append("a", "a1", 40)
    sessions.append("b", "b1", 40)
    sessions.append("c", "c1", 40)  # 120 > 100: a goes
    assert sessions.history("a") == [] and sessions.size_bytes == 80
    sessions.append("c", "c2", 90)  # alone c is still too big: b goes, then c's oldest turn
    assert sessions.history("b") == []
    assert sessions.history("c") == ["c2"] and sessions.size_bytes == 90
    sessions.append("c", "huge", 500)  # a turn over the whole budget cannot be kept
    assert sessions.history("c") == [] and sessions.size_bytes == 0 and len(sessions) == 0


def test_idle_sessions_expire() -> None:
    clock = Clock()
    sessions = store(clock, idle_seconds=60)
    sessions.append("a", "a1", 10)
    clock.now += 30
    sessions.append("b", "b1", 10)
    clock.now += 45  # a idle 75 s, b 45 s
    assert sessions.history("a") == []
    assert sessions.history("b") == ["b1"]
    assert sessions.stats.expired == 1 and sessions.size_bytes == 10


def test_reset_forgets_a_session() -> None:
    sessions = store()
    sessions.append("a", "a1", 10)
    assert sessions.reset("a") is True
    assert sessions.history("a") == [] and sessions.size_bytes == 0
    assert sessions.reset("a") is False
    assert sessions.stats.reset == 1


@pytest.mark.parametrize("bounds", [{"max_turns": 0}, {"max_sessions": 0}])
def test_history_can_be_turned_off(bounds: dict) -> None:
    sessions = store(**bounds)
    sessions.append("a", "a1", 10)
    assert sessions.history("a") == [] and len(sessions) == 0 and not sessions.enabled


def test_concurrent_appends_keep_the_accounting_exact() -> None:
    sessions = store(max_sessions=8, max_turns=4, max_bytes=10_000)

    def worker(n: int) -> None:
        for i in range(200):
            sessions.append(f"s{(n + i) % 12}", i, 7)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept = sum(len(sessions.history(f"s{i}")) for i in range(12))
    assert len(sessions) <= 8 and sessions.size_bytes == 7 * kept
