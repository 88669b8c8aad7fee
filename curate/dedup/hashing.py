"""Perceptual image hashes (pHash, dHash), vectorised over a batch in numpy.

Each hash is 64 bits packed into 8 ``uint8`` (``np.packbits``), the layout faiss binary indexes
take. Only decoding and the resize are done per image (PIL, on a thread pool: PIL releases the
GIL while it decodes, converts and resizes); the DCT and comparisons run on the whole stack.
A mirrored hash (the hash of the horizontally flipped image) comes from the same resized pixels,
so a flip can be matched without decoding the image twice.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Literal

import numpy as np

from curate.core.threads import default_threads

HashKind = Literal["phash", "dhash"]
HASH_BITS = 64
# Images per task of the decode pool: enough to make the per-task overhead negligible, few
# enough to balance the threads on a small batch.
_TASK_IMAGES = 16
# pHash's resize first box-averages by the largest integer factor that leaves at least this
# many times the target size, then applies LANCZOS (PIL's ``reducing_gap``): at 3 Pillow
# documents the result as indistinguishable from a full LANCZOS in most cases, and it costs a
# fraction of it on large images (3 ms -> 0.3 ms for 1024 px to 32 px). dHash's 9x8 grid keeps
# the full LANCZOS: the box step moved its bits enough to lose recall on planted copies.
PHASH_REDUCING_GAP = 3.0
# A JPEG given as a file or bytes is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that
# still leaves this many times the hash grid on each side; LANCZOS then averages the rest.
_DRAFT_FACTOR = 4


def _open(source, size: tuple[int, int]):
    """A PIL image from a path or encoded bytes; JPEG is set to decode greyscale, scaled down.

    Drafting is only done for sources opened here: a caller's image object may be shared with
    other features that need the full picture.
    """
    from PIL import Image

    img = Image.open(io.BytesIO(source) if isinstance(source, bytes | bytearray) else source)
    if img.format == "JPEG":
        img.draft("L", (size[0] * _DRAFT_FACTOR, size[1] * _DRAFT_FACTOR))
    return img


def _grey(image, size: tuple[int, int], reducing_gap: float | None) -> np.ndarray:
    """One image as greyscale ``(h, w)`` uint8 at ``size``."""
    from PIL import Image

    if isinstance(image, str | os.PathLike | bytes | bytearray):
        image = _open(image, size)
    # LANCZOS averages over the whole source area, so a re-encode or a resize of the same
    # picture lands on nearly the same tiny image.
    grey = image.convert("L")
    return np.asarray(grey.resize(size, Image.Resampling.LANCZOS, reducing_gap=reducing_gap))


def grey_stack(
    images: Sequence,
    size: tuple[int, int],
    workers: int | None = None,
    reducing_gap: float | None = None,
) -> np.ndarray:
    """Greyscale pixels of each image resized to ``size`` (w, h), as float32 ``(N, h, w)``.

    ``images`` holds PIL images (decoded or still lazy), image file paths or encoded bytes.
    ``workers`` threads decode and resize (default ``curate.core.threads.default_threads()``); the result does not
    depend on it. ``reducing_gap`` is PIL's (None: a full LANCZOS).
    """
    w, h = size
    out = np.empty((len(images), h, w), dtype=np.float32)
    workers = default_threads() if workers is None else max(1, int(workers))
    if workers == 1 or len(images) <= _TASK_IMAGES:
        for i, img in enumerate(images):
            out[i] = _grey(img, size, reducing_gap)
        return out

    def task(start: int) -> None:
        for i in range(start, min(start + _TASK_IMAGES, len(images))):
            out[i] = _grey(images[i], size, reducing_gap)  # disjoint rows: no lock needed

    with ThreadPoolExecutor(min(workers, -(-len(images) // _TASK_IMAGES))) as pool:
        for _ in pool.map(task, range(0, len(images), _TASK_IMAGES)):
            pass  # re-raises the first error of a task
    return out


@lru_cache(maxsize=8)
def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix ``C`` (n, n): ``C @ x`` is the DCT of a column vector."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c.astype(np.float32)


def phash_from_grey(grey: np.ndarray, hash_size: int = 8) -> np.ndarray:
    """pHash bits of grey stacks ``(N, S, S)``: the low ``hash_size``² DCT block against its median.

    Returns packed codes ``(N, hash_size**2 / 8)`` uint8.
    """
    c = dct_matrix(grey.shape[-1])
    coeffs = c @ grey @ c.T  # (N, S, S): 2-D DCT-II of every image at once
    low = coeffs[:, :hash_size, :hash_size].reshape(len(grey), -1)  # (N, hash_size**2)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1)


def dhash_from_grey(grey: np.ndarray) -> np.ndarray:
    """dHash bits of grey stacks ``(N, h, h+1)``: is each pixel brighter than its left neighbour."""
    bits = (grey[:, :, 1:] > grey[:, :, :-1]).reshape(len(grey), -1)
    return np.packbits(bits, axis=1)


def image_hashes(
    images: Sequence,
    kind: HashKind = "phash",
    *,
    mirrored: bool = False,
    workers: int | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of ``images`` as packed ``(N, 8)`` uint8.

    ``images`` holds PIL images, image file paths or encoded image bytes (see ``grey_stack``;
    ``workers`` decode threads). With ``mirrored=True`` also returns the hashes of the
    horizontally flipped images.
    """
    if kind == "phash":
        # (N, 32, 32); 4x the hash side, as pHash prescribes
        grey = grey_stack(images, (32, 32), workers, PHASH_REDUCING_GAP)
        codes = phash_from_grey(grey)
        flipped = phash_from_grey(grey[:, :, ::-1]) if mirrored else None
    elif kind == "dhash":
        grey = grey_stack(images, (9, 8), workers)  # (N, 8, 9)
        codes = dhash_from_grey(grey)
        flipped = dhash_from_grey(np.ascontiguousarray(grey[:, :, ::-1])) if mirrored else None
    else:
        raise ValueError(f"unknown hash kind {kind!r}; use phash or dhash")
    return (codes, flipped) if mirrored else codes


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between packed codes, row by row (broadcasting): ``(...,)`` int."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(axis=-1)


def codes_to_hex(codes: np.ndarray) -> list[str]:
    """Packed codes as hex strings (for tables and reports)."""
    return [bytes(row).hex() for row in np.asarray(codes, dtype=np.uint8)]


def hex_to_codes(values: Sequence[str]) -> np.ndarray:
    """Inverse of ``codes_to_hex``: ``(N, bytes)`` uint8."""
    return np.array([np.frombuffer(bytes.fromhex(v), dtype=np.uint8) for v in values])
