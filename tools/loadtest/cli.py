"""The commands of scripts/loadtest.

  run           perf_analyzer against a running server (any URL), one model or all
  batching      the same model with dynamic batching on and off, side by side
  continuous    the chat models with continuous and static batching, side by side
  quantization  memory footprint and throughput per quantization
  overhead      Triton-served throughput against the model's in-process ceiling
  baseline      Triton against a per-request FastAPI + transformers server, same load
  peers         Triton against llama.cpp's llama-server on the same weights, same load
  door          the OpenAI-compatible door against direct gRPC, same server and load
  numerics      the model in-process per quantization:dtype: speed, identical answers, WER
  bench-stt     the speech-to-text benchmark (in-process, served, quantizations, CTranslate2)
  bench-tts     the text-to-speech benchmark (real-time factor, time to first audio)
  bench-vlm     the vision-language benchmark (batching, ceiling, time to first token)
  bench-voice   voice_chat's time to first audio against stt + llm + tts called in a row
  fast-default  the shipped dtype=auto against float32 per model, in-process: speed, quality
  soak          mixed valid and hostile load on every model for minutes: errors, latency, RSS
  chat-memory   the chat models' memory: one engine behind three names vs. an engine per name
  cancelled-images  a request's wait behind image streams whose clients cancelled
  build-peers   build llama-server, its GGUF and the CTranslate2 venv (never in CI)

`run` needs a server, and is what runs when no command is named (scripts/loadtest -m stt);
the others start local tritonservers (scripts/serve's environment) on temporary copies of the
model repository, one setup at a time, so each gets the machine alone. COMMAND --help lists
each command's options.

This module is the top of the suite: it imports every command's module, and none imports it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from . import (
    baseline,
    benchmarks,
    build_peers,
    cancelled,
    chat_memory,
    door,
    fast_default,
    peers,
    run,
    soak,
    tts,
    vlm,
    voice,
)
from .options import add_load_options, add_local_options
from .server import NotReady
from .stt import cli as stt

Handler = Callable[[argparse.Namespace, list[str]], int]

#: The load-test commands: name, help, the command's own options (beside the shared ones).
LOAD_COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None] | None], ...] = (
    ("batching", "dynamic batching on vs. off (local servers)", None),
    ("continuous", "chat: continuous vs. static batching, closed loop and Poisson", None),
    ("quantization", "footprint and throughput per quantization (local servers)", None),
    ("overhead", "served vs. in-process ceiling (local server + the model in-process)", None),
    (
        "baseline",
        "Triton vs. a per-request FastAPI + transformers server (local servers)",
        baseline.add_arguments,
    ),
    (
        "peers",
        "Triton vs. llama.cpp's llama-server on the same weights (local servers)",
        peers.add_arguments,
    ),
    ("numerics", "the model in-process per quantization:dtype: speed, answers, WER", None),
    ("door", "the OpenAI door vs. direct gRPC on one server (local servers)", None),
)
#: The benchmarks with options of their own: name, module (its docstring is the help).
BENCHMARKS = (
    ("bench-stt", stt),
    ("bench-tts", tts),
    ("bench-vlm", vlm),
    ("bench-voice", voice),
    ("fast-default", fast_default),
    ("soak", soak),
    ("chat-memory", chat_memory),
    ("cancelled-images", cancelled),
    ("build-peers", build_peers),
)
HANDLERS: dict[str, Handler] = {
    "run": run.cmd_run,
    **benchmarks.COMMANDS,
    "baseline": baseline.cmd_baseline,
    "peers": peers.cmd_peers,
    "door": door.cmd_door,
    **{name: module.main for name, module in BENCHMARKS},
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/loadtest",
        description=__doc__.split("\n\nThis module")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run.add_arguments(commands.add_parser("run", help="perf_analyzer against a running server"))
    for name, text, add_own in LOAD_COMMANDS:
        sub = commands.add_parser(name, help=text)
        add_load_options(sub)
        add_local_options(sub)
        if add_own:
            add_own(sub)
    benchmarks.add_arguments(commands.choices)
    for name, module in BENCHMARKS:
        doc = module.__doc__ or ""
        sub = commands.add_parser(
            name,
            help=doc.split("\n", 1)[0].rstrip("."),
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    if args.command == "run":
        run.resolve_urls(args)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*HANDLERS, "-h", "--help"):
        argv = ["run", *argv]
    args = parse_args(argv)
    try:
        return HANDLERS[args.command](args, argv)
    except NotReady as exc:
        print(f"loadtest: not ready: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, LookupError) as exc:
        print(f"loadtest: error: {exc}", file=sys.stderr)
        return 1
