"""Random-weight VLM checkpoints: complete, loadable through Auto*, with the real layouts.

Their answers are babble, so the tests assert what serving relies on: the files and token ids
of a real checkpoint, the chat templates, the image token expansion of each processor family,
answers that depend on the input, and (for the benchmark variant) SmolVLM-256M's exact shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from backends.chat.engine import ImageOnlyProcessors
from tools.model_store.manifest import MARKER
from tools.model_store.smollm2_gguf import smolvlm_added_tokens
from tools.model_store.vlm_random import (
    QWEN_SPECIALS,
    VARIANTS,
    build_random_vlm,
    smolvlm_config,
    smolvlm_tokenizer,
)

TINY = ["qwen2.5-vl-tiny", "smolvlm-tiny"]
FILES = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    MARKER,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("random-vlm")
    return {v: build_random_vlm(root / VARIANTS[v].store_name, v) for v in TINY}


def load(path: Path):
    processor = ImageOnlyProcessors.from_pretrained(path, local_files_only=True)
    model, info = AutoModelForImageTextToText.from_pretrained(
        path, local_files_only=True, use_safetensors=True, output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    return processor, model.eval()


def picture(seed: int, size: tuple[int, int] = (56, 84)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


@pytest.mark.parametrize("variant", TINY)
def test_files_and_manifest(built: dict[str, Path], variant: str) -> None:
    path = built[variant]
    assert {p.name for p in path.iterdir()} == FILES
    manifest = json.loads((path / MARKER).read_text(encoding="utf-8"))
    assert manifest["variant"] == variant and manifest["builder"] == "vlm_random"
    assert manifest["shape"]["store_name"] == VARIANTS[variant].store_name
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert build_random_vlm(path, variant) == path  # complete: skipped, nothing rewritten
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime


def test_an_incomplete_entry_is_rebuilt(tmp_path: Path) -> None:
    path = build_random_vlm(tmp_path / "smolvlm-tiny-random", "smolvlm-tiny")
    (path / "tokenizer.json").write_text("{}", encoding="utf-8")  # truncated by a crash
    build_random_vlm(path, "smolvlm-tiny")
    assert json.loads((path / "tokenizer.json").read_text(encoding="utf-8")).get("model")


def test_qwen_layout_template_and_image_tokens(built: dict[str, Path]) -> None:
    processor, model = load(built["qwen2.5-vl-tiny"])
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids(QWEN_SPECIALS)
    assert ids == list(range(ids[0], ids[0] + len(QWEN_SPECIALS))) and ids[-1] == len(tokenizer) - 1
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids(
        ["<|im_end|>", "<|endoftext|>"]
    )
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n"
    )
    inputs = processor(text=[prompt], images=[picture(0)], return_tensors="pt")
    grid = inputs["image_grid_thw"][0].tolist()
    assert grid == [1, 56 // 14, 84 // 14]  # dynamic resolution: a 56x84 image is 4x6 patches
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 4 * 6 // 4
    assert inputs["pixel_values"].shape == (4 * 6, 3 * 2 * 14 * 14)


def test_smolvlm_layout_template_and_image_tokens(built: dict[str, Path]) -> None:
    processor, model = load(built["smolvlm-tiny"])
    assert type(model).__name__ == "Idefics3ForConditionalGeneration"
    tokenizer = processor.tokenizer
    added = smolvlm_added_tokens()
    first = tokenizer.convert_tokens_to_ids(added[0])
    assert tokenizer.convert_tokens_to_ids(added) == list(range(first, first + len(added)))
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        0,
        1,
        2,
    ]
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids(
        "<end_of_utterance>"
    )
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>User:<image>Hi<end_of_utterance>\nAssistant:"
    inputs = processor(text=[prompt], images=[picture(0, (100, 60))], return_tensors="pt")
    # Longest edge resized to 2 crops of 64: 2x2 crops plus the global view, 16 tokens each.
    assert inputs["pixel_values"].shape == (1, 5, 3, 64, 64)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 5 * 16


@pytest.mark.parametrize("variant", TINY)
def test_answers_depend_on_the_prompt_and_the_image(built: dict[str, Path], variant: str) -> None:
    processor, model = load(built[variant])

    def greedy(text: str, image: Image.Image) -> list[int]:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
        ]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[prompt], images=[image], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=6,
                do_sample=False,
                top_k=None,
                top_p=None,
                temperature=None,
            )
        return out[0, inputs["input_ids"].shape[1] :].tolist()

    base = greedy("What is this?", picture(1))
    assert greedy("What is this?", picture(1)) == base
    assert greedy("What is this?", picture(2)) != base
    assert greedy("Describe it.", picture(1)) != base
    assert len(set(base)) > 1, "a random model stuck on one token tests nothing"


def test_the_benchmark_variant_has_smolvlm_256m_shape() -> None:
    # The config and tokenizer the builder writes; the 870 MiB of weights (built only on
    # request, for benchmarks) are not needed to know what a token costs.
    variant = VARIANTS["smolvlm-256m"]
    tokenizer = smolvlm_tokenizer(variant, seed=0)
    config = smolvlm_config(variant, tokenizer)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (576, 30, 9)
    assert (text.num_key_value_heads, text.intermediate_size, text.vocab_size) == (3, 1536, 49280)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size) == (768, 12, 16)
    assert (vision.image_size, config.scale_factor) == (512, 4)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    assert 227e6 < sum(p.numel() for p in model.parameters()) < 229e6
    assert variant.vision is not None and variant.vision.image_seq_len == 64
    ids = tokenizer.convert_tokens_to_ids
    assert (ids("<image>"), ids("<end_of_utterance>"), ids("<global-img>")) == (
        49190,
        49279,
        49152,
    )
