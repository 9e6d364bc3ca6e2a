"""Chat prompts: plain text, or a JSON list of OpenAI-style messages with images in them.

A client sends a chat model one `prompt`:

* plain text: one user turn (with the request's `images`, if any, in front of the text);
* or a JSON array of messages in the OpenAI chat format, recognised by its first characters
  (`[` then `{`, or `[]`): `{"role": "system" | "user" | "assistant", "content": ...}` where
  content is a string or a list of parts:
  - `{"type": "text", "text": "..."}`
  - `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` (a bare string
    for `image_url` is accepted too). Only `data:` URIs: the server fetches nothing, so a
    prompt cannot make it reach into the network it runs in;
  - `{"type": "image"}`: a placeholder for the next image of the request's `images` input,
    to place those images inside the conversation. Without placeholders, the `images` go in
    front of the last user message's content.

The result is a list of `Message`s whose image parts hold decoded images, ready for a chat
template. Every problem is a `RequestError` (INVALID_ARG) whose message names the input and,
for messages, the path inside the JSON (`messages[1].content[0]`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from shared.errors import invalid
from shared.image import decode_image

ROLES = ("system", "user", "assistant")
#: Stop strings a request may give, and their longest length.
MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 200
_MESSAGES_START = re.compile(r"\s*\[\s*[{\]]")
_DATA_URI = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,", re.I)


@dataclass(frozen=True)
class ImageLimits:
    """How many images a request may carry, and how big each may be."""

    max_images: int
    max_pixels: int
    max_bytes: int


@dataclass(frozen=True)
class ChatRequest:
    """One row of a chat request as the client sent it: nothing validated yet but sizes.

    Options a client left out are None; the model's settings fill them in.
    """

    prompt: str
    images: tuple[bytes, ...] = ()
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    session_id: str | None = None
    reset_session: bool = False
    #: Refuse images, whatever the model's max_images (the caller reads text only: `llm`).
    text_only: bool = False


FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass(frozen=True)
class Completion:
    """What one row produced: its text, why it ended, and its token counts."""

    text: str
    finish_reason: str  # one of FINISH_REASONS
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...] = ()  # what was generated (for tests and logs, not sent)
    #: time.perf_counter() at the first and the last token (None: no token), for the
    #: latency metrics; timings, not results, so two completions compare without them.
    first_token_at: float | None = field(default=None, compare=False)
    last_token_at: float | None = field(default=None, compare=False)
    #: time.perf_counter() when its prompt pass began (continuous batching; None: static).
    admitted_at: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Part:
    """One piece of a message's content: text, or a decoded image."""

    text: str | None = None
    image: Image.Image | None = None


@dataclass(frozen=True)
class Message:
    role: str
    parts: tuple[Part, ...]

    @property
    def images(self) -> list[Image.Image]:
        return [p.image for p in self.parts if p.image is not None]

    def size_bytes(self) -> int:
        """Memory the message holds (decoded pixels dominate): what a session is charged."""
        text = sum(len(p.text.encode("utf-8")) for p in self.parts if p.text is not None)
        return text + sum(img.width * img.height * len(img.getbands()) for img in self.images)


def text_message(role: str, text: str) -> Message:
    return Message(role=role, parts=(Part(text=text),))


def looks_like_messages(prompt: str) -> bool:
    return _MESSAGES_START.match(prompt) is not None


