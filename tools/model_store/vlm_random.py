"""Random-weight vision-language checkpoints of real architectures, built without a hub.

They exercise the exact loading and serving code of the `vlm`, `vlm_stream` and `llm` models:
`config.json` of the real architecture, safetensors weights, a tokenizer with the real
special-token layout, the real image processor configuration, the processor configuration
and the checkpoint's own chat template. Their answers are babble (and their image
"understanding" is noise), but every step a real checkpoint goes through is taken. Variants:

* `qwen2.5-vl-tiny`: Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`, `Qwen2_5_VLProcessor`):
  ChatML template with `<|vision_start|><|image_pad|><|vision_end|>` per image, dynamic
  resolution (`image_grid_thw`, patches of all images in one flat tensor), 3-D rotary
  positions. Toy sizes; a narrow pixel budget keeps images at a few dozen tokens.
* `smolvlm-tiny`: SmolVLM (`Idefics3ForConditionalGeneration`, `Idefics3Processor`): the
  `User:`/`Assistant:` template ending turns in `<end_of_utterance>`, images split into crops
  plus a global view, each crop a run of `<image>` tokens, pixels as (rows, images, 3, H, W).
  Toy sizes.
* `smolvlm-256m`: SmolVLM-256M-Instruct's exact shape for benchmarks: SigLIP-sized vision
  tower (768 wide, 12 layers, 16 px patches, 512 px crops), pixel shuffle by 4 (64 tokens per
  crop), SmolLM2-135M's decoder (576 wide, 30 layers, 9 heads, 3 key-value heads), a
  49152-token BPE vocabulary plus SmolVLM's 128 added tokens (49280). Random, so it costs what
  the real one costs per token; it rarely ends a turn on its own.

The tiny variants use a wide weight initialisation (transformers' default of 0.02 makes a
2-layer random model answer the same token whatever the input), so that different prompts
and images give clearly different greedy answers: tests of batching and history compare
token-exact outputs and must be able to fail. Everything is a function of the seed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tools.model_store.manifest import checkpoint_files, is_complete, publish
from tools.model_store.smollm2_gguf import (
    END_OF_UTTERANCE_TOKEN,
    IMAGE_TOKEN,
    SMOLVLM_256M_VISION,
    VisionShape,
    preprocessor_settings,
    smolvlm_added_tokens,
)
from tools.model_store.wheels import progress, remove_stale_temp_dirs

#: Bumped whenever the files written here change, so stores built by older code are redone.
REVISION = 1

_CORPUS = """\
The quick brown fox jumps over the lazy dog. What is in this picture? A cat sits on a red sofa
next to a window, and a dog sleeps on the floor. Describe the image in one sentence, please.
How many people are in the photo? There are three people standing in front of a blue car.
The chart shows sales rising from January to March and falling in April. Read the text on the
sign: it says the shop opens at nine in the morning and closes at six in the evening.
Hello, how are you today? I am fine, thank you. Can you help me with my homework?
"""

#: Qwen2.5-VL's special tokens, in id order right after its BPE vocabulary.
QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

#: Qwen2-VL / Qwen2.5-VL's chat template (as shipped in their chat_template.json).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: SmolLM2's first tokens (ids 0, 1, 2), before its BPE merges.
SMOLLM2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

#: SmolVLM-Instruct's chat template (as shipped in its chat_template.json).
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass(frozen=True)
class TextShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int


@dataclass(frozen=True)
class Variant:
    """One random checkpoint: its family, sizes, and the real checkpoint it stands in for."""

    store_name: str
    mimics: str
    family: str  # "qwen2_5_vl" | "idefics3"
    bpe_vocab_size: int
    text: TextShape
    init_std: float | None  # None: the architecture's default initialisation
    vision: VisionShape | None = None  # idefics3 only
    crops_per_side: int = 4  # idefics3: the image processor's longest edge, in crops
    # idefics3: split images into crops. Off where the store default says why (CPU cost, random
    # vision); on in the tiny test checkpoint, so the tests cover batching multi-crop images.
    image_splitting: bool = False


TINY_TEXT = TextShape(64, 128, 2, 4, 2, 4096)

VARIANTS: dict[str, Variant] = {
    "qwen2.5-vl-tiny": Variant(
        store_name="qwen2.5-vl-tiny-random",
        mimics="Qwen/Qwen2.5-VL-3B-Instruct",
        family="qwen2_5_vl",
        bpe_vocab_size=512,
        text=TINY_TEXT,
        init_std=0.3,
    ),
    "smolvlm-tiny": Variant(
        store_name="smolvlm-tiny-random",
        mimics="HuggingFaceTB/SmolVLM-256M-Instruct",
        family="idefics3",
        bpe_vocab_size=512,
        text=TINY_TEXT,
        init_std=0.3,
        vision=VisionShape(
            hidden_size=64,  # bitsandbytes quantizes in blocks of 64 inputs
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=8,
            image_size=64,
            scale_factor=2,
        ),
        crops_per_side=2,
        image_splitting=True,
    ),
    "smolvlm-256m": Variant(
        store_name="smolvlm-256m-random",
        mimics="HuggingFaceTB/SmolVLM-256M-Instruct",
        family="idefics3",
        bpe_vocab_size=49152,
        text=TextShape(576, 1536, 30, 9, 3, 8192),
        init_std=None,
        vision=SMOLVLM_256M_VISION,
    ),
}


# --- tokenizers -----------------------------------------------------------------------------


def _bpe(vocab_size: int, specials: list[str], seed: int) -> tuple[dict[str, int], list[Any]]:
    """A byte-level BPE (vocab, merges) of `vocab_size` entries, `specials` first.

    The small English corpus gives the merges of real words; for a large vocabulary, seeded
    pseudo-words (letters drawn by English frequency) supply enough distinct merges.
    """
    import numpy as np
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    lines = _CORPUS.splitlines()
    if vocab_size > 1024:
        rng = np.random.default_rng(seed)
        letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
        freq = np.array([127, 91, 82, 75, 70, 67, 63, 61, 60, 43, 40, 28, 28, 24, 24, 22, 20, 20])
        freq = np.concatenate([freq, [19, 15, 10, 8, 2, 2, 1, 1]]).astype(float)
        chars = rng.choice(letters, size=1_200_000, p=freq / freq.sum())
        cuts = np.cumsum(rng.integers(2, 10, size=200_000))
        words = ["".join(w) for w in np.split(chars, cuts[cuts < chars.size])]
        lines += [" ".join(words[i : i + 20]) for i in range(0, len(words), 20)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=specials,
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer)
    state = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return dict(state["vocab"]), merges


def _qwen_tokenizer(variant: Variant, seed: int) -> Any:
    """Qwen2's tokenizer class; specials after the BPE vocabulary, as in Qwen2.5-VL."""
    from transformers import AddedToken, Qwen2Tokenizer

    vocab, merges = _bpe(variant.bpe_vocab_size, [], seed)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS
            ]
        }
    )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.model_max_length = variant.text.max_position_embeddings
    return tokenizer


