"""`python -m tools.model_store build --store DIR`: build the checkpoints models and tests use.

Each entry is idempotent (skipped when present and complete), so `./scripts/setup` runs this
on every start at no cost once the store exists. Entries only benchmarks use (ON_DEMAND) are
built when named with `--only`, so a fresh clone and CI do not spend disk and minutes on them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tools.model_store import (
    piper_voice,
    smollm2_gguf,
    tts_random,
    vlm_random,
    whisper_ct2,
    whisper_random,
)

ENTRIES: dict[str, Callable[[Path], Path]] = {
    "whisper-tiny.en": whisper_ct2.import_whisper_tiny_en,
    "whisper-tiny-random": lambda store: whisper_random.build_random_whisper(
        store / "whisper-tiny-random", "tiny.en"
    ),
    "whisper-large-v3-turbo-random": lambda store: whisper_random.build_random_whisper(
        store / "whisper-large-v3-turbo-random", "large-v3-turbo"
    ),
    smollm2_gguf.STORE_NAME: smollm2_gguf.import_smolvlm_smollm2,
    "piper-en_US-joe-medium": piper_voice.import_piper_voice,
    # Random-weight VLMs: two tiny ones for tests, a SmolVLM-256M-shaped one for benchmarks.
    **vlm_random.store_entries(),
    # Random-weight TTS: an MMS-TTS-sized VITS (the tts default), tiny VITS and SpeechT5.
    **tts_random.store_entries(),
}

# Benchmark-only checkpoints (870 MiB for SmolVLM-256M's shape in float32): built on request.
ON_DEMAND = frozenset({"smolvlm-256m-random"})


def build(store: Path, only: list[str] | None = None) -> None:
    """Build the `only` entries, or, without `only`, every entry but the ON_DEMAND ones."""
    wanted = set(only) if only else set(ENTRIES) - ON_DEMAND
    store.mkdir(parents=True, exist_ok=True)
    for name, builder in ENTRIES.items():
        if name not in wanted:
            continue
        started = time.perf_counter()
        path = builder(store)
        print(
            f"[model-store] {name}: {path} ({time.perf_counter() - started:.1f} s)", file=sys.stderr
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.model_store")
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser(
        "build", help="build or import every checkpoint but the benchmark-only ones (or --only)"
    )
    build_cmd.add_argument("--store", type=Path, required=True)
    build_cmd.add_argument("--only", nargs="*", choices=sorted(ENTRIES))
    sub.add_parser("list", help="list the checkpoints this command builds")
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(f"{name} (on demand)" if name in ON_DEMAND else name for name in ENTRIES))
        return 0
    try:
        build(args.store, args.only)
    except Exception as exc:
        print(f"[model-store] error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