def parse_prompt(prompt: str, images: Sequence[bytes], limits: ImageLimits) -> list[Message]:
    """The conversation a request carries: its messages, images decoded and placed.

    `images` are the encoded images of the request's `images` input (zero or more).
    """
    if len(images) > limits.max_images:
        raise _too_many(len(images), limits)
    if not looks_like_messages(prompt):
        if not prompt.strip() and not images:
            raise invalid("input 'prompt' is empty")
        decoded = _decode_inputs(images, limits)
        parts = [Part(image=img) for img in decoded]
        if prompt:
            parts.append(Part(text=prompt))
        return [Message(role="user", parts=tuple(parts))]
    try:
        raw = json.loads(prompt)
    except json.JSONDecodeError as exc:
        raise invalid(
            "input 'prompt' starts like a JSON list of chat messages but is not valid JSON: "
            f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:  # the parser recurses per level: [[[[... exhausts the stack
        raise invalid(
            "input 'prompt' is a JSON document nested too deeply to read; chat messages "
            "nest 4 levels (messages, message, content, part)"
        ) from exc
    return _parse_messages(raw, images, limits)


def _parse_messages(raw: Any, images: Sequence[bytes], limits: ImageLimits) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise invalid("input 'prompt': the messages list is empty; send at least one user message")
    # Counted before anything is decoded: a request over the limit costs no decoding.
    counted = len(images) + sum(_count_data_images(m) for m in raw)
    if counted > limits.max_images:
        raise _too_many(counted, limits)
    placeholders = sum(_count_placeholders(m) for m in raw)
    if placeholders and placeholders != len(images):
        raise invalid(
            f'input \'prompt\' has {placeholders} {{"type": "image"}} placeholders but input '
            f"'images' carries {len(images)} images; send one image per placeholder"
        )
    pending = _decode_inputs(images, limits)
    messages = [_parse_message(m, f"messages[{i}]", pending, limits) for i, m in enumerate(raw)]
    if messages[-1].role != "user":
        raise invalid(
            f"input 'prompt': the last message is from {messages[-1].role!r}; the model answers "
            "a 'user' message"
        )
    if pending:  # no placeholders: the request's images open the last user message
        last = messages[-1]
        messages[-1] = Message(last.role, tuple(Part(image=img) for img in pending) + last.parts)
    return messages


def _parse_message(
    raw: Any, where: str, pending: list[Image.Image], limits: ImageLimits
) -> Message:
    if not isinstance(raw, dict):
        raise invalid(f"input 'prompt': {where} is not an object with 'role' and 'content'")
    role = raw.get("role")
    if role not in ROLES:
        raise invalid(f"input 'prompt': {where}.role is {role!r}; allowed: {', '.join(ROLES)}")
    content = raw.get("content")
    if isinstance(content, str):
        return text_message(role, content)
    if not isinstance(content, list):
        raise invalid(f"input 'prompt': {where}.content must be a string or a list of parts")
    parts = [
        _parse_part(p, f"{where}.content[{j}]", pending, limits) for j, p in enumerate(content)
    ]
    if role != "user" and any(p.image is not None for p in parts):
        raise invalid(
            f"input 'prompt': {where} is a {role!r} message; only user messages hold images"
        )
    return Message(role=role, parts=tuple(parts))


def _parse_part(raw: Any, where: str, pending: list[Image.Image], limits: ImageLimits) -> Part:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        text = raw.get("text")
        if not isinstance(text, str):
            raise invalid(f"input 'prompt': {where}.text must be a string")
        return Part(text=text)
    if kind == "image_url":
        url = raw.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise invalid(f"input 'prompt': {where}.image_url.url must be a string")
        return Part(image=_decode_data_uri(url, where, limits))
    if kind == "image":
        return Part(image=pending.pop(0))
    raise invalid(
        f"input 'prompt': {where} has type {kind!r}; allowed: 'text', 'image_url' (a data: URI), "
        "'image' (the next image of input 'images')"
    )


def _decode_data_uri(url: str, where: str, limits: ImageLimits) -> Image.Image:
    match = _DATA_URI.match(url)
    if match is None:
        shown = url[:40] + ("..." if len(url) > 40 else "")
        raise invalid(
            f"input 'prompt': {where}.image_url is {shown!r}; only base64 data: URIs "
            "(data:image/png;base64,...) are accepted, the server fetches no URLs"
        )
    payload = url[match.end() :]
    if len(payload) > 4 * (limits.max_bytes // 3 + 1) + 4:
        raise invalid(
            f"input 'prompt': {where} image is over {limits.max_bytes} bytes (max_image_bytes)"
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid(f"input 'prompt': {where}.image_url is not valid base64: {exc}") from exc
    return decode_image(
        data,
        max_pixels=limits.max_pixels,
        max_bytes=limits.max_bytes,
        name=f"input 'prompt': {where}",
    )


def _decode_inputs(images: Sequence[bytes], limits: ImageLimits) -> list[Image.Image]:
    return [
        decode_image(
            data,
            max_pixels=limits.max_pixels,
            max_bytes=limits.max_bytes,
            name=f"input 'images' item {i}",
        )
        for i, data in enumerate(images)
    ]


def _parts(message: Any) -> list[Any]:
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, list) else []


def _count_data_images(message: Any) -> int:
    return sum(1 for p in _parts(message) if isinstance(p, dict) and p.get("type") == "image_url")


def _count_placeholders(message: Any) -> int:
    return sum(1 for p in _parts(message) if isinstance(p, dict) and p.get("type") == "image")


def _too_many(count: int, limits: ImageLimits) -> Exception:
    if limits.max_images == 0:
        return invalid(
            "input 'prompt' carries images (or input 'images'); this model reads text only"
        )
    return invalid(
        f"input 'images' (with the image parts of input 'prompt') carries {count} images; "
        f"the limit is {limits.max_images} (max_images)"
    )


def template_messages(
    messages: Sequence[Message],
) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """Messages as chat templates take them, with the images in order of appearance.

    Content is always a list of parts (some templates, SmolVLM's, index into it); images
    become `{"type": "image"}` placeholders that the processor expands.
    """
    converted: list[dict[str, Any]] = []
    images: list[Image.Image] = []
    for message in messages:
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if part.image is not None:
                content.append({"type": "image"})
                images.append(part.image)
            else:
                content.append({"type": "text", "text": part.text})
        converted.append({"role": message.role, "content": content})
    return converted, images
