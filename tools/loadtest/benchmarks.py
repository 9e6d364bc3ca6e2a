"""The benchmarks that measure setups of one model side by side, on local servers of their own
or in-process:

  batching      the shipped config vs. the same config without dynamic_batching
  continuous    chat models with continuous vs. static batching: time to first token, tokens/s,
                closed-loop clients and Poisson arrivals
  quantization  one server per quantization: footprint, stub memory, throughput
  overhead      the model in-process (its best batch size) vs. served, same samples
  numerics      the model in-process per quantization:dtype: speed, identical answers, WER

One setup at a time, so each has the machine to itself; every level records the share of CPU
other processes took meanwhile. The figures are ratios measured in one run on one machine.
(`baseline` and `peers`, against other servers, have their own modules.)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from . import inprocess, loadgen
from .compare import generator_levels
from .inputs import is_decoupled, read_config
from .local import env_name, load_facts, local_server, repository_copy, stub_pid
from .machine import proc_memory
from .options import (
    content_options,
    float_list,
    int_list,
    models,
    server_env,
    settings_from,
    str_list,
)
from .perf import PerfSettings, shared_memory_problem, sweep
from .results import best, collecting, level_at, prepare_model, progress
from .server import Endpoint, connect, model_config
from .setups import Setup, parse_setups, setup_ratios


def add_arguments(parsers: dict[str, argparse.ArgumentParser]) -> None:
    """Each benchmark's own options (on top of add_load_options / add_local_options)."""
    parsers["quantization"].add_argument(
        "--quantizations",
        type=str_list,
        default=["none", "int8", "nf4"],
        help="values of the model's quantization setting (default none,int8,nf4)",
    )
    parsers["quantization"].add_argument(
        "--dtypes",
        type=str_list,
        default=["auto"],
        help="values of the model's dtype setting, each run with every quantization "
        "(default auto; e.g. float32,bfloat16: series are named 'QUANTIZATION DTYPE')",
    )
    parsers["continuous"].add_argument(
        "--rates",
        type=float_list,
        default=[0.5, 1.0, 2.0],
        help="Poisson arrival rates, requests/s (default 0.5,1,2)",
    )
    parsers["continuous"].add_argument(
        "--stagger-ms",
        type=float,
        default=0.0,
        help="also a closed loop whose clients start this far apart (the suite's load "
        "generator, streams for a streaming model; default 0: not run)",
    )
    parsers["continuous"].add_argument(
        "--rate-requests",
        type=int,
        default=24,
        help="requests per arrival rate (default 24; 0: no Poisson series)",
    )
    for name in ("overhead", "numerics"):
        parsers[name].add_argument(
            "--batch-sizes",
            type=int_list,
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


def _entry(
    args: argparse.Namespace, results: dict[str, Any], model: str, work: Path
) -> tuple[Path, dict[str, Any], list[Any]]:
    """A model's results entry and its content samples, made from its config.pbtxt."""
    model_dir = args.repository / model
    entry, _, samples = prepare_model(read_config(model_dir), content_options(args), work)
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
    rates: PerfSettings | None = None,
    stagger_s: float = 0.0,
) -> dict[str, Any]:
    """One local server for `model`; the model's entry prepared from the config it serves;
    a perf_analyzer sweep over gRPC, recorded as `series` (and with `rates`, a second sweep
    of Poisson arrivals at `args.rates`, recorded as `series` + " poisson"; with `stagger_s`,
    the suite's load generator at the same concurrencies with clients started that far
    apart, recorded as `series` + " staggered")."""
    log = work / f"{model}-{series.replace(' ', '_')}.log"
    progress(f"{model} [{series}]: starting tritonserver")
    with local_server(repository, [model], env, log) as server:
        endpoint = Endpoint("grpc", server.grpc_url)
        client = connect(endpoint)
        try:
            config = model_config(client, model)
        finally:
            client.close()
        prepared, _, samples = prepare_model(config, content_options(args), work)
        entry = results["models"].setdefault(model, prepared)
        data_file = work / f"{model}-data.json"
        problem = shared_memory_problem(config, settings_from(args))
        if problem:
            raise ValueError(problem)
        extra = before_sweep(server, log) if before_sweep else {}
        levels = sweep(
            model,
            endpoint,
            data_file,
            args.concurrency,
            settings_from(args),
            work,
            streaming=is_decoupled(config),
            progress=progress,
            warmup=args.warmup,
        )
        if rates is not None:
            entry["series"][f"{series} poisson"] = {
                "levels": sweep(
                    model,
                    endpoint,
                    data_file,
                    args.rates,
                    rates,
                    work,
                    streaming=is_decoupled(config),
                    progress=progress,
                )
            }
        if stagger_s:
            entry["series"][f"{series} staggered"] = {
                "levels": generator_levels(
                    args,
                    partial(_generator_target, server, config, samples),
                    len(samples),
                    f"{model} [{series}], clients {stagger_s * 1000:g} ms apart",
                    stagger_s,
                )
            }
        pid = stub_pid(server, model)
        peak = proc_memory(pid)["peak_rss_mib"] if pid else None
    entry["series"][series] = {"levels": levels, **extra, "stub_peak_rss_mib": peak}
    return entry


def _generator_target(server: Any, config: Any, samples: list[Any], _connections: int) -> Any:
    """The load generator's client of `config`'s model: a stream per request if decoupled."""
    if is_decoupled(config):
        return loadgen.TritonStreamTarget(server.grpc_url, config, samples)
    return loadgen.TritonTarget("grpc", server.grpc_url, config, samples)


