"""The GPU configuration variants (`configs/gpu.pbtxt`, served with --model-config-name=gpu).

No GPU here, so what is proven is everything but the GPU itself: the committed variants are the
ones tools/gpu_configs.py writes from each config.pbtxt (they cannot drift); the server picks
them with --model-config-name=gpu and asks for a GPU (refused here, naming it); and with only
the device turned back (KIND_CPU, float32), every variant loads on the real server, which
then serves each model's variant settings (the chat models' generate() decoder answering a
fact from the real SmolLM2).
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from pathlib import Path

import pytest

from tests import chat_client
from tests.conftest import ROOT, new_server, start_server
from tools.gpu_configs import SETTINGS, VARIANT, computes, gpu_variant, variants

#: The models that compute (a dtype setting), each with a variant.
MODELS = sorted(
    p.parent.name
    for p in (ROOT / "model_repository").glob("*/config.pbtxt")
    if computes(p.read_text(encoding="utf-8"))
)


def test_committed_variants_are_what_the_tool_writes() -> None:
    written = variants()
    assert sorted(path.parent.parent.name for path in written) == MODELS
    for path, text in written.items():
        assert path.is_file(), f"{path} is missing: python -m tools.gpu_configs"
        assert path.read_text(encoding="utf-8") == text, f"{path}: python -m tools.gpu_configs"


@pytest.mark.parametrize("model", MODELS)
def test_a_variant_changes_only_the_device_and_its_settings(model: str) -> None:
    config = (ROOT / "model_repository" / model / "config.pbtxt").read_text(encoding="utf-8")
    variant = gpu_variant(config, model)
    assert "KIND_CPU" not in variant and "kind: KIND_GPU" in variant
    assert re.search(r'key: "dtype", value: \{ string_value: "float16" \}', variant)
    changed = {
        line
        for line in variant.splitlines()
        if line not in config.splitlines() and not line.startswith("#")
    }
    allowed = {"    kind: KIND_GPU", "    count: 1"} | {
        f'parameters: {{ key: "{key}", value: {{ string_value: "{value}" }} }}'
        for key, value in SETTINGS.items()
    }
    assert changed <= allowed, changed - allowed


def cpu_copy(tmp_path: Path) -> Path:
    """The model repository with each variant's device turned back to the CPU."""
    repository = tmp_path / "repository"
    shutil.copytree(ROOT / "model_repository", repository)
    for variant in repository.glob(f"*/{VARIANT}"):
        text = variant.read_text(encoding="utf-8").replace("KIND_GPU", "KIND_CPU")
        variant.write_text(text.replace('"float16"', '"float32"'), encoding="utf-8")
    return repository


@pytest.mark.server
def test_the_server_picks_the_variant_and_asks_for_a_gpu(tmp_path: Path, model_store: Path) -> None:
    log = tmp_path / "server.log"
    server = new_server(
        log, ["stt"], env={"MODEL_STORE": str(model_store)}, extra_args=["--model-config-name=gpu"]
    )
    with pytest.raises(RuntimeError, match="exited"):
        server.__enter__()
    server.stop()
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "GPU" in text and "stt" in text, text[-3000:]


@pytest.mark.server
def test_every_variant_loads_and_serves_with_the_device_turned_back_to_the_cpu(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, model_store: Path
) -> None:
    # llm, a front without weights, has no variant: the server serves its config.pbtxt.
    server = start_server(
        tmp_path_factory,
        [*MODELS, "llm"],
        repository=cpu_copy(tmp_path),
        env={"MODEL_STORE": str(model_store)},
        extra_args=["--model-config-name=gpu"],
    )
    try:
        for model in MODELS:
            url = f"http://{server.http_url}/v2/models/{model}/config"
            with urllib.request.urlopen(url, timeout=10) as response:
                config = json.load(response)
            parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
            assert parameters["dtype"] == "float32", model  # the variant, turned back
            if "decoder" in parameters:
                assert parameters["decoder"] == "generate", model
            assert [g["count"] for g in config["instance_group"]] == [1], model
        text, *_ = chat_client.http(
            server, "llm", chat_client.arrays("What is the capital of France?", max_new_tokens=12)
        )
        assert "Paris" in text, text
    finally:
        server.stop()
