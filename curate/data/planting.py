"""Known copies of real images: the transforms a scraped dataset's duplicates go through.

Used by dedup calibration (on the user's own images, through ``curate.dedup.planting``), the
built-in datasets (``builtin:digits_loop``), the tests and the benchmark.

Every transform takes ``(image, rng)`` and returns a new RGB image; its strength is drawn from
``rng`` within a range that keeps the copy recognisably the same picture.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np

from curate.seeding import rng_for

Transform = Callable[[object, np.random.Generator], object]


def _jpeg(img, rng: np.random.Generator):
    from PIL import Image

    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=int(rng.integers(25, 76)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _png(img, rng: np.random.Generator):
    """A lossless re-encode: new bytes, identical pixels."""
    from PIL import Image

    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _resize(img, rng: np.random.Generator):
    from PIL import Image

    scale = float(rng.uniform(0.4, 0.85))
    w, h = img.size
    return img.resize(
        (max(8, round(w * scale)), max(8, round(h * scale))), Image.Resampling.BICUBIC
    )


def _crop(img, rng: np.random.Generator):
    w, h = img.size
    keep = float(rng.uniform(0.75, 0.92))  # fraction of each side kept
    cw, ch = round(w * keep), round(h * keep)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x0, y0, x0 + cw, y0 + ch))


def _flip(img, rng: np.random.Generator):
    from PIL import Image

    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _rotate(img, rng: np.random.Generator):
    from PIL import Image

    angle = float(rng.uniform(3, 10)) * float(rng.choice([-1, 1]))
    return img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False)


def _text(img, rng: np.random.Generator):
    from PIL import ImageDraw, ImageFont

    out = img.convert("RGB").copy()
    w, h = out.size
    draw = ImageDraw.Draw(out)
    words = ["SALE", "© stock", "sample", "watermark", "www.example.com", "50% off"]
    size = max(12, h // 10)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    for _ in range(2):
        xy = (int(rng.integers(0, max(1, w // 2))), int(rng.integers(0, max(1, h - size))))
        draw.text(xy, str(rng.choice(words)), fill=(255, 255, 255), font=font)
    return out


TRANSFORMS: dict[str, Transform] = {
    "exact": _png,
    "jpeg": _jpeg,
    "resize": _resize,
    "crop": _crop,
    "flip": _flip,
    "rotate": _rotate,
    "text": _text,
}


def plant_copies(
    images: Sequence,
    ids: Sequence[str],
    transforms: Sequence[str] = tuple(TRANSFORMS),
    seed: int = 0,
) -> list[tuple[object, str, str]]:
    """One copy per (image, transform): ``(copy, source_id, transform_name)``.

    The randomness of each copy derives from ``(seed, source_id, transform)``.
    """
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transforms {unknown}; known: {sorted(TRANSFORMS)}")
    out = []
    for img, sid in zip(images, ids, strict=True):
        for name in transforms:
            out.append((TRANSFORMS[name](img, rng_for(seed, sid, name)), sid, name))
    return out


def tiles(image, grid: int = 3, size: int | None = None) -> list:
    """Non-overlapping tiles of one photo: hard negatives that share texture and colour."""
    w, h = image.size
    tw, th = w // grid, h // grid
    out = []
    for r in range(grid):
        for c in range(grid):
            tile = image.crop((c * tw, r * th, (c + 1) * tw, (r + 1) * th))
            out.append(tile.resize((size, size)) if size else tile)
    return out
