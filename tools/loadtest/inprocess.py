"""The model in-process, no server: its own model.py and engine, one execute() per batch.

The ceiling a served model is compared with. The model's model.py runs under the project's
pb_utils harness (tests/harness: the same config completion, parameters and environment
overrides as the server), so the engine, its settings and the parsing of each request are
exactly what the server runs, and the only thing missing is Triton itself: the queue, the
network, the stub's shared-memory IPC. Any model works without a per-model adapter.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from .content import Sample
from .inputs import client_tensors, read_config
from .stats import percentile


def profile_call(fn: Callable[[], Any], top: int = 8) -> dict[str, Any]:
    """cProfile one call: the functions with the most own time, and the logits processors'
    share (generate() runs them on every decoding step, outside the decoder's forward)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(fn)
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    entries = [
        (f"{Path(file).name}:{line}({name})", tottime, cumtime)
        for (file, line, name), (_, _, tottime, cumtime, _) in stats.items()
    ]
    logits = max(
        (cum for label, _, cum in entries if label.startswith("logits_process.py")), default=0.0
    )
    entries.sort(key=lambda e: e[1], reverse=True)
    return {
        "wall_ms": 1000 * wall,
        "logits_processors_ms": 1000 * logits,
        "top_own_time_ms": {label: round(1000 * own, 1) for label, own, _ in entries[:top]},
    }


@contextmanager
def environment(overrides: dict[str, str]) -> Iterator[None]:
    """The server's environment overrides (MODEL_STORE, STT_QUANTIZATION, ...) in-process."""
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _answer(result: Any) -> tuple[str | None, int | None]:
    """A unary response's `text` and `completion_tokens` outputs, where the model has them."""
    if isinstance(result, list):  # decoupled: several responses, nothing to compare here
        return None, None
    text = result.outputs.get("text")
    count = result.outputs.get("completion_tokens")
    value = text.reshape(-1)[0] if text is not None else None
    return (
        value.decode() if isinstance(value, bytes) else value,
        int(count.reshape(-1)[0]) if count is not None else None,
    )


def _failure(results: list[Any]) -> str | None:
    for result in results:
        for response in result if isinstance(result, list) else [result]:
            if response.error is not None:
                return f"{response.code}: {response.message}"
    return None


def measure(
    model_dir: Path,
    samples: Sequence[Sample],
    batch_sizes: list[int],
    requests_for: Callable[[int], int],
    env: dict[str, str],
    progress: Callable[[str], None],
    *,
    profile: bool = False,
) -> dict[str, Any]:
    """Requests per second per batch size (one execute() of `size` requests at a time, over
    `requests_for(size)` requests rounded up to whole batches) and each call's latency; with
    `profile`, where one call's time goes at batch 1 and at the best batch size (cProfile:
    the calling thread's, so a front's profile shows its waiting, its engine's work is not
    in it). A front (`llm`, `vlm`) runs with the engine model it answers through."""
    from tests.harness.runner import ModelHarness
    from tests.harness.server import HarnessServer
    from tools.container.repository import engine_model

    from .machine import CpuProbe, proc_memory

    config = read_config(model_dir)
    tensors = [client_tensors(config, sample) for sample in samples]
    runs: dict[str, Any] = {}
    answers: dict[int, str] = {}  # sample index -> text, of the batch size being measured
    tokens: list[int] = []
    with ExitStack() as stack:
        stack.enter_context(environment(env))
        engine = engine_model(model_dir.name, model_dir.parent, {**os.environ, **env})
        harness = stack.enter_context(ModelHarness(model_dir, response_timeout=3600.0))
        if engine is not None:
            behind = stack.enter_context(
                ModelHarness(model_dir.parent / engine, response_timeout=3600.0)
            )
            HarnessServer(behind, harness)

        def batch(start: int, size: int) -> float:
            requests = [harness.request(tensors[(start + k) % len(tensors)]) for k in range(size)]
            began = time.perf_counter()
            results = harness.execute(requests, enforce_batcher=False)
            seconds = time.perf_counter() - began
            failure = _failure(results)
            if failure:
                raise RuntimeError(f"{config.name} in-process, batch of {size}: {failure}")
            for k, result in enumerate(results):
                text, count = _answer(result)
                if text is not None:
                    answers[(start + k) % len(tensors)] = text
                if count is not None:
                    tokens.append(count)
            return seconds

        progress(f"{config.name} in-process: warm-up")
        batch(0, 1)
        for size in batch_sizes:
            calls = -(-requests_for(size) // size)
            progress(f"{config.name} in-process: batch size {size}, {calls} calls")
            answers.clear()
            tokens.clear()
            with CpuProbe() as probe:
                call_s = [batch(i * size, size) for i in range(calls)]
            total = sum(call_s)
            runs[str(size)] = {
                "batch_size": size,
                "requests": calls * size,
                "throughput": calls * size / total,
                "call_p50_ms": 1000 * percentile(call_s, 50),
                "call_p99_ms": 1000 * percentile(call_s, 99),
                "interference": probe.record(),
            }
            if tokens:
                runs[str(size)]["tokens_per_s"] = sum(tokens) / total
            if answers:
                runs[str(size)]["answers"] = {str(i): t for i, t in sorted(answers.items())}
            progress(
                f"{config.name} in-process: batch size {size}: "
                f"{runs[str(size)]['throughput']:.2f}/s, call p50 "
                f"{runs[str(size)]['call_p50_ms']:.0f} ms"
            )
        best = max(runs.values(), key=lambda r: r["throughput"])
        profiles = {}
        if profile:
            for size in sorted({1, best["batch_size"]}):
                progress(f"{config.name} in-process: profiling one call of batch {size}")
                profiles[str(size)] = profile_call(lambda size=size: batch(0, size))
        memory = proc_memory(os.getpid())
    return {
        "batches": runs,
        "profiles": profiles,
        "best_batch_size": best["batch_size"],
        "best_throughput": best["throughput"],
        "process_peak_rss_mib": memory["peak_rss_mib"],
    }
