"""Images between their three forms: stored bytes, PIL images, tensors in [-1, 1].

One conversion each way, shared by the trainer, the ranker, the audit, AMG and the commands
that write samples, so a model's copy of a training image reads as a copy everywhere:

* :func:`pil_to_tensor`: PIL images -> (N, C, R, R) float32 in [-1, 1] (grey or RGB, bilinear
  resize to a square), exactly as the trainer prepares its batches;
* :func:`tensor_to_pil`: (N, C, H, W) in [-1, 1] -> PIL images ("L" for 1 channel, else "RGB");
* :func:`decode_rgb` / :func:`decode_rgb_many`: stored image bytes -> RGB PIL images;
* :func:`embed_tensor`: features of tensor images from any embedder of PIL images.

torch and PIL are imported inside the functions (this module is imported by light callers).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from curate.errors import DataError, UsageError

if TYPE_CHECKING:
    import torch

#: PIL mode per channel count of a model's images
MODES = {1: "L", 3: "RGB"}


def pil_to_tensor(images: Sequence, *, channels: int, resolution: int) -> torch.Tensor:
    """PIL images -> (N, channels, resolution, resolution) float32 in [-1, 1].

    Each image is converted to grey ("L") or RGB and, when not already that size, resized
    (bilinear) to a ``resolution`` square; pixels map as ``v / 127.5 - 1``. A missing image
    (None) raises ``DataError``.
    """
    import torch
    from PIL import Image

    mode = MODES.get(channels)
    if mode is None:
        raise UsageError(f"channels: must be 1 or 3, got {channels}")
    arrs = []
    for img in images:
        if img is None:
            raise DataError("a kept row has no image; re-run ingest or drop the row")
        img = img.convert(mode)
        if img.size != (resolution, resolution):
            img = img.resize((resolution, resolution), Image.BILINEAR)
        a = np.asarray(img, dtype=np.uint8)
        arrs.append(a[:, :, None] if a.ndim == 2 else a)
    if not arrs:
        return torch.empty((0, channels, resolution, resolution))
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float()  # (N, C, H, W)
    return x / 127.5 - 1


def tensor_to_pil(x: torch.Tensor) -> list:
    """(N, C, H, W) in [-1, 1] -> PIL images ("L" for 1 channel, else "RGB"); values are
    clamped to [-1, 1] and rounded to the nearest of the 256 levels."""
    import torch
    from PIL import Image

    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in arr]
    return [Image.fromarray(a[..., :3], mode="RGB") for a in arr]


def decode_rgb(data: bytes | None):
    """An RGB ``PIL.Image`` from stored image bytes (None stays None)."""
    if data is None:
        return None
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    return img.convert("RGB") if img.mode != "RGB" else img


def decode_rgb_many(datas: Sequence[bytes | None]) -> list:
    """:func:`decode_rgb` of each entry, in order (None for a missing image)."""
    return [decode_rgb(data) for data in datas]


def embed_tensor(embedder, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """(N, D) float32 features of images (N, C, H, W) in [-1, 1] from an embedder of PIL images
    (``embedder.embed(list_of_pil) -> (n, D)``, e.g. ``curate.core.embed.ImageEmbedder``),
    ``batch_size`` images at a time."""
    out = [
        embedder.embed(tensor_to_pil(images[start : start + batch_size]))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float32)
