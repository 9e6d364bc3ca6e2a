"""`chat-memory`: the chat models' resident memory with one engine against an engine per name.

Two local servers, one after the other, each serving `vlm`, `vlm_stream` and `llm` on their
shipped settings:

- shared (what ships): `vlm` and `llm` are fronts over `vlm_stream`, the one engine;
- an engine per name: `vlm` and `llm` each call an engine of their own (copies of
  `vlm_stream` named `vlm_engine` and `llm_engine`), which is the memory the three chat models
  held when each loaded the checkpoint itself.

Each server answers the same requests (a text prompt on each name and an image prompt on
`vlm`, through each of them, so that every engine has run a prompt pass and decoded); then
every stub's resident memory (RSS) and proportional share (PSS: shared pages divided among
the processes that map them) is read from /proc, with the answers, which must not differ
between the two layouts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .local import local_server, parse_env, repository_copy
from .machine import machine, shared_memory

CHAT = ["vlm", "vlm_stream", "llm"]
PROMPT = "What is the capital of France?"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens per answer")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the servers")
    parser.add_argument("--out", type=Path, help="write summary.md and result.json here")


def own_engines(repository: Path) -> dict[str, str]:
    """Give `vlm` and `llm` an engine each (copies of vlm_stream); the servers' environment."""
    env = {}
    for front in ("vlm", "llm"):
        engine = f"{front}_engine"
        shutil.copytree(repository / "vlm_stream", repository / engine)
        config = repository / engine / "config.pbtxt"
        text = config.read_text(encoding="utf-8")
        config.write_text(text.replace('name: "vlm_stream"', f'name: "{engine}"'), "utf-8")
        env[f"{front.upper()}_ENGINE_MODEL"] = engine
    return env


def serve_requests(server: Any, max_new_tokens: int) -> dict[str, Any]:
    """The same requests on each name; the answers."""
    from tests.chat_client import answer, arrays, http, image, stream_results

    text = arrays(PROMPT, max_new_tokens=max_new_tokens)
    picture = arrays("Describe this picture.", (image(64, 64, 0),), max_new_tokens=max_new_tokens)
    ((pieces, final),) = stream_results(server, [text])
    return {
        "llm": http(server, "llm", text),
        "vlm": http(server, "vlm", text),
        "vlm image": http(server, "vlm", picture),
        "vlm_stream": ["".join(pieces), *answer(final)[1:]],
    }


def memory(server: Any) -> dict[str, dict[str, float]]:
    """RSS and PSS (MiB) of every stub of `server`, by instance, and of the server itself."""
    from tools.container.watchdog import stubs

    found = {stub.instance: shared_memory(stub.pid) for stub in stubs(server.process.pid)}
    found["tritonserver"] = shared_memory(server.process.pid)
    return found


def run_layout(name: str, own: bool, args: argparse.Namespace) -> dict[str, Any]:
    """One server with the three chat models, `own`: each front with an engine of its own."""
    from tools.local_server import ROOT

    # No spaces in the path: the Python backend passes it to its stub on a command line.
    scratch = Path(tempfile.mkdtemp(prefix=f"chat-memory-{'own' if own else 'shared'}-"))
    repository = repository_copy(ROOT / "model_repository", CHAT, scratch / "repository")
    env = parse_env(args.env)
    if own:
        env.update(own_engines(repository))
    print(f"[chat-memory] {name}: starting the server", flush=True)
    with local_server(repository, CHAT, env, scratch / "server.log") as server:
        answers = serve_requests(server, args.max_new_tokens)
        used = memory(server)
    shutil.rmtree(scratch, ignore_errors=True)
    stubs_only = {k: v for k, v in used.items() if k != "tritonserver"}
    return {
        "env": env,
        "answers": answers,
        "memory": used,
        "stubs_rss_mib": round(sum(v["rss_mib"] for v in stubs_only.values()), 1),
        "stubs_pss_mib": round(sum(v["pss_mib"] for v in stubs_only.values()), 1),
    }


def report(result: dict[str, Any], header: str) -> str:
    shared, own = result["shared"], result["own_engines"]
    lines = [header, "", "| stub | one engine: RSS | PSS | an engine per name: RSS | PSS |"]
    lines.append("|---|---|---|---|---|")
    for stub in sorted(set(shared["memory"]) | set(own["memory"])):
        cells = []
        for layout in (shared, own):
            m = layout["memory"].get(stub)
            cells += [f"{m['rss_mib']:.0f} MiB", f"{m['pss_mib']:.0f} MiB"] if m else ["-", "-"]
        lines.append(f"| {stub} | {' | '.join(cells)} |")
    lines.append(
        f"| all stubs | {shared['stubs_rss_mib']:.0f} MiB | {shared['stubs_pss_mib']:.0f} MiB | "
        f"{own['stubs_rss_mib']:.0f} MiB | {own['stubs_pss_mib']:.0f} MiB |"
    )
    ratio = own["stubs_pss_mib"] / shared["stubs_pss_mib"]
    lines += [
        "",
        f"An engine per name holds {ratio:.2f}x the stubs' memory (PSS) of one shared engine.",
        f"Same answers in both layouts: {result['same_answers']}.",
    ]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace, argv: list[str]) -> int:
    result: dict[str, Any] = {"machine": machine()}
    result["shared"] = run_layout("one engine", False, args)
    result["own_engines"] = run_layout("an engine per name", True, args)
    result["same_answers"] = result["shared"]["answers"] == result["own_engines"]["answers"]
    command = "scripts/loadtest " + " ".join(argv)
    header = (
        f"`{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs)"
    )
    text = report(result, header)
    out = args.out or Path("bench-results") / "chat-memory"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text, encoding="utf-8")
    (out / "result.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(text, flush=True)
    return 0 if result["same_answers"] else 1
