"""The door's settings, read once from the environment (`OPENAI_*`) when it starts.

Defaults are the safe ones for a developer machine: bound to localhost, no API keys, Triton's
gRPC port on the same host. A value that does not parse stops the start with a message naming
the variable, so a typo never serves with a silently different setting.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

MiB = 1024 * 1024
N = TypeVar("N", int, float)

#: OpenAI's voice names. The default checkpoint (Piper en_US "joe") has one voice, "0", so
#: every name maps to it until OPENAI_VOICES says otherwise.
OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "cedar",
    "coral",
    "echo",
    "fable",
    "marin",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)
#: Every Triton model the door can use; /health waits for the ones in `models`.
ALL_MODELS = ("vlm", "vlm_stream", "llm", "stt", "tts", "tts_stream")


class SettingError(ValueError):
    """A setting's value is not usable; the message names the environment variable."""


@dataclass(frozen=True)
class Settings:
    """Everything the door reads from its environment; see docs/openai.md#settings."""

    host: str = "127.0.0.1"
    port: int = 9000
    triton_url: str = "127.0.0.1:8001"
    #: Bearer keys a request must carry; empty: no authentication (the localhost default).
    api_keys: frozenset[str] = frozenset()
    #: The Triton models this door serves; /health is ready only when all of them are.
    models: tuple[str, ...] = ALL_MODELS
    #: OpenAI voice name -> voice of the tts checkpoint.
    voices: Mapping[str, str] = field(default_factory=lambda: dict.fromkeys(OPENAI_VOICES, "0"))
    #: Largest JSON body: the chat models' max_prompt_bytes (data URIs count), 32 MiB.
    max_json_bytes: int = 32 * MiB
    #: Largest multipart upload: stt's max_audio_bytes (64 MiB) and 1 MiB for the form.
    max_upload_bytes: int = 65 * MiB
    #: How long one Triton call may take before the door gives up (seconds).
    timeout_seconds: float = 600.0

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from `env` (default os.environ); empty variables count as unset."""
        env = os.environ if env is None else env
        values = {k: v.strip() for k, v in env.items() if k.startswith("OPENAI_") and v.strip()}
        default = cls()
        models = _list(values, "OPENAI_MODELS", default.models)
        unknown = sorted(set(models) - set(ALL_MODELS))
        if unknown:
            raise SettingError(
                f"OPENAI_MODELS names {', '.join(unknown)}; the models are {', '.join(ALL_MODELS)}"
            )
        return cls(
            host=values.get("OPENAI_HOST", default.host),
            port=_number(values, "OPENAI_PORT", default.port, int, 1, 65535),
            triton_url=values.get("OPENAI_TRITON_URL", default.triton_url),
            api_keys=frozenset(_list(values, "OPENAI_API_KEYS", ())),
            models=models,
            voices=_voices(values.get("OPENAI_VOICES")) or default.voices,
            max_json_bytes=_number(
                values, "OPENAI_MAX_JSON_BYTES", default.max_json_bytes, int, 1024, 2**40
            ),
            max_upload_bytes=_number(
                values, "OPENAI_MAX_UPLOAD_BYTES", default.max_upload_bytes, int, 1024, 2**40
            ),
            timeout_seconds=_number(
                values, "OPENAI_TIMEOUT_SECONDS", default.timeout_seconds, float, 1.0, 86400.0
            ),
        )


def _list(values: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if name not in values:
        return default
    return tuple(item.strip() for item in values[name].split(",") if item.strip())


def _number(
    values: Mapping[str, str], name: str, default: N, cast: Callable[[str], N], low: N, high: N
) -> N:
    if name not in values:
        return default
    try:
        value = cast(values[name])
    except ValueError:
        raise SettingError(f"{name}={values[name]!r} is not a number") from None
    if not low <= value <= high:
        raise SettingError(f"{name}={value} is outside {low:g}..{high:g}")
    return value


def _voices(raw: str | None) -> dict[str, str]:
    """`alloy=0,echo=1`: OpenAI voice name = the checkpoint's voice."""
    if raw is None:
        return {}
    voices = {}
    for item in raw.split(","):
        name, sep, voice = item.partition("=")
        if not sep or not name.strip() or not voice.strip():
            raise SettingError(f"OPENAI_VOICES item {item!r} is not name=voice")
        voices[name.strip()] = voice.strip()
    return voices