def smolvlm_tokenizer(variant: Variant, seed: int) -> Any:
    """SmolLM2's tokenizer class and first tokens, then SmolVLM's 128 added tokens."""
    from transformers import AddedToken, GPT2Tokenizer

    vocab, merges = _bpe(variant.bpe_vocab_size, SMOLLM2_SPECIALS, seed)
    tokenizer = GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        add_prefix_space=False,
    )
    # Added in SmolVLM's order, so that each lands on SmolVLM's id (after the vocabulary).
    tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(t, special=True, normalized=False) for t in smolvlm_added_tokens()
            ]
        }
    )
    tokenizer.eos_token = END_OF_UTTERANCE_TOKEN
    tokenizer.model_max_length = variant.text.max_position_embeddings
    return tokenizer


# --- models ---------------------------------------------------------------------------------


def _text_kwargs(variant: Variant, vocab_size: int) -> dict[str, Any]:
    text = variant.text
    kwargs = {
        "vocab_size": vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "max_position_embeddings": text.max_position_embeddings,
    }
    if variant.init_std is not None:
        kwargs["initializer_range"] = variant.init_std
    return kwargs


def _write_qwen(dest: Path, variant: Variant, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = _qwen_tokenizer(variant, seed)
    ids = tokenizer.convert_tokens_to_ids
    head_dim = variant.text.hidden_size // variant.text.num_attention_heads
    vision = {
        "depth": 2,
        "hidden_size": 64,  # bitsandbytes quantizes in blocks of 64 inputs
        "intermediate_size": 128,
        "num_heads": 2,
        "out_hidden_size": variant.text.hidden_size,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [1],
    }
    if variant.init_std is not None:
        vision["initializer_range"] = variant.init_std
    config = Qwen2_5_VLConfig(
        text_config={
            **_text_kwargs(variant, len(tokenizer)),
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": _mrope_section(head_dim),
            },
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # As on the Hub, sampling settings included: the server must apply its own, not these.
    generation = GenerationConfig(
        bos_token_id=ids("<|endoftext|>"),
        pad_token_id=ids("<|endoftext|>"),
        eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")],
        do_sample=True,
        repetition_penalty=1.05,
        temperature=0.1,
        top_p=0.001,
        top_k=1,
    )
    generation._from_model_config = False
    model.generation_config = generation
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    preprocessor = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "rescale_factor": 1 / 255,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "min_pixels": 56 * 56,
        "max_pixels": 28 * 28 * 32,  # the real one allows 28 * 28 * 16384
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }
    _write_json(dest / "preprocessor_config.json", preprocessor)
    _write_json(dest / "processor_config.json", {"processor_class": "Qwen2_5_VLProcessor"})
    (dest / "chat_template.jinja").write_text(QWEN_CHAT_TEMPLATE, encoding="utf-8")


def _mrope_section(head_dim: int) -> list[int]:
    """Rotary frequencies split over (time, height, width): [16, 24, 24] for head_dim 128."""
    half = head_dim // 2
    time = half // 4
    height = (half - time) // 2
    return [time, height, half - time - height]


def smolvlm_config(variant: Variant, tokenizer: Any) -> Any:
    """The Idefics3Config of an idefics3 `variant` whose token ids are `tokenizer`'s.

    Apart from the writer so that a variant's shape can be checked without building its
    weights (the SmolVLM-256M one is 870 MiB and built only for benchmarks).
    """
    from transformers import Idefics3Config

    assert variant.vision is not None
    vision = variant.vision
    ids = tokenizer.convert_tokens_to_ids
    vision_kwargs: dict[str, Any] = {
        "hidden_size": vision.hidden_size,
        "intermediate_size": vision.intermediate_size,
        "num_hidden_layers": vision.num_hidden_layers,
        "num_attention_heads": vision.num_attention_heads,
        "patch_size": vision.patch_size,
        "image_size": vision.image_size,
    }
    if variant.init_std is not None:
        vision_kwargs["initializer_range"] = variant.init_std
    return Idefics3Config(
        text_config={
            "model_type": "llama",
            **_text_kwargs(variant, len(tokenizer)),
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 100_000.0},
            "tie_word_embeddings": True,
            "bos_token_id": ids("<|im_start|>"),
            "eos_token_id": ids(END_OF_UTTERANCE_TOKEN),
            "pad_token_id": ids("<|im_end|>"),
        },
        vision_config=vision_kwargs,
        scale_factor=vision.scale_factor,
        image_token_id=ids(IMAGE_TOKEN),
        tie_word_embeddings=True,
        pad_token_id=ids("<|im_end|>"),
    )


