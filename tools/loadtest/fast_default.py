"""The shipped `dtype=auto` against float32, per model, in-process: speed and what it keeps.

`dtype=auto` picks the compute dtype per machine (shared.quantization.auto_dtype): bfloat16 on
a CPU with native bf16 (avx512_bf16, AMX), float32 on one without, float16 on a GPU. This
command measures, on this machine, what that choice gains against float32 and whether it keeps
quality, with each model's shipped settings (its config.pbtxt parameters) under each
QUANTIZATION:DTYPE of --setups (the first is the reference: none:float32) and the real
checkpoints of the model store:

  stt   the 16 espeak-ng benchmark clips (the `numerics` / `bench-stt` clips): clips/s at
        batch 1 and 8; word error rate against the spoken text; transcripts identical to
        float32's. Keeps quality: WER within 0.01 of float32 and most transcripts identical.
  llm   the factual prompts of tests/test_llm_real.py (greedy, 24 new tokens): every expected
        word still in its answer; with the load-test text prompts, tokens/s at batch 1 and 16
        and the share of float32's answers that are identical (and their shared start).
  vlm   image requests (one drawn 512 px picture and a question each): requests/s at batch 1
        and 16, which the vision tower's dtype decides, and answers identical to float32's.
  tts   the ten sentences of tests/test_tts_roundtrip.py (same seeds), each heard back by
        `stt` in float32: word error rate of each dtype's voice; sentences/s at batch 1.
        Keeps quality: WER within 0.01 of float32's voice.

Every setup runs in this one process, one after another, with torch's default threads, so the
ratios are measured side by side; each measurement is the fastest of --repeats passes after a
warm-up batch, with the share of the CPU other processes took during that pass.
Writes results.json and summary.md to --out.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .machine import CpuProbe, load_average, machine
from .setups import Setup, parse_setups, shared_start

MODELS = ("stt", "llm", "vlm", "tts")
#: tests/test_llm_real.py's factual prompts and the word each answer must hold.
FACTS = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the chemical symbol for water?", "H2O"),
]
FACT_TOKENS = 24
#: The quality bound for speech: word error rate within this of float32's.
WER_SLACK = 0.01


def add_arguments(parser: argparse.ArgumentParser) -> None:
    root = Path(__file__).resolve().parents[2]
    parser.add_argument("-m", "--models", default=",".join(MODELS), help="default %(default)s")
    parser.add_argument(
        "--setups",
        type=parse_setups,
        default="none:float32,none:auto",
        help="QUANTIZATION:DTYPE setups, each model's shipped settings otherwise; the first is "
        "the reference (default %(default)s; e.g. none:float32,none:auto,int4:auto)",
    )
    parser.add_argument("--repository", type=Path, default=root / "model_repository")
    parser.add_argument("--model-store", type=Path, default=root / "model_store")
    parser.add_argument("--out", type=Path, default=root / "docs/benchmarks/fast-default")
    parser.add_argument("--chat-tokens", type=int, default=32, help="new tokens per text prompt")
    parser.add_argument("--image-tokens", type=int, default=16, help="new tokens per image one")
    parser.add_argument("--batch", type=int, default=16, help="the large batch (default 16)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="timed passes per measurement, the fastest kept: a neighbour's burst on a shared "
        "machine slows a pass, never speeds one up (default 2)",
    )


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def in_batches(
    call: Callable[[list[Any]], list[Any]], items: list[Any], size: int, repeats: int
) -> tuple[list[Any], dict[str, float]]:
    """`call` on `items` in batches of `size`, after one batch to warm up, `repeats` times: the
    results of the fastest pass, its wall time and the share of the machine's CPU (percent of
    all cores) that other processes took meanwhile."""
    call(items[:size])
    best: tuple[list[Any], dict[str, float]] | None = None
    for _ in range(max(1, repeats)):
        results: list[Any] = []
        with CpuProbe() as probe:
            begin = time.perf_counter()
            for start in range(0, len(items), size):
                results += call(items[start : start + size])
            seconds = time.perf_counter() - begin
        if best is None or seconds < best[1]["seconds"]:
            best = results, {"seconds": seconds, **probe.record()}
    assert best is not None
    return best


def shipped_settings(repository: Path, model: str, specs: Sequence[Any]) -> dict[str, Any]:
    """The model's settings from its shipped config.pbtxt, no environment."""
    from shared.params import resolve
    from tests.harness.config import to_dict

    from .inputs import read_config

    return resolve(specs, to_dict(read_config(repository / model)), model, {})


