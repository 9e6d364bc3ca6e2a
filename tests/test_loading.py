"""Secure loading: paths confined to the store, safetensors only, clear errors; placements."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ModelLoadError
from shared.loading import resolve_model_dir
from shared.quantization import resolve_device, resolve_placement


def checkpoint(path: Path, weights: str = "model.safetensors") -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}", encoding="utf-8")
    (path / weights).write_bytes(b"")
    return path


def test_relative_and_absolute_paths_inside_the_store(tmp_path: Path) -> None:
    ckpt = checkpoint(tmp_path / "store" / "m")
    assert resolve_model_dir("m", tmp_path / "store") == ckpt
    assert resolve_model_dir(str(ckpt), tmp_path / "store") == ckpt


@pytest.mark.parametrize("escape", ["../outside", "/etc", "m/../../outside"])
def test_paths_outside_the_store_are_refused(tmp_path: Path, escape: str) -> None:
    checkpoint(tmp_path / "store" / "m")
    checkpoint(tmp_path / "outside")
    with pytest.raises(ModelLoadError, match="outside the model store"):
        resolve_model_dir(escape, tmp_path / "store")


def test_symlink_out_of_the_store_is_refused(tmp_path: Path) -> None:
    outside = checkpoint(tmp_path / "outside")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "link").symlink_to(outside)
    with pytest.raises(ModelLoadError, match="outside the model store"):
        resolve_model_dir("link", tmp_path / "store")


def test_missing_directory_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"store/nope does not exist"):
        resolve_model_dir("nope", tmp_path / "store")


def test_pickle_weights_are_refused(tmp_path: Path) -> None:
    checkpoint(tmp_path / "store" / "m", weights="pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="no \\*.safetensors.*pytorch_model.bin.*refused"):
        resolve_model_dir("m", tmp_path / "store")


def test_missing_config_is_refused(tmp_path: Path) -> None:
    ckpt = checkpoint(tmp_path / "store" / "m")
    (ckpt / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        resolve_model_dir("m", tmp_path / "store")


def test_placement_resolution() -> None:
    assert resolve_device("KIND_CPU", "0") == "cpu"
    assert resolve_placement("none", "auto", "cpu").dtype == "float32"
    assert resolve_placement("nf4", "bfloat16", "cpu").quantization == "nf4"
    with pytest.raises(ModelLoadError, match="not one of"):
        resolve_placement("int2", "auto", "cpu")
    with pytest.raises(ModelLoadError, match="float16 is not supported on the CPU"):
        resolve_placement("none", "float16", "cpu")


def test_gpu_kind_without_cuda_fails_instead_of_falling_back() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="KIND_GPU but CUDA is not available"):
        resolve_device("KIND_GPU", "0")
