"""The text-encoder cache: a batch never loses its own entries to eviction."""

from __future__ import annotations

import torch

from curate.core.text import TextEncoder


class CountingEncoder(TextEncoder):
    name, dim, max_length = "count", 2, 1

    def _encode(self, captions):
        return torch.tensor([[[float(len(c)), 1.0]] for c in captions])


def test_small_cache_does_not_evict_the_current_batch():
    enc = CountingEncoder(cache_size=2)
    enc.encode(["a"])
    enc.encode(["bb"])
    out = enc.encode(["a", "ccc", "dddd"])  # more new entries than the cache holds
    assert out[:, 0, 0].tolist() == [1.0, 3.0, 4.0]