def plan(args: argparse.Namespace, model: str, specs: Sequence[Any], setup: Setup) -> Any:
    """The model's shipped settings with the setup's quantization and dtype."""
    from shared.loading import LoadPlan, resolve_model_dir
    from shared.quantization import resolve_placement

    settings = {
        **shipped_settings(args.repository, model, specs),
        "quantization": setup.quantization,
        "dtype": setup.dtype,
    }
    placement = resolve_placement(setup.quantization, setup.dtype, "cpu")
    model_dir = resolve_model_dir(settings["model_path"], args.model_store.resolve())
    return LoadPlan(settings=settings, placement=placement, model_dir=model_dir)


def agreement(reference: list[str], answers: list[str]) -> dict[str, float]:
    same = sum(a == b for a, b in zip(reference, answers, strict=True))
    starts = [shared_start(a, b) / max(len(a), 1) for a, b in zip(reference, answers, strict=True)]
    return {
        "identical": same,
        "of": len(answers),
        "identical_share": same / max(len(answers), 1),
        "shared_start_mean": sum(starts) / max(len(starts), 1),
    }


def corpus_wer(spoken: list[str], heard: list[str]) -> float:
    from tests.speech import word_error_rate, words

    total = sum(len(words(s)) for s in spoken)
    errors = sum(word_error_rate(s, h) * len(words(s)) for s, h in zip(spoken, heard, strict=True))
    return errors / max(total, 1)


# --------------------------------------------------------------------------------------------
# The models
# --------------------------------------------------------------------------------------------


def load_stt(args: argparse.Namespace, setup: Setup) -> Any:
    from backends.stt.engine import WhisperEngine
    from backends.stt.settings import stt_params

    specs = stt_params("whisper-tiny.en")
    return WhisperEngine.load(plan(args, "stt", specs, setup))


def decode_wav(wav: bytes, rate: int) -> Any:
    import soundfile as sf
    import soxr

    samples, file_rate = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(samples, file_rate, rate) if file_rate != rate else samples


