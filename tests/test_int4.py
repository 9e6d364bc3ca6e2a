"""quantization=int4: weight-only int4 layers on torch's CPU kernel (shared.int4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shared.errors import ModelLoadError
from shared.int4 import GROUP_SIZE, Int4Linear, quantize_linears
from shared.loading import LoadPlan
from shared.quantization import pretrained_kwargs, resolve_placement


def q4_1_weight(out_features: int, in_features: int, seed: int) -> torch.Tensor:
    """Weights as a Q4_1 GGUF holds them: per group of 32, level * scale + minimum, with
    levels 0 and 15 present (llama.cpp's quantizer maps a group's extremes to them)."""
    gen = torch.Generator().manual_seed(seed)
    groups = in_features // GROUP_SIZE
    levels = torch.randint(0, 16, (out_features, groups, GROUP_SIZE), generator=gen)
    levels[..., 0], levels[..., 1] = 0, 15
    scale = torch.rand(out_features, groups, 1, generator=gen) * 0.02 + 1e-3
    minimum = -torch.rand(out_features, groups, 1, generator=gen) * 0.1
    weight = levels * scale + minimum
    weight[0, 0] = 0.25  # a constant group (scale 0) must come back too
    return weight.view(out_features, in_features)


def linear(weight: torch.Tensor, bias: bool = False) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    layer.weight.data = weight.clone()
    return layer


def test_q4_1_weights_come_back_exactly_in_float32() -> None:
    """The default SmolLM2 checkpoint's layers are Q4_1: with float32 activations the int4
    layer computes what the float32 layer does (up to summation order)."""
    layer = linear(q4_1_weight(64, 128, seed=0), bias=True)
    x = torch.randn(5, 3, 128)
    packed = Int4Linear(layer, torch.float32)
    torch.testing.assert_close(packed(x), layer(x), rtol=1e-5, atol=1e-5)


def test_any_weight_is_off_by_at_most_half_a_step() -> None:
    """Other weights are rounded to the nearest of 16 levels between the group's extremes."""
    weight = torch.randn(32, 64)
    packed = Int4Linear(linear(weight), torch.float32)
    dequantized = packed(torch.eye(64)).T  # row j of the identity reads input column j
    groups = weight.view(32, -1, GROUP_SIZE)
    step = (groups.amax(-1) - groups.amin(-1)) / 15
    error = (dequantized - weight).abs().view(32, -1, GROUP_SIZE)
    assert bool((error <= step[..., None] / 2 + 1e-6).all())


def test_bfloat16_activations_stay_close_and_keep_their_dtype() -> None:
    layer = linear(q4_1_weight(48, 96, seed=1))
    x = torch.randn(4, 96)
    out = Int4Linear(layer, torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (4, 48)
    torch.testing.assert_close(out.float(), layer(x), rtol=2e-2, atol=2e-2)


class TinyLm(nn.Module):
    """An embedding with a tied output head, a packable layer and an unpackable one."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 64)
        self.up = linear(q4_1_weight(96, 64, seed=2))
        self.odd = nn.Linear(96, 40)  # out_features not a multiple of 16: the kernel refuses
        self.down = linear(q4_1_weight(64, 96, seed=3))
        self.lm_head = nn.Linear(64, 32, bias=False)
        self.lm_head.weight = self.embed.weight
        self.norm = nn.LayerNorm(64)  # last, as in transformers' models (their rule skips it)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    @property
    def all_tied_weights_keys(self) -> dict[str, str]:
        return {"lm_head.weight": "embed.weight"}

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.up(self.embed(ids))
        return self.lm_head(self.norm(self.down(hidden))), self.odd(hidden)


def test_quantize_linears_keeps_the_output_head_and_what_cannot_pack() -> None:
    model = TinyLm()
    ids = torch.tensor([[1, 5, 7]])
    before = model(ids)
    report = quantize_linears(model, torch.float32)
    assert isinstance(model.up, Int4Linear) and isinstance(model.down, Int4Linear)
    assert isinstance(model.lm_head, nn.Linear) and isinstance(model.odd, nn.Linear)
    assert report.converted == 2 and sorted(report.kept) == ["lm_head", "odd"]
    assert "int4 linear layers: 2, kept 2" in report.describe()
    for mine, theirs in zip(model(ids), before, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_int4_placement() -> None:
    """auto means bfloat16 with int4 (the kernel's fast path); no bitsandbytes arguments. On a
    GPU, int4 (what earlier deployments set) loads as bitsandbytes' 4-bit nf4 in float16, and
    the load line says so."""
    placement = resolve_placement("int4", "auto", "cpu")
    assert (placement.quantization, placement.dtype) == ("int4", "bfloat16")
    assert resolve_placement("int4", "auto", "cpu", flags=()).dtype == "bfloat16"
    assert resolve_placement("int4", "float32", "cpu").dtype == "float32"
    assert "quantization_config" not in pretrained_kwargs(placement)
    assert "asked" not in placement.describe()
    gpu = resolve_placement("int4", "auto", "cuda:0")
    assert (gpu.quantization, gpu.dtype, gpu.device) == ("nf4", "float16", "cuda:0")
    assert gpu.describe() == (
        "quantization=nf4 (asked int4: 4-bit weights on cuda:0) dtype=float16 (auto: GPU) "
        "device=cuda:0"
    )
    config = pretrained_kwargs(gpu)["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    with pytest.raises(ModelLoadError, match="float16 is not supported on the CPU"):
        resolve_placement("int4", "float16", "cpu")


def test_the_default_smollm2_packed_as_int4_answers_as_in_float32(model_store) -> None:
    """The shipped checkpoint's layers are the GGUF's Q4_1 ones: packed as int4 and computed
    with float32 activations, the model gives float32's greedy tokens, batched."""
    from backends.chat.engine import VlmEngine
    from backends.chat.service import ChatService
    from backends.chat.settings import chat_params
    from shared.chat import ChatRequest
    from shared.params import resolve

    def service(quantization: str) -> ChatService:
        config = {"parameters": {"max_new_tokens": {"string_value": "6"}}}
        settings = resolve(chat_params("smolvlm-256m-smollm2"), config, "vlm_stream", {})
        placement = resolve_placement(quantization, "float32", "cpu")
        engine = VlmEngine.load(LoadPlan(settings, placement, model_store / "smolvlm-256m-smollm2"))
        return ChatService(engine, settings)

    requests = [ChatRequest("What is the capital of France?"), ChatRequest("Name a colour.")]
    answers = {}
    for quantization in ("none", "int4"):
        chat = service(quantization)
        answers[quantization] = [c.token_ids for c in chat.run([chat.prepare(r) for r in requests])]
    assert (
        "int4 linear layers: " in chat.engine.describe() and "(lm_head)" in chat.engine.describe()
    )
    assert answers["int4"] == answers["none"] and all(len(ids) == 6 for ids in answers["none"])
