"""The soak command (`scripts/loadtest soak`): its verdict, and a short run on the real server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from tools.loadtest.soak import Model, Outcome, Soak, spoil, summary


def test_a_failed_valid_request_or_an_answered_hostile_one_is_reported() -> None:
    unary, stream = Model("llm", False, []), Model("tts_stream", True, [])
    soak = Soak("", 0, [unary, stream], 1, 0.1, 1)
    soak.outcomes = [
        Outcome("llm", True, 0.1),
        Outcome("llm", True, 0.2, "StatusCode.INTERNAL boom"),
        Outcome("llm", False, 0.1, "StatusCode.INVALID_ARGUMENT input 'repetition_penalty' ..."),
        Outcome("llm", False, 0.1, ""),  # a hostile request answered
        Outcome("tts_stream", False, 0.1, " input 'speaking_rate' is 100"),  # no code on streams
    ]
    result = summary(soak)["models"]
    assert result["llm"]["valid_failed"] == ["StatusCode.INTERNAL boom"]
    assert result["llm"]["bad_not_refused"] == ["answered"]
    assert result["tts_stream"]["bad_not_refused"] == []


def test_spoiled_requests_keep_the_inputs_and_break_one() -> None:
    audio = {"audio": np.array([[b"RIFF..."]], dtype=np.object_)}
    assert spoil(audio)["audio"][0, 0] != b"RIFF..."
    chat = {"prompt": np.array([[b"Hi"]], dtype=np.object_)}
    assert float(spoil(chat)["repetition_penalty"][0, 0]) == pytest.approx(1e-40)
    text = {"text": np.array([[b"Hello."]], dtype=np.object_)}
    assert float(spoil(text)["speaking_rate"][0, 0]) == 100.0


@pytest.mark.server
def test_a_short_soak_serves_every_valid_request_and_refuses_every_hostile_one(
    tmp_path: Path, model_store: Path
) -> None:
    out = tmp_path / "soak"
    run = subprocess.run(
        [
            str(ROOT / "scripts" / "loadtest"),
            "soak",
            "--minutes",
            "0.5",
            "--clients",
            "2",
            "--bad-share",
            "0.5",
            "--samples",
            "2",
            "-m",
            "stt,tts_stream,llm",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "MODEL_STORE": str(model_store)},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    models = result["models"]
    assert set(models) == {"stt", "tts_stream", "llm"}
    assert all(m["valid"] > 0 for m in models.values()), models
    assert sum(m["bad"] for m in models.values()) > 0, models
    # Every stub is watched: the models', and the chat engine llm calls (vlm_stream).
    assert {i.rsplit("_", 2)[0] for i in result["stub_rss"]} == {*models, "vlm_stream"}
    assert result["ready_at_end"] is True
    assert "| stt |" in (out / "summary.md").read_text()
