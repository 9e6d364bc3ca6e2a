"""Which models a server must load for the models it is asked to serve.

The chat fronts `vlm` and `llm` hold no weights: they call the engine model their
`engine_model` setting names (`vlm_stream`). Explicit model control loads only what it is
told, and a front without its engine answers UNAVAILABLE, so the image's entry point and
`./scripts/serve` load a front's engine with it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

_ENGINE = re.compile(r'key: "engine_model", value: \{ string_value: "([^"]*)" \}')


def engine_model(
    model: str, repository: Path, environ: Mapping[str, str] | None = None
) -> str | None:
    """The model `model` answers through (its `engine_model` setting: `vlm` and `llm` are
    fronts over `vlm_stream`), None for a model that holds its own weights."""
    from shared.params import Param

    environ = os.environ if environ is None else environ
    config = repository / model / "config.pbtxt"
    if not config.is_file():
        return None
    found = _ENGINE.search(config.read_text(encoding="utf-8"))
    if found is None:
        return None
    for name in Param("engine_model", "").env_names(model):
        if environ.get(name):
            return environ[name]
    return found[1] or None


def with_engines(models: list[str], repository: Path, environ: Mapping[str, str]) -> list[str]:
    """`models`, each after the engine model it answers through."""
    ordered: list[str] = []
    for model in models:
        engine = engine_model(model, repository, environ)
        for name in [engine, model] if engine else [model]:
            if name not in ordered:
                ordered.append(name)
    return ordered
