"""Write (or check) each model's GPU configuration variant, `configs/gpu.pbtxt`.

Triton serves a variant instead of `config.pbtxt` when started with `--model-config-name=gpu`,
so one model repository serves a CPU and a GPU host without edits. A variant is the model's
`config.pbtxt` with only what a GPU changes, made here rather than kept by hand, so the two
cannot drift apart (tests/test_gpu_configs.py checks that the committed files are what this
writes):

  * instance_group: KIND_GPU, one instance per GPU (Triton places one on each visible GPU);
  * dtype float16 (half-precision matmuls are fast on a GPU and refused on a CPU);
  * the chat models' decoder: transformers' generate(), the GPU path (the fused decoder is the
    CPU's: it saves Python calls per token, which a GPU's launch queue already hides).

Models without a `dtype` setting compute nothing themselves (a BLS pipeline calling the others)
and need no variant: Triton serves their config.pbtxt under any --model-config-name.

Batch sizes and queue delays are the CPU's, measured there; raise them on a GPU after
measuring (docs/benchmarks.md has the method).

  python -m tools.gpu_configs          write every variant
  python -m tools.gpu_configs --check  exit 1 and name the variants that are not up to date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = ROOT / "model_repository"
VARIANT = Path("configs") / "gpu.pbtxt"

#: Settings a GPU changes, for every model that declares them.
SETTINGS = {"dtype": "float16", "decoder": "generate"}


def gpu_variant(config: str, model: str) -> str:
    """`config` (a config.pbtxt's text) as it should run on a GPU."""
    text = re.sub(r"\bkind:\s*KIND_CPU\b", "kind: KIND_GPU", config)
    text = re.sub(r"(instance_group\s*\[\s*\{[^}]*?\bcount:\s*)\d+", r"\g<1>1", text)
    for key, value in SETTINGS.items():
        text = re.sub(
            rf'(parameters:\s*\{{\s*key:\s*"{key}",\s*value:\s*\{{\s*string_value:\s*)"[^"]*"',
            rf'\g<1>"{value}"',
            text,
        )
    header = (
        f"# GPU variant of {model}/config.pbtxt, served with --model-config-name=gpu. Written by\n"
        "# `python -m tools.gpu_configs` from config.pbtxt: edit that file, then run it again.\n"
    )
    return header + text


def computes(config: str) -> bool:
    """Whether a model computes on its device: it has a dtype setting."""
    return re.search(r'parameters:\s*\{\s*key:\s*"dtype"', config) is not None


def variants(repository: Path = REPOSITORY) -> dict[Path, str]:
    """Each computing model's variant path and the text it should hold."""
    configs = {path: path.read_text(encoding="utf-8") for path in repository.glob("*/config.pbtxt")}
    return {
        path.parent / VARIANT: gpu_variant(text, path.parent.name)
        for path, text in sorted(configs.items())
        if computes(text)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_configs", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    stale = [
        path
        for path, text in variants().items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is not up to date: python -m tools.gpu_configs")
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_text(variants()[path], encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
