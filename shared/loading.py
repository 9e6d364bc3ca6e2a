"""Safe loading of Hugging Face checkpoints from the local model store.

Secure defaults, not options: weights come from a local directory only (no hub), in
safetensors only (no pickle), with `trust_remote_code` off, and the directory must lie inside
the model store, so a setting cannot point a model at an arbitrary path on the host.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import ModelLoadError
from shared.params import Param, resolve
from shared.quantization import Placement, pretrained_kwargs

DEFAULT_MODEL_STORE = "/models"


def model_store_root(environ: dict[str, str] | None = None) -> Path:
    """The model store: `$MODEL_STORE`, or /models (the image's volume) when unset."""
    env = os.environ if environ is None else environ
    return Path(env.get("MODEL_STORE") or DEFAULT_MODEL_STORE).resolve()


def resolve_model_dir(model_path: str, store: Path) -> Path:
    """Resolve `model_path` (relative to the store, or absolute inside it) and check its files."""
    if not model_path:
        raise ModelLoadError("model_path is empty; set it in config.pbtxt or the environment")
    store = store.resolve()
    candidate = Path(model_path)
    resolved = (candidate if candidate.is_absolute() else store / candidate).resolve()
    if resolved != store and store not in resolved.parents:
        raise ModelLoadError(
            f"model_path {model_path!r} resolves to {resolved}, outside the model store {store}"
        )
    if not resolved.is_dir():
        raise ModelLoadError(
            f"model directory {resolved} does not exist (model_path {model_path!r})"
        )
    if not (resolved / "config.json").is_file():
        raise ModelLoadError(f"model directory {resolved} has no config.json")
    if not any(resolved.glob("*.safetensors")):
        pickled = sorted(p.name for p in resolved.glob("*.bin")) + sorted(
            p.name for p in resolved.glob("*.pt")
        )
        hint = f" (found {pickled}: pickle-based weights are refused)" if pickled else ""
        raise ModelLoadError(f"model directory {resolved} has no *.safetensors weights{hint}")
    return resolved


@dataclass
class Loaded:
    """A loaded model and processor, with the facts the load log line reports."""

    model: Any
    processor: Any
    placement: Placement
    footprint_bytes: int
    seconds: float
    detail: str = ""  # what a quantization step changed, e.g. how many layers int4 packed

    def describe(self) -> str:
        return (
            f"{self.placement.describe()} footprint={self.footprint_bytes / 2**20:.1f} MiB "
            f"load={self.seconds:.1f} s" + (f" ({self.detail})" if self.detail else "")
        )


def load_pretrained(
    model_cls: Any,
    processor_cls: Any,
    model_dir: Path,
    placement: Placement,
    model_kwargs: dict[str, Any] | None = None,
) -> Loaded:
    """Load a model and its processor with the secure defaults and the requested placement.

    `model_kwargs` are further `from_pretrained` arguments of the model (attn_implementation);
    they cannot override the secure defaults or the placement.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    started = time.perf_counter()
    common = {"local_files_only": True, "trust_remote_code": False}
    try:
        processor = processor_cls.from_pretrained(model_dir, **common)
        model = model_cls.from_pretrained(
            model_dir,
            **{**(model_kwargs or {}), "use_safetensors": True, **common},
            **pretrained_kwargs(placement),
        )
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        raise ModelLoadError(f"loading {model_dir} failed: {type(exc).__name__}: {exc}") from exc
    return finish_load(model, processor, placement, started)


def finish_load(model: Any, processor: Any, placement: Placement, started: float) -> Loaded:
    """The steps after `from_pretrained` that every loader shares: eval mode, the int4
    packing (which `from_pretrained` cannot do), and the footprint the load log reports."""
    model.eval()
    detail = ""
    if placement.quantization == "int4":
        import torch

        from shared.int4 import quantize_linears

        detail = quantize_linears(model, getattr(torch, placement.dtype)).describe()
    return Loaded(
        model=model,
        processor=processor,
        placement=placement,
        footprint_bytes=int(model.get_memory_footprint()),
        seconds=time.perf_counter() - started,
        detail=detail,
    )


@dataclass(frozen=True)
class LoadPlan:
    """Everything `initialize()` decides before touching weights: settings, where, what.

    It is what every engine's `load` takes, so a model's settings reach its engine one way.
    """

    settings: dict[str, Any]
    placement: Placement
    model_dir: Path

    @classmethod
    def in_process(
        cls, model_dir: Path, placement: Placement, specs: Sequence[Param], **settings: Any
    ) -> LoadPlan:
        """A plan without Triton (tests, benchmarks): the declared defaults of `specs`, with
        `settings` over them; a name `specs` does not declare is a mistake, not ignored."""
        values = {spec.name: spec.default for spec in specs}
        unknown = sorted(set(settings) - set(values))
        if unknown:
            raise ValueError(f"unknown settings {unknown}; known: {sorted(values)}")
        return cls({**values, **settings}, placement, Path(model_dir))


#: The file in a version directory (`<model>/<version>/`) whose settings that version alone
#: loads with: what makes versions 1 and 2 of one model differ (shared.params, precedence 0).
VERSION_PARAMETERS = "parameters.json"


def version_parameters(args: dict[str, str]) -> dict[str, str]:
    """The loading version's own settings: `{"setting": "value", ...}` from its
    `parameters.json`, or none when the version has no such file."""
    import json

    path = Path(args["model_repository"]) / args["model_version"] / VERSION_PARAMETERS
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(values, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in values.items()
    ):
        raise ModelLoadError(f"{path} must map setting names to string values")
    return values


def plan_load(
    args: dict[str, str], specs: Sequence[Param], environ: dict[str, str] | None = None
) -> LoadPlan:
    """Resolve a model's settings from Triton's `initialize` args and check the checkpoint.

    Also applies `num_threads`, since it must be set before the first torch operation.
    """
    import json

    from shared.quantization import resolve_device, resolve_placement

    model_config = json.loads(args["model_config"])
    version = version_parameters(args)
    settings = resolve(specs, model_config, args["model_name"], environ, version)
    device = resolve_device(args["model_instance_kind"], args["model_instance_device_id"])
    placement = resolve_placement(settings["quantization"], settings["dtype"], device)
    model_dir = resolve_model_dir(settings["model_path"], model_store_root(environ))
    if settings.get("num_threads"):
        import torch

        torch.set_num_threads(settings["num_threads"])
    return LoadPlan(settings=settings, placement=placement, model_dir=model_dir)
