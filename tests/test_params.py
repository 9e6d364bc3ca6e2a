"""Settings precedence: environment over config.pbtxt over code, with clear errors."""

from __future__ import annotations

import pytest

from shared.errors import ModelLoadError
from shared.params import Param, load_params, resolve

SPECS = [*load_params("default-model"), Param("max_audio_seconds", 30.0, parse=float, minimum=1)]


def config(**values: str) -> dict:
    return {"parameters": {k: {"string_value": v} for k, v in values.items()}}


def test_defaults_then_config_then_environment() -> None:
    assert resolve(SPECS, config(), "stt", {})["model_path"] == "default-model"
    assert resolve(SPECS, config(model_path="a"), "stt", {})["model_path"] == "a"
    env = {"STT_MODEL_PATH": "b"}
    assert resolve(SPECS, config(model_path="a"), "stt", env)["model_path"] == "b"


def test_environment_is_per_model() -> None:
    env = {"STT_QUANTIZATION": "nf4"}
    assert resolve(SPECS, config(), "stt", env)["quantization"] == "nf4"
    assert resolve(SPECS, config(), "vlm_stream", env)["quantization"] == "none"
    assert (
        resolve(SPECS, config(), "vlm_stream", {"VLM_STREAM_QUANTIZATION": "int8"})["quantization"]
        == "int8"
    )


def test_values_are_parsed_and_checked() -> None:
    assert resolve(SPECS, config(max_audio_seconds="12.5"), "stt", {})["max_audio_seconds"] == 12.5
    with pytest.raises(
        ModelLoadError, match="'quantization' from environment variable STT_QUANTIZATION"
    ):
        resolve(SPECS, config(), "stt", {"STT_QUANTIZATION": "int3"})
    with pytest.raises(ModelLoadError, match="max_audio_seconds.*minimum"):
        resolve(SPECS, config(max_audio_seconds="0"), "stt", {})
    with pytest.raises(ModelLoadError, match="from config.pbtxt"):
        resolve(SPECS, config(num_threads="many"), "stt", {})


def test_unknown_config_parameter_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="unknown parameters \\['quantisation'\\]"):
        resolve(SPECS, config(quantisation="nf4"), "stt", {})


def test_a_float_setting_must_be_finite() -> None:
    """nan passes any minimum/maximum comparison, so it is refused on its own."""
    setting = Param("temperature", 1.0, parse=float, minimum=0.0, maximum=2.0)
    assert setting.convert("0.5", "config.pbtxt") == 0.5
    for bad in ("nan", "inf"):
        with pytest.raises(ModelLoadError, match="'temperature' from config.pbtxt is"):
            setting.convert(bad, "config.pbtxt")


def test_a_version_parameters_json_wins_and_is_checked(tmp_path) -> None:
    """A version's own settings beat the environment (an A/B pair stays a pair), and what
    it names is held to the same rules as config.pbtxt."""
    from shared.loading import version_parameters

    env = {"STT_QUANTIZATION": "nf4"}
    version = {"quantization": "int8"}
    assert (
        resolve(SPECS, config(quantization="none"), "stt", env, version)["quantization"] == "int8"
    )
    assert resolve(SPECS, config(quantization="none"), "stt", env, {})["quantization"] == "nf4"
    with pytest.raises(ModelLoadError, match=r"parameters.json of model 'stt' has unknown"):
        resolve(SPECS, config(), "stt", {}, {"quantisation": "int8"})
    with pytest.raises(ModelLoadError, match="the version's parameters.json is 'int3'"):
        resolve(SPECS, config(), "stt", {}, {"quantization": "int3"})

    args = {"model_repository": str(tmp_path), "model_version": "2"}
    assert version_parameters(args) == {}  # no file: nothing of its own
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "parameters.json").write_text('{"quantization": "int8"}')
    assert version_parameters(args) == version
    (tmp_path / "2" / "parameters.json").write_text('{"max_audio_seconds": 30}')
    with pytest.raises(ModelLoadError, match="must map setting names to string values"):
        version_parameters(args)
    (tmp_path / "2" / "parameters.json").write_text("{")
    with pytest.raises(ModelLoadError, match="not readable JSON"):
        version_parameters(args)
