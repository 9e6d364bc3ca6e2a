"""The settings of the chat models `vlm`, `vlm_stream` and `llm` (config.pbtxt or environment)."""

from __future__ import annotations

from backends.chat.engine import ATTENTION_IMPLEMENTATIONS, DECODERS
from backends.chat.sampling import MAX_PENALTY, MIN_PENALTY
from backends.chat.service import BATCHING
from shared.params import Param, load_params

#: Environment variables deployments of the earlier FastAPI service already set.
ENV_ALIASES = {"model_path": ("MODEL_PATH",), "quantization": ("QUANTIZATION_TYPE",)}


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"expected a number in (0, 1], got {text!r}")
    return value


def chat_params(default_model_path: str) -> list[Param]:
    """Every setting of the chat engine model (`vlm_stream`)."""
    return [
        *load_params(default_model_path, ENV_ALIASES),
        Param(
            "attn_implementation",
            "sdpa",
            choices=ATTENTION_IMPLEMENTATIONS,
            env_aliases=("ATTENTION_IMPL",),
            doc="attention kernels (flash_attention_2 needs the flash-attn package and a GPU)",
        ),
        Param(
            "decoder",
            "auto",
            choices=DECODERS,
            doc="decoding loop: fused (Llama models; fewer calls per token, finished rows "
            "leave the batch) or transformers' generate(); auto: fused on a CPU where it runs",
        ),
        Param(
            "batching",
            "continuous",
            choices=BATCHING,
            doc="continuous: requests join the running batch at the next decoding step and "
            "leave it when they finish (the fused decoder only); static: each execute() "
            "decodes its batch to the end",
        ),
        Param(
            "max_batch_rows",
            16,
            parse=int,
            minimum=1,
            doc="continuous batching: requests decoding at once (more wait, in order)",
        ),
        Param(
            "max_batch_tokens",
            16384,
            parse=int,
            minimum=1,
            doc="continuous batching: key/value slots of the running batch (rows x columns, "
            "each row's prompt, padding and room for its answer); at least the context",
        ),
        Param(
            "max_prefill_tokens",
            2048,
            parse=int,
            minimum=1,
            doc="continuous batching: prompt tokens passed between two decoding steps (a "
            "longer text-only prompt passes in chunks of this size, one per step; a longer "
            "prompt with images passes whole)",
        ),
        Param(
            "admit_wait_ms",
            50.0,
            parse=float,
            minimum=0.0,
            doc="continuous batching: while rows decode, arrivals are admitted together once "
            "a quarter as many as are running wait, or the oldest has waited this long (fewer, "
            "larger prompt passes)",
        ),
        Param(
            "max_new_tokens",
            256,
            parse=int,
            minimum=1,
            env_aliases=("MAX_NEW_TOKENS",),
            doc="tokens generated when a request does not say",
        ),
        Param(
            "max_new_tokens_limit",
            1024,
            parse=int,
            minimum=1,
            doc="the most tokens a request may ask for",
        ),
        Param(
            "temperature",
            0.0,
            parse=float,
            minimum=0.0,
            maximum=2.0,
            env_aliases=("TEMPERATURE",),
            doc="default sampling temperature; 0: greedy",
        ),
        Param("top_p", 1.0, parse=_probability, env_aliases=("TOP_P",), doc="default top-p"),
        Param("top_k", 0, parse=int, minimum=0, doc="default top-k; 0: off"),
        Param(
            "repetition_penalty",
            1.0,
            parse=float,
            minimum=MIN_PENALTY,
            maximum=MAX_PENALTY,
            doc="default; 1: off",
        ),
        Param(
            "max_history",
            5,
            parse=int,
            minimum=0,
            env_aliases=("MAX_HISTORY",),
            doc="turns kept per session_id; 0: no history",
        ),
        Param("max_sessions", 1024, parse=int, minimum=0, doc="sessions kept (LRU evicted)"),
        Param("session_idle_seconds", 3600.0, parse=float, minimum=1.0, doc="idle expiry"),
        Param(
            "session_max_bytes",
            256 << 20,
            parse=int,
            minimum=0,
            doc="memory all sessions may hold (text and decoded images)",
        ),
        Param("max_prompt_bytes", 32 << 20, parse=int, minimum=1024, doc="largest prompt"),
        Param(
            "max_prompt_chars",
            131072,
            parse=int,
            minimum=1,
            doc="most characters of text in a request's messages, checked before tokenizing "
            "(16 per token of an 8192-token context)",
        ),
        Param("max_images", 8, parse=int, minimum=0, doc="images per request"),
        Param(
            "max_image_pixels",
            25_000_000,
            parse=int,
            minimum=1,
            doc="largest image (width x height), checked before decoding",
        ),
        Param("max_image_bytes", 20 << 20, parse=int, minimum=1024, doc="largest image file"),
    ]