def measure_stt(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    from backends.stt.engine import SttRow

    from .content import make_clips

    clips = make_clips(16)
    engine = load_stt(args, setup)
    rows = [SttRow(decode_wav(c.wav, engine.sampling_rate)) for c in clips]

    out: dict[str, Any] = {"describe": engine.describe(), "batches": {}}
    for size in (1, 8):
        done, timing = in_batches(engine.transcribe, rows, size, args.repeats)
        texts = [t.text for t in done]
        out["batches"][size] = {
            "clips_per_s": len(rows) / timing["seconds"],
            **timing,
            "texts": texts,
            "wer": corpus_wer([c.text for c in clips], texts),
        }
    return out


def chat_service(args: argparse.Namespace, model: str, setup: Setup) -> Any:
    from backends.chat.service import ChatService
    from backends.chat.settings import chat_params
    from tools.container.repository import engine_model

    specs = chat_params("smolvlm-256m-smollm2")
    # llm and vlm are fronts: the settings are those of the engine they answer through.
    engine = engine_model(model, args.repository) or model
    return ChatService.load(plan(args, engine, specs, setup))


def answers(service: Any, requests: Sequence[Any]) -> list[Any]:
    return service.run([service.prepare(r) for r in requests])


def measure_llm(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    from shared.chat import ChatRequest

    from .content import TEXT_PROMPTS

    service = chat_service(args, "llm", setup)
    facts = [ChatRequest(q, max_new_tokens=FACT_TOKENS) for q, _ in FACTS]
    alone = [answers(service, [r])[0].text for r in facts]
    together = [c.text for c in answers(service, facts)]
    prompts = [
        ChatRequest(TEXT_PROMPTS[i % len(TEXT_PROMPTS)], max_new_tokens=args.chat_tokens)
        for i in range(args.batch)
    ]
    out: dict[str, Any] = {
        "describe": service.describe(),
        "facts": [
            {
                "prompt": q,
                "expected": word,
                "alone": a,
                "batched": b,
                "right": word in a and word in b,
            }
            for (q, word), a, b in zip(FACTS, alone, together, strict=True)
        ],
        "batches": {},
    }
    for size in (1, args.batch):
        completions, timing = in_batches(
            lambda rows: answers(service, rows), prompts, size, args.repeats
        )
        tokens = sum(c.completion_tokens for c in completions)
        out["batches"][size] = {
            "tokens_per_s": tokens / timing["seconds"],
            "requests_per_s": len(prompts) / timing["seconds"],
            **timing,
            "texts": [c.text for c in completions],
        }
    return out


def measure_vlm(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    from shared.chat import ChatRequest

    from .content import IMAGE_PROMPTS, draw_scene

    service = chat_service(args, "vlm", setup)
    requests = [
        ChatRequest(
            IMAGE_PROMPTS[i % len(IMAGE_PROMPTS)],
            images=(draw_scene(i, 512)[0],),
            max_new_tokens=args.image_tokens,
        )
        for i in range(args.batch)
    ]
    out: dict[str, Any] = {"describe": service.describe(), "batches": {}}
    for size in (1, args.batch):
        completions, timing = in_batches(
            lambda rows: answers(service, rows), requests, size, args.repeats
        )
        out["batches"][size] = {
            "requests_per_s": len(requests) / timing["seconds"],
            "tokens_per_s": sum(c.completion_tokens for c in completions) / timing["seconds"],
            "prompt_tokens": completions[0].prompt_tokens,
            **timing,
            "texts": [c.text for c in completions],
        }
    return out


def measure_tts(args: argparse.Namespace, setup: Setup, listener: Any) -> dict[str, Any]:
    import soxr

    from backends.stt.engine import SttRow
    from backends.tts.engine import load_engine
    from backends.tts.settings import tts_params
    from tests.test_tts_roundtrip import SENTENCES

    engine = load_engine(plan(args, "tts", tts_params("piper-en_US-joe-medium"), setup))
    rows = [engine.row(text, seed=1000 + i) for i, text in enumerate(SENTENCES)]

    audio, timing = in_batches(engine.speak, rows, 1, args.repeats)
    heard = [
        t.text
        for t in listener.transcribe(
            [SttRow(soxr.resample(a, engine.sampling_rate, listener.sampling_rate)) for a in audio]
        )
    ]
    seconds = sum(len(a) for a in audio) / engine.sampling_rate
    return {
        "describe": engine.describe(),
        "sentences_per_s": len(rows) / timing["seconds"],
        "real_time_factor": timing["seconds"] / seconds,
        **timing,
        "heard": heard,
        "wer": corpus_wer(list(SENTENCES), heard),
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def compare(results: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Per model: the ratios and agreement of each setup against the first."""
    ref, verdicts = names[0], {}
    for model, runs in results["models"].items():
        base = runs[ref]
        for name in names[1:]:
            run, verdict = runs[name], {}
            if model == "tts":
                verdict["speed"] = run["sentences_per_s"] / base["sentences_per_s"]
                verdict["wer"] = (base["wer"], run["wer"])
                verdict["heard_identical"] = agreement(base["heard"], run["heard"])
                verdict["keeps_quality"] = run["wer"] <= base["wer"] + WER_SLACK
            else:
                for size, batch in run["batches"].items():
                    theirs = base["batches"][size]
                    key = "clips_per_s" if model == "stt" else "requests_per_s"
                    verdict[f"batch {size}: speed"] = batch[key] / theirs[key]
                    verdict[f"batch {size}: identical"] = agreement(theirs["texts"], batch["texts"])
                    if model == "stt":
                        verdict[f"batch {size}: wer"] = (theirs["wer"], batch["wer"])
                if model == "stt":
                    verdict["keeps_quality"] = all(
                        b["wer"] <= base["batches"][s]["wer"] + WER_SLACK
                        and agreement(base["batches"][s]["texts"], b["texts"])["identical_share"]
                        >= 0.5
                        for s, b in run["batches"].items()
                    )
                if model == "llm":
                    verdict["facts_right"] = sum(f["right"] for f in run["facts"])
                    verdict["facts"] = len(run["facts"])
                    verdict["facts_identical"] = agreement(
                        [f["alone"] for f in base["facts"]], [f["alone"] for f in run["facts"]]
                    )
                    verdict["keeps_quality"] = verdict["facts_right"] == verdict["facts"]
            verdicts[f"{model} {name}"] = verdict
    return verdicts


def summary(results: dict[str, Any]) -> str:
    lines = [
        "# The fast default: dtype=auto against float32",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}; {results['seconds']:.0f} s in all",
        f"- machine: {json.dumps(results['machine'])}",
        f"- load average at start {results['load_start']}, at end {results['load_end']}",
        "",
    ]
    for model, runs in results["models"].items():
        lines.append(f"## {model}")
        lines.append("")
        for name, run in runs.items():
            lines.append(f"- **{name}**: {run['describe']}")
            if model == "tts":
                lines.append(
                    f"  - {run['sentences_per_s']:.2f} sentences/s, real-time factor "
                    f"{run['real_time_factor']:.3f}, WER heard back {run['wer']:.3f} "
                    f"(others' CPU {run['other_cpu_pct']:.0f} %)"
                )
                continue
            for size, batch in run["batches"].items():
                speed = ", ".join(
                    f"{batch[k]:.2f} {k.replace('_per_s', '/s')}"
                    for k in ("clips_per_s", "requests_per_s", "tokens_per_s")
                    if k in batch
                )
                wer = f", WER {batch['wer']:.3f}" if "wer" in batch else ""
                lines.append(
                    f"  - batch {size}: {speed}{wer} (others' CPU {batch['other_cpu_pct']:.0f} %)"
                )
            for fact in run.get("facts", []):
                lines.append(
                    f"  - {fact['prompt']} -> {fact['alone']!r} "
                    f"({'right' if fact['right'] else 'WRONG'}{'' if fact['alone'] == fact['batched'] else '; batched: ' + repr(fact['batched'])})"
                )
        lines.append("")
    lines += ["## Against the reference", "", "```json", json.dumps(results["verdicts"], indent=1)]
    lines += ["```", ""]
    return "\n".join(lines)


def main(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from .results import progress

    models = [m for m in args.models.split(",") if m]
    started = time.time()
    results: dict[str, Any] = {
        "command": "scripts/loadtest fast-default " + " ".join(argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": {**machine(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "load_start": load_average(),
        "models": {},
    }
    listener = load_stt(args, Setup("none", "float32")) if "tts" in models else None
    for model in models:
        runs: dict[str, Any] = {}
        for setup in args.setups:
            name = setup.name
            progress(f"{model} {name}")
            if model == "stt":
                runs[name] = measure_stt(args, setup)
            elif model == "llm":
                runs[name] = measure_llm(args, setup)
            elif model == "vlm":
                runs[name] = measure_vlm(args, setup)
            elif model == "tts":
                runs[name] = measure_tts(args, setup, listener)
            else:
                raise ValueError(f"unknown model {model!r}; known: {MODELS}")
        results["models"][model] = runs
    results["load_end"] = load_average()
    results["seconds"] = time.time() - started
    results["verdicts"] = compare(results, [s.name for s in args.setups])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (args.out / "summary.md").write_text(summary(results), encoding="utf-8")
    progress(f"wrote {args.out}/results.json and summary.md")
    return 0
