"""Every model's settings: a bad value fails the load naming it, and each is on the model's page.

One parametrized test over all six models instead of one per model file: what `initialize`
does with settings is written once (`serving.adapters`), and so is its test.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from shared.errors import ModelLoadError
from shared.params import Param
from tests.harness.runner import ModelHarness

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "model_repository"
MODELS = ["stt", "vlm", "vlm_stream", "llm", "tts", "tts_stream"]
#: Small checkpoints for the cases whose failure comes after the settings are read.
TINY = {"vlm_stream": "smolvlm-tiny-random"}


@pytest.mark.parametrize(
    ("model", "env", "expected"),
    [
        ("stt", {"STT_QUANTIZATION": "int3"}, "environment variable STT_QUANTIZATION"),
        ("stt", {"STT_MODEL_PATH": "../../etc"}, "outside the model store"),
        ("stt", {"STT_MODEL_PATH": "no-such-model"}, "does not exist"),
        ("vlm_stream", {"QUANTIZATION_TYPE": "int3"}, "environment variable QUANTIZATION_TYPE"),
        ("vlm_stream", {"ATTENTION_IMPL": "magic"}, "environment variable ATTENTION_IMPL"),
        ("vlm_stream", {"TOP_P": "0"}, "'top_p' from environment variable TOP_P"),
        (
            "vlm_stream",
            {"VLM_STREAM_MAX_NEW_TOKENS": "2000"},
            "setting 'max_new_tokens' is 2000, over the limit",
        ),
        ("vlm_stream", {"MODEL_PATH": "../../etc"}, "outside the model store"),
        ("vlm_stream", {"VLM_STREAM_DECODER": "magic"}, "environment variable VLM_STREAM_DECODER"),
        (
            "vlm_stream",
            {"VLM_STREAM_MAX_HISTORY": "-1"},
            "setting 'max_history' from environment variable",
        ),
        ("vlm", {"VLM_ENGINE_MODEL": " "}, "environment variable VLM_ENGINE_MODEL"),
        ("tts", {"TTS_MAX_SENTENCE_CHARS": "5"}, "environment variable TTS_MAX_SENTENCE_CHARS"),
        ("tts", {"TTS_MODEL_PATH": "whisper-tiny-random"}, "'whisper' checkpoint; the TTS models"),
        ("tts", {"TTS_MODEL_PATH": "../../etc"}, "outside the model store"),
        ("tts_stream", {"TTS_STREAM_NOISE_W": "nan"}, "setting 'noise_w' from environment"),
    ],
)
def test_bad_settings_fail_the_load_naming_them(
    model_store: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    env: dict[str, str],
    expected: str,
) -> None:
    monkeypatch.setenv("MODEL_STORE", str(model_store))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parameters = {"model_path": TINY[model]} if model in TINY else {}
    with pytest.raises(ModelLoadError, match=expected):
        ModelHarness(REPO / model, parameters=parameters).load()


def test_a_config_parameter_no_model_declares_fails_the_load(
    model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_STORE", str(model_store))
    with pytest.raises(ModelLoadError, match=r"unknown parameters \['max_tokens'\]"):
        ModelHarness(REPO / "llm", parameters={"max_tokens": "5"}).load()


def declared_settings(model: str) -> list[Param]:
    """The settings `model.py` declares, read from its class as the stub would import it."""
    path = REPO / model / "1" / "model.py"
    with ModelHarness(REPO / model).activated(executing=False):
        spec = importlib.util.spec_from_file_location(f"declared_{model}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return list(module.TritonPythonModel.params)


def documented_settings(model: str) -> dict[str, str]:
    """name -> default cell of the Settings table on docs/models/<model>.md."""
    page = (ROOT / "docs" / "models" / f"{model}.md").read_text(encoding="utf-8")
    section = re.search(r"^## Settings\n(.*?)(?=^## |\Z)", page, re.M | re.S)
    assert section, f"docs/models/{model}.md has no '## Settings' section"
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| ([^|]+) \|", section.group(1), re.M)
    return {name: default.strip() for name, default in rows}


@pytest.mark.parametrize("model", [*MODELS, "voice_chat"])
def test_every_setting_is_on_the_models_page_with_its_default(model: str) -> None:
    declared = {
        p.name: "(none)" if p.default in (None, "") else f"`{p.default}`"
        for p in declared_settings(model)
    }
    assert documented_settings(model) == declared
