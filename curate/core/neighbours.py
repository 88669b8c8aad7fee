"""Nearest-neighbour search over float vectors, on faiss: the one place curate builds float
indexes (the audit's metrics, the dedup embedding tiers and AMG's training index use it).

* :func:`flat_index`: an exact faiss index (``IndexFlatL2`` / ``IndexFlatIP``) holding vectors;
* :func:`knn`: exact k nearest neighbours of queries in a base set, with L2 distances
  recomputed from the differences (so an exact copy reads as 0, not faiss's ~1e-2);
* :func:`cosine_knn`: each row's k nearest *other* rows by inner product (flat, IVF or a
  numpy reference);
* :func:`l2_range`: all pairs within an L2 radius;
* :func:`distinct_groups`: which rows are the same image (equal bytes, keys, or within eps);
* :func:`l2_normalize`: rows scaled to unit norm.

Binary (Hamming) search over perceptual hashes is dedup's own (``curate.dedup.search``).
faiss is imported inside the functions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import numpy as np

from curate.errors import DataError, UsageError

Metric = Literal["l2", "ip"]
FloatMethod = Literal["auto", "flat", "ivf", "numpy"]

# Above this many vectors, cosine k-NN uses an IVF index instead of an exact flat scan.
IVF_MIN_SIZE = 50_000
_REFINE_ELEMENTS = 32 * 1024 * 1024  # float32 elements gathered per recomputation batch


def as_rows(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 (N, D) matrix (images are flattened)."""
    arr = np.asarray(x)
    if arr.ndim < 2:
        raise DataError(f"{name}: expected a batch of vectors or images, got shape {arr.shape}")
    arr = arr.reshape(arr.shape[0], -1)
    return np.ascontiguousarray(arr, dtype=np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm, float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def flat_index(vectors: np.ndarray, metric: Metric = "l2"):
    """An exact faiss index over ``vectors`` (N, D) float32: ``IndexFlatL2`` (squared L2
    distances) or ``IndexFlatIP`` (inner products). ``index.search(q, k)`` answers queries."""
    import faiss

    if metric not in ("l2", "ip"):
        raise UsageError(f"metric {metric!r} is not one of l2, ip")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1]) if metric == "ip" else faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    return index


def knn(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    metric: Metric = "l2",
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of each query in ``base`` (both flattened to rows).

    Returns ``(values, indices)``, both (Q, k): for ``metric="ip"`` inner products, best first;
    for ``metric="l2"`` Euclidean distances (not squared), recomputed from the differences,
    nearest first.
    """
    q = as_rows(queries, "queries")
    b = as_rows(base, "base")
    if q.shape[1] != b.shape[1]:
        raise DataError(f"queries have {q.shape[1]} dims but the base has {b.shape[1]}")
    if len(b) == 0:
        raise DataError("nearest-neighbour search needs a non-empty training set")
    k = min(k, len(b))
    index = flat_index(b, metric)
    values = np.empty((len(q), k), dtype=np.float64)
    indices = np.empty((len(q), k), dtype=np.int64)
    # The exact recomputation gathers (B, k, D) candidates; keep that under ~128 MB.
    batch_size = max(1, min(batch_size, _REFINE_ELEMENTS // (k * b.shape[1])))
    for start in range(0, len(q), batch_size):
        chunk = q[start : start + batch_size]
        vals, idx = index.search(chunk, k)  # (B, k)
        if metric == "l2":
            # faiss expands |q|^2 + |x|^2 - 2 q.x, which reads ~1e-2 for an exact copy;
            # the direct difference is exactly 0 there.
            diff = chunk[:, None, :] - b[idx]  # (B, k, D)
            vals = np.sqrt(np.einsum("bkd,bkd->bk", diff, diff).astype(np.float64))
            order = np.argsort(vals, axis=1, kind="stable")
            vals = np.take_along_axis(vals, order, axis=1)
            idx = np.take_along_axis(idx, order, axis=1)
        values[start : start + len(chunk)] = vals
        indices[start : start + len(chunk)] = idx
    return values, indices


def l2_range(x: np.ndarray, radius: float) -> list[np.ndarray]:
    """For each row of ``x`` (N, D) float32, the indices of the rows within L2 distance
    ``radius`` (itself included), from one faiss range search."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    lims, _, idx = flat_index(x, "l2").range_search(x, float(radius) ** 2)  # squared radius
    return [idx[lims[i] : lims[i + 1]] for i in range(len(x))]


def distinct_groups(
    train: np.ndarray, keys: Sequence[object] | None = None, eps: float = 0.0
) -> np.ndarray:
    """Group id per training row: rows that are the same image share the id of the group's first
    row. Same image means equal ``keys`` (e.g. pixel hashes), byte-identical arrays, or, when
    ``eps > 0``, an L2 distance of at most ``eps`` (merged transitively)."""
    x = as_rows(train, "training images")
    n = len(x)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    seen: dict[object, int] = {}
    for i in range(n):
        ids: list[object] = [("bytes", hashlib.blake2b(x[i].tobytes(), digest_size=16).digest())]
        if keys is not None and keys[i] is not None:
            ids.append(("key", keys[i]))
        for key in ids:
            if key in seen:
                union(seen[key], i)
            else:
                seen[key] = i
    if eps > 0 and n > 1:
        for i, near in enumerate(l2_range(x, eps)):
            for j in near:
                if j != i:
                    union(i, int(j))
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def cosine_knn(
    vectors: np.ndarray,
    k: int = 10,
    method: FloatMethod = "auto",
    nprobe: int = 16,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows by inner product (rows assumed L2-normalised).

    ``method``: ``flat`` (exact), ``ivf`` (an IVF index, ``nprobe`` lists probed), ``numpy``
    (quadratic reference) or ``auto`` (ivf from ``IVF_MIN_SIZE`` rows). Returns ``(sims, idx)``,
    both ``(N, k)``; missing neighbours have ``idx = -1``, ``sim = -inf``.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = x.shape
    k = max(1, min(k, n - 1)) if n > 1 else 1
    if n < 2:
        return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
    if method == "auto":
        method = "ivf" if n >= IVF_MIN_SIZE else "flat"
    if method == "numpy":
        sims = x @ x.T  # (N, N): reference only, quadratic memory
        np.fill_diagonal(sims, -np.inf)
        idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, idx, 1), idx.astype(np.int64)
    if method == "flat":
        index = flat_index(x, "ip")
    elif method == "ivf":
        import faiss

        nlist = int(max(16, min(4 * np.sqrt(n), n // 39)))  # faiss wants >= 39 points per list
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed % 2**31  # faiss takes a 32-bit int
        index.train(x)
        index.nprobe = nprobe
        index.add(x)
    else:
        raise UsageError(f"unknown vector search method {method!r}")
    sims, idx = index.search(x, k + 1)  # (N, k+1): usually the row itself first
    return _drop_self(sims, idx, k)


def _drop_self(sims: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(idx)
    is_self = idx == np.arange(n)[:, None]
    # Remove the self hit where present, otherwise the last column (exact duplicates may outrank
    # the row itself in a tie).
    drop_col = np.where(is_self.any(1), is_self.argmax(1), idx.shape[1] - 1)
    keep = np.ones_like(is_self)
    keep[np.arange(n), drop_col] = False
    sims = sims[keep].reshape(n, -1)[:, :k]
    idx = idx[keep].reshape(n, -1)[:, :k]
    sims = np.where(idx < 0, -np.inf, sims).astype(np.float32)
    return sims, idx.astype(np.int64)
