"""Perceptual image hashes (pHash, dHash), vectorised over a batch in numpy.

Each hash is 64 bits packed into 8 ``uint8`` (``np.packbits``), the layout faiss binary indexes
take. Only the resize is done per image (PIL); the DCT and comparisons run on the whole stack.
A mirrored hash (the hash of the horizontally flipped image) comes from the same resized pixels,
so a flip can be matched without decoding the image twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import numpy as np

HashKind = Literal["phash", "dhash"]
HASH_BITS = 64


def grey_stack(images: Sequence, size: tuple[int, int]) -> np.ndarray:
    """Greyscale pixels of each image resized to ``size`` (w, h), as float32 ``(N, h, w)``."""
    from PIL import Image

    w, h = size
    out = np.empty((len(images), h, w), dtype=np.float32)
    for i, img in enumerate(images):
        # LANCZOS averages over the whole source area, so a re-encode or a resize of the same
        # picture lands on nearly the same tiny image.
        out[i] = np.asarray(img.convert("L").resize((w, h), Image.Resampling.LANCZOS), np.float32)
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
    images: Sequence, kind: HashKind = "phash", *, mirrored: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of ``images`` as packed ``(N, 8)`` uint8.

    With ``mirrored=True`` also returns the hashes of the horizontally flipped images.
    """
    if kind == "phash":
        grey = grey_stack(images, (32, 32))  # (N, 32, 32); 4x the hash side, as pHash prescribes
        codes = phash_from_grey(grey)
        flipped = phash_from_grey(grey[:, :, ::-1]) if mirrored else None
    elif kind == "dhash":
        grey = grey_stack(images, (9, 8))  # (N, 8, 9)
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
