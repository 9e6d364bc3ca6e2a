"""`peers`: Triton's text models against llama.cpp's `llama-server` on the same weights.

People who serve small language models on CPUs run llama.cpp today. This command serves the
GGUF file our `smolvlm-256m-smollm2` checkpoint was converted from with `llama-server`
(continuous batching over `--slots` parallel sequences, the OpenAI API), serves our model with
its shipped config, and drives both with the same prompts, the same closed-loop load generator
and the same concurrency levels, then (`--rates`) the same seeded Poisson arrivals, one server
at a time, reporting the highest rate each serves with p99 under `--p99-bound-ms`. Both
decode greedily, at most `--max-new-tokens` tokens. Per level: requests/s, generated tokens/s, p50/p99 latency and the
time per output token a client sees; and how many greedy answers were the same text (the
weights are the same values, the arithmetic is not: llama.cpp multiplies 4-bit weights with
8-bit activations, transformers dequantized float weights).

Build the peer with `scripts/loadtest build-peers` (never in CI).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tools.local_server import free_port

from . import loadgen
from .compare import generator_levels, http_process, rate_levels, triton_generator_levels
from .inputs import is_decoupled, read_config
from .local import repository_copy
from .options import content_options, float_list, models, server_env
from .results import collecting, level_at, prepare_model, progress
from .setups import parse_setups


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llama-server", type=Path, required=True, help="llama-server binary")
    parser.add_argument("--gguf", type=Path, required=True, help="the GGUF file it serves")
    parser.add_argument(
        "--slots", type=int, default=16, help="llama-server parallel sequences (default 16)"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="llama-server threads (default 2: the cores)"
    )
    parser.add_argument(
        "--context-per-slot",
        type=int,
        default=1024,
        help="llama-server context per slot, tokens (default 1024)",
    )
    parser.add_argument(
        "--setups",
        type=parse_setups,
        default="none:auto",  # argparse parses it with `type`
        help="one Triton series per QUANTIZATION:DTYPE[:NAME=VALUE...] "
        "(default %(default)s, the shipped config)",
    )
    parser.add_argument(
        "--rates",
        type=float_list,
        default=[],
        help="Poisson arrival rates (requests/s) to offer each server after the closed-loop "
        "levels, the same seeded arrival times for all (default none)",
    )
    parser.add_argument(
        "--rate-requests", type=int, default=32, help="requests per rate (default 32)"
    )
    parser.add_argument(
        "--p99-bound-ms",
        type=float,
        default=5000.0,
        help="the p99 latency a rate must stay under to count as sustained (default 5000)",
    )
    parser.add_argument(
        "--triton-protocol",
        choices=["http", "grpc"],
        default="grpc",
        help="how the load generator reaches Triton (default grpc)",
    )


def llama_server_command(args: argparse.Namespace, port: int) -> list[str]:
    return [
        str(args.llama_server),
        "--model", str(args.gguf),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--threads", str(args.threads),
        "--parallel", str(args.slots),
        "--ctx-size", str(args.slots * args.context_per_slot),
        "--cont-batching",
        "--jinja",  # the GGUF's own chat template, as our checkpoint's
        "--no-webui",
    ]  # fmt: skip


def cmd_peers(args: argparse.Namespace, argv: list[str]) -> int:
    """Each text model on Triton (once per quantization:dtype setup), then llama-server on the
    GGUF, same prompts and load."""
    env = server_env(args)
    args.images_per_prompt = 0  # text prompts: the peer has no vision tower
    with collecting(args, argv, "Triton vs. llama-server, same weights") as (results, work):
        for model in models(args):
            config = read_config(args.repository / model)
            if is_decoupled(config):
                raise ValueError(f"{model} is decoupled; compare its unary sibling")
            entry, _, samples = prepare_model(config, content_options(args), work)
            if "prompt" not in samples[0].inputs:
                raise ValueError(f"{model} takes no prompts: llama-server is a text peer")
            results["models"][model] = entry
            repo = repository_copy(args.repository, [model], work / f"repo-{model}")
            ours = []
            for setup in args.setups:
                name = f"triton ({args.triton_protocol}, {setup.name})"
                setup_env = {**env, **setup.env(model)}
                log = work / f"{model}-{setup.name.replace(' ', '-')}-triton.log"
                levels, poisson = triton_generator_levels(
                    args, repo, model, setup_env, samples, log, f"triton ({setup.name})"
                )
                entry["series"][name] = {"levels": levels}
                if poisson:
                    entry["series"][f"{name} poisson"] = {"levels": poisson}
                ours.append((setup.name, name))
            theirs = f"llama-server ({args.slots} slots, {args.threads} threads)"
            port = free_port()
            progress(f"{model}: starting llama-server on {args.gguf.name}")
            with http_process(
                llama_server_command(args, port),
                f"http://127.0.0.1:{port}/health",
                {},
                work / f"{model}-llama-server.log",
                "llama-server",
            ):
                chat_url = f"http://127.0.0.1:{port}/v1/chat/completions"

                def target(c: int, url: str = chat_url, samples: Any = samples) -> Any:
                    return loadgen.OpenAiChatTarget(url, samples, c, args.max_new_tokens)

                label = f"{model} on llama-server"
                entry["series"][theirs] = {
                    "levels": generator_levels(args, target, len(samples), label),
                    "about": " ".join(llama_server_command(args, port)[1:]),
                }
                if args.rates:
                    entry["series"][f"{theirs} poisson"] = {
                        "levels": rate_levels(args, target, len(samples), label)
                    }
            for setup, name in ours:
                found = ratios(entry["series"][name], entry["series"][theirs])
                entry["ratios"].update({f"{setup}: {k}": v for k, v in found.items()})
            for name in [n for n in entry["series"] if n.endswith(" poisson")]:
                rate = sustained(entry["series"][name]["levels"], args.p99_bound_ms)
                entry["ratios"][
                    f"{name.removesuffix(' poisson')}: highest Poisson rate (req/s) served with "
                    f"p99 under {args.p99_bound_ms:g} ms"
                ] = rate
    return 0


def sustained(levels: list[dict[str, Any]], p99_bound_ms: float) -> float:
    """The highest offered rate whose requests were all answered and whose p99 stayed under
    the bound (0: none)."""
    kept = [
        level["request_rate"]
        for level in levels
        if level["p99_ms"] <= p99_bound_ms and level["throughput"] > 0
    ]
    return max(kept, default=0.0)


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    """Throughput at the top level, time per token at the lowest, identical greedy answers."""
    out: dict[str, float] = {}
    levels = [level["concurrency"] for level in ours["levels"]]
    top, low = max(levels), min(levels)
    a, b = level_at(ours["levels"], top), level_at(theirs["levels"], top)
    if a and b:
        out[f"requests/s Triton / llama-server at concurrency {top}"] = (
            a["throughput"] / b["throughput"]
        )
        if "tokens_per_s" in a and "tokens_per_s" in b:
            out[f"tokens/s Triton / llama-server at concurrency {top}"] = (
                a["tokens_per_s"] / b["tokens_per_s"]
            )
        out[f"p99 latency Triton / llama-server at concurrency {top}"] = a["p99_ms"] / b["p99_ms"]
    a, b = level_at(ours["levels"], low), level_at(theirs["levels"], low)
    if a and b and "ms_per_output_token" in a and "ms_per_output_token" in b:
        out[f"time per output token Triton / llama-server at concurrency {low}"] = (
            a["ms_per_output_token"] / b["ms_per_output_token"]
        )
        same = [k for k, text in a["answers"].items() if b["answers"].get(k) == text]
        out[f"identical greedy answers at concurrency {low} (share of prompts)"] = len(same) / max(
            len(a["answers"]), 1
        )
    return out
