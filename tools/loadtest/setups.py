"""Numeric setups to compare (quantization, dtype, further model settings) and what they
change: throughput, identical answers, how far answers agree, word error rate. Used by
`numerics` (in-process) and `peers` (one Triton series per setup).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from .local import env_name
from .options import str_list


@dataclass(frozen=True)
class Setup:
    """A numeric setup to compare: quantization, dtype, and further model settings (such as
    num_threads=1), each given to the model through its <MODEL>_<NAME> variable."""

    quantization: str
    dtype: str
    settings: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return " ".join([self.quantization, self.dtype, *(f"{k}={v}" for k, v in self.settings)])

    def env(self, model: str) -> dict[str, str]:
        """dtype `auto` sets nothing, so the model's own setting (config.pbtxt, --env) applies."""
        env = {env_name(model, "quantization"): self.quantization}
        if self.dtype != "auto":
            env[env_name(model, "dtype")] = self.dtype
        env.update({env_name(model, k): v for k, v in self.settings})
        return env


def parse_setups(text: str) -> list[Setup]:
    """`none:float32,int4:bfloat16:num_threads=1` -> QUANTIZATION:DTYPE[:NAME=VALUE...]."""
    setups = []
    for item in str_list(text):
        parts = item.split(":")
        quantization, dtype = parts[0], parts[1] if len(parts) > 1 else ""
        settings = tuple(part.partition("=")[::2] for part in parts[2:])
        if not quantization or not dtype or any(not k or not v for k, v in settings):
            raise argparse.ArgumentTypeError(
                f"a setup is QUANTIZATION:DTYPE[:NAME=VALUE...], got {item!r}"
            )
        setups.append(Setup(quantization, dtype, settings))
    return setups


def shared_start(a: str, b: str) -> int:
    """How many characters `a` and `b` have in common from the start."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def setup_ratios(runs: dict[str, Any], samples: list[Any]) -> dict[str, float]:
    """Per setup and batch size: throughput and identical answers against the first setup,
    and how far answers agree before they part (the mean share of the first setup's answer
    that is also the start of this one's: 1.0 identical, near 0 different from the first
    word); word error rate where the samples are speech with their spoken text in the note."""
    from tests.speech import word_error_rate, words

    out: dict[str, float] = {}
    base_name = next(iter(runs))
    base = runs[base_name]["batches"]
    for name, run in runs.items():
        for size, batch in run["batches"].items():
            key = f"{name} batch {size}"
            if "tokens_per_s" in batch:
                out[f"{key}: tokens/s"] = batch["tokens_per_s"]
            out[f"{key}: requests/s"] = batch["throughput"]
            answers = batch.get("answers", {})
            if name != base_name:
                theirs = base.get(size, {}).get("answers", {})
                same = sum(1 for i, text in answers.items() if theirs.get(i) == text)
                out[f"{key}: throughput vs. {base_name}"] = (
                    batch["throughput"] / base[size]["throughput"] if size in base else 0.0
                )
                out[f"{key}: answers identical to {base_name} (share)"] = same / max(
                    len(answers), 1
                )
                shared = [
                    shared_start(theirs[i], text) / max(len(theirs[i]), 1)
                    for i, text in answers.items()
                    if i in theirs
                ]
                out[f"{key}: shared start with {base_name} (mean share of its answer)"] = sum(
                    shared
                ) / max(len(shared), 1)
            if answers and "audio" in samples[0].inputs:  # speech: "...: the spoken text"
                spoken = {str(i): s.note.split(": ", 1)[-1] for i, s in enumerate(samples)}
                reference_words = sum(len(words(spoken[i])) for i in answers)
                errors = sum(
                    word_error_rate(spoken[i], text) * len(words(spoken[i]))
                    for i, text in answers.items()
                )
                out[f"{key}: word error rate"] = errors / max(reference_words, 1)
    return out
