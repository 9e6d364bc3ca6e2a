"""The blocking client: one method per kind of call, retries and deadlines built in."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator, Sequence
from typing import Any

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from multimodal_client import calls
from multimodal_client.calls import Audio, VoiceEvent
from multimodal_client.errors import TritonError, from_exception
from multimodal_client.retry import Retry


def deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left before `deadline`; DEADLINE_EXCEEDED once none are."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TritonError("DEADLINE_EXCEEDED", "the call's deadline passed")
    return left


class Options:
    """What both clients are configured with (see `Client`)."""

    def __init__(
        self,
        url: str = "localhost:8001",
        *,
        protocol: str = "grpc",
        timeout: float | None = None,
        retry: Retry | None = None,
    ) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol is 'grpc' or 'http', not {protocol!r}")
        self.url, self.protocol, self.timeout = url, protocol, timeout
        self.retry = retry or Retry()
        self._module: Any = grpcclient if protocol == "grpc" else httpclient

    def ready_wait(self, attempt: int, deadline: float, timeout: float) -> float:
        """How long wait_ready sleeps before its next check; TimeoutError past `deadline`."""
        wait = self.retry.delay(min(attempt, 30)) or self.retry.base_delay
        if time.monotonic() + wait > deadline:
            raise TimeoutError(f"{self.url} was not ready within {timeout:g} s")
        return wait


class Client(Options):
    """The served models over gRPC (`url` host:port, default localhost:8001) or HTTP
    (`protocol="http"`, localhost:8000; no streaming over HTTP).

    `timeout`: the default deadline of every call, in seconds (None: none); each call can
    give its own. `retry`: how a call is retried while the server is unavailable.
    """

    def __init__(self, url: str = "localhost:8001", **options: Any) -> None:
        super().__init__(url, **options)
        self._client: Any = self._module.InferenceServerClient(url)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- calls ---------------------------------------------------------------------------------

    def wait_ready(self, timeout: float = 120.0, models: Sequence[str] = ()) -> None:
        """Block until the server, and each of `models`, is ready; TimeoutError after
        `timeout` seconds. Waits with the retry policy's backoff between checks."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            try:
                if self._client.is_server_ready() and all(
                    self._client.is_model_ready(m) for m in models
                ):
                    return
            except calls.CONNECTION_FAILURES:
                pass  # not listening yet
            time.sleep(self.ready_wait(attempt, deadline, timeout))
            attempt += 1

    def transcribe(
        self,
        audio: Audio,
        *,
        language: str | None = None,
        task: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """What `audio` (bytes, or a file's path; WAV, FLAC, OGG, MP3) says."""
        values = calls.transcribe_inputs(audio, language, task, timestamps=False)
        return calls.text(self._infer(calls.MODELS["transcribe"], values, timeout), "text")

    def segments(
        self,
        audio: Audio,
        *,
        language: str | None = None,
        task: str | None = None,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """The transcript's timed segments ({"start", "end", "text"})."""
        values = calls.transcribe_inputs(audio, language, task, timestamps=True)
        return calls.segments(self._infer(calls.MODELS["transcribe"], values, timeout))

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
        """The answer to `prompt` (text, or a JSON list of chat messages): a str, or with
        `stream=True` an iterator of its pieces as they are generated."""
        values = calls.chat_inputs(prompt, images, session_id, max_new_tokens, temperature)
        model = calls.chat_model(images, stream)
        if stream:
            pieces = (calls.text(r, "text") for r in self._stream(model, values, timeout))
            return (piece for piece in pieces if piece)
        return calls.text(self._infer(model, values, timeout), "text")

    def speak(
        self,
        text: str,
        *,
        voice: str | None = None,
        format: str | None = None,
        stream: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """`text` spoken: the encoded audio (WAV unless `format` says otherwise), or with
        `stream=True` an iterator of one encoded chunk per sentence."""
        values = calls.speak_inputs(text, voice, format)
        if stream:
            results = self._stream(calls.MODELS["speak_stream"], values, timeout)
            chunks = (calls.output(r, "audio") for r in results)
            return (chunk for chunk in chunks if chunk)
        return calls.output(self._infer(calls.MODELS["speak"], values, timeout), "audio") or b""

    def voice_chat(
        self,
        audio: Audio,
        *,
        session_id: str | None = None,
        system: str | None = None,
        voice: str | None = None,
        max_new_tokens: int | None = None,
        format: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[VoiceEvent]:
        """A spoken question answered aloud: the transcript, then each sentence with its
        audio as soon as it is spoken, then the finish reason (gRPC only)."""
        values = calls.voice_inputs(audio, session_id, system, voice, max_new_tokens, format)
        for result in self._stream(calls.MODELS["voice_chat"], values, timeout):
            event = calls.voice_event(result)
            if event is not None:
                yield event

    # --- transport -----------------------------------------------------------------------------

    def _infer(self, model: str, values: dict[str, Any], timeout: float | None) -> Any:
        deadline = deadline_of(self.timeout if timeout is None else timeout)

        def attempt() -> Any:
            left = remaining(deadline)
            tensors = calls.inputs(self._module, values)
            if self.protocol == "grpc":
                return self._client.infer(model, tensors, client_timeout=left)
            if left is None:
                return self._client.infer(model, tensors)
            # HTTP deadlines are the connection's: a client of its own for this call.
            client = httpclient.InferenceServerClient(
                self.url, connection_timeout=left, network_timeout=left
            )
            try:
                return client.infer(model, tensors)
            finally:
                client.close()

        return self.retry.call(attempt, deadline)

    def _stream(self, model: str, values: dict[str, Any], timeout: float | None) -> Iterator[Any]:
        """The responses of one request on a gRPC stream, until the final one. Retried (with
        a new stream) only while no response has arrived: a partial answer is never redone."""
        if self.protocol != "grpc":
            raise ValueError(f"streaming ({model}) needs protocol='grpc'")
        deadline = deadline_of(self.timeout if timeout is None else timeout)
        client = grpcclient.InferenceServerClient(self.url)
        responses: queue.Queue[tuple[Any, Any]] = queue.Queue()

        def attempt() -> Any:
            left = remaining(deadline)
            client.stop_stream()
            client.start_stream(
                callback=lambda result, error: responses.put((result, error)), stream_timeout=left
            )
            client.async_stream_infer(
                model, calls.inputs(grpcclient, values), enable_empty_final_response=True
            )
            return next_result()

        def next_result() -> Any:
            result, error = responses.get()
            if error is not None:
                raise from_exception(error)
            return result

        try:
            result = self.retry.call(attempt, deadline)
            while True:
                yield result
                if calls.is_final(result):
                    return
                result = next_result()
        finally:
            client.stop_stream(cancel_requests=True)
            client.close()
