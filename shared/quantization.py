"""Quantization, dtype and device: from configuration strings to `from_pretrained` arguments.

bitsandbytes does the quantization (`int8`, `nf4`, `fp4`), on CUDA and on the CPU; `int4` is
torch's own weight-only int4 CPU kernel (shared.int4), the fastest for a lone text request on
a CPU. On a GPU, `int4` (the name earlier deployments set, QUANTIZATION_TYPE=int4) means
bitsandbytes' 4-bit weights (nf4): the same memory per weight through the CUDA kernels the
image ships, said in the load line. What the platform cannot do fails the load with the reason;
there is no silent fallback to another setting, because an operator who asked for nf4 to fit a
GPU must not get fp32.

`dtype=auto`, the shipped setting, picks per machine the fastest compute dtype measured to keep
quality (docs/benchmarks.md, "The fast default"): float16 on a GPU; on a CPU bfloat16 where the
CPU has native bf16 instructions (`avx512_bf16` or `amx_bf16` in /proc/cpuinfo, read at load),
float32 where it has not (bfloat16 would be emulated and slow); `int4` always computes in
bfloat16 (its kernel's fast path). The load line says which and why:
`dtype=bfloat16 (auto: avx512_bf16)`.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import ModelLoadError

QUANTIZATIONS = ("none", "int8", "nf4", "fp4", "int4")
BITSANDBYTES = ("int8", "nf4", "fp4")
DTYPES = ("auto", "float32", "float16", "bfloat16")
#: CPU flags (as /proc/cpuinfo names them) that mean native bfloat16 arithmetic, best first.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The flags of this machine's CPU (the first `flags` line of /proc/cpuinfo); none where
    the file is missing or has no such line (not Linux, or not x86)."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def auto_dtype(quantization: str, device: str, flags: Collection[str]) -> tuple[str, str]:
    """What `dtype=auto` means for `quantization` on `device`, and why (for the load line)."""
    if device != "cpu":
        return "float16", "GPU"
    if quantization == "int4":
        # int4's kernel is fast for bfloat16 activations only (measured over 10x slower in
        # float32), with or without native bf16.
        return "bfloat16", "int4"
    native = next((flag for flag in BF16_FLAGS if flag in flags), None)
    if native:
        return "bfloat16", native
    return "float32", "no bf16 in the CPU flags"


@dataclass(frozen=True)
class Placement:
    """Where and how a model's weights live."""

    device: str  # "cpu" or "cuda:<n>"
    dtype: str  # resolved: float32 | float16 | bfloat16
    quantization: str  # none | int8 | nf4 | fp4 | int4
    asked: str = ""  # the quantization the settings named, when the device runs another
    auto: str = ""  # why dtype=auto chose `dtype` (e.g. avx512_bf16); empty when it was set

    def describe(self) -> str:
        """What the load line says of the placement (and of a quantization the device maps)."""
        mapped = f" (asked {self.asked}: 4-bit weights on {self.device})" if self.asked else ""
        why = f" (auto: {self.auto})" if self.auto else ""
        return (
            f"quantization={self.quantization}{mapped} dtype={self.dtype}{why} device={self.device}"
        )


def resolve_device(instance_kind: str, device_id: str | int) -> str:
    """Map Triton's instance kind to a torch device.

    KIND_GPU means the GPU Triton assigned to this instance; KIND_CPU the CPU. KIND_MODEL and
    KIND_AUTO take the GPU when one is present.
    """
    import torch

    kind = instance_kind.upper().removeprefix("KIND_")
    cuda = torch.cuda.is_available()
    if kind == "GPU":
        if not cuda:
            raise ModelLoadError(
                "instance_group asks for KIND_GPU but CUDA is not available to this process"
            )
        return f"cuda:{int(device_id)}"
    if kind == "CPU":
        return "cpu"
    return f"cuda:{int(device_id)}" if cuda else "cpu"


def resolve_placement(
    quantization: str, dtype: str, device: str, flags: Collection[str] | None = None
) -> Placement:
    """Check that the combination can run here and pick the compute dtype for `auto`
    (`auto_dtype`, from `flags`: this CPU's, `cpu_flags()`, unless given)."""
    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"quantization {quantization!r} is not one of {QUANTIZATIONS}")
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not one of {DTYPES}")
    on_cpu = device == "cpu"
    asked = ""
    if quantization == "int4" and not on_cpu:
        # torch's int4 kernel is the CPU's; a GPU gets the same 4 bits per weight from
        # bitsandbytes, whose CUDA kernels the GPU image ships.
        asked, quantization = "int4", "nf4"
    why = ""
    if dtype == "auto":
        dtype, why = auto_dtype(quantization, device, cpu_flags() if flags is None else flags)
    if quantization in BITSANDBYTES and importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            f"quantization {quantization!r} needs the bitsandbytes package, which is not installed"
        )
    if on_cpu and dtype == "float16":
        raise ModelLoadError(
            "dtype float16 is not supported on the CPU (half-precision matmuls are slow or "
            "missing there); use float32 or bfloat16"
        )
    return Placement(device=device, dtype=dtype, quantization=quantization, asked=asked, auto=why)


def pretrained_kwargs(placement: Placement) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for the placement (dtype, device map, quantization)."""
    import torch
    from transformers import BitsAndBytesConfig

    torch_dtype = getattr(torch, placement.dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "device_map": placement.device}
    if placement.quantization == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif placement.quantization in ("nf4", "fp4"):
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=placement.quantization,
            bnb_4bit_compute_dtype=torch_dtype,
        )
    return kwargs
