"""`cancelled-images`: what image streams whose clients left cost the next request.

    scripts/loadtest cancelled-images [--streams 16] [--images 4] [--out DIR]

One local server with `vlm_stream` on its shipped settings. First a text stream alone (its
time to first token is the reference); then `--streams` clients each open a gRPC stream with
an image prompt of `--images` drawn pictures and cancel it (`stop_stream(cancel_requests=True)`)
`--cancel-after` seconds after the last was sent, and the same text stream is sent at once.
Reported: that stream's time to first token and to its end against the reference, and the
model's cancellation counters (how many of the streams were stopped, and how many of those
had reached the engine's scheduler).

Why: the issue's attacker's view (a good request waited 37.7 s behind 100 cancelled image
streams): a prompt pass nobody waits for any more still costs what it has left to compute,
and everything behind it waits. Run it on a quiet machine: the figures are times.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .local import local_server, parse_env, repository_copy
from .machine import machine

MODEL = "vlm_stream"
QUESTION = "What is the capital of France?"
#: Cancelled requests (before or while they ran), and those among them whose generation the
#: engine had begun (admitted to the running batch) when it stopped.
COUNTERS = ("multimodal_requests_cancelled_total", "multimodal_generation_cancelled_total")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--streams", type=int, default=16, help="image streams cancelled")
    parser.add_argument("--images", type=int, default=4, help="pictures per image prompt")
    parser.add_argument("--image-size", type=int, default=512, help="picture side, pixels")
    parser.add_argument(
        "--cancel-after", type=float, default=5.0, help="seconds after the last stream is sent"
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    parser.add_argument("--out", type=Path, help="write summary.md and result.json here")


def timed_stream(server: Any, inputs: dict[str, Any]) -> dict[str, float]:
    """One stream: seconds to its first piece and to its final response."""
    import tritonclient.grpc as grpcclient

    from tests.chat_client import tensors

    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    start = time.perf_counter()
    client.async_stream_infer(MODEL, tensors(grpcclient, inputs), enable_empty_final_response=True)
    first = None
    try:
        while True:
            result, error = responses.get(timeout=600)
            if error is not None:
                raise RuntimeError(f"the stream failed: {error}")
            now = time.perf_counter() - start
            first = now if first is None else first
            if result.get_response().parameters["triton_final_response"].bool_param:
                return {"first_token_s": round(first, 3), "end_s": round(now, 3)}
    finally:
        client.stop_stream()
        client.close()


def cancelled_streams(server: Any, args: argparse.Namespace) -> None:
    """`args.streams` image streams, sent, then cancelled by their clients."""
    import tritonclient.grpc as grpcclient

    from tests.chat_client import arrays, image, tensors

    side = args.image_size
    prompts = [  # drawn before the first is sent: the streams then arrive together
        arrays(
            "Describe these pictures in detail.",
            tuple(image(side, side, 100 * k + j) for j in range(args.images)),
            max_new_tokens=256,
        )
        for k in range(args.streams)
    ]
    clients = []
    for inputs in prompts:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.start_stream(callback=lambda result, error: None)
        client.async_stream_infer(MODEL, tensors(grpcclient, inputs))
        clients.append(client)
    time.sleep(args.cancel_after)
    for client in clients:
        client.stop_stream(cancel_requests=True)
        client.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.chat_client import arrays
    from tests.served import metric
    from tools.local_server import ROOT

    scratch = Path(tempfile.mkdtemp(prefix="cancelled-images-"))
    repository = repository_copy(ROOT / "model_repository", [MODEL], scratch / "repository")
    question = arrays(QUESTION, max_new_tokens=8)
    result: dict[str, Any] = {}
    with local_server(repository, [MODEL], parse_env(args.env), scratch / "server.log") as server:
        timed_stream(server, question)  # warm-up
        result["alone"] = timed_stream(server, question)
        before = {name: metric(server, name, MODEL) for name in COUNTERS}
        sender = threading.Thread(target=cancelled_streams, args=(server, args))
        sender.start()
        sender.join()
        result["behind_cancelled"] = timed_stream(server, question)
        result["counted"] = {
            name: metric(server, name, MODEL) - value for name, value in before.items()
        }
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def main(args: argparse.Namespace, argv: list[str]) -> int:
    result = {"machine": machine(), **run(args)}
    alone, behind = result["alone"], result["behind_cancelled"]
    command = "scripts/loadtest " + " ".join(argv)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = "\n".join(
        [
            f"`{command}` ({stamp}, {os.cpu_count()} CPUs)",
            "",
            "| the text stream | first token | end |",
            "|---|---|---|",
            f"| alone | {alone['first_token_s']:.2f} s | {alone['end_s']:.2f} s |",
            f"| right after {args.streams} image streams ({args.images} pictures each) were "
            f"cancelled | {behind['first_token_s']:.2f} s | {behind['end_s']:.2f} s |",
            "",
            f"Of the {args.streams} streams, cancelled: "
            f"{result['counted']['multimodal_requests_cancelled_total']:.0f}; of those, "
            "reached the engine's scheduler: "
            f"{result['counted']['multimodal_generation_cancelled_total']:.0f}.",
        ]
    )
    out = args.out or Path("bench-results") / "cancelled-images"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text + "\n", encoding="utf-8")
    (out / "result.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(text, flush=True)
    return 0
