"""Image decoding for requests: JPEG, PNG, WebP (whatever Pillow reads) to upright RGB.

Untrusted bytes are checked in the order that keeps a hostile request cheap: the byte size
before anything else, then the pixel count from the header (a decompression bomb is a small
file that declares a huge canvas: it is refused before a single pixel is decoded), then the
decode itself. The image is turned upright by its EXIF orientation (phones store portrait
photos sideways and set a tag) and converted to RGB (palette, grey, CMYK and alpha images
become what vision encoders expect). Resizing is left to the model's own processor, whose
policy (tiles, pixel budgets) is part of the checkpoint. Every failure is a `RequestError`
naming the input and the limit.
"""

from __future__ import annotations

import io
import re
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import invalid

#: What the error message promises; Pillow reads more, and anything it reads is accepted.
FORMATS_HINT = "JPEG, PNG, WebP, GIF, BMP"
#: How Pillow names the file object it read (`<_io.BytesIO object at 0x7f...>`): a heap
#: address means nothing to a client and tells an attacker about the server's memory.
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


def decode_image(data: bytes, *, max_pixels: int, max_bytes: int, name: str) -> Image.Image:
    """Decode one encoded image to an upright RGB `PIL.Image`.

    `name` says where the image came from in the request ("input 'images' item 2",
    "messages[0].content[1]"), so that the client can find the one that failed.
    """
    if len(data) == 0:
        raise invalid(f"{name} is empty")
    if len(data) > max_bytes:
        raise invalid(
            f"{name} is {len(data)} bytes; the limit is {max_bytes} bytes (max_image_bytes)"
        )
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning: our limit below is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width <= 0 or height <= 0:
                raise invalid(f"{name} declares an empty canvas ({width}x{height})")
            if width * height > max_pixels:
                raise invalid(
                    f"{name} is {width}x{height} = {width * height} pixels; the limit is "
                    f"{max_pixels} pixels (max_image_pixels)"
                )
            image.load()
            upright = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as exc:  # beyond Pillow's own hard limit
        raise invalid(
            f"{name} declares too many pixels ({exc}); the limit is {max_pixels} pixels "
            "(max_image_pixels)"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise invalid(f"{name} is not a readable image ({FORMATS_HINT}): {_reason(exc)}") from exc
    return _rgb(upright)


def _reason(exc: Exception) -> str:
    """Pillow's reason, without the heap address of the buffer it was reading."""
    if isinstance(exc, UnidentifiedImageError):
        return "its format is not recognised"
    return _OBJECT_REPR.sub("", str(exc)).strip() or type(exc).__name__


def _rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent areas composited on white (as a viewer shows them), not black."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def encode_image(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    """Encode an image in memory (clients, tests and benchmarks build requests with it)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
