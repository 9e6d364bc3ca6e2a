"""Image decoding (shared.image): formats, orientation, colour modes, and hostile input."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from shared.errors import ErrorCode, RequestError
from shared.image import decode_image, encode_image

LIMITS = {"max_pixels": 1_000_000, "max_bytes": 1 << 20, "name": "input 'images' item 0"}


def picture(width: int = 40, height: int = 30, mode: str = "RGB") -> Image.Image:
    """Left half red, right half blue: orientation and colour survive or visibly do not."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = (255, 0, 0)
    array[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(array).convert(mode)


@pytest.mark.parametrize(
    ("fmt", "options"), [("PNG", {}), ("JPEG", {"quality": 95}), ("WEBP", {"lossless": True})]
)
def test_common_formats_decode_to_rgb(fmt: str, options: dict) -> None:
    image = decode_image(encode_image(picture(), fmt, **options), **LIMITS)
    assert image.mode == "RGB" and image.size == (40, 30)
    left, right = image.getpixel((5, 15)), image.getpixel((35, 15))
    assert left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    data = encode_image(picture(40, 30), "JPEG", quality=95, exif=exif.tobytes())
    image = decode_image(data, **LIMITS)
    assert image.size == (30, 40)
    # The left half (red) of the stored image is the top half of the upright one.
    assert image.getpixel((15, 5))[0] > 200 and image.getpixel((15, 35))[2] > 200


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16"])
def test_other_colour_modes_become_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    image = decode_image(encode_image(picture(mode=mode), fmt), **LIMITS)
    assert image.mode == "RGB" and image.size == (40, 30)


def test_transparency_is_composited_on_white() -> None:
    rgba = picture().convert("RGBA")
    rgba.putalpha(0)
    image = decode_image(encode_image(rgba, "PNG"), **LIMITS)
    assert image.mode == "RGB" and image.getpixel((5, 5)) == (255, 255, 255)


def _png_declaring(width: int, height: int) -> bytes:
    """A small valid PNG whose header declares `width` x `height` (a decompression bomb's shape)."""
    data = bytearray(encode_image(Image.new("L", (8, 8)), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "input 'images' item 0 is empty"),
        (b"definitely not an image", "is not a readable image"),
        (encode_image(picture(), "PNG")[:60], "is not a readable image"),
        (_png_declaring(2000, 1000), "2000x1000 = 2000000 pixels; the limit is 1000000 pixels"),
        (_png_declaring(60000, 60000), "the limit is 1000000 pixels"),
        (b"\x89PNG" + b"\0" * (2 << 20), "bytes; the limit is 1048576 bytes (max_image_bytes)"),
    ],
    ids=["empty", "garbage", "truncated", "over-pixel-limit", "bomb", "too-many-bytes"],
)
def test_bad_images_are_invalid_arg_naming_the_input(data: bytes, expected: str) -> None:
    with pytest.raises(RequestError) as caught:
        decode_image(data, **LIMITS)
    assert caught.value.code is ErrorCode.INVALID_ARG
    assert expected in caught.value.message
    assert caught.value.message.startswith("input 'images' item 0")


@pytest.mark.parametrize(
    "data",
    [b"definitely not an image", b"GIF89a" + b"\0" * 20, b"\xff\xd8\xff\xe0" + b"\0" * 30],
    ids=["garbage", "gif-header", "jpeg-header"],
)
def test_messages_show_no_heap_address(data: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        decode_image(data, **LIMITS)
    assert "0x" not in caught.value.message and "BytesIO" not in caught.value.message
    assert caught.value.message.endswith("its format is not recognised")


def test_the_pixel_limit_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = _png_declaring(5000, 5000)
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))
    with pytest.raises(RequestError, match="pixels"):
        decode_image(bomb, **LIMITS)
    assert decoded == []


def test_encode_image_round_trips() -> None:
    image = Image.open(io.BytesIO(encode_image(picture(), "PNG")))
    assert np.array_equal(np.asarray(image), np.asarray(picture()))
