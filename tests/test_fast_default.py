"""The shipped `dtype=auto` on this machine keeps quality (docs/settings.md, the auto rule).

The real SmolLM2 of the shipped `llm` model, in-process, in the dtype `auto` picks here
(bfloat16 on a CPU with native bf16, float32 elsewhere): the factual prompts of
tests/test_llm_real.py are still answered right, alone and batched. The bounds for speech
(word error rate within 0.01 of float32's) are held served, by tests/test_stt_accuracy.py for
`stt` and tests/test_tts_roundtrip.py for the voice; docs/benchmarks.md ("The fast default")
measures all of them side by side with the speed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.chat.service import ChatService
from backends.chat.settings import chat_params
from shared.chat import ChatRequest
from shared.loading import LoadPlan
from shared.params import resolve
from shared.quantization import cpu_flags, resolve_placement
from tests.harness.config import to_dict
from tests.test_llm_real import FACTS, TOKENS
from tools.loadtest.inputs import read_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped_llm(model_store: Path) -> ChatService:
    """The chat engine (`vlm_stream`, which `llm` answers through) with its shipped
    config.pbtxt's settings (dtype=auto), no environment."""
    config = to_dict(read_config(ROOT / "model_repository" / "vlm_stream"))
    settings = resolve(chat_params("smolvlm-256m-smollm2"), config, "vlm_stream", {})
    assert settings["dtype"] == "auto"
    placement = resolve_placement(settings["quantization"], settings["dtype"], "cpu")
    return ChatService.load(LoadPlan(settings, placement, model_store / settings["model_path"]))


def test_auto_is_what_the_cpu_flags_say(shipped_llm: ChatService) -> None:
    native = {"avx512_bf16", "amx_bf16"} & cpu_flags()
    expected = "bfloat16" if native else "float32"
    assert f"dtype={expected} (auto: " in shipped_llm.describe()


def test_the_facts_stay_right_alone_and_batched(shipped_llm: ChatService) -> None:
    requests = [ChatRequest(question, max_new_tokens=TOKENS) for question, _ in FACTS]
    alone = [shipped_llm.run([shipped_llm.prepare(r)])[0].text for r in requests]
    batched = [c.text for c in shipped_llm.run([shipped_llm.prepare(r) for r in requests])]
    for (question, word), one, many in zip(FACTS, alone, batched, strict=True):
        assert word in one and word in many, (question, one, many)
