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
    assert resolve_placement("none", "auto", "cpu", flags=()).dtype == "float32"
    assert resolve_placement("nf4", "bfloat16", "cpu").quantization == "nf4"
    with pytest.raises(ModelLoadError, match="not one of"):
        resolve_placement("int2", "auto", "cpu")
    with pytest.raises(ModelLoadError, match="float16 is not supported on the CPU"):
        resolve_placement("none", "float16", "cpu")


def test_auto_dtype_follows_the_cpu_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dtype=auto: bfloat16 on a CPU with native bf16 (avx512_bf16 or AMX), float32 on one
    without, float16 on a GPU, bfloat16 with int4 anywhere on a CPU; the load line says why.
    A dtype that is set is kept as set, whatever the flags."""
    from shared import quantization

    avx = {"avx2", "avx512f", "avx512_bf16"}
    placement = resolve_placement("none", "auto", "cpu", flags=avx)
    assert (placement.dtype, placement.auto) == ("bfloat16", "avx512_bf16")
    assert "dtype=bfloat16 (auto: avx512_bf16) device=cpu" in placement.describe()
    assert resolve_placement("nf4", "auto", "cpu", flags={"amx_bf16", *avx}).auto == "amx_bf16"
    plain = resolve_placement("none", "auto", "cpu", flags={"avx2", "avx512f"})
    assert plain.dtype == "float32"
    assert "dtype=float32 (auto: no bf16 in the CPU flags)" in plain.describe()
    assert resolve_placement("int4", "auto", "cpu", flags=()).dtype == "bfloat16"
    assert resolve_placement("none", "auto", "cuda:0", flags=avx).dtype == "float16"
    for dtype in ("float32", "bfloat16"):
        chosen = resolve_placement("none", dtype, "cpu", flags=avx)
        assert (chosen.dtype, chosen.auto) == (dtype, "")
        assert f"dtype={dtype} device=cpu" in chosen.describe()

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(quantization, "CPUINFO", cpuinfo)
    assert quantization.cpu_flags.__wrapped__() == {"fpu", "sse2", "avx512_bf16"}
    monkeypatch.setattr(quantization, "CPUINFO", tmp_path / "missing")
    assert quantization.cpu_flags.__wrapped__() == frozenset()


def test_gpu_kind_without_cuda_fails_instead_of_falling_back() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="KIND_GPU but CUDA is not available"):
        resolve_device("KIND_GPU", "0")
