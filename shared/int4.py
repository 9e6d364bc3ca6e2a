"""Weight-only int4 linear layers on torch's own CPU kernel (quantization `int4`).

Why: on a CPU a decoding step at small batch sizes is bound by reading the weights, and
bitsandbytes' CPU 4-bit path dequantizes them before each matmul, so it saves memory but not
time. torch ships a CPU kernel that multiplies by packed 4-bit weights directly
(`_weight_int4pack_mm_for_cpu`, the kernel torchao's int4 CPU layout uses): weights are read at
half a byte each, the activations stay in the compute dtype.

The format is llama.cpp's Q4_1 and torchao's asymmetric int4: groups of 32 input weights, each
`w = q * scale + minimum` with q in 0..15, scale = (max - min) / 15. Weights that were Q4_1
already (the default SmolLM2 checkpoint is dequantized from a Q4_1 GGUF) come back exactly, so
with float32 activations the model computes what the unquantized float32 model does. The
kernel is fast for bfloat16 activations and slow for float32 (no vectorized path), so `auto`
picks bfloat16 with int4.

The output head and the layers tied to the embeddings stay in the compute dtype, as
transformers' bitsandbytes loading leaves them (`get_keys_to_not_convert`); so do layers whose
shape the kernel cannot pack (in_features not a multiple of 32, out_features of 16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

GROUP_SIZE = 32
_OUT_MULTIPLE = 16  # the packing kernel's requirement on out_features


class Int4Linear(nn.Module):
    """A `nn.Linear` whose weight is stored packed as int4 with a scale and zero per group."""

    packed: torch.Tensor
    scales_and_zeros: torch.Tensor

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach().to(torch.float32)
        groups = weight.view(self.out_features, -1, GROUP_SIZE)
        minimum = groups.amin(dim=-1)
        scale = (groups.amax(dim=-1) - minimum) / 15
        divisor = torch.where(scale == 0, torch.ones_like(scale), scale)
        levels = ((groups - minimum[..., None]) / divisor[..., None]).round().clamp(0, 15)
        levels = levels.to(torch.int32).view(self.out_features, self.in_features)
        self.register_buffer(
            "packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(levels, 1)
        )
        # The kernel computes (q - 8) * scale + zero, so zero = minimum + 8 * scale.
        self.register_buffer(
            "scales_and_zeros",
            torch.stack([scale, minimum + 8 * scale], dim=-1)
            .transpose(0, 1)
            .contiguous()
            .to(dtype),
        )
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        out = int4_matmul(rows, self.packed, self.scales_and_zeros)
        out = out.view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, group={GROUP_SIZE}"
        )


def int4_matmul(
    rows: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor
) -> torch.Tensor:
    """(rows, in) contiguous activations times packed int4 weights, in the scales' dtype."""
    if rows.dtype != scales_and_zeros.dtype:
        rows = rows.to(scales_and_zeros.dtype)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, GROUP_SIZE, scales_and_zeros)


@dataclass(frozen=True)
class Int4Report:
    """What `quantize_linears` changed, for the load log line."""

    converted: int
    kept: list[str]

    def describe(self) -> str:
        text = f"int4 linear layers: {self.converted}"
        if self.kept:
            names = ", ".join(self.kept[:4]) + (" ..." if len(self.kept) > 4 else "")
            text += f", kept {len(self.kept)} ({names})"
        return text


def packable(linear: nn.Linear) -> bool:
    return linear.in_features % GROUP_SIZE == 0 and linear.out_features % _OUT_MULTIPLE == 0


def quantize_linears(model: Any, dtype: torch.dtype) -> Int4Report:
    """Replace the model's `nn.Linear` layers by `Int4Linear`, in place, where they can be."""
    from transformers.quantizers.base import get_keys_to_not_convert

    skip = set(get_keys_to_not_convert(model))
    converted, kept = 0, []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            full = f"{parent_name}.{name}" if parent_name else name
            if full in skip or not packable(child):
                kept.append(full)
                continue
            setattr(parent, name, Int4Linear(child, dtype))
            converted += 1
    return Int4Report(converted=converted, kept=kept)
