"""The fused decoder (backends.chat.decode): generate()'s tokens, without holding weights twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from backends.chat.engine import EngineRow, VlmEngine
from backends.chat.sampling import Sampling
from backends.chat.settings import chat_params
from shared.chat import text_message
from shared.loading import LoadPlan
from shared.quantization import Placement

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
    "Say hello.",
]

CHAT_SETTINGS = chat_params("smolvlm-256m-smollm2")


def answers(engine: VlmEngine, max_new_tokens: int) -> tuple[list, list]:
    rows = [
        EngineRow(engine.encode([text_message("user", p)]), Sampling(max_new_tokens))
        for p in PROMPTS
    ]
    alone = [engine.generate([row])[0].token_ids for row in rows]
    together = [c.token_ids for c in engine.generate(rows)]
    return alone, together


def test_the_real_smollm2_decodes_generates_tokens_in_float32(model_store: Path) -> None:
    """On the shipped SmolLM2 the fused steps give generate()'s greedy tokens, alone and in a
    batch whose rows end at different steps (and so leave it)."""
    results = {}
    for decoder in ("generate", "fused"):
        engine = VlmEngine.load(
            LoadPlan.in_process(
                model_store / "smolvlm-256m-smollm2",
                Placement("cpu", "float32", "none"),
                CHAT_SETTINGS,
                decoder=decoder,
            )
        )
        results[decoder] = answers(engine, max_new_tokens=24)
    alone, together = results["fused"]
    assert results["fused"] == results["generate"]
    assert together == alone
    assert len({len(ids) for ids in alone}) > 1, "the rows should end at different steps"


@pytest.mark.parametrize("quantization", ["none", "int4"])
def test_fused_projections_share_the_models_weights(model_store: Path, quantization: str) -> None:
    """q/k/v and gate/up are one matrix each, and the model's modules are views of it."""
    dtype = "bfloat16" if quantization == "int4" else "float32"
    engine = VlmEngine.load(
        LoadPlan.in_process(
            model_store / "smolvlm-tiny-random",
            Placement("cpu", dtype, quantization),
            CHAT_SETTINGS,
            decoder="fused",
        )
    )
    name = "packed" if quantization == "int4" else "weight"
    for layer in engine.model.get_decoder().layers:
        attention, mlp = layer.self_attn, layer.mlp
        for group in (
            (attention.q_proj, attention.k_proj, attention.v_proj),
            (mlp.gate_proj, mlp.up_proj),
        ):
            storages = {getattr(m, name).untyped_storage().data_ptr() for m in group}
            assert len(storages) == 1, f"{group} hold their own copies"


def test_a_single_bfloat16_row_restores_onednn(model_store: Path) -> None:
    """One bfloat16 row runs its matmuls without oneDNN (faster there), and oneDNN is back on
    afterwards, also when the step fails."""
    engine = VlmEngine.load(
        LoadPlan.in_process(
            model_store / "smolvlm-tiny-random",
            Placement("cpu", "bfloat16", "none"),
            CHAT_SETTINGS,
            decoder="fused",
        )
    )
    seen: list[bool] = []
    head = engine.fused.head  # type: ignore[union-attr]
    forward = head.forward

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.backends.mkldnn.enabled)
        return forward(x)

    head.forward = spy
    rows = [EngineRow(engine.encode([text_message("user", "Hi")]), Sampling(3))]
    engine.generate(rows)
    engine.generate(rows * 4)
    # Each generate(): the prompt pass (transformers, oneDNN on), then two fused steps.
    assert seen == [True, False, False, True, True, True] and torch.backends.mkldnn.enabled

    def broken(x: torch.Tensor) -> torch.Tensor:
        if not torch.backends.mkldnn.enabled:
            raise RuntimeError("boom")
        return forward(x)

    head.forward = broken
    with pytest.raises(RuntimeError, match="boom"):
        engine.generate(rows)
    assert torch.backends.mkldnn.enabled


def test_float32_on_a_cpu_never_steps_two_or_three_rows(model_store: Path) -> None:
    """Finished rows leave the batch, except that float32 on a CPU keeps up to 4 rows rather
    than step 2 or 3 (its BLAS kernels are slower for those than for 4)."""

    def decoder(dtype: str) -> Any:
        placement = Placement("cpu", dtype, "none")
        plan = LoadPlan.in_process(
            model_store / "smolvlm-tiny-random", placement, CHAT_SETTINGS, decoder="fused"
        )
        return VlmEngine.load(plan).fused

    float32, bfloat16 = decoder("float32"), decoder("bfloat16")
    assert [float32.batch_rows(going, 16) for going in (1, 2, 3, 4, 5)] == [1, 4, 4, 4, 5]
    assert float32.batch_rows(2, 3) == 3
    assert [bfloat16.batch_rows(going, 16) for going in (1, 2, 3)] == [1, 2, 3]
