"""The watchdog's decisions, over a repository API and a stub list faked here (the real server
case is tests/test_watchdog.py): a model missing a stub is reloaded, unless it calls loaded
models over BLS, which only a server restart mends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tools.container import watchdog as module
from tools.container.watchdog import RestartNeeded, Stub, Watchdog

CONFIGS: dict[str, Any] = {
    "tts": {"instance_group": [{"count": 2}]},
    "vlm_stream": {"instance_group": [{"count": 1}], "parameters": {}},
    "llm": {
        "instance_group": [{"count": 1}],
        "parameters": {"engine_model": {"string_value": "vlm_stream"}},
    },
}


@dataclass
class FakeServer(Watchdog):
    """The repository API answered from CONFIGS; unloads and loads recorded."""

    ready: list[str] = field(default_factory=lambda: ["llm", "tts", "vlm_stream"])
    calls: list[str] = field(default_factory=list)

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        if path == "/v2/repository/index":
            return [{"name": m, "state": "READY"} for m in self.ready]
        if path.startswith("/v2/models/"):
            return CONFIGS[path.split("/")[3]]
        self.calls.append(path)
        return None


def with_stubs(monkeypatch: pytest.MonkeyPatch, models: list[str]) -> None:
    alive = [Stub(100 + i, m, f"{m}_0_{i}") for i, m in enumerate(models)]
    monkeypatch.setattr(module, "stubs", lambda _pid: alive)


def server() -> FakeServer:
    return FakeServer("127.0.0.1:1", 1, log=lambda _m: None)


def test_every_stub_alive_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    with_stubs(monkeypatch, ["tts", "tts", "vlm_stream", "llm"])
    watchdog = server()
    assert watchdog.check() == [] and watchdog.calls == []


def test_a_model_missing_a_stub_is_unloaded_and_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    with_stubs(monkeypatch, ["tts", "vlm_stream", "llm"])
    watchdog = server()
    assert watchdog.check() == ["tts"]
    assert watchdog.calls == [
        "/v2/repository/models/tts/unload",
        "/v2/repository/models/tts/load",
    ]


def test_a_caller_missing_a_stub_asks_for_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    with_stubs(monkeypatch, ["tts", "tts", "vlm_stream"])
    watchdog = server()
    with pytest.raises(RestartNeeded, match=r"llm has 0 of 1 .* it calls vlm_stream"):
        watchdog.check()
    assert watchdog.calls == []  # nothing reloaded: the server is about to end


def test_a_caller_whose_callee_is_not_loaded_is_reloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    with_stubs(monkeypatch, ["tts", "tts"])
    watchdog = server()
    watchdog.ready = ["llm", "tts"]
    assert watchdog.check() == ["llm"]


def test_a_callee_named_by_environment_variable_is_the_one_watched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`LLM_ENGINE_MODEL` overrides the config's engine, for the model and the watchdog alike."""
    with_stubs(monkeypatch, ["tts", "tts", "llm_engine"])
    watchdog = FakeServer(
        "127.0.0.1:1", 1, log=lambda _m: None, environ={"LLM_ENGINE_MODEL": "llm_engine"}
    )
    watchdog.ready = ["llm", "tts", "llm_engine"]  # the config's vlm_stream is not loaded
    monkeypatch.setitem(CONFIGS, "llm_engine", CONFIGS["vlm_stream"])
    with pytest.raises(RestartNeeded, match="it calls llm_engine:"):
        watchdog.check()
    assert watchdog.calls == []  # not reloaded: that would leave llm_engine wedged