def _write_smolvlm(dest: Path, variant: Variant, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, Idefics3ForConditionalGeneration

    assert variant.vision is not None
    vision = variant.vision
    tokenizer = smolvlm_tokenizer(variant, seed)
    ids = tokenizer.convert_tokens_to_ids
    config = smolvlm_config(variant, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Idefics3ForConditionalGeneration(config).eval()
    generation = GenerationConfig(
        bos_token_id=ids("<|im_start|>"),
        eos_token_id=ids(END_OF_UTTERANCE_TOKEN),
        pad_token_id=ids("<|im_end|>"),
    )
    generation._from_model_config = False
    model.generation_config = generation
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    preprocessor = preprocessor_settings(vision)
    preprocessor["size"] = {"longest_edge": variant.crops_per_side * vision.image_size}
    preprocessor["do_image_splitting"] = variant.image_splitting
    _write_json(dest / "preprocessor_config.json", preprocessor)
    _write_json(
        dest / "processor_config.json",
        {"processor_class": "Idefics3Processor", "image_seq_len": vision.image_seq_len},
    )
    (dest / "chat_template.jinja").write_text(SMOLVLM_CHAT_TEMPLATE, encoding="utf-8")


_WRITERS: dict[str, Callable[[Path, Variant, int], None]] = {
    "qwen2_5_vl": _write_qwen,
    "idefics3": _write_smolvlm,
}


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


# --- the store entry ------------------------------------------------------------------------


def _expected(variant: str, seed: int) -> dict[str, Any]:
    """What a finished entry's manifest says; a changed shape rebuilds only that variant."""
    return {
        "builder": "vlm_random",
        "revision": REVISION,
        "variant": variant,
        "shape": json.loads(json.dumps(asdict(VARIANTS[variant]))),
        "seed": seed,
    }


def build_random_vlm(dest: Path, variant: str, seed: int = 0) -> Path:
    """Write a random-weight VLM of `variant` to `dest`; a no-op when already complete.

    Built in a temporary directory next to `dest` and published atomically with a manifest
    (`tools.model_store.manifest`). Returns `dest`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown VLM variant {variant!r}; known: {sorted(VARIANTS)}")
    dest = Path(dest)
    expected = _expected(variant, seed)
    if is_complete(dest, expected):
        progress(f"{dest} is complete; skipping")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(dest.parent, f".{dest.name}-")
    spec = VARIANTS[variant]
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}-", dir=dest.parent) as tmp:
        work = Path(tmp) / "checkpoint"
        work.mkdir()
        _WRITERS[spec.family](work, spec, seed)
        work.chmod(0o755)
        publish(work, dest, expected, Path(tmp))
    size_mb = sum(p.stat().st_size for p in checkpoint_files(dest)) / 1e6
    progress(
        f"built random-weight {spec.mimics} look-alike ({variant}) in {dest} ({size_mb:.1f} MB)"
    )
    return dest


def store_entries() -> dict[str, Callable[[Path], Path]]:
    """The model store's entries for every variant (`python -m tools.model_store build`)."""
    return {
        spec.store_name: (
            lambda store, name=name, spec=spec: build_random_vlm(store / spec.store_name, name)
        )
        for name, spec in VARIANTS.items()
    }
