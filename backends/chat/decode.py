"""A lean decoding step for Llama-family language models (the chat setting `decoder`).

Why: at one request a CPU spends as long in `generate()`'s per-step Python (about 400 module
calls, mask building, cache bookkeeping, logits processors) as in the matmuls themselves. This
step does the same arithmetic in as few calls as it can:

* the q/k/v projections are one matmul, and so are the MLP's gate and up projections (the
  weights are concatenated once at load; the model's own modules are then re-pointed at views
  of the concatenated weights, so the weights are not held twice and the prompt pass, which
  still runs through transformers, reads the same memory; only the per-group scales of int4's
  fused q/k/v and gate/up, a quarter of the packed weights' size, are kept in both layouts);
* keys and values go to buffers allocated once per batch for its longest possible answer,
  not grown every step;
* rows that finished (end of turn, their own max_new_tokens, a stop string, a cancelled client)
  leave the batch, so the rows still going do not pay for them (`batch_rows` says where a
  smaller batch would be slower).

RMSNorm, the rotary embedding (the model's own module), attention (SDPA with grouped heads
packed as transformers does for one query) and the output head are computed as in
transformers, so in float32 the tokens are those of `generate()` (tested on the real
SmolLM2). The prompt pass (and with it every image) stays with the model's own forward.

Only what has been checked is accepted (`unsupported_reason`): Llama text models (SmolLM2,
SmolVLM's text backbone, Llama 2/3) without attention or MLP biases; anything else (Qwen2-VL's
3-D rotary positions, for one) decodes with `generate()`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shared.int4 import Int4Linear, int4_matmul

Projection = Callable[[torch.Tensor], torch.Tensor]


class UnsupportedModel(ValueError):
    """The fused decoder cannot run this model; `reason` says why (`unsupported_reason`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the fused decoder cannot run this model: {reason}")
        self.reason = reason


def unsupported_reason(model: Any) -> str | None:
    """Why `FusedDecoder` cannot decode for `model` (None: it can)."""
    decoder = model.get_decoder()
    config = decoder.config
    if getattr(config, "model_type", None) != "llama":
        return f"its language model is {type(decoder).__name__}, not a Llama model"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "its projections have biases"
    if getattr(config, "hidden_act", None) != "silu":
        return f"its activation is {config.hidden_act}, not silu"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "it uses tensor-parallel pretraining slices (pretraining_tp)"
    if model.get_output_embeddings() is None:
        return "it has no output head"
    return None


def _fuse(modules: Sequence[nn.Module]) -> Projection:
    """One call computing every module's output side by side (concatenated on the last axis).

    Plain linear layers and int4 layers share one weight matrix; the modules' own weights
    become views into it. Other layers (bitsandbytes) are called one by one.
    """
    if all(type(m) is nn.Linear for m in modules):
        weight = _joined(modules, "weight", dim=0)
        return lambda x: F.linear(x, weight)
    int4 = [m for m in modules if isinstance(m, Int4Linear)]
    if len(int4) == len(modules) and all(m.bias is None for m in int4):
        packed = _joined(modules, "packed", dim=0)
        scales = (
            torch.cat([m.scales_and_zeros for m in int4], dim=1).contiguous()
            if len(int4) > 1
            else int4[0].scales_and_zeros
        )
        return lambda x: int4_matmul(x, packed, scales)
    if len(modules) == 1:
        return modules[0]
    return lambda x: torch.cat([m(x) for m in modules], dim=-1)


def _joined(modules: Sequence[nn.Module], name: str, dim: int) -> torch.Tensor:
    """The modules' tensors `name` as one, which each module then sees a slice of (a single
    module's own tensor is used as it is, not copied)."""
    if len(modules) == 1:
        return getattr(modules[0], name).detach()
    fused = torch.cat([getattr(m, name).detach() for m in modules], dim=dim)
    start = 0
    for module in modules:
        rows = getattr(module, name).shape[dim]
        view = fused.narrow(dim, start, rows)
        if isinstance(getattr(module, name), nn.Parameter):
            setattr(module, name, nn.Parameter(view, requires_grad=False))
        else:
            setattr(module, name, view)
        start += rows
    return fused


def _rms_norm(norm: Any) -> Projection:
    """transformers' LlamaRMSNorm (normalised in float32, then scaled in the model's dtype)
    with the normalisation as one fused call: bit for bit the same result."""
    weight, eps = norm.weight, float(norm.variance_epsilon)
    shape = (weight.shape[0],)
    if weight.dtype == torch.float32:
        return lambda x: weight * F.rms_norm(x, shape, None, eps)
    return lambda x: weight * F.rms_norm(x.float(), shape, None, eps).to(x.dtype)


class _Layer:
    """One decoder layer's weights, with its projections fused."""

    def __init__(self, layer: Any) -> None:  # a LlamaDecoderLayer
        attention, mlp = layer.self_attn, layer.mlp
        self.input_norm = _rms_norm(layer.input_layernorm)
        self.post_norm = _rms_norm(layer.post_attention_layernorm)
        self.qkv = _fuse([attention.q_proj, attention.k_proj, attention.v_proj])
        self.o = _fuse([attention.o_proj])
        self.gate_up = _fuse([mlp.gate_proj, mlp.up_proj])
        self.down = _fuse([mlp.down_proj])


class DecodeState:
    """The key/value buffers, attention mask and positions of the rows still decoding.

    Every row writes its next key and value at the same column (`length`): rows that are
    shorter are left-padded with masked columns. Rows join (`join`: another state's rows, made
    by a prompt pass, are right-aligned with these) and leave (`keep`) between steps, which is
    what continuous batching (`backends.chat.scheduler`) needs; a static batch only leaves.
    """

    def __init__(
        self,
        cache: Any,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        max_new_tokens: int,
    ) -> None:
        """From the prompt pass: its cache, mask and position ids (rows, prompt length)."""
        rows, length = attention_mask.shape
        self.length = length  # filled positions
        capacity = length + max_new_tokens
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for layer in cache.layers:
            keys = layer.keys.new_empty((*layer.keys.shape[:2], capacity, layer.keys.shape[3]))
            values = layer.values.new_empty(
                (*layer.values.shape[:2], capacity, layer.values.shape[3])
            )
            keys[:, :, :length] = layer.keys
            values[:, :, :length] = layer.values
            self.keys.append(keys)
            self.values.append(values)
        self.mask = torch.ones(
            (rows, 1, 1, capacity), dtype=torch.bool, device=attention_mask.device
        )
        self.mask[:, 0, 0, :length] = attention_mask.bool()
        self.positions = positions[:, -1:]  # each row's last; a step adds one

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def capacity(self) -> int:
        """Columns allocated: `length` filled, the rest for the tokens still to come."""
        return int(self.mask.shape[-1])

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every row not in `rows` (indices into the current rows)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.mask = self.mask.index_select(0, rows)
        self.positions = self.positions.index_select(0, rows)

    def padding(self) -> int:
        """Leading columns that no row attends to (left by rows that have left)."""
        attended = self.mask[:, 0, 0, : self.length].any(dim=0)
        return int(attended.long().argmax()) if bool(attended.any()) else self.length

    def join(self, other: DecodeState, room: int) -> None:
        """Add `other`'s rows after these, with `room` free columns after the longest.

        Both sets of rows are right-aligned to the longer filled length; the columns that
        pad a row on the left are masked and zero (a masked column still enters attention's
        weighted sum with weight 0, so it must hold no NaN). Leading columns no row attends
        to are dropped on the way, so a batch that runs for hours does not grow its padding.
        """
        trim = self.padding()
        length = max(self.length - trim, other.length)
        capacity = length + room
        self.keys = [
            _aligned(a, b, self.length, other.length, trim, length, capacity)
            for a, b in zip(self.keys, other.keys, strict=True)
        ]
        self.values = [
            _aligned(a, b, self.length, other.length, trim, length, capacity)
            for a, b in zip(self.values, other.values, strict=True)
        ]
        mask = self.mask.new_zeros((self.rows + other.rows, 1, 1, capacity))
        mask[:, :, :, length:] = True
        mask[: self.rows, :, :, length - (self.length - trim) : length] = self.mask[
            :, :, :, trim : self.length
        ]
        mask[self.rows :, :, :, length - other.length : length] = other.mask[
            :, :, :, : other.length
        ]
        self.mask = mask
        self.positions = torch.cat([self.positions, other.positions])
        self.length = length

    def reserve(self, room: int) -> None:
        """Make sure `room` columns are free after `length` (growing the buffers if not)."""
        if self.capacity - self.length >= room:
            return
        grow = self.length + room - self.capacity
        self.keys = [F.pad(k, (0, 0, 0, grow)) for k in self.keys]
        self.values = [F.pad(v, (0, 0, 0, grow)) for v in self.values]
        self.mask = F.pad(self.mask, (0, grow), value=True)


def _aligned(
    mine: torch.Tensor,
    theirs: torch.Tensor,
    my_length: int,
    their_length: int,
    trim: int,
    length: int,
    capacity: int,
) -> torch.Tensor:
    """One layer's buffer (rows, heads, capacity, dim) holding both sets of rows, each
    right-aligned to `length` (mine without its first `trim` columns)."""
    rows, heads, _, dim = mine.shape
    joined = mine.new_zeros((rows + theirs.shape[0], heads, capacity, dim))
    kept = my_length - trim
    joined[:rows, :, length - kept : length] = mine[:, :, trim:my_length]
    joined[rows:, :, length - their_length : length] = theirs[:, :, :their_length]
    return joined


class FusedDecoder:
    """Decoding steps for a Llama-family model (see the module doc)."""

    def __init__(self, model: Any) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise UnsupportedModel(reason)
        decoder = model.get_decoder()
        config = decoder.config
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        self.intermediate = int(config.intermediate_size)
        self.scaling = self.head_dim**-0.5
        self.embed = decoder.embed_tokens
        self.rotary = decoder.rotary_emb
        self.norm = _rms_norm(decoder.norm)
        self.head = model.get_output_embeddings()
        self.layers = [_Layer(layer) for layer in decoder.layers]
        # oneDNN's bfloat16/float16 matmul is slow for a single row; torch's own
        # matrix-vector kernel is about twice as fast there (and oneDNN faster from ~4 rows).
        self.half = self.head.weight.dtype in (torch.bfloat16, torch.float16)
        self.float32_cpu = self.head.weight.dtype == torch.float32 and not self.head.weight.is_cuda

    def batch_rows(self, going: int, current: int) -> int:
        """How many of `current` rows the next step runs when `going` of them still decode.

        `going`, except where a smaller step costs more: in float32 on a CPU the BLAS kernels
        for 2 and 3 rows are slow (SmolLM2 steps of 1/2/3/4 rows took 63/113/154/99 ms here),
        so such a batch keeps up to 4 rows, finished ones riding along.
        """
        if self.float32_cpu and going in (2, 3):
            return min(4, current)
        return going

    def step(self, tokens: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """Feed one token per row; the next-token logits (rows, vocabulary) in float32."""
        if not (self.half and tokens.shape[0] == 1 and torch.backends.mkldnn.enabled):
            return self._step(tokens, state)
        torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # a settable flag
        try:
            return self._step(tokens, state)
        finally:
            torch.backends.mkldnn.enabled = True  # type: ignore[assignment]

    def _step(self, tokens: torch.Tensor, state: DecodeState) -> torch.Tensor:
        rows = tokens.shape[0]
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        state.positions = state.positions + 1
        at = state.length
        state.length += 1
        hidden = self.embed(tokens)  # (rows, hidden)
        cos, sin = self.rotary(hidden, state.positions)  # (rows, 1, head_dim)
        mask = state.mask[..., : at + 1]
        q_size, kv_size = heads * dim, kv_heads * dim
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(layer.input_norm(hidden))
            # Queries and keys rotate in one go: (rows, heads + kv_heads, head_dim).
            rotated = _rotate(
                qkv[:, : q_size + kv_size].view(rows, heads + kv_heads, dim), cos, sin
            )
            keys, values = state.keys[index], state.values[index]
            keys[:, :, at] = rotated[:, heads:]
            values[:, :, at] = qkv[:, q_size + kv_size :].view(rows, kv_heads, dim)
            # One query per row: its heads grouped per key/value head, as transformers packs them.
            attended = F.scaled_dot_product_attention(
                rotated[:, :heads].reshape(rows, kv_heads, heads // kv_heads, dim),
                keys[:, :, : at + 1],
                values[:, :, : at + 1],
                attn_mask=mask,
                scale=self.scaling,
            )
            hidden = hidden + layer.o(attended.reshape(rows, q_size))
            gate_up = layer.gate_up(layer.post_norm(hidden))
            gate, up = gate_up[:, : self.intermediate], gate_up[:, self.intermediate :]
            hidden = hidden + layer.down(F.silu(gate) * up)
        return self.head(self.norm(hidden)).float()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, as transformers' apply_rotary_pos_emb."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