def cmd_continuous(args: argparse.Namespace, argv: list[str]) -> int:
    """Chat models with continuous batching (shipped) and static batches, the same load."""
    env = server_env(args)
    rates: PerfSettings | None = None
    if args.rate_requests:
        rates = PerfSettings(**{**settings_from(args).__dict__, "poisson": True})
        rates.requests, rates.rounds = args.rate_requests, 0
    with collecting(args, argv, "Continuous vs. static batching") as (results, work):
        for model in models(args):
            for mode in ("continuous", "static"):
                series_env = {**env, env_name(model, "batching"): mode}
                _served_series(
                    args,
                    results,
                    model,
                    args.repository,
                    series_env,
                    mode,
                    work,
                    rates=rates,
                    stagger_s=args.stagger_ms / 1000,
                )
            entry = results["models"][model]
            key = (
                "first_response_p50_ms"
                if entry["series"]["continuous"]["levels"][0].get("first_response_p50_ms")
                is not None
                else "p50_ms"
            )
            kinds = ["", " staggered"] if args.stagger_ms else [""]
            for kind in kinds:
                _continuous_ratios(entry, key, kind)
    return 0


def _continuous_ratios(entry: dict[str, Any], key: str, kind: str) -> None:
    """`key` at the highest concurrency over the lowest, per mode; continuous over static at
    each concurrency (`kind`: "" for perf_analyzer's series, " staggered" for the others)."""
    for mode in ("continuous", "static"):
        levels = entry["series"][mode + kind]["levels"]
        low, high = levels[0], levels[-1]
        entry["ratios"][
            f"{mode}{kind}: {key} at concurrency {high['concurrency']} / at {low['concurrency']}"
        ] = high[key] / low[key]
    for level in entry["series"]["continuous" + kind]["levels"]:
        other = level_at(entry["series"]["static" + kind]["levels"], level["concurrency"])
        if other:
            c = level["concurrency"]
            entry["ratios"][f"throughput continuous/static{kind} at concurrency {c}"] = (
                level["throughput"] / other["throughput"]
            )
            entry["ratios"][f"{key} continuous/static{kind} at concurrency {c}"] = (
                level[key] / other[key]
            )


def cmd_batching(args: argparse.Namespace, argv: list[str]) -> int:
    """The same model with dynamic batching on (shipped) and off, at every concurrency."""
    env = server_env(args)
    with collecting(args, argv, "Batching gain: dynamic batching on vs. off") as (results, work):
        for model in models(args):
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
                other = level_at(off, level["concurrency"])
                if other:
                    entry["ratios"][f"batching gain at concurrency {level['concurrency']}"] = (
                        level["throughput"] / other["throughput"]
                    )
            entry["ratios"]["batching gain, best vs. best"] = (
                best(on)["throughput"] / best(off)["throughput"]
            )
            top = max(level["concurrency"] for level in on)
            entry["notes"].append(
                f"batch sizes the batcher formed at concurrency {top}: "
                f"{level_at(on, top)['executions_by_batch_size']} (batch size: executions)"
            )
    return 0


def cmd_quantization(args: argparse.Namespace, argv: list[str]) -> int:
    """One server per quantization x dtype (<MODEL>_QUANTIZATION, <MODEL>_DTYPE)."""
    env = server_env(args)
    with collecting(args, argv, "Quantization: footprint and throughput") as (results, work):
        for model in models(args):
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
                        progress(f"{model} [{name}]: failed: {exc}")
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
                    best(data["levels"])["throughput"] / best(base["levels"])["throughput"]
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
    env = server_env(args)
    settings = settings_from(args)
    with collecting(args, argv, "Serving overhead: served vs. in-process") as (results, work):
        for model in models(args):
            model_dir, entry, samples = _entry(args, results, model, work)
            local = inprocess.measure(
                model_dir,
                samples,
                sorted(set(args.batch_sizes)),
                lambda size: settings.request_count(size) or max(args.samples, size),
                env,
                progress,
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
                best(served)["throughput"] / local["best_throughput"]
            )
            one = level_at(served, 1)
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


def cmd_numerics(args: argparse.Namespace, argv: list[str]) -> int:
    """In-process, once per numeric setup (<MODEL>_QUANTIZATION, <MODEL>_DTYPE): throughput per
    batch size, and what the numbers change: answers identical to the first setup's, and for
    speech the word error rate."""
    env = server_env(args)
    settings = settings_from(args)
    with collecting(args, argv, "Numeric setups: speed and what changes") as (results, work):
        for model in models(args):
            model_dir, entry, samples = _entry(args, results, model, work)
            runs: dict[str, Any] = {}
            for setup in args.setups:
                runs[setup.name] = inprocess.measure(
                    model_dir,
                    samples,
                    sorted(set(args.batch_sizes)),
                    lambda size: settings.request_count(size) or max(args.samples, size),
                    {**env, **setup.env(model)},
                    progress,
                )
            entry["in_process"] = runs
            entry["ratios"].update(setup_ratios(runs, samples))
    return 0


COMMANDS = {
    "numerics": cmd_numerics,
    "batching": cmd_batching,
    "continuous": cmd_continuous,
    "quantization": cmd_quantization,
    "overhead": cmd_overhead,
}
