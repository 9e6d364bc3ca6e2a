"""`bench-voice`: voice_chat's time to first audio against three client calls in a row.

One local tritonserver serves `stt`, `llm`, `vlm_stream`, `tts` and `voice_chat`. A question
said by espeak-ng is answered two ways, taking turns in rounds at each concurrency so that
both see the machine alike: `voice_chat` (one gRPC stream; first audio = its first sentence
response) and the round trip a user writes without it, with multimodal_client: `stt`, then
`llm` (the same checkpoint and greedy decoding as vlm_stream: the same answer), then `tts`
of the whole answer (first audio = the end). Per request: time to first audio and total
time; the p50 of each, and whether both ways gave the same answer text.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from multimodal_client import Client
from tools.local_server import ROOT, LocalTritonServer

from .machine import CpuProbe, machine

MODELS = ["stt", "llm", "vlm_stream", "tts", "voice_chat"]
VOICE, SEQUENTIAL = "voice_chat (one stream)", "stt + llm + tts (three calls)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--question", default="Tell me about the city of Paris.")
    parser.add_argument("--concurrency", default="1,4", help="comma-separated levels")
    parser.add_argument("--requests", type=int, default=4, help="per worker and round")
    parser.add_argument("--rounds", type=int, default=2, help="turns of each way per level")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "voice")


def ask_voice(client: Client, audio: bytes) -> tuple[float, float, str]:
    """(time to first audio, total, answer) through voice_chat."""
    started, first, texts = time.perf_counter(), None, []
    for event in client.voice_chat(audio):
        if event.speech is not None:
            first = first or time.perf_counter() - started
            texts.append(event.speech.text)
    total = time.perf_counter() - started
    return first or total, total, " ".join(texts)


def ask_sequential(client: Client, audio: bytes) -> tuple[float, float, str]:
    """(time to first audio, total, answer) through three calls in a row."""
    started = time.perf_counter()
    answer = client.chat(client.transcribe(audio))
    client.speak(answer)
    total = time.perf_counter() - started
    return total, total, answer


def run_level(url: str, way: str, audio: bytes, concurrency: int, requests: int) -> list[Any]:
    """`concurrency` workers, each with its client, `requests` questions each."""
    ask = ask_voice if way == VOICE else ask_sequential
    results: list[Any] = []
    lock = threading.Lock()

    def worker() -> None:
        with Client(url, timeout=600) as client:
            for _ in range(requests):
                result = ask(client, audio)
                with lock:
                    results.append(result)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def words(text: str) -> list[str]:
    return "".join(c if c.isalnum() else " " for c in text.lower()).split()


def main(args: argparse.Namespace, argv: list[str]) -> int:
    levels = [int(c) for c in args.concurrency.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-voice-"))  # the question, the server log
    question = scratch / "question.wav"  # -w: a header that states its length; --stdout's does not
    subprocess.run(["espeak-ng", "-s", "160", "-w", str(question), "--", args.question], check=True)
    audio = question.read_bytes()
    env = {"MAX_NEW_TOKENS": str(args.max_new_tokens)}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows, answers = [], {}
    with LocalTritonServer(
        models=MODELS, env_overrides=env, log_path=scratch / "server.log"
    ) as server:
        url = server.grpc_url
        for way in (VOICE, SEQUENTIAL):  # warm-up: every model has answered once
            answers[way] = run_level(url, way, audio, 1, 1)[0][2]
        for level in levels:
            samples: dict[str, list[Any]] = {VOICE: [], SEQUENTIAL: []}
            with CpuProbe(also=(server.process.pid,) if server.process else ()) as probe:
                for _ in range(args.rounds):
                    for way in (VOICE, SEQUENTIAL):
                        samples[way] += run_level(url, way, audio, level, args.requests)
            for way, got in samples.items():
                rows.append(
                    {
                        "way": way,
                        "concurrency": level,
                        "requests": len(got),
                        "first_audio_p50_s": statistics.median(g[0] for g in got),
                        "total_p50_s": statistics.median(g[1] for g in got),
                        "others_cpu_pct": round(probe.other_cpu_pct, 1),
                    }
                )
    same = words(answers[VOICE]) == words(answers[SEQUENTIAL])
    report = {
        "command": "scripts/loadtest bench-voice " + " ".join(argv[1:]),
        "started": started,
        "machine": machine(),
        "question": args.question,
        "answers": answers,
        "same_answer": same,
        "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print("| way | concurrency | requests | first audio p50 | total p50 | others' CPU |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['way']} | {row['concurrency']} | {row['requests']} | "
            f"{row['first_audio_p50_s']:.2f} s | {row['total_p50_s']:.2f} s | "
            f"{row['others_cpu_pct']} % |"
        )
    print(f"same answer text both ways: {same}")
    return 0
