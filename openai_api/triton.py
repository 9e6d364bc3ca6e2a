"""The door's only way to the models: Triton's gRPC API through tritonclient's asyncio client.

One channel serves every request (gRPC multiplexes them), so the door adds no connection per
request. Inputs are given as numpy arrays of one row; outputs come back by name. A stream
(the decoupled `vlm_stream`, `tts_stream`) is an async generator: closing it before the model's
final response cancels the gRPC call, and Triton then cancels the request, which is how a
client that goes away stops generation on the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import InferInput, InferResult
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from openai_api.errors import ApiError, from_triton

Outputs = dict[str, np.ndarray]


def row(value: Any, dtype: type | str) -> np.ndarray:
    """One request's input tensor: shape [1, 1], or [1, n] for a list (images, stop)."""
    if isinstance(value, list | tuple):
        return np.array([list(value)], dtype=dtype)
    return np.array([[value]], dtype=dtype)


def _tensors(inputs: Mapping[str, np.ndarray]) -> list[InferInput]:
    tensors = []
    for name, array in inputs.items():
        tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def _outputs(result: InferResult) -> Outputs:
    names = [output.name for output in result.get_response().outputs]
    return {name: result.as_numpy(name) for name in names}


def text(outputs: Outputs, name: str) -> str:
    """A BYTES output's first element as text ("" when the response did not carry it)."""
    array = outputs.get(name)
    return "" if array is None or array.size == 0 else bytes(array.flat[0]).decode("utf-8")


def blob(outputs: Outputs, name: str) -> bytes:
    array = outputs.get(name)
    return b"" if array is None or array.size == 0 else bytes(array.flat[0])


def number(outputs: Outputs, name: str) -> int:
    array = outputs.get(name)
    return 0 if array is None or array.size == 0 else int(array.flat[0])


def _rpc_error(exc: grpc.RpcError) -> InferenceServerException:
    """A gRPC failure the stream iterator lets through, as tritonclient reports the others."""
    details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
    return InferenceServerException(msg=details or "gRPC error", status=str(code))


class Triton:
    """The door's connection to one Triton server."""

    def __init__(self, url: str, timeout_seconds: float) -> None:
        self.client = InferenceServerClient(url)
        self.timeout = timeout_seconds

    async def close(self) -> None:
        await self.client.close()

    async def ready_models(self, names: Iterable[str]) -> set[str]:
        """Which of `names` Triton has ready; empty when the server is not ready.

        Asked model by model through the health API: the repository index would say it in one
        call, but a production server keeps that API behind its admin key.
        """
        try:
            if not await self.client.is_server_ready(client_timeout=5):
                return set()
            names = list(names)
            ready = await asyncio.gather(
                *(self.client.is_model_ready(name, client_timeout=5) for name in names)
            )
        except InferenceServerException:
            return set()
        return {name for name, up in zip(names, ready, strict=True) if up}

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> Outputs:
        """One unary request; Triton's errors come back as the OpenAI error to answer."""
        try:
            result = await self.client.infer(model, _tensors(inputs), client_timeout=self.timeout)
        except InferenceServerException as exc:
            raise from_triton(exc, model) from None
        return _outputs(result)

    async def stream(
        self, model: str, inputs: Mapping[str, np.ndarray]
    ) -> AsyncGenerator[Outputs, None]:
        """Each response of one request to a decoupled model, the final one included.

        Leaving early (the consumer closes the generator or is cancelled) cancels the call.
        """
        finished = asyncio.Event()

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": model,
                "inputs": _tensors(inputs),
                "parameters": {"triton_enable_empty_final_response": True},
            }
            # Keep our side of the stream open until the last response: closing it early
            # would end the call before the model has answered.
            await finished.wait()

        responses = self.client.stream_infer(requests(), stream_timeout=self.timeout)
        done = False
        try:
            while not done:
                try:
                    result, error = await responses.__anext__()
                except StopAsyncIteration:
                    raise ApiError(
                        500, f"{model}: the stream ended without a final response"
                    ) from None
                except grpc.RpcError as exc:
                    raise from_triton(_rpc_error(exc), model) from None
                if error is not None:
                    raise from_triton(error, model)
                done = result.get_response().parameters["triton_final_response"].bool_param
                yield _outputs(result)
        finally:
            finished.set()
            if not done:
                responses.cancel()

    async def started_stream(
        self, model: str, inputs: Mapping[str, np.ndarray]
    ) -> tuple[Outputs, AsyncGenerator[Outputs, None]]:
        """A stream's first response, awaited, and the generator of the rest.

        Awaiting the first response before an HTTP response starts keeps an error the model
        raises at once (a refused image, a text it cannot say) an HTTP error status rather
        than an event in a stream that already said 200.
        """
        pieces = self.stream(model, inputs)
        try:
            return await pieces.__anext__(), pieces
        except BaseException:
            await pieces.aclose()
            raise
