"""Honest health on the real server: a killed stub turns its model not-ready, and it comes back.

Triton 2.51 by itself keeps reporting a model READY after one of its stub processes was
killed (the first assertion shows it). The watchdog (tools/container/watchdog.py, which the
image's entry point runs every WATCHDOG_INTERVAL seconds) sees the missing stub, takes the
model down (its ready endpoint answers 400, the server's strict readiness follows) and loads
it again, while the other models keep serving. A model that calls others over BLS (the chat
fronts) asks for a server restart instead.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests import speech
from tests.conftest import start_server
from tests.served import model_ready, speak, transcribe
from tools.container.watchdog import RestartNeeded, Watchdog, stubs
from tools.local_server import LocalTritonServer

pytestmark = pytest.mark.server

SENTENCE = "Please call Stella and ask her to bring these things with her from the store."


def test_a_killed_stub_takes_its_model_down_and_the_watchdog_brings_it_back(
    local_speech_server: LocalTritonServer,
) -> None:
    server = local_speech_server
    assert server.process is not None
    pid = server.process.pid
    logged: list[str] = []
    watchdog = Watchdog(server.http_url, pid, log=logged.append)
    assert watchdog.check() == []  # every stub alive: nothing to do
    tts = sorted((s for s in stubs(pid) if s.model == "tts"), key=lambda s: s.instance)
    assert [s.instance for s in tts] == ["tts_0_0", "tts_0_1"]

    os.kill(tts[0].pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(s.pid == tts[0].pid for s in stubs(pid)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert model_ready(server, "tts")  # what Triton 2.51 says by itself: still ready

    # The watchdog's look, on a thread; meanwhile the model is seen not ready, then ready.
    reloaded: list[str] = []
    look = threading.Thread(target=lambda: reloaded.extend(watchdog.check()))
    look.start()
    states: list[bool] = []
    heard_while_down = ""
    while look.is_alive() or not states[-1]:
        states.append(model_ready(server, "tts"))
        if not states[-1] and not heard_while_down:
            # The other model serves while tts is down.
            samples, rate = speech.speak(SENTENCE)
            heard_while_down = transcribe(server, speech.encode(samples, rate))
        time.sleep(0.05)
    look.join()
    assert speech.word_error_rate(SENTENCE, heard_while_down) <= 0.15
    assert reloaded == ["tts"], logged
    assert False in states and states[-1], states
    assert "tts has 1 of 2 stub processes alive" in logged[0]

    # Fresh stubs for both instances, and requests are served again, by whichever instance.
    assert sorted(s.instance for s in stubs(pid) if s.model == "tts") == ["tts_0_0", "tts_0_1"]
    assert all(s.pid != tts[0].pid for s in stubs(pid))
    for _ in range(4):
        assert len(speak(server, "Back again.")) > 1000
    assert watchdog.check() == []


def test_a_front_that_lost_its_stub_asks_for_a_restart(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> None:
    """`llm` calls `vlm_stream` over BLS: 2.51 can leave the engine waiting for the dead
    front's stub for good (docs/reliability.md), which no reload mends."""
    server = start_server(
        tmp_path_factory, ["llm"], env={"MODEL_STORE": str(model_store)}, local=True
    )
    try:
        assert server.process is not None
        pid = server.process.pid
        watchdog = Watchdog(server.http_url, pid, log=lambda _m: None)
        assert watchdog.check() == []
        (front,) = (s for s in stubs(pid) if s.model == "llm")
        os.kill(front.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(s.pid == front.pid for s in stubs(pid)):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with pytest.raises(RestartNeeded, match="llm has 0 of 1 stub processes alive, and it "):
            watchdog.check()
        assert model_ready(server, "llm")  # untouched: the entry point ends the server instead
    finally:
        server.stop()
