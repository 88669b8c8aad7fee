"""Decoding and validation of single images: every failure is a reason, never an exception."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from curate.io.images import decode_image


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("data", "reason"),
    [(None, "empty_image"), (b"", "empty_image"), (b"definitely not an image", "undecodable")],
)
def test_unusable_bytes_become_reasons(data, reason):
    assert decode_image(data).reason == reason


def test_truncated_jpeg_is_rejected(photo):
    data = _encode(photo, "JPEG", quality=90)
    dec = decode_image(data[: len(data) // 2])
    assert not dec.ok and dec.reason == "truncated"


def test_decompression_bomb_is_rejected_before_decoding(photo):
    dec = decode_image(_encode(photo), max_pixels=100)
    assert not dec.ok and dec.reason == "too_many_pixels"
    assert (dec.width, dec.height) == (60, 40)


def test_rgb_jpeg_bytes_are_stored_unchanged(photo):
    data = _encode(photo, "JPEG", quality=90)
    dec = decode_image(data)
    assert dec.ok and dec.encoded == data and dec.mode == "RGB"


def test_alpha_is_composited_over_white_not_black():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    dec = decode_image(_encode(rgba))
    assert dec.ok and dec.mode == "RGBA"
    assert dec.image.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency_uses_alpha():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    dec = decode_image(_encode(p))
    assert dec.ok and dec.image.getpixel((1, 1)) == (255, 255, 255)


def test_16bit_grey_is_rescaled_not_clipped():
    arr = np.full((4, 4), 65535, dtype=np.uint16)
    arr[0, 0] = 32768
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    dec = decode_image(_encode(img))
    assert dec.ok
    assert dec.image.getpixel((1, 1)) == (255, 255, 255)
    assert dec.image.getpixel((0, 0))[0] in (127, 128)  # mid-grey, not clipped to 255


def test_cmyk_is_converted_to_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    dec = decode_image(_encode(cmyk, "JPEG", quality=95))
    assert dec.ok and dec.image.mode == "RGB"
    r, g, b = dec.image.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_pixel_hash_ignores_encoding(photo):
    png = decode_image(_encode(photo, "PNG"))
    tiff = decode_image(_encode(photo, "TIFF"))
    assert png.pixel_hash == tiff.pixel_hash
    other = decode_image(_encode(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    assert other.pixel_hash != png.pixel_hash
