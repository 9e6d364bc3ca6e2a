"""`python -m tools.model_store`: which entries a plain build makes, and which it leaves."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tools.model_store import __main__ as cli


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace every entry's builder by one that records its name instead of building."""
    names: list[str] = []

    def recorder(name: str) -> Callable[[Path], Path]:
        def build(store: Path) -> Path:
            names.append(name)
            return store / name

        return build

    monkeypatch.setattr(cli, "ENTRIES", {name: recorder(name) for name in cli.ENTRIES})
    return names


def test_a_plain_build_makes_every_entry_but_the_benchmark_only_ones(
    built: list[str], tmp_path: Path
) -> None:
    assert cli.main(["build", "--store", str(tmp_path)]) == 0
    assert "smolvlm-256m-random" in cli.ON_DEMAND
    assert built == [name for name in cli.ENTRIES if name not in cli.ON_DEMAND]
    assert "smolvlm-256m-smollm2" in built and "whisper-tiny.en" in built


def test_only_builds_an_on_demand_entry_when_named(built: list[str], tmp_path: Path) -> None:
    assert cli.main(["build", "--store", str(tmp_path), "--only", "smolvlm-256m-random"]) == 0
    assert built == ["smolvlm-256m-random"]


def test_list_marks_the_on_demand_entries(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "smolvlm-256m-random (on demand)" in lines
    assert "whisper-tiny.en" in lines
