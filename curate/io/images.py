"""Decode and validate one image. Every failure is a reason string, never an exception.

Reasons (the ``reason`` column of a rejected row):
``empty_image`` (no bytes / zero bytes), ``missing_file``, ``undecodable`` (not an image),
``truncated`` (the decoder ran out of data or hit corrupt data), ``too_many_pixels``
(decompression-bomb guard), ``too_small`` (a side below ``min_side``).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np

#: Formats whose bytes are stored as they came when the image is already 8-bit RGB.
PASSTHROUGH_FORMATS = {"JPEG", "PNG", "WEBP"}
DEFAULT_MAX_PIXELS = 64_000_000  # ~8k x 8k; a larger header is treated as a decompression bomb


@dataclass
class DecodedImage:
    ok: bool
    reason: str | None = None
    image: object = None  # PIL.Image in RGB mode when ok
    encoded: bytes | None = None  # what the image store keeps
    width: int | None = None
    height: int | None = None
    mode: str | None = None  # the source mode, before conversion
    format: str | None = None
    num_bytes: int = 0
    pixel_hash: str | None = None


def pixel_hash(rgb) -> str:
    """Hash of the decoded RGB pixels and size: equal for a PNG and its lossless re-encoding."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{rgb.width}x{rgb.height}".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def to_rgb(img):
    """Convert any PIL mode to 8-bit RGB the way a person would expect.

    Alpha is composited over white (not dropped, which would turn transparent pixels black);
    16- and 32-bit integer greys are rescaled, not clipped; palettes with transparency go
    through RGBA.
    """
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() if arr.size else 0.0
        if mode == "F" and top <= 1.0:
            arr = arr * 255.0
        elif top > 255:
            arr = arr / 257.0 if top <= 65535 else arr * (255.0 / top)
        grey = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
        return grey.convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(
    data: bytes | None, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1
) -> DecodedImage:
    """Decode ``data`` into RGB and decide what the store keeps; failures come back as reasons."""
    from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

    if not data:
        return DecodedImage(ok=False, reason="empty_image")
    num_bytes = len(data)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with warnings.catch_warnings():
        # Our own pixel cap below replaces PIL's global bomb check, which warns or raises
        # depending on a process-wide setting.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old_cap = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            try:
                img = Image.open(io.BytesIO(data))
            except (UnidentifiedImageError, ValueError, OSError, SyntaxError):
                return DecodedImage(ok=False, reason="undecodable", num_bytes=num_bytes)
            width, height = img.size
            fmt, mode = img.format, img.mode
            base = dict(width=width, height=height, mode=mode, format=fmt, num_bytes=num_bytes)
            if width * height > max_pixels:
                return DecodedImage(ok=False, reason="too_many_pixels", **base)
            try:
                img.load()
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
                return DecodedImage(ok=False, reason="truncated", **base)
        finally:
            Image.MAX_IMAGE_PIXELS = old_cap
    if min(width, height) < min_side:
        return DecodedImage(ok=False, reason="too_small", **base)
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not lose the image
        orientation = 1
    rotated = orientation not in (1, None)
    oriented = ImageOps.exif_transpose(img) if rotated else img
    rgb = to_rgb(oriented)
    if fmt in PASSTHROUGH_FORMATS and mode == "RGB" and not rotated:
        encoded = data
    else:
        buf = io.BytesIO()
        rgb.save(buf, format="PNG", optimize=False)
        encoded = buf.getvalue()
    base.update(width=rgb.width, height=rgb.height)
    return DecodedImage(ok=True, image=rgb, encoded=encoded, pixel_hash=pixel_hash(rgb), **base)
