"""Chat prompts (shared.chat): plain text, OpenAI-style messages, images, and bad input."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from PIL import Image

from shared.chat import ImageLimits, parse_prompt, template_messages
from shared.errors import ErrorCode, RequestError
from shared.image import encode_image

LIMITS = ImageLimits(max_images=3, max_pixels=1_000_000, max_bytes=1 << 20)


def png(width: int, height: int = 10) -> bytes:
    return encode_image(Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8)), "PNG")


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def widths(messages) -> list[int]:
    return [img.width for m in messages for img in m.images]


def test_plain_text_is_one_user_turn_with_the_images_first() -> None:
    messages = parse_prompt("What is this?", [png(11), png(12)], LIMITS)
    assert [m.role for m in messages] == ["user"]
    assert [p.text for p in messages[0].parts] == [None, None, "What is this?"]
    assert widths(messages) == [11, 12]


def test_text_that_merely_starts_with_a_bracket_stays_text() -> None:
    for prompt in ("[1] is a citation", "[x, y]", "   [ 1 ]"):
        assert parse_prompt(prompt, [], LIMITS)[0].parts[0].text == prompt


def test_openai_messages_with_data_uris_and_placeholders() -> None:
    raw = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}]},
        {"role": "assistant", "content": "Two pictures."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_uri(png(21))}},
                {"type": "image_url", "image_url": data_uri(png(22))},
                {"type": "text", "text": "Compare."},
            ],
        },
    ]
    messages = parse_prompt(json.dumps(raw), [png(13)], LIMITS)
    assert [m.role for m in messages] == ["system", "user", "assistant", "user"]
    assert widths(messages) == [13, 21, 22]
    template, images = template_messages(messages)
    assert template[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert template[3]["content"][:2] == [{"type": "image"}, {"type": "image"}]
    assert [img.width for img in images] == [13, 21, 22]


def test_images_without_placeholders_open_the_last_user_message() -> None:
    raw = [{"role": "user", "content": "first"}, {"role": "user", "content": "second"}]
    messages = parse_prompt(json.dumps(raw), [png(14)], LIMITS)
    assert messages[0].images == []
    assert [p.image.width if p.image else p.text for p in messages[1].parts] == [14, "second"]


@pytest.mark.parametrize(
    ("prompt", "images", "expected"),
    [
        ("", [], "input 'prompt' is empty"),
        ('[{"role": "user", "content": "hi"', [], "not valid JSON: Expecting"),
        ("[]", [], "the messages list is empty"),
        ('[{"role": "robot", "content": "hi"}]', [], "messages[0].role is 'robot'"),
        ('[{"role": "user", "content": 7}]', [], "messages[0].content must be a string or a list"),
        (
            '[{"role": "user", "content": [{"type": "audio"}]}]',
            [],
            "messages[0].content[0] has type 'audio'",
        ),
        (
            '[{"role": "user", "content": [{"type": "text"}]}]',
            [],
            "content[0].text must be a string",
        ),
        ('[{"role": "assistant", "content": "hi"}]', [], "the last message is from 'assistant'"),
        ('[{"role": "user", "content": "hi"}, 2]', [], "messages[1] is not an object"),
        (
            '[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]',
            [],
            "only base64 data: URIs",
        ),
        (
            '[{"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,@@@"}]}]',
            [],
            "is not valid base64",
        ),
        (
            '[{"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,aGVsbG8="}]}]',
            [],
            "input 'prompt': messages[0].content[0] is not a readable image",
        ),
        (
            '[{"role": "user", "content": [{"type": "image"}]}]',
            [],
            '1 {"type": "image"} placeholders',
        ),
        ("four", [b"a", b"b", b"c", b"d"], "carries 4 images"),
        ("bad image", [b"not an image"], "input 'images' item 0 is not a readable image"),
    ],
    ids=[
        "empty",
        "truncated-json",
        "no-messages",
        "bad-role",
        "bad-content",
        "unknown-part",
        "text-not-string",
        "ends-with-assistant",
        "not-objects",
        "remote-url",
        "bad-base64",
        "data-uri-not-an-image",
        "placeholder-without-image",
        "too-many-images",
        "corrupt-image-input",
    ],
)
def test_bad_prompts_are_invalid_arg_naming_the_input(
    prompt: str, images: list, expected: str
) -> None:
    with pytest.raises(RequestError) as caught:
        parse_prompt(prompt, images, LIMITS)
    assert caught.value.code is ErrorCode.INVALID_ARG
    assert expected in caught.value.message
    assert "input '" in caught.value.message or "images" in caught.value.message


def test_a_deeply_nested_messages_json_is_invalid_arg() -> None:
    deep = '[{"role": "user", "content": ' + "[" * 100_000 + "]" * 100_000 + "}]"
    with pytest.raises(RequestError) as caught:
        parse_prompt(deep, [], LIMITS)
    assert caught.value.code is ErrorCode.INVALID_ARG
    assert caught.value.message.startswith("input 'prompt' is a JSON document nested too deeply")


def test_images_in_messages_count_towards_the_limit_before_decoding() -> None:
    part = {"type": "image_url", "image_url": data_uri(b"not even decoded")}
    raw = [{"role": "user", "content": [part, part, part]}]
    with pytest.raises(RequestError, match="carries 4 images; the limit is 3"):
        parse_prompt(json.dumps(raw), [png(5)], LIMITS)


def test_a_text_only_model_refuses_images() -> None:
    text_only = ImageLimits(max_images=0, max_pixels=1, max_bytes=1)
    with pytest.raises(RequestError, match="reads text only"):
        parse_prompt("hi", [png(5)], text_only)
    assert parse_prompt("hi", [], text_only)[0].parts[0].text == "hi"


def test_message_size_counts_decoded_pixels() -> None:
    (message,) = parse_prompt("abc", [png(20, 10)], LIMITS)
    assert message.size_bytes() == 20 * 10 * 3 + 3
