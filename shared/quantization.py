"""Quantization, dtype and device: from configuration strings to `from_pretrained` arguments.

bitsandbytes does the quantization (`int8`, `nf4`, `fp4`), on CUDA and on the CPU; `int4` is
torch's own weight-only int4 CPU kernel (shared.int4), the fastest for a lone text request on
a CPU. On a GPU, `int4` (the name earlier deployments set, QUANTIZATION_TYPE=int4) means
bitsandbytes' 4-bit weights (nf4): the same memory per weight through the CUDA kernels the
image ships, said in the load line. What the platform cannot do fails the load with the reason;
there is no silent fallback to another setting, because an operator who asked for nf4 to fit a
GPU must not get fp32.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from shared.errors import ModelLoadError

QUANTIZATIONS = ("none", "int8", "nf4", "fp4", "int4")
BITSANDBYTES = ("int8", "nf4", "fp4")
DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Placement:
    """Where and how a model's weights live."""

    device: str  # "cpu" or "cuda:<n>"
    dtype: str  # resolved: float32 | float16 | bfloat16
    quantization: str  # none | int8 | nf4 | fp4 | int4
    asked: str = ""  # the quantization the settings named, when the device runs another

    def describe(self) -> str:
        """What the load line says of the placement (and of a quantization the device maps)."""
        mapped = f" (asked {self.asked}: 4-bit weights on {self.device})" if self.asked else ""
        return f"quantization={self.quantization}{mapped} dtype={self.dtype} device={self.device}"


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


def resolve_placement(quantization: str, dtype: str, device: str) -> Placement:
    """Check that the combination can run here and pick the compute dtype for `auto`."""
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
    if dtype == "auto":
        # int4's kernel is fast for bfloat16 activations only (measured over 10x slower in float32).
        dtype = ("bfloat16" if quantization == "int4" else "float32") if on_cpu else "float16"
    if quantization in BITSANDBYTES and importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            f"quantization {quantization!r} needs the bitsandbytes package, which is not installed"
        )
    if on_cpu and dtype == "float16":
        raise ModelLoadError(
            "dtype float16 is not supported on the CPU (half-precision matmuls are slow or "
            "missing there); use float32 or bfloat16"
        )
    return Placement(device=device, dtype=dtype, quantization=quantization, asked=asked)


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
