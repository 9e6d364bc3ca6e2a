"""Model settings: `config.pbtxt` parameters, overridden by environment variables.

Precedence, highest first:
  0. the `parameters.json` of the model version being loaded (`<model>/<version>/`), which is
     how two versions of one model differ for an A/B test (docs/deployment.md#model-versions);
  1. the environment variable `<MODEL>_<PARAM>` (model name upper-cased, non-alphanumerics as
     `_`), for example `STT_QUANTIZATION=nf4` for the model `stt`, or one of the parameter's
     documented aliases;
  2. the `parameters { key: "<param>" ... }` entry of the model's `config.pbtxt`;
  3. the default declared in code.

A deployment can therefore ship one image and retune each model per environment without
editing the model repository, and a value that is not understood fails the load with a message
naming the setting and where it came from.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.errors import ModelLoadError, invalid

#: The sampling temperatures a request may ask for, 0 being greedy decoding.
MAX_TEMPERATURE = 2.0
#: Temperatures below this decode greedily: sampling there is greedy in effect (a logit gap of
#: 0.1 already weighs e^10 to 1), and dividing logits by a tiny temperature overflows to
#: infinities that the sampler cannot draw from (1e-40 made torch.multinomial raise).
GREEDY_BELOW = 0.01


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Param:
    """One setting: its name in `config.pbtxt`, how to parse it and what values are allowed."""

    name: str
    default: Any
    parse: Callable[[str], Any] = str
    choices: Sequence[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    env_aliases: Sequence[str] = field(default_factory=tuple)
    doc: str = ""

    def env_names(self, model_name: str) -> list[str]:
        prefix = re.sub(r"[^A-Za-z0-9]", "_", model_name).upper()
        return [f"{prefix}_{self.name.upper()}", *self.env_aliases]

    def convert(self, raw: str, source: str) -> Any:
        try:
            value = self.parse(raw)
        except ValueError as exc:
            raise ModelLoadError(f"setting {self.name!r} from {source}: {exc}") from exc
        if isinstance(value, float) and not math.isfinite(value):  # nan passes any range check
            raise ModelLoadError(
                f"setting {self.name!r} from {source} is {raw!r}; expected a finite number"
            )
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise ModelLoadError(
                f"setting {self.name!r} from {source} is {value!r}; allowed: {allowed}"
            )
        if self.minimum is not None and value < self.minimum:
            raise ModelLoadError(
                f"setting {self.name!r} from {source} is {value}; minimum {self.minimum}"
            )
        if self.maximum is not None and value > self.maximum:
            raise ModelLoadError(
                f"setting {self.name!r} from {source} is {value}; maximum {self.maximum}"
            )
        return value


def check_temperature(value: float, name: str = "temperature") -> float:
    """A request's sampling temperature, checked; 0 (greedy) for anything under GREEDY_BELOW.

    The STT and chat models share it, so the same value means the same thing everywhere.
    """
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= MAX_TEMPERATURE:
        raise invalid(
            f"input '{name}' is {value}; allowed: 0 (greedy) to {MAX_TEMPERATURE:g} "
            f"(under {GREEDY_BELOW:g}: greedy)"
        )
    return 0.0 if value < GREEDY_BELOW else value


def config_parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    """The string values of a Triton model config's `parameters` map."""
    params = model_config.get("parameters") or {}
    return {key: entry.get("string_value", "") for key, entry in params.items()}


def resolve(
    specs: Sequence[Param],
    model_config: Mapping[str, Any],
    model_name: str,
    environ: Mapping[str, str] | None = None,
    version: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Resolve every setting in `specs` by the precedence in this module's docstring;
    `version` holds the loading version's own values (`version_parameters`)."""
    environ = os.environ if environ is None else environ
    from_config = config_parameters(model_config)
    from_version = dict(version or {})
    known = {spec.name for spec in specs}
    for source, given in (
        ("config.pbtxt", from_config),
        ("the version's parameters.json", from_version),
    ):
        unknown = sorted(set(given) - known)
        if unknown:
            raise ModelLoadError(
                f"{source} of model {model_name!r} has unknown parameters {unknown}; "
                f"known: {sorted(known)}"
            )
    values: dict[str, Any] = {}
    for spec in specs:
        env_hit = next((n for n in spec.env_names(model_name) if environ.get(n, "") != ""), None)
        if from_version.get(spec.name, "") != "":
            values[spec.name] = spec.convert(
                from_version[spec.name], "the version's parameters.json"
            )
        elif env_hit is not None:
            values[spec.name] = spec.convert(environ[env_hit], f"environment variable {env_hit}")
        elif from_config.get(spec.name, "") != "":
            values[spec.name] = spec.convert(from_config[spec.name], "config.pbtxt")
        else:
            values[spec.name] = spec.default
    return values


def load_params(
    default_model_path: str, env_aliases: Mapping[str, Sequence[str]] | None = None
) -> list[Param]:
    """The settings every model has: which checkpoint, and how to place it.

    `env_aliases` maps a setting to further environment variables that set it (after the
    model-prefixed one), for deployments that already use other names (MODEL_PATH).
    """
    from shared.quantization import DTYPES, QUANTIZATIONS

    aliases = env_aliases or {}
    return [
        Param(
            "model_path",
            default_model_path,
            env_aliases=tuple(aliases.get("model_path", ())),
            doc="checkpoint directory inside the model store",
        ),
        Param(
            "quantization",
            "none",
            choices=QUANTIZATIONS,
            env_aliases=tuple(aliases.get("quantization", ())),
            doc="int8/nf4/fp4: bitsandbytes; int4: torch's CPU kernel (shared.int4)",
        ),
        Param(
            "dtype",
            "auto",
            choices=DTYPES,
            env_aliases=tuple(aliases.get("dtype", ())),
            doc="compute dtype; auto: bfloat16 on a CPU with native bf16 (avx512_bf16, AMX) or with int4, else float32; float16 on GPU",
        ),
        Param(
            "num_threads",
            0,
            parse=int,
            minimum=0,
            env_aliases=tuple(aliases.get("num_threads", ())),
            doc="torch intra-op threads; 0: torch's default",
        ),
    ]
