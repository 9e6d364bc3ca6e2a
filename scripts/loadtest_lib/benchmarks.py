"""The benchmark commands: each starts its own local servers and measures setups side by side.

  batching      the shipped config vs. the same config without dynamic_batching
  quantization  one server per quantization: footprint, stub memory, throughput
  overhead      the model in-process (its best batch size) vs. served, same samples
  baseline      Triton vs. the per-request FastAPI server, driven by the same load generator
  numerics      the model in-process per quantization:dtype: speed, identical answers, WER

One setup at a time, so each has the machine to itself; every level records the share of CPU
other processes took meanwhile. The figures are ratios measured in one run on one machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.local_server import free_port

from . import cli, inprocess, loadgen
from .content import generator_for
from .inputs import is_decoupled, read_config
from .local import env_name, load_facts, local_server, parse_env, repository_copy, stub_pid
from .machine import CpuProbe, proc_memory
from .perf import shared_memory_problem, sweep
from .server import Endpoint, connect, model_config

ROOT = Path(__file__).resolve().parents[2]
BASELINE_SERVER = ROOT / "docs" / "benchmarks" / "baseline" / "server.py"


def add_arguments(parsers: dict[str, argparse.ArgumentParser]) -> None:
    """Each benchmark's own options (on top of cli.add_load_options / add_local_options)."""
    parsers["quantization"].add_argument(
        "--quantizations",
        type=cli.str_list,
        default=["none", "int8", "nf4"],
        help="values of the model's quantization setting (default none,int8,nf4)",
    )
    parsers["quantization"].add_argument(
        "--dtypes",
        type=cli.str_list,
        default=["auto"],
        help="values of the model's dtype setting, each run with every quantization "
        "(default auto; e.g. float32,bfloat16: series are named 'QUANTIZATION DTYPE')",
    )
    for name in ("overhead", "numerics"):
        parsers[name].add_argument(
            "--batch-sizes",
            type=cli.int_list,
            default=[1, 2, 4, 8, 16],
            help="in-process batch sizes (default 1,2,4,8,16)",
        )
    parsers["numerics"].add_argument(
        "--setups",
        type=parse_setups,
        default="none:float32,none:bfloat16,nf4:bfloat16",  # argparse parses it with `type`
        help="QUANTIZATION:DTYPE[:NAME=VALUE...] setups; the first is the reference "
        "(default %(default)s)",
    )
    parsers["baseline"].add_argument(
        "--triton-protocol",
        choices=["http", "grpc"],
        default="http",
        help="how the load generator reaches Triton (default http, like the baseline)",
    )
    parsers["baseline"].add_argument(
        "--baseline-task",
        choices=["stt", "llm", "vlm", "tts"],
        help="the baseline server's task (default: from the model's content)",
    )
    parsers["baseline"].add_argument(
        "--baseline-python",
        default=sys.executable,
        help="interpreter for the baseline server (default this one: fastapi, uvicorn)",
    )


def _models(args: argparse.Namespace) -> list[str]:
    if not args.models:
        raise ValueError(f"{args.command}: name the model(s) with -m")
    return list(args.models)


def _server_env(args: argparse.Namespace) -> dict[str, str]:
    store = os.environ.get("MODEL_STORE", str(ROOT / "model_store"))
    return {"MODEL_STORE": store, **parse_env(args.env)}


def _entry(
    args: argparse.Namespace, results: dict[str, Any], model: str, work: Path
) -> tuple[Path, dict[str, Any], list[Any]]:
    """A model's results entry and its content samples, made from its config.pbtxt."""
    model_dir = args.repository / model
    entry, _, samples = cli.prepare_model(read_config(model_dir), cli.content_options(args), work)
    results["models"][model] = entry
    return model_dir, entry, samples


