"""The asyncio client: `Client`'s calls as coroutines and async iterators."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio

from multimodal_client import calls
from multimodal_client.calls import Audio, VoiceEvent
from multimodal_client.client import Options, deadline_of, remaining
from multimodal_client.errors import from_exception


class AsyncClient(Options):
    """As `Client`, over asyncio: `await client.transcribe(...)`, `async for piece in
    client.chat(..., stream=True)`. Streaming (chat, speak, voice_chat) needs gRPC."""

    def __init__(self, url: str = "localhost:8001", **options: Any) -> None:
        super().__init__(url, **options)
        self._connection: Any = None

    @property
    def _client(self) -> Any:
        """tritonclient's client, made on first use: the HTTP one needs a running loop."""
        if self._connection is None:
            module: Any = grpc_aio if self.protocol == "grpc" else http_aio
            self._connection = module.InferenceServerClient(self.url)
        return self._connection

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_ready(self, timeout: float = 120.0, models: Sequence[str] = ()) -> None:
        """As `Client.wait_ready`."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            try:
                if await self._client.is_server_ready() and all(
                    [await self._client.is_model_ready(m) for m in models]
                ):
                    return
            except calls.CONNECTION_FAILURES:
                pass
            await asyncio.sleep(self.ready_wait(attempt, deadline, timeout))
            attempt += 1

    async def transcribe(
        self,
        audio: Audio,
        *,
        language: str | None = None,
        task: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """As `Client.transcribe`."""
        values = calls.transcribe_inputs(audio, language, task, timestamps=False)
        result = await self._infer(calls.MODELS["transcribe"], values, timeout)
        return calls.text(result, "text")

    def chat(
        self,
        prompt: str,
        *,
        images: Sequence[Audio] = (),
        session_id: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        stream: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """`await client.chat(...)`: the answer; `async for piece in client.chat(...,
        stream=True)`: its pieces as they are generated."""
        values = calls.chat_inputs(prompt, images, session_id, max_new_tokens, temperature)
        model = calls.chat_model(images, stream)
        if stream:
            return self._pieces(self._stream(model, values, timeout), "text")
        return self._output(self._infer(model, values, timeout), "text")

    def speak(
        self,
        text: str,
        *,
        voice: str | None = None,
        format: str | None = None,
        stream: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """`await client.speak(...)`: the encoded audio; with `stream=True` an async
        iterator of one encoded chunk per sentence."""
        values = calls.speak_inputs(text, voice, format)
        if stream:
            results = self._stream(calls.MODELS["speak_stream"], values, timeout)
            return self._pieces(results, "audio")
        return self._output(self._infer(calls.MODELS["speak"], values, timeout), "audio")

    @staticmethod
    async def _output(result: Any, name: str) -> Any:
        raw = calls.output(await result, name) or b""
        return raw.decode("utf-8") if name == "text" else raw

    @staticmethod
    async def _pieces(results: AsyncIterator[Any], name: str) -> AsyncIterator[Any]:
        async for result in results:
            raw = calls.output(result, name)
            if raw:
                yield raw.decode("utf-8") if name == "text" else raw

    async def voice_chat(
        self,
        audio: Audio,
        *,
        session_id: str | None = None,
        system: str | None = None,
        voice: str | None = None,
        max_new_tokens: int | None = None,
        format: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[VoiceEvent]:
        values = calls.voice_inputs(audio, session_id, system, voice, max_new_tokens, format)
        async for result in self._stream(calls.MODELS["voice_chat"], values, timeout):
            event = calls.voice_event(result)
            if event is not None:
                yield event

    async def _infer(self, model: str, values: dict[str, Any], timeout: float | None) -> Any:
        deadline = deadline_of(self.timeout if timeout is None else timeout)

        async def attempt() -> Any:
            left = remaining(deadline)
            tensors = calls.inputs(self._module, values)
            if self.protocol == "grpc":
                return await self._client.infer(model, tensors, client_timeout=left)
            return await asyncio.wait_for(self._client.infer(model, tensors), left)

        return await self.retry.acall(attempt, deadline)

    async def _stream(
        self, model: str, values: dict[str, Any], timeout: float | None
    ) -> AsyncIterator[Any]:
        """As `Client._stream`: retried only until the first response arrives."""
        if self.protocol != "grpc":
            raise ValueError(f"streaming ({model}) needs protocol='grpc'")
        deadline = deadline_of(self.timeout if timeout is None else timeout)
        streams: list[Any] = []

        async def attempt() -> Any:
            left = remaining(deadline)

            async def request() -> AsyncIterator[dict[str, Any]]:
                yield {
                    "model_name": model,
                    "inputs": calls.inputs(grpcclient, values),
                    "enable_empty_final_response": True,
                }

            streams.append(self._client.stream_infer(request(), stream_timeout=left))
            return await next_result()

        async def next_result() -> Any:
            result, error = await streams[-1].__anext__()
            if error is not None:
                raise from_exception(error)
            return result

        try:
            result = await self.retry.acall(attempt, deadline)
            while True:
                yield result
                if calls.is_final(result):
                    return
                result = await next_result()
        finally:
            for stream in streams:
                stream.cancel()
