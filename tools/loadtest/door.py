"""`door`: the OpenAI-compatible door against direct gRPC, on one server, same samples and load.

The door (openai_api) is an extra hop: HTTP and JSON or multipart in, gRPC out. What it costs
is measured by driving one local tritonserver two ways with the suite's closed-loop load
generator, the two taking turns in chunks of requests at each concurrency (so that both see
the same machine at the same time; `paired_level`): tritonclient's asyncio gRPC client straight to the
model, and the OpenAI API through a door started in front of that server. Chat (`llm`) sends
each prompt as one user message with the same `max_tokens`; speech to text (`stt`) uploads
the same WAV clips. The ratios: the door's added p50 latency at the lowest concurrency, its
throughput over direct gRPC's at the highest, and for chat whether the answers are the same.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tools.local_server import free_port
from tools.openai_door import OpenAIDoor

from . import loadgen
from .content import Sample
from .inputs import read_config
from .local import local_server, repository_copy
from .machine import CpuProbe
from .options import content_options, models, server_env, settings_from
from .results import collecting, level_at, prepare_model, progress
from .server import Endpoint, connect, model_config
from .stats import Timing, summarize

DIRECT = "direct gRPC (tritonclient asyncio)"
DOOR = "OpenAI door (openai API over HTTP)"


class DoorChatTarget(loadgen.OpenAiChatTarget):
    """The door's chat endpoint with the model id, and nothing the direct request lacks (no
    temperature: greedy is the model's default either way)."""

    def __init__(
        self, url: str, model: str, samples: Sequence[Sample], concurrency: int, max_tokens: int
    ) -> None:
        self.model = model
        super().__init__(url, samples, concurrency, max_tokens)

    def body(self, sample: Sample) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": sample.inputs["prompt"]}],
            "max_tokens": self.max_tokens,
        }


def door_target(
    model: str, door: OpenAIDoor, samples: Sequence[Sample], concurrency: int, max_tokens: int
) -> loadgen.HttpJsonTarget:
    if model == "llm":
        url = f"{door.url}/v1/chat/completions"
        return DoorChatTarget(url, model, samples, concurrency, max_tokens)
    if model == "stt":
        url = f"{door.url}/v1/audio/transcriptions"
        return loadgen.OpenAiTranscriptionTarget(url, samples, concurrency)
    raise ValueError(f"door: {model} is not benchmarked; use llm (chat) or stt")


def shifted(timings: list[Timing], start_ns: int) -> list[Timing]:
    """`timings` moved in time to begin at `start_ns` (a chunk appended to its series' last)."""
    offset = min(t.sent_ns for t in timings) - start_ns
    return [Timing(t.sent_ns - offset, tuple(r - offset for r in t.responses_ns)) for t in timings]


def paired_level(
    targets: dict[str, Callable[[int], Any]], samples: int, concurrency: int, count: int
) -> dict[str, loadgen.Level]:
    """`count` requests per series at `concurrency`, sent in chunks that take turns (direct,
    door, direct, ...), so that drift of the machine's speed reaches both series alike. Each
    series' chunks are joined end to end in time, so its throughput is its requests over its
    own sending time. A chunk holds at least 8 requests and 4 per worker (ramp-up and drain
    stay small)."""
    chunks = max(1, count // max(8, 4 * concurrency))

    async def main() -> dict[str, loadgen.Level]:
        made = {name: make(concurrency) for name, make in targets.items()}
        levels = {name: loadgen.Level([], []) for name in targets}
        try:
            for _ in range(chunks):
                for name, target in made.items():
                    chunk = await loadgen.closed_loop(target, samples, concurrency, count // chunks)
                    series = levels[name]
                    start = max((t.responses_ns[-1] for t in series.timings), default=0)
                    series.timings += shifted(chunk.timings, start) if start else chunk.timings
                    series.answers += chunk.answers
        finally:
            for target in made.values():
                await target.close()
        return levels

    return asyncio.run(main())


def interleaved_levels(
    args: argparse.Namespace, targets: dict[str, Callable[[int], Any]], samples: int, model: str
) -> dict[str, list[dict[str, Any]]]:
    """Every series at every concurrency, paired chunk by chunk; each warmed up first."""
    settings = settings_from(args)
    for make in targets.values():
        loadgen.run_level(make, samples, 1, args.warmup)
    levels: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for concurrency in args.concurrency:
        count = settings.request_count(concurrency) or max(args.samples, 3 * concurrency)
        progress(f"{model}: concurrency {concurrency}, {count} requests per series, in turns")
        with CpuProbe() as probe:
            paired = paired_level(targets, samples, concurrency, count)
        interference = probe.record()
        for name, level in paired.items():
            summary: dict[str, Any] = {"concurrency": concurrency, **summarize(level.timings)}
            if level.answers:
                summary.update(loadgen.token_figures(level))
            summary["interference"] = interference
            progress(
                f"{model} via {name}: {summary['throughput']:.2f}/s, "
                f"p50 {summary['p50_ms']:.1f} ms, p99 {summary['p99_ms']:.1f} ms"
            )
            levels[name].append(summary)
    return levels


def ratios(direct: list[dict[str, Any]], door: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    concurrencies = [level["concurrency"] for level in direct]
    low, top = min(concurrencies), max(concurrencies)
    a, b = level_at(direct, low), level_at(door, low)
    if a and b:
        out[f"p50 latency added by the door at concurrency {low} (ms)"] = b["p50_ms"] - a["p50_ms"]
        if "answers" in a and "answers" in b:
            same = [k for k, text in a["answers"].items() if b["answers"].get(k) == text]
            out[f"identical answers at concurrency {low} (share of prompts)"] = len(same) / max(
                len(a["answers"]), 1
            )
    a, b = level_at(direct, top), level_at(door, top)
    if a and b:
        out[f"throughput door / direct at concurrency {top}"] = b["throughput"] / a["throughput"]
        out[f"p50 latency added by the door at concurrency {top} (ms)"] = b["p50_ms"] - a["p50_ms"]
    return out


def measure(
    args: argparse.Namespace, model: str, samples: list[Sample], env: dict[str, str], work: Path
) -> dict[str, list[dict[str, Any]]]:
    """One server with `model`, a door in front of it, both series level by level."""
    repo = repository_copy(args.repository, [model], work / f"repo-{model}")
    with local_server(repo, [model], env, work / f"{model}-triton.log") as server:
        client = connect(Endpoint("grpc", server.grpc_url))
        try:
            served = model_config(client, model)
        finally:
            client.close()
        door = OpenAIDoor(
            triton_url=server.grpc_url,
            port=free_port(),
            models=[model],
            log_path=work / f"{model}-door.log",
        )
        with door:
            targets: dict[str, Callable[[int], Any]] = {
                DIRECT: lambda c: loadgen.TritonTarget("grpc", server.grpc_url, served, samples),
                DOOR: lambda c: door_target(model, door, samples, c, args.max_new_tokens),
            }
            return interleaved_levels(args, targets, len(samples), model)


def cmd_door(args: argparse.Namespace, argv: list[str]) -> int:
    """Direct gRPC vs. the OpenAI door in front of the same server, level by level."""
    env = server_env(args)
    with collecting(args, argv, "The OpenAI door vs. direct gRPC") as (results, work):
        for model in models(args):
            config = read_config(args.repository / model)
            entry, _, samples = prepare_model(config, content_options(args), work)
            results["models"][model] = entry
            levels = measure(args, model, samples, env, work)
            entry["series"] = {name: {"levels": found} for name, found in levels.items()}
            entry["ratios"].update(ratios(levels[DIRECT], levels[DOOR]))
    return 0
