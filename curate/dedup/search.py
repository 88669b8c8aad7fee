"""Neighbour search for dedup: Hamming radius over binary hashes (faiss binary indexes), and
cosine pairs over embeddings (``curate.core.neighbours.cosine_knn``).

Both return ``Edges``: pairs ``(i, j)`` with ``i < j`` and a similarity in [0, 1] (1 = identical),
deduplicated, sorted by ``(i, j)``. Nothing here loops over all pairs in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from curate.core.neighbours import FloatMethod, cosine_knn
from curate.errors import UsageError

# Up to this many codes an exact faiss flat scan (SIMD popcount) is used; above it
# IndexBinaryMultiHash answers a radius query from a few buckets, 1.5x faster at 100k codes
# and far faster at 1M, at a measured recall of 0.99 for radius 10 (scripts/bench_dedup.py).
BINARY_FLAT_MAX = 50_000
BinaryMethod = Literal["auto", "flat", "multihash", "numpy"]


@dataclass(frozen=True)
class Edges:
    """Undirected similarity edges: ``i[k] < j[k]``, ``sim[k]`` in [0, 1]."""

    i: np.ndarray  # (E,) int64
    j: np.ndarray  # (E,) int64
    sim: np.ndarray  # (E,) float32

    def __len__(self) -> int:
        return len(self.i)

    @staticmethod
    def empty() -> Edges:
        return Edges(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

    @staticmethod
    def build(i: np.ndarray, j: np.ndarray, sim: np.ndarray) -> Edges:
        """Orient pairs as ``i < j``, drop self pairs, keep the best similarity per pair."""
        i = np.asarray(i, np.int64)
        j = np.asarray(j, np.int64)
        sim = np.asarray(sim, np.float32)
        keep = i != j
        a, b, s = np.minimum(i, j)[keep], np.maximum(i, j)[keep], sim[keep]
        if a.size == 0:
            return Edges.empty()
        order = np.lexsort((-s, b, a))  # by pair, best similarity first
        a, b, s = a[order], b[order], s[order]
        first = np.ones(a.size, bool)
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        return Edges(a[first], b[first], s[first])

    def union(self, other: Edges) -> Edges:
        return Edges.build(
            np.concatenate([self.i, other.i]),
            np.concatenate([self.j, other.j]),
            np.concatenate([self.sim, other.sim]),
        )

    def pairs(self) -> list[tuple[int, int]]:
        """The edges as ``(i, j)`` tuples, in stored order."""
        return list(zip(self.i.tolist(), self.j.tolist(), strict=True))

    def filter(self, mask: np.ndarray) -> Edges:
        return Edges(self.i[mask], self.j[mask], self.sim[mask])


def _range_to_edges(lims: np.ndarray, dist: np.ndarray, idx: np.ndarray, bits: int) -> Edges:
    rows = np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
    return Edges.build(rows, idx, 1.0 - dist.astype(np.float32) / bits)


def hamming_pairs(
    codes: np.ndarray,
    radius: int,
    queries: np.ndarray | None = None,
    method: BinaryMethod = "auto",
) -> Edges:
    """Pairs of ``codes`` (N, B) uint8 within Hamming ``radius`` (inclusive); sim = 1 - d / bits.

    ``queries`` (N, B), when given, are alternative codes of the same N items (e.g. mirrored
    hashes): query ``q`` matched to item ``j`` gives the edge ``(q, j)``.
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n, nbytes = codes.shape
    bits = nbytes * 8
    if radius < 0 or radius >= bits:
        raise UsageError(f"radius {radius} must be in [0, {bits - 1}]")
    q = codes if queries is None else np.ascontiguousarray(queries, dtype=np.uint8)
    if n < 2:
        return Edges.empty()
    if method == "auto":
        method = "flat" if n <= BINARY_FLAT_MAX else "multihash"
    if method == "numpy":
        return _hamming_pairs_numpy(codes, q, radius)
    import faiss

    if method == "flat":
        index = faiss.IndexBinaryFlat(bits)
    elif method == "multihash":
        # Split the code into 4 bands of 16 bits. If two codes differ in <= radius bits, one band
        # differs in <= radius // 4 bits (pigeonhole); probing 1 flipped bit per band covers
        # radius <= 7 exactly; measured recall is 0.999 at radius 8 and 0.99 at radius 10.
        nhash = 4
        index = faiss.IndexBinaryMultiHash(bits, nhash, bits // nhash)
        index.nflip = min(radius // nhash, 1)
    else:
        raise UsageError(f"unknown binary search method {method!r}")
    index.add(codes)
    lims, dist, idx = index.range_search(q, radius + 1)  # faiss keeps d < radius + 1
    return _range_to_edges(lims, dist, idx, bits)


def hamming_nn(codes: np.ndarray, queries: np.ndarray | None = None) -> np.ndarray:
    """Each item's similarity (1 - d / bits) to its nearest *other* item, ``(N,)`` float32.

    ``queries`` (N, B) are alternative codes of the same items (mirrored hashes). Exact flat
    search, so meant for the sizes ``hamming_pairs`` also scans flat.
    """
    import faiss

    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n, nbytes = codes.shape
    bits = nbytes * 8
    if n < 2:
        return np.full(n, np.nan, np.float32)
    index = faiss.IndexBinaryFlat(bits)
    index.add(codes)
    best = np.full(n, bits, np.int64)
    for q in (codes, None if queries is None else np.ascontiguousarray(queries, np.uint8)):
        if q is None:
            continue
        dist, idx = index.search(q, 2)  # (N, 2): usually the item itself first
        other = idx != np.arange(n)[:, None]
        d = np.where(other, dist, bits).min(axis=1)
        best = np.minimum(best, d)
    return (1.0 - best / bits).astype(np.float32)


def _hamming_pairs_numpy(codes: np.ndarray, q: np.ndarray, radius: int, chunk: int = 512) -> Edges:
    """Brute-force reference: popcount of XOR through a 256-entry table, in row chunks."""
    table = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.uint8)
    bits = codes.shape[1] * 8
    out_i, out_j, out_d = [], [], []
    for start in range(0, len(q), chunk):
        x = np.bitwise_xor(q[start : start + chunk, None, :], codes[None, :, :])  # (c, N, B)
        d = table[x].sum(-1, dtype=np.int32)  # (c, N)
        r, c = np.nonzero(d <= radius)
        out_i.append(r + start)
        out_j.append(c)
        out_d.append(d[r, c])
    if not out_i:
        return Edges.empty()
    d = np.concatenate(out_d).astype(np.float32)
    return Edges.build(np.concatenate(out_i), np.concatenate(out_j), 1.0 - d / bits)


def knn_edges(sims: np.ndarray, idx: np.ndarray, threshold: float) -> Edges:
    """Edges from a k-NN table: every neighbour with similarity >= ``threshold``."""
    rows = np.repeat(np.arange(len(idx)), idx.shape[1])
    flat_i, flat_s = idx.ravel(), sims.ravel()
    ok = (flat_i >= 0) & (flat_s >= threshold)
    return Edges.build(rows[ok], flat_i[ok], np.clip(flat_s[ok], 0.0, 1.0))


def cosine_pairs(
    vectors: np.ndarray, threshold: float, k: int = 10, method: FloatMethod = "auto"
) -> Edges:
    """Pairs among each row's ``k`` nearest neighbours with cosine >= ``threshold``."""
    sims, idx = cosine_knn(vectors, k=k, method=method)
    return knn_edges(sims, idx, threshold)
