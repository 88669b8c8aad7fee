"""Deterministic randomness derived from names, never from global state or batch position.

Everything random in curate that belongs to one sample derives from ``(seed, sample_id, ...)``,
so results do not depend on row order, batch composition or how often a job was resumed.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(*parts: object) -> int:
    """A 63-bit integer seed from any sequence of printable parts (stable across processes)."""
    text = "\x1f".join(str(p) for p in parts)
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def rng_for(*parts: object) -> np.random.Generator:
    """A numpy Generator seeded by ``derive_seed(*parts)``."""
    return np.random.default_rng(derive_seed(*parts))


def torch_generator(*parts: object, device: str = "cpu"):
    """A ``torch.Generator`` seeded by ``derive_seed(*parts)`` (torch imported lazily)."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*parts))
    return gen


def sample_normal(seed: int, sample_ids, shape: tuple[int, ...], *extra: object):
    """One standard-normal tensor per sample, stacked: ``(len(sample_ids), *shape)``.

    Each slice depends only on ``(seed, sample_id, *extra)``: the same sample gets the same noise
    whatever batch it lands in.
    """
    import torch

    out = torch.empty((len(sample_ids), *shape))
    for i, sid in enumerate(sample_ids):
        out[i] = torch.randn(shape, generator=torch_generator(seed, sid, *extra))
    return out