def _served_series(
    args: argparse.Namespace,
    results: dict[str, Any],
    model: str,
    repository: Path,
    env: dict[str, str],
    series: str,
    work: Path,
    before_sweep: Callable[[Any, Path], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One local server for `model`; the model's entry prepared from the config it serves;
    a perf_analyzer sweep over gRPC, recorded as `series`."""
    log = work / f"{model}-{series.replace(' ', '_')}.log"
    cli.progress(f"{model} [{series}]: starting tritonserver")
    with local_server(repository, [model], env, log) as server:
        endpoint = Endpoint("grpc", server.grpc_url)
        client = connect(endpoint)
        try:
            config = model_config(client, model)
        finally:
            client.close()
        if model not in results["models"]:
            results["models"][model] = cli.prepare_model(config, cli.content_options(args), work)[0]
        entry = results["models"][model]
        data_file = work / f"{model}-data.json"
        problem = shared_memory_problem(config, cli.settings_from(args))
        if problem:
            raise ValueError(problem)
        extra = before_sweep(server, log) if before_sweep else {}
        levels = sweep(
            model,
            endpoint,
            data_file,
            args.concurrency,
            cli.settings_from(args),
            work,
            streaming=is_decoupled(config),
            progress=cli.progress,
            warmup=args.warmup,
        )
        pid = stub_pid(server, model)
        peak = proc_memory(pid)["peak_rss_mib"] if pid else None
    entry["series"][series] = {"levels": levels, **extra, "stub_peak_rss_mib": peak}
    return entry


def _best(levels: list[dict[str, Any]]) -> dict[str, Any]:
    return max(levels, key=lambda level: level["throughput"])


def _at(levels: list[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    return next((lv for lv in levels if lv["concurrency"] == concurrency), None)


@contextmanager
def _run(args: argparse.Namespace, argv: list[str], title: str) -> Iterator[tuple[dict, Path]]:
    results = cli.new_results(args, argv)
    out = args.out or cli.default_out(args.command)
    with tempfile.TemporaryDirectory(prefix=f"loadtest-{args.command}-") as tmp:
        yield results, Path(tmp)
    cli.finish(results, out, title)


def cmd_batching(args: argparse.Namespace, argv: list[str]) -> int:
    """The same model with dynamic batching on (shipped) and off, at every concurrency."""
    env = _server_env(args)
    with _run(args, argv, "Batching gain: dynamic batching on vs. off") as (results, work):
        for model in _models(args):
            shipped = read_config(args.repository / model)
            if not shipped.HasField("dynamic_batching"):
                raise ValueError(f"{model}'s config has no dynamic_batching: nothing to compare")
            for batching in (True, False):
                name = "dynamic batching" if batching else "no batching"
                repo = repository_copy(
                    args.repository, [model], work / f"repo-{model}-{batching}", batching=batching
                )
                _served_series(args, results, model, repo, env, name, work)
            entry = results["models"][model]
            on = entry["series"]["dynamic batching"]["levels"]
            off = entry["series"]["no batching"]["levels"]
            for level in on:
                other = _at(off, level["concurrency"])
                if other:
                    entry["ratios"][f"batching gain at concurrency {level['concurrency']}"] = (
                        level["throughput"] / other["throughput"]
                    )
            entry["ratios"]["batching gain, best vs. best"] = (
                _best(on)["throughput"] / _best(off)["throughput"]
            )
            top = max(level["concurrency"] for level in on)
            entry["notes"].append(
                f"batch sizes the batcher formed at concurrency {top}: "
                f"{_at(on, top)['executions_by_batch_size']} (batch size: executions)"
            )
    return 0


def cmd_quantization(args: argparse.Namespace, argv: list[str]) -> int:
    """One server per quantization x dtype (<MODEL>_QUANTIZATION, <MODEL>_DTYPE)."""
    env = _server_env(args)
    with _run(args, argv, "Quantization: footprint and throughput") as (results, work):
        for model in _models(args):
            repo = repository_copy(args.repository, [model], work / f"repo-{model}")

            def after_load(server: Any, log: Path, model: str = model) -> dict[str, Any]:
                pid = stub_pid(server, model)
                facts = load_facts(log, model)
                return {
                    **facts,
                    "stub_rss_after_load_mib": proc_memory(pid)["rss_mib"] if pid else None,
                }

            for dtype in args.dtypes:
                for quantization in args.quantizations:
                    name = _series_name(quantization, dtype, args.dtypes)
                    try:
                        _served_series(
                            args,
                            results,
                            model,
                            repo,
                            {**env, **Setup(quantization, dtype).env(model)},
                            name,
                            work,
                            before_sweep=after_load,
                        )
                    except RuntimeError as exc:  # one setup failing must not lose the others
                        cli.progress(f"{model} [{name}]: failed: {exc}")
                        results["notes"].append(f"{model} [{name}] failed: {exc}")
            if model not in results["models"]:
                continue
            entry = results["models"][model]
            series = entry["series"]
            for name, data in series.items():
                entry["notes"].append(
                    f"{name}: footprint {data.get('footprint_mib', '?')} MiB (the "
                    f"engine's own figure), stub RSS after load {data['stub_rss_after_load_mib']} "
                    f"MiB, stub peak RSS {data['stub_peak_rss_mib']} MiB"
                    + (f"; {data['describe']}" if data.get("describe") else "")
                )
            base_name = next(iter(series))  # the first quantization at the first dtype
            base = series[base_name]
            for name, data in series.items():
                if name == base_name:
                    continue
                entry["ratios"][f"{name} throughput vs. {base_name} (best level)"] = (
                    _best(data["levels"])["throughput"] / _best(base["levels"])["throughput"]
                )
                if data.get("footprint_mib") and base.get("footprint_mib"):
                    entry["ratios"][f"{name} footprint vs. {base_name}"] = (
                        data["footprint_mib"] / base["footprint_mib"]
                    )
    return 0


def _series_name(quantization: str, dtype: str, dtypes: list[str]) -> str:
    """`nf4`, or `nf4 bfloat16` where several dtypes are compared."""
    return quantization if dtypes == ["auto"] else f"{quantization} {dtype}"


def cmd_overhead(args: argparse.Namespace, argv: list[str]) -> int:
    """In-process ceiling (best batch size) vs. served throughput; the p50 Triton adds at c1."""
    env = _server_env(args)
    settings = cli.settings_from(args)
    with _run(args, argv, "Serving overhead: served vs. in-process") as (results, work):
        for model in _models(args):
            model_dir, entry, samples = _entry(args, results, model, work)
            local = inprocess.measure(
                model_dir,
                samples,
                sorted(set(args.batch_sizes)),
                lambda size: settings.request_count(size) or max(args.samples, size),
                env,
                cli.progress,
                profile=True,
            )
            entry["in_process"] = local
            # Free the in-process model before the server loads its own copy.
            import gc

            gc.collect()
            repo = repository_copy(args.repository, [model], work / f"repo-{model}")
            _served_series(args, results, model, repo, env, "served", work)
            served = entry["series"]["served"]["levels"]
            entry["reference_lines"] = [
                {
                    "value": local["best_throughput"],
                    "label": f"in-process, batch {local['best_batch_size']} (ceiling)",
                },
            ]
            if "1" in local["batches"]:
                entry["reference_lines"].append(
                    {"value": local["batches"]["1"]["throughput"], "label": "in-process, batch 1"}
                )
            entry["ratios"]["served best / in-process best"] = (
                _best(served)["throughput"] / local["best_throughput"]
            )
            one = _at(served, 1)
            if one and "1" in local["batches"]:
                entry["ratios"]["p50 latency Triton adds at concurrency 1 (ms)"] = (
                    one["p50_ms"] - local["batches"]["1"]["call_p50_ms"]
                )
            for size, prof in local["profiles"].items():
                top = ", ".join(
                    f"{k} {v:.0f}" for k, v in list(prof["top_own_time_ms"].items())[:5]
                )
                entry["notes"].append(
                    f"profile of one in-process call of batch {size}: {prof['wall_ms']:.0f} ms, "
                    f"logits processors {prof['logits_processors_ms']:.0f} ms; most own time "
                    f"(ms): {top}"
                )
            for run in local["batches"].values():
                entry["notes"].append(
                    f"in-process batch {run['batch_size']}: {run['throughput']:.2f}/s, call p50 "
                    f"{run['call_p50_ms']:.0f} ms, p99 {run['call_p99_ms']:.0f} ms "
                    f"({run['requests']} requests, others' CPU "
                    f"{run['interference']['other_cpu_pct']:.0f}%)"
                )
    return 0


def served_model_dir(model_dir: Path, env: dict[str, str]) -> Path:
    """The checkpoint directory the Triton model loads: its `model_path` setting (config
    parameter, or <MODEL>_MODEL_PATH) under the model store."""
    from shared.loading import resolve_model_dir

    config = read_config(model_dir)
    variable = env_name(config.name, "model_path")
    path = env.get(variable) or os.environ.get(variable)
    if not path:
        path = (
            config.parameters["model_path"].string_value
            if "model_path" in config.parameters
            else ""
        )
    if not path:
        raise ValueError(f"{config.name}: no model_path parameter; set {variable}")
    return resolve_model_dir(path, Path(env["MODEL_STORE"]))


@contextmanager
def baseline_server(
    python: str, task: str, model_dir: Path, env: dict[str, str], log: Path
) -> Iterator[str]:
    """docs/benchmarks/baseline/server.py on a free local port; its /v1/infer URL when ready."""
    port = free_port()
    cmd = [python, str(BASELINE_SERVER), "--task", task, "--model-dir", str(model_dir)]
    cmd += ["--port", str(port)]
    with http_process(cmd, f"http://127.0.0.1:{port}/health", env, log, "the baseline server"):
        yield f"http://127.0.0.1:{port}/v1/infer"


@contextmanager
def http_process(
    cmd: list[str], health_url: str, env: dict[str, str], log: Path, name: str
) -> Iterator[subprocess.Popen]:
    """A local server process, yielded once `health_url` answers 200; stopped on exit."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    try:
        deadline = time.monotonic() + 900
        while True:
            if process.poll() is not None:
                tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited ({process.returncode}):\n{tail}")
            try:
                with urllib.request.urlopen(health_url, timeout=2):
                    break
            except OSError:  # not listening yet, or 503 while it loads
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} was not ready in 900 s") from None
                time.sleep(0.5)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def baseline_task(generator: str, checkpoint: Path) -> str:
    """The baseline server's task for a model: by its content, and for prompts by the
    checkpoint (a vision-language checkpoint needs its processor, even for text-only prompts)."""
    import json

    if generator == "speech":
        return "stt"
    if generator == "sentences":
        return "tts"
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    return "vlm" if "vision_config" in config else "llm"


def _generator_levels(
    args: argparse.Namespace, make_target: Callable[[int], Any], samples: int, label: str
) -> list[dict[str, Any]]:
    """The load generator at every concurrency, with the same request counts as perf_analyzer."""
    settings = cli.settings_from(args)
    if args.warmup:
        loadgen.run_level(make_target, samples, 1, args.warmup)
    levels = []
    for concurrency in args.concurrency:
        count = settings.request_count(concurrency) or max(args.samples, 3 * concurrency)
        cli.progress(f"{label}: concurrency {concurrency}, {count} requests")
        with CpuProbe() as probe:
            level = loadgen.run_level(make_target, samples, concurrency, count)
        level["interference"] = probe.record()
        cli.progress(
            f"{label}: concurrency {concurrency}: {level['throughput']:.2f}/s, "
            f"p50 {level['p50_ms']:.0f} ms, p99 {level['p99_ms']:.0f} ms"
        )
        levels.append(level)
    return levels


def triton_generator_levels(
    args: argparse.Namespace,
    repo: Path,
    model: str,
    env: dict[str, str],
    samples: list[Any],
    log: Path,
    label: str,
) -> list[dict[str, Any]]:
    """A local Triton serving `model` from `repo`, driven by the suite's load generator (over
    --triton-protocol) at every concurrency: the Triton side of baseline and peers."""
    with local_server(repo, [model], env, log) as server:
        url = server.grpc_url if args.triton_protocol == "grpc" else server.http_url
        client = connect(Endpoint("grpc", server.grpc_url))
        try:
            served = model_config(client, model)
        finally:
            client.close()
        return _generator_levels(
            args,
            lambda c: loadgen.TritonTarget(args.triton_protocol, url, served, samples),
            len(samples),
            f"{model} on {label}",
        )


def cmd_baseline(args: argparse.Namespace, argv: list[str]) -> int:
    """Triton (shipped config) vs. the per-request FastAPI server: same samples, same load
    generator, same concurrency levels."""
    env = _server_env(args)
    with _run(args, argv, "Triton vs. a per-request FastAPI server") as (results, work):
        for model in _models(args):
            model_dir = args.repository / model
            config = read_config(model_dir)
            if is_decoupled(config):
                raise ValueError(
                    f"{model} is decoupled (streaming); compare its non-streaming sibling"
                )
            generator = generator_for(config)
            checkpoint = served_model_dir(model_dir, env)
            task = args.baseline_task or baseline_task(generator.name, checkpoint)
            entry, _, samples = cli.prepare_model(config, cli.content_options(args), work)
            results["models"][model] = entry
            repo = repository_copy(args.repository, [model], work / f"repo-{model}")
            triton_name = f"triton ({args.triton_protocol}, shipped config)"
            entry["series"][triton_name] = {
                "levels": triton_generator_levels(
                    args, repo, model, env, samples, work / f"{model}-triton.log", "triton"
                )
            }
            name = "baseline (FastAPI + transformers, one request at a time)"
            cli.progress(f"{model}: starting the baseline server ({task}, {checkpoint})")
            with baseline_server(
                args.baseline_python, task, checkpoint, env, work / f"{model}-baseline.log"
            ) as url:
                levels = _generator_levels(
                    args,
                    lambda c, url=url, samples=samples: loadgen.HttpJsonTarget(url, samples, c),
                    len(samples),
                    f"{model} on the baseline",
                )
            entry["series"][name] = {
                "levels": levels,
                "about": f"docs/benchmarks/baseline/server.py --task {task} on {checkpoint.name}",
            }
            top = max(args.concurrency)
            ours, theirs = (_at(entry["series"][s]["levels"], top) for s in (triton_name, name))
            if ours and theirs:
                entry["ratios"][f"throughput Triton / baseline at concurrency {top}"] = (
                    ours["throughput"] / theirs["throughput"]
                )
                entry["ratios"][f"p99 latency Triton / baseline at concurrency {top}"] = (
                    ours["p99_ms"] / theirs["p99_ms"]
                )
    return 0


def cmd_numerics(args: argparse.Namespace, argv: list[str]) -> int:
    """In-process, once per numeric setup (<MODEL>_QUANTIZATION, <MODEL>_DTYPE): throughput per
    batch size, and what the numbers change: answers identical to the first setup's, and for
    speech the word error rate."""
    env = _server_env(args)
    settings = cli.settings_from(args)
    with _run(args, argv, "Numeric setups: speed and what changes") as (results, work):
        for model in _models(args):
            model_dir, entry, samples = _entry(args, results, model, work)
            runs: dict[str, Any] = {}
            for setup in args.setups:
                runs[setup.name] = inprocess.measure(
                    model_dir,
                    samples,
                    sorted(set(args.batch_sizes)),
                    lambda size: settings.request_count(size) or max(args.samples, size),
                    {**env, **setup.env(model)},
                    cli.progress,
                )
            entry["in_process"] = runs
            entry["ratios"].update(setup_ratios(runs, samples))
    return 0


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
    for item in cli.str_list(text):
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


COMMANDS = {
    "numerics": cmd_numerics,
    "batching": cmd_batching,
    "quantization": cmd_quantization,
    "overhead": cmd_overhead,
    "baseline": cmd_baseline,
}
