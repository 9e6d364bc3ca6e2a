"""A closed-loop load generator for servers perf_analyzer cannot drive (a plain REST server).

Same semantics as perf_analyzer's concurrency mode: `concurrency` requests in flight, each
worker sending its next request as soon as its previous one is answered, a fixed number of
requests in all, samples taken in turn. It drives both the per-request baseline and Triton
(through tritonclient's asyncio clients), so the two are measured by the same code, and the
timestamps go through the same stats.summarize as perf_analyzer's export.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .content import Sample
from .inputs import client_tensors
from .stats import Timing, summarize


@dataclass(frozen=True)
class Answer:
    """What a text model answered, where the target can tell: for tokens per second and for
    comparing two servers' greedy answers."""

    text: str
    completion_tokens: int
    #: When each response of a streamed answer arrived (monotonic ns); empty when unary.
    responses_ns: tuple[int, ...] = ()


class Target(Protocol):
    """Where requests go: `send(i)` sends sample i and returns when it is fully answered
    (with the answer, for text models)."""

    async def send(self, index: int) -> Answer | None: ...

    async def close(self) -> None: ...


class TritonTarget:
    """A Triton model through tritonclient's asyncio client (HTTP or gRPC)."""

    def __init__(self, protocol: str, url: str, config: Any, samples: Sequence[Sample]) -> None:
        if protocol == "grpc":
            import tritonclient.grpc.aio as client_module
        else:
            import tritonclient.http.aio as client_module
        self.module = client_module
        self.client = client_module.InferenceServerClient(url)
        self.model = config.name
        self.outputs = [o.name for o in config.output]
        self.tensors = [client_tensors(config, sample) for sample in samples]

    def _inputs(self, index: int) -> list[Any]:
        inputs = []
        for name, array in self.tensors[index].items():
            kind = "BYTES" if array.dtype == np.object_ else _triton_dtype(array)
            tensor = self.module.InferInput(name, list(array.shape), kind)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    async def send(self, index: int) -> Answer | None:
        outputs = [self.module.InferRequestedOutput(name) for name in self.outputs]
        result = await self.client.infer(self.model, self._inputs(index), outputs=outputs)
        if not {"text", "completion_tokens"} <= set(self.outputs):
            return None
        text = result.as_numpy("text").reshape(-1)[0]
        tokens = result.as_numpy("completion_tokens").reshape(-1)[0]
        return Answer(text.decode() if isinstance(text, bytes) else str(text), int(tokens))

    async def close(self) -> None:
        await self.client.close()


class TritonStreamTarget(TritonTarget):
    """A decoupled chat model (`vlm_stream`) through tritonclient's gRPC asyncio stream, one
    stream per request: the pieces joined, and when the first arrived (what a streaming
    client waits for before it can show anything)."""

    def __init__(self, url: str, config: Any, samples: Sequence[Sample]) -> None:
        super().__init__("grpc", url, config, samples)

    async def send(self, index: int) -> Answer:
        async def one_request() -> Any:
            yield {"model_name": self.model, "inputs": self._inputs(index)}

        arrived: list[int] = []
        pieces: list[str] = []
        async for result, error in self.client.stream_infer(one_request()):
            arrived.append(time.monotonic_ns())
            if error is not None:
                raise RuntimeError(f"{self.model}: {error}")
            text = result.as_numpy("text").reshape(-1)[0]
            pieces.append(text.decode() if isinstance(text, bytes) else str(text))
            if result.get_response().parameters["triton_final_response"].bool_param:
                tokens = int(result.as_numpy("completion_tokens").reshape(-1)[0])
                return Answer("".join(pieces), tokens, tuple(arrived))
        raise RuntimeError(f"{self.model}: the stream ended without its final response")


def _triton_dtype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


def json_body(sample: Sample) -> dict[str, Any]:
    """A sample as a JSON body: bytes as base64 (one string, or a list for several)."""

    def encode(value: Any) -> Any:
        if isinstance(value, bytes | bytearray):
            return base64.b64encode(value).decode()
        if isinstance(value, list | tuple):
            return [encode(v) for v in value]
        return value

    return {name: encode(value) for name, value in sample.inputs.items()}


class HttpJsonTarget:
    """A plain REST endpoint taking the sample as JSON (the baseline server's /v1/infer)."""

    def __init__(self, url: str, samples: Sequence[Sample], concurrency: int) -> None:
        import aiohttp

        self.url = url
        self.bodies = [self.body(sample) for sample in samples]
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    def body(self, sample: Sample) -> dict[str, Any]:
        return json_body(sample)

    @staticmethod
    def answer(reply: dict[str, Any]) -> Answer | None:
        if "completion_tokens" not in reply:
            return None
        return Answer(str(reply["text"]), int(reply["completion_tokens"]))

    async def send(self, index: int) -> Answer | None:
        async with self.session.post(self.url, json=self.bodies[index]) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{self.url}: HTTP {response.status}: {body[:300]!r}")
        return self.answer(json.loads(body))

    async def close(self) -> None:
        await self.session.close()


