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
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .content import Sample
from .inputs import client_tensors
from .stats import Timing, summarize


class Target(Protocol):
    """Where requests go: `send(i)` sends sample i and returns when it is fully answered."""

    async def send(self, index: int) -> None: ...

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

    async def send(self, index: int) -> None:
        outputs = [self.module.InferRequestedOutput(name) for name in self.outputs]
        await self.client.infer(self.model, self._inputs(index), outputs=outputs)

    async def close(self) -> None:
        await self.client.close()


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
        self.bodies = [json_body(sample) for sample in samples]
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def send(self, index: int) -> None:
        async with self.session.post(self.url, json=self.bodies[index]) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{self.url}: HTTP {response.status}: {body[:300]!r}")

    async def close(self) -> None:
        await self.session.close()


async def closed_loop(
    target: Target, samples: int, concurrency: int, requests: int
) -> list[Timing]:
    """`requests` requests, `concurrency` in flight at a time; each one's send/answer times."""
    timings: list[Timing] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for index in counter:
            sent = time.monotonic_ns()
            await target.send(index % samples)
            timings.append(Timing(sent, (time.monotonic_ns(),)))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return timings


def run_level(make_target: Any, samples: int, concurrency: int, requests: int) -> dict[str, Any]:
    """One concurrency level against a fresh target (its own connections); summarized."""

    async def main() -> list[Timing]:
        target = make_target(concurrency)
        try:
            return await closed_loop(target, samples, concurrency, requests)
        finally:
            await target.close()

    return {"concurrency": concurrency, **summarize(asyncio.run(main()))}
