"""What a request meets before any route: API keys, then body size limits.

Both are plain ASGI middleware, so they act on the raw byte stream and work the same for
streamed responses (no buffering layer in between):

- `ApiKeys`: `Authorization: Bearer <key>` against the configured keys (none: off). /health
  and /metrics stay open for probes and scrapers.
- `BodyLimit`: a declared Content-Length over the limit is refused before one byte is read;
  a body without one (chunked) is counted as it arrives and refused when it passes the
  limit. Nothing reads a whole body into memory before the limit has been checked. Uploads
  (multipart) get the audio limit, everything else the JSON one.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

from openai_api.errors import ApiError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/metrics"})


async def send_error(
    send: Send, error: ApiError, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    body = json.dumps(error.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class ApiKeys:
    """Refuses /v1 requests without one of `keys` as Bearer token (OpenAI's 401)."""

    def __init__(self, app: ASGIApp, keys: frozenset[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        scheme, _, token = (header(scope, b"authorization") or "").partition(" ")
        given = token.strip().encode()
        # compare_digest against every key: the time taken does not tell which one is close.
        if scheme.lower() == "bearer" and any(
            [hmac.compare_digest(given, key) for key in self.keys]
        ):
            await self.app(scope, receive, send)
            return
        error = ApiError(
            401,
            "Incorrect or missing API key (Authorization: Bearer <key>)",
            code="invalid_api_key",
        )
        await send_error(send, error, ((b"www-authenticate", b"Bearer"),))


class TooLarge(HTTPException):
    """Raised from inside `receive`; FastAPI lets an HTTPException through body parsing."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


class BodyLimit:
    """Refuses bodies over the limit (413) without reading them whole."""

    def __init__(self, app: ASGIApp, json_bytes: int, upload_bytes: int) -> None:
        self.app = app
        self.json_bytes = json_bytes
        self.upload_bytes = upload_bytes

    def limit(self, scope: Scope) -> int:
        content_type = (header(scope, b"content-type") or "").lower()
        return self.upload_bytes if content_type.startswith("multipart/") else self.json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope)
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await send_error(send, ApiError(413, TooLarge(limit).detail))
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise TooLarge(limit)
            return message

        await self.app(scope, counted, send)