class OpenAiChatTarget(HttpJsonTarget):
    """An OpenAI-compatible `/v1/chat/completions` endpoint (llama-server, vLLM, Ollama):
    each sample's prompt as one user message, greedy, at most `max_tokens` new tokens."""

    def __init__(
        self, url: str, samples: Sequence[Sample], concurrency: int, max_tokens: int
    ) -> None:
        self.max_tokens = max_tokens
        super().__init__(url, samples, concurrency)

    def body(self, sample: Sample) -> dict[str, Any]:
        return {
            "messages": [{"role": "user", "content": sample.inputs["prompt"]}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            "stream": False,
        }

    @staticmethod
    def answer(reply: dict[str, Any]) -> Answer:
        return Answer(
            str(reply["choices"][0]["message"]["content"]),
            int(reply["usage"]["completion_tokens"]),
        )


class OpenAiTranscriptionTarget(HttpJsonTarget):
    """An OpenAI-compatible `/v1/audio/transcriptions` endpoint: each sample's audio uploaded
    as the multipart `file`, model `whisper-1`, answered as JSON."""

    def body(self, sample: Sample) -> dict[str, Any]:
        return {"audio": sample.inputs["audio"]}

    async def send(self, index: int) -> Answer | None:
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("model", "whisper-1")
        form.add_field("file", self.bodies[index]["audio"], filename="clip.wav")
        async with self.session.post(self.url, data=form) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{self.url}: HTTP {response.status}: {body[:300]!r}")
        return None


@dataclass
class Level:
    """What one level of the closed loop saw: every request's times and, for text models, its
    answer."""

    timings: list[Timing]
    answers: list[tuple[int, Answer]]  # (sample index, answer), in completion order


async def closed_loop(
    target: Target, samples: int, concurrency: int, requests: int, stagger_s: float = 0.0
) -> Level:
    """`requests` requests, `concurrency` in flight at a time; each one's send/answer times.
    With `stagger_s`, client k sends its first request k x `stagger_s` after the first
    client (clients that did not all start at once, as users do not)."""
    level = Level([], [])
    counter = iter(range(requests))

    async def worker(k: int) -> None:
        await asyncio.sleep(k * stagger_s)
        for index in counter:
            await _timed(target, index % samples, level)

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return level


async def _timed(target: Target, sample: int, level: Level) -> None:
    """One request: its times (each response's, for a stream) and its answer."""
    sent = time.monotonic_ns()
    answer = await target.send(sample)
    end = time.monotonic_ns()
    streamed = answer.responses_ns if answer is not None else ()
    level.timings.append(Timing(sent, streamed or (end,)))
    if answer is not None:
        level.answers.append((sample, answer))


async def open_loop(
    target: Target, samples: int, rate: float, requests: int, seed: int = 0
) -> Level:
    """`requests` requests arriving as a Poisson process of `rate` per second, whatever the
    answers (an open loop: a slow server is not given time to catch up). The gaps are drawn
    from `seed`, so every server compared gets the same arrival times."""
    level = Level([], [])
    gaps = random.Random(seed)

    start, at, tasks = time.monotonic(), 0.0, []
    for index in range(requests):
        at += gaps.expovariate(rate)
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        tasks.append(asyncio.ensure_future(_timed(target, index % samples, level)))
    await asyncio.gather(*tasks)
    return level


#: Connections a target keeps for an open loop, where requests in flight are not bounded.
OPEN_LOOP_CONNECTIONS = 64


def run_level(
    make_target: Any,
    samples: int,
    concurrency: int,
    requests: int,
    rate: float | None = None,
    stagger_s: float = 0.0,
) -> dict[str, Any]:
    """One concurrency level (or, with `rate`, Poisson arrivals at that rate) against a fresh
    target (its own connections); summarized. For text models also tokens per second and the
    answers, to compare servers. `stagger_s`: `closed_loop`'s."""

    async def main() -> Level:
        target = make_target(OPEN_LOOP_CONNECTIONS if rate else concurrency)
        try:
            if rate:
                return await open_loop(target, samples, rate, requests)
            return await closed_loop(target, samples, concurrency, requests, stagger_s)
        finally:
            await target.close()

    level = asyncio.run(main())
    summary: dict[str, Any] = {"concurrency": rate or concurrency, **summarize(level.timings)}
    if rate:
        summary["request_rate"] = rate
    if level.answers and len(level.answers) == len(level.timings):
        summary.update(token_figures(level))
    return summary


def token_figures(level: Level) -> dict[str, Any]:
    """Generated tokens per second over the level; the time per output token a client sees
    (a request's whole latency over its tokens, prefill included); each sample's answer."""
    tokens = [answer.completion_tokens for _, answer in level.answers]
    span_s = summarize(level.timings)["seconds"]
    # timings and answers are appended together, so the i-th of each is the same request
    per_token = [t.latency_ms / max(n, 1) for t, n in zip(level.timings, tokens, strict=True)]
    return {
        "tokens_per_s": sum(tokens) / span_s,
        "mean_completion_tokens": sum(tokens) / len(tokens),
        "ms_per_output_token": sum(per_token) / len(per_token),
        "answers": {str(i): a.text for i, a in sorted(level.answers, key=lambda x: x[0])},
    }
