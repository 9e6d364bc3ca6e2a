"""`soak`: mixed valid and hostile load on every model for a while, as production would see it.

A local tritonserver (scripts/serve's environment) serves every chat, speech and voice model
of the repository; `--clients` closed-loop clients each pick a model at random and send it a
valid request or, with probability `--bad-share`, a spoiled one (audio that is no audio, an
image that is no image, a repetition_penalty of 1e-40, a speaking_rate of 100: the classes of
issue 22). Unary models are called over gRPC, decoupled ones over a gRPC stream. Every 10 s
the resident memory of every stub process is read from /proc.

What must hold, and what the exit status says: no valid request fails, every spoiled one is
refused as invalid (INVALID_ARG on unary models; a message naming the input on streams, where
Triton 2.51 sends no code), and the server is ready at the end. Reported per model: requests,
failures, p50/p99 latency of the valid ones, and each stub's RSS at the start, the end and its
peak, and its slope over the second half of the run (least squares, MB per minute; the first
half holds the warm-up), the sign of a leak over a long run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import InferInput
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tools.container.watchdog import stubs

from .content import ContentOptions, generator_for
from .inputs import client_tensors, is_decoupled, read_config
from .local import local_server, parse_env, repository_copy
from .machine import CpuProbe, proc_memory

#: The models a soak drives by default: every chat, speech and voice model but voice_chat.
MODELS = ("stt", "tts", "tts_stream", "llm", "vlm", "vlm_stream")
RSS_EVERY = 10.0
#: A request unanswered this long is a failure, not a soak that never ends: a model whose stub
#: died holding a request it answers through its response sender never answers it.
ANSWER_WITHIN = 600.0


def spoil(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A request the model must refuse as invalid, made from a valid one."""
    bad = dict(arrays)
    if "audio" in bad:
        bad["audio"] = np.array([[b"RIFF\x00\x00\x00\x00WAVE" + b"\x01" * 64]], dtype=np.object_)
    elif "images" in bad:
        bad["images"] = np.array([[b"not an image"] * bad["images"].shape[1]], dtype=np.object_)
    elif "prompt" in bad:
        bad["repetition_penalty"] = np.array([[1e-40]], dtype=np.float32)
    else:
        bad["speaking_rate"] = np.array([[100.0]], dtype=np.float32)
    return bad


def tensors(arrays: dict[str, np.ndarray]) -> list[InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


@dataclass
class Outcome:
    model: str
    valid: bool
    seconds: float
    error: str = ""  # empty: answered
    code: str = ""


@dataclass
class Model:
    name: str
    decoupled: bool
    requests: list[dict[str, np.ndarray]]


async def send(client: grpcaio.InferenceServerClient, model: Model, arrays: Any) -> str:
    """'' when answered, else the error's code and message."""
    try:
        if not model.decoupled:
            await client.infer(model.name, tensors(arrays))
            return ""

        async def one() -> Any:
            yield {
                "model_name": model.name,
                "inputs": tensors(arrays),
                "enable_empty_final_response": True,
            }

        async for result, error in client.stream_infer(one()):
            if error is not None:
                return f"{error.status() or ''} {error.message()}"
            if result.get_response().parameters["triton_final_response"].bool_param:
                return ""
        return "the stream ended without its final response"
    except InferenceServerException as exc:
        return f"{exc.status() or ''} {exc.message()}"


def refused_as_invalid(model: Model, error: str) -> bool:
    if model.decoupled:  # 2.51 sends a stream's error without a code
        return "input '" in error
    return error.startswith("StatusCode.INVALID_ARGUMENT")


@dataclass
class Soak:
    url: str
    server_pid: int
    models: list[Model]
    clients: int
    bad_share: float
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    rss: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))

    async def client(self, seed: int, deadline: float) -> None:
        rng = random.Random(seed)
        client = grpcaio.InferenceServerClient(self.url)
        try:
            while time.monotonic() < deadline:
                model = rng.choice(self.models)
                valid = rng.random() >= self.bad_share
                arrays = rng.choice(model.requests)
                started = time.monotonic()
                try:
                    error = await asyncio.wait_for(
                        send(client, model, arrays if valid else spoil(arrays)), ANSWER_WITHIN
                    )
                except TimeoutError:
                    error = f"no answer within {ANSWER_WITHIN:.0f} s"
                self.outcomes.append(Outcome(model.name, valid, time.monotonic() - started, error))
        finally:
            await client.close()

    async def watch_memory(self, deadline: float) -> None:
        started = time.monotonic()
        while True:
            for stub in stubs(self.server_pid):
                with contextlib.suppress(OSError, KeyError):  # a stub that just ended
                    mb = proc_memory(stub.pid)["rss_mib"]
                    self.rss[stub.instance].append(((time.monotonic() - started) / 60, mb))
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(min(RSS_EVERY, max(0.0, deadline - time.monotonic())))

    async def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        await asyncio.gather(
            self.watch_memory(deadline), *(self.client(i, deadline) for i in range(self.clients))
        )


