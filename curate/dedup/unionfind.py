"""Connected components by a vectorised union-find whose root is the smallest id.

Nodes are int64 ids of any range (global row numbers of a sharded run, hashes): they are
compacted to ``0..K-1`` by sorting, so the order of the compact ids is the order of the ids.
Each round finds the roots of the ends of the edges still joining two components (following
pointers, then pointing those ends at their roots), and hooks the larger root of each such
edge under the smaller (``np.minimum.at``: a pointer only ever goes to a smaller id, so no cycle
forms); edges inside one component drop out. When none is left, pointer jumping over all
nodes makes every node point at its root. Since a pointer never goes up, the final root of a component is
its smallest member: the labels are a function of the edge *set*, not of the order of the
edges, the order of the nodes, or how rows were split into shards.

Memory: the parent array (int32 while K < 2^31, else int64) plus a few edge-sized temporaries;
no sparse matrix, so about 4 (K + 5 E) bytes with int32 (scipy's csgraph needs the CSR graph
in both directions; 6.3 GB at 100M nodes / 50M edges, reports/dedup/bench.md).
"""

from __future__ import annotations

import numpy as np


def _index_dtype(n: int) -> type:
    return np.int32 if n < 2**31 - 1 else np.int64


def root_labels(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """For nodes ``0..n-1`` and undirected edges ``(i[k], j[k])``: each node's component label,
    the smallest node of its component (int64, ``(n,)``)."""
    dt = _index_dtype(n)
    parent = np.arange(n, dtype=dt)
    if n == 0 or len(i) == 0:
        return parent.astype(np.int64)
    i = np.asarray(i).astype(dt, copy=False)
    j = np.asarray(j).astype(dt, copy=False)
    if (i.min() < 0) or (j.min() < 0) or (i.max() >= n) or (j.max() >= n):
        raise ValueError(f"edge ends must be in [0, {n})")
    while len(i):
        a, b = _find(parent, i), _find(parent, j)
        join = a != b
        if not join.any():
            break
        # Edges inside one component never join anything again: only the others go on.
        i, j, a, b = i[join], j[join], a[join], b[join]
        np.minimum.at(parent, np.maximum(a, b), np.minimum(a, b))  # larger root under smaller
        del a, b, join
    _compress(parent)
    return parent.astype(np.int64)


def _find(parent: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The roots of nodes ``x``; their pointers are set to them (path compression of ``x``)."""
    r = parent[x]
    todo = np.flatnonzero(parent[r] != r)  # ends not one step from their root
    while todo.size:
        up = parent[parent[r[todo]]]  # two steps at a time
        r[todo] = up
        todo = todo[parent[up] != up]
    parent[x] = r
    return r


def _compress(parent: np.ndarray) -> None:
    """Pointer jumping in place until every node points at a root (parent[root] == root)."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return
        parent[:] = grand


def union_find(a: np.ndarray, b: np.ndarray, nodes: np.ndarray | None = None):
    """Components of the graph with int64 edges ``(a[k], b[k])`` over any int64 ids.

    Returns ``(ids, roots)``: the sorted distinct ids (those of ``nodes`` and of the edges) and,
    for each, the smallest id of its component.
    """
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    parts = [a, b] if nodes is None else [np.asarray(nodes, np.int64), a, b]
    ids = np.unique(np.concatenate(parts))
    ca = np.searchsorted(ids, a)
    cb = np.searchsorted(ids, b)
    roots = root_labels(len(ids), ca, cb)
    return ids, ids[roots]
