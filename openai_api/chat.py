"""POST /v1/chat/completions: OpenAI chat requests to the chat models, answers back.

Conversation state is the client's, as in OpenAI's API: every request carries the whole
conversation, which goes to the model as its JSON messages prompt (the same shape, so nothing
is rewritten but the roles and parts the models do not know). Images travel only as `data:`
URIs inside the prompt; any other URL is refused here and never fetched. The models' own
per-session history stays reachable through two extension fields, `session_id` and
`reset_session` (docs/openai.md#sessions).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from openai_api.errors import ApiError, invalid
from openai_api.models import CHAT, resolve
from openai_api.triton import Outputs, Triton, number, row, text

router = APIRouter()

#: OpenAI roles the models know by another name.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
#: Proxies must pass each event on as it comes.
NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ImageUrl(BaseModel):
    url: str
    detail: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    image_url: ImageUrl | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields the door acts on; other OpenAI fields are ignored unless they ask for
    something the models cannot do (`refused` below), which is answered with a 400."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    logprobs: bool | None = None
    response_format: dict[str, Any] | None = None
    # Extensions (not OpenAI's): the chat models' per-session history.
    session_id: str | None = None
    reset_session: bool | None = None


def refused(request: ChatCompletionRequest) -> ApiError | None:
    """A 400 for the OpenAI features the models do not have, rather than a silent ignore."""
    if request.n not in (None, 1):
        return invalid("n: only one choice per request is supported", "n")
    if request.tools or request.functions:
        return invalid("tools: tool and function calling is not supported", "tools")
    if request.logprobs:
        return invalid("logprobs: log probabilities are not returned", "logprobs")
    if request.response_format and request.response_format.get("type", "text") != "text":
        return invalid("response_format: only 'text' is supported", "response_format")
    return None


def prompt_messages(request: ChatCompletionRequest) -> tuple[list[dict[str, Any]], int]:
    """The messages as the models' JSON prompt, and how many images they carry.

    Only `data:` image URLs pass; the check happens here so that no URL ever reaches a
    component that might fetch it.
    """
    messages: list[dict[str, Any]] = []
    images = 0
    for i, message in enumerate(request.messages):
        role = ROLES.get(message.role)
        if role is None:
            raise invalid(
                f"messages[{i}].role: '{message.role}' is not supported; use {', '.join(ROLES)}",
                f"messages[{i}].role",
            )
        if message.content is None or isinstance(message.content, str):
            messages.append({"role": role, "content": message.content or ""})
            continue
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(message.content):
            where = f"messages[{i}].content[{j}]"
            if part.type == "text":
                parts.append({"type": "text", "text": part.text or ""})
            elif part.type == "image_url" and part.image_url is not None:
                url = part.image_url.url
                if not url.startswith("data:"):
                    shown = url if len(url) <= 200 else url[:200] + "..."
                    raise invalid(
                        f"{where}.image_url.url: only data: URIs are accepted (the server "
                        f"fetches no URLs); got '{shown}'",
                        f"{where}.image_url.url",
                    )
                parts.append({"type": "image_url", "image_url": {"url": url}})
                images += 1
            else:
                raise invalid(
                    f"{where}.type: '{part.type}' is not supported; use text or image_url",
                    f"{where}.type",
                )
        messages.append({"role": role, "content": parts})
    return messages, images


def triton_inputs(request: ChatCompletionRequest, model: str) -> dict[str, np.ndarray]:
    """The chat model's input tensors for one OpenAI request."""
    messages, images = prompt_messages(request)
    if images and model == "llm":
        raise invalid("model 'llm' takes no images; use 'vlm'", "messages")
    inputs = {"prompt": row(json.dumps(messages).encode(), np.object_)}
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens is not None:
        inputs["max_new_tokens"] = row(min(max_tokens, 2**31 - 1), np.int32)
    if request.temperature is not None:
        inputs["temperature"] = row(request.temperature, np.float32)
    if request.top_p is not None:
        inputs["top_p"] = row(request.top_p, np.float32)
    if request.seed is not None:
        inputs["seed"] = row(request.seed, np.int64)
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    if stop:
        inputs["stop"] = row([s.encode() for s in stop], np.object_)
    if request.session_id is not None:
        inputs["session_id"] = row(request.session_id.encode(), np.object_)
    if request.reset_session is not None:
        inputs["reset_session"] = row(request.reset_session, np.bool_)
    return inputs


def usage(outputs: Outputs) -> dict[str, int]:
    prompt, completion = number(outputs, "prompt_tokens"), number(outputs, "completion_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion(model: str, answer: str, outputs: Outputs) -> dict[str, Any]:
    """OpenAI's chat.completion object."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer, "refusal": None},
                "finish_reason": text(outputs, "finish_reason") or "stop",
                "logprobs": None,
            }
        ],
        "usage": usage(outputs),
    }


class Chunks:
    """OpenAI's chat.completion.chunk objects for one streamed answer, as SSE lines."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def event(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            ],
        }
        if self.include_usage:
            chunk["usage"] = None
        return sse(chunk)

    def usage(self, outputs: Outputs) -> bytes:
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage(outputs),
            }
        )


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


async def stream_answer(
    triton: Triton, model: str, inputs: dict[str, np.ndarray], chunks: Chunks
) -> AsyncIterator[bytes]:
    """The SSE body: role chunk, a chunk per piece, the finish chunk, usage, [DONE]."""
    first, pieces = await triton.started_stream(model, inputs)

    async def body() -> AsyncIterator[bytes]:
        async with aclosing(pieces):
            yield chunks.event({"role": "assistant", "content": ""})
            outputs: Outputs | None = first
            try:
                while outputs is not None:
                    piece = text(outputs, "text")
                    if piece:
                        yield chunks.event({"content": piece})
                    if "finish_reason" in outputs:
                        yield chunks.event({}, text(outputs, "finish_reason"))
                        if chunks.include_usage:
                            yield chunks.usage(outputs)
                    outputs = await anext(pieces, None)
            except ApiError as exc:
                # The status line is gone: the error travels as an event, as OpenAI's does.
                yield sse(exc.body())
            yield sse("[DONE]")

    return body()


async def one_chunk_answer(outputs: Outputs, chunks: Chunks) -> AsyncIterator[bytes]:
    """A unary model's whole answer as a stream (llm has no streaming twin)."""
    yield chunks.event({"role": "assistant", "content": ""})
    yield chunks.event({"content": text(outputs, "text")})
    yield chunks.event({}, text(outputs, "finish_reason") or "stop")
    if chunks.include_usage:
        yield chunks.usage(outputs)
    yield sse("[DONE]")


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    settings, triton = request.app.state.settings, request.app.state.triton
    error = refused(body)
    if error is not None:
        raise error
    route = resolve(CHAT, body.model, settings.models, "chat")
    inputs = triton_inputs(body, route.unary)
    if not body.stream:
        if route.unary == "vlm_stream":
            outputs: Outputs = {}
            answer = []
            async with aclosing(triton.stream(route.unary, inputs)) as pieces:
                async for outputs in pieces:
                    answer.append(text(outputs, "text"))
            return JSONResponse(completion(body.model, "".join(answer), outputs))
        outputs = await triton.infer(route.unary, inputs)
        return JSONResponse(completion(body.model, text(outputs, "text"), outputs))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunks = Chunks(body.model, include_usage)
    if route.stream is not None and route.stream in settings.models:
        events = await stream_answer(triton, route.stream, inputs, chunks)
    else:
        events = one_chunk_answer(await triton.infer(route.unary, inputs), chunks)
    return StreamingResponse(events, media_type="text/event-stream", headers=NO_BUFFERING)
