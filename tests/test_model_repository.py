"""Every model directory loads, with its shipped settings, under the harness and in tritonserver."""

from __future__ import annotations

from pathlib import Path

import pytest
import tritonclient.http as httpclient

from tests.conftest import start_server
from tests.harness.runner import ModelHarness

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(
    p.name for p in (ROOT / "model_repository").iterdir() if (p / "config.pbtxt").is_file()
)


def test_repository_is_not_empty() -> None:
    assert "stt" in MODELS


@pytest.mark.parametrize("name", MODELS)
def test_loads_under_the_harness(
    name: str, model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_STORE", str(model_store))
    with ModelHarness(ROOT / "model_repository" / name) as harness:
        assert harness.model is not None


@pytest.mark.server
def test_every_model_is_ready_in_a_real_server(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> None:
    server = start_server(tmp_path_factory, MODELS, env={"MODEL_STORE": str(model_store)})
    try:
        client = httpclient.InferenceServerClient(server.http_url)
        index = {m["name"]: m.get("state") for m in client.get_model_repository_index()}
        assert {name: index.get(name) for name in MODELS} == dict.fromkeys(MODELS, "READY")
        client.close()
    finally:
        server.stop()