def summary(soak: Soak) -> dict[str, Any]:
    models: dict[str, Any] = {}
    by_name = {m.name: m for m in soak.models}
    for name in sorted(by_name):
        mine = [o for o in soak.outcomes if o.model == name]
        valid = [o for o in mine if o.valid]
        bad = [o for o in mine if not o.valid]
        latencies = np.array([o.seconds for o in valid if not o.error]) * 1000
        models[name] = {
            "valid": len(valid),
            "valid_failed": [o.error[:200] for o in valid if o.error],
            "bad": len(bad),
            "bad_not_refused": [
                o.error[:200] or "answered"
                for o in bad
                if not refused_as_invalid(by_name[name], o.error)
            ],
            "p50_ms": round(float(np.percentile(latencies, 50)), 1) if len(latencies) else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 1) if len(latencies) else None,
        }
    memory = {}
    for instance, points in sorted(soak.rss.items()):
        minutes, mb = np.array(points).T
        # The slope of the second half: the first holds the warm-up (allocator pools, caches).
        late = minutes >= minutes[-1] / 2
        slope = float(np.polyfit(minutes[late], mb[late], 1)[0]) if late.sum() > 2 else 0.0
        memory[instance] = {
            "first_mb": round(float(mb[0]), 1),
            "last_mb": round(float(mb[-1]), 1),
            "peak_mb": round(float(mb.max()), 1),
            "slope_mb_per_min": round(slope, 2),
        }
    return {"models": models, "stub_rss": memory}


def report(result: dict[str, Any], header: str) -> str:
    lines = [header, "", "| model | valid | failed | p50 | p99 | hostile | not refused |"]
    lines.append("|---|---|---|---|---|---|---|")
    for name, m in result["models"].items():
        lines.append(
            f"| {name} | {m['valid']} | {len(m['valid_failed'])} | {m['p50_ms']} ms | "
            f"{m['p99_ms']} ms | {m['bad']} | {len(m['bad_not_refused'])} |"
        )
    lines += ["", "| stub | RSS first | last | peak | slope, 2nd half |", "|---|---|---|---|---|"]
    for instance, r in result["stub_rss"].items():
        lines.append(
            f"| {instance} | {r['first_mb']} MB | {r['last_mb']} MB | {r['peak_mb']} MB | "
            f"{r['slope_mb_per_min']:+} MB/min |"
        )
    lines += ["", f"server ready at the end: {result['ready_at_end']}"]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (10)")
    parser.add_argument("--clients", type=int, default=4, help="clients in flight (4)")
    parser.add_argument("--bad-share", type=float, default=0.1, help="share of hostile requests")
    parser.add_argument("-m", "--models", default=",".join(MODELS), help="models to drive")
    parser.add_argument("--samples", type=int, default=4, help="distinct valid requests per model")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens per chat answer")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    parser.add_argument("--out", type=Path, help="write summary.md and result.json here")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace, argv: list[str]) -> int:
    from tools.local_server import ROOT

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    options = ContentOptions(
        samples=args.samples, max_new_tokens=args.max_new_tokens, image_size=64
    )
    models = []
    for name in names:
        config = read_config(ROOT / "model_repository" / name)
        samples = generator_for(config).make(config, options)
        models.append(
            Model(name, is_decoupled(config), [client_tensors(config, s) for s in samples])
        )
    out = args.out or Path("bench-results") / "soak"
    out.mkdir(parents=True, exist_ok=True)
    random.seed(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="soak-"))  # the repository copy, the server log
    repository = repository_copy(ROOT / "model_repository", names, scratch / "repository")
    with (
        local_server(repository, names, parse_env(args.env), scratch / "server.log") as server,
        CpuProbe() as probe,
    ):
        soak = Soak(
            server.grpc_url,
            server.process.pid,
            models,
            args.clients,
            args.bad_share,
            args.minutes * 60,
        )
        print(
            f"[soak] {args.minutes:g} min, {args.clients} clients, {args.bad_share:.0%} hostile, "
            f"models {', '.join(names)}",
            flush=True,
        )
        asyncio.run(soak.run())
        result = summary(soak)
        result["ready_at_end"] = server.is_ready()
    result["others_cpu_pct"] = round(probe.other_cpu_pct, 1)
    command = "scripts/loadtest " + " ".join(argv)
    header = (
        f"`{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} CPUs; others' CPU during the run: {result['others_cpu_pct']} %)"
    )
    text = report(result, header)
    (out / "summary.md").write_text(text, encoding="utf-8")
    (out / "result.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(text, flush=True)
    failed = any(m["valid_failed"] or m["bad_not_refused"] for m in result["models"].values())
    return 1 if failed or not result["ready_at_end"] else 0
