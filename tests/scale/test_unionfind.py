"""The union-find behind duplicate grouping: scipy's components, labelled by the smallest id,
whatever the order of the edges or the size of the ids."""

from __future__ import annotations

import numpy as np
import pytest

from curate.dedup.clusters import connected_components
from curate.dedup.search import Edges
from curate.dedup.unionfind import root_labels, union_find


def _scipy_min_labels(n, i, j):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as cc

    _, lab = cc(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    smallest = np.full(lab.max() + 1, n, np.int64)
    np.minimum.at(smallest, lab, np.arange(n))
    return smallest[lab]


@pytest.mark.parametrize("seed", range(5))
def test_components_match_scipy_with_the_smallest_node_as_root(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    m = int(rng.integers(100, 3000))
    i, j = rng.integers(0, n, m), rng.integers(0, n, m)
    labels = root_labels(n, i, j)
    assert (labels == _scipy_min_labels(n, i, j)).all()
    assert (labels <= np.arange(n)).all() and (labels[labels] == labels).all()
    # edge order and direction change nothing
    perm = rng.permutation(m)
    assert (root_labels(n, j[perm], i[perm]) == labels).all()


def test_long_chains_and_stars_in_the_worst_order():
    n = 10_000
    path = np.arange(n - 1)[::-1]  # n-1 -> n-2 -> ... -> 0, listed from the far end
    assert (root_labels(n, path + 1, path) == 0).all()
    star = np.full(n - 1, n - 1)  # every node tied to the largest one
    assert (root_labels(n, star, np.arange(n - 1)) == 0).all()
    # two interleaved combs: even and odd nodes form two components
    ev, od = np.arange(0, n - 2, 2), np.arange(1, n - 2, 2)
    lab = root_labels(n, np.concatenate([ev + 2, od + 2]), np.concatenate([ev, od]))
    assert set(lab[::2].tolist()) == {0} and set(lab[1::2].tolist()) == {1}


def test_union_find_over_sparse_int64_ids():
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(2**62, 500, replace=False)).astype(np.int64)
    i, j = rng.integers(0, 500, 400), rng.integers(0, 500, 400)
    lone = ids[rng.integers(0, 500, 20)]
    got_ids, roots = union_find(ids[i], ids[j], nodes=lone)
    dense = root_labels(500, i, j)
    pos = np.searchsorted(ids, got_ids)
    assert (roots == ids[dense[pos]]).all()  # the smallest id of each component
    assert set(lone.tolist()) <= set(got_ids.tolist())


def test_edge_cases():
    assert root_labels(0, np.zeros(0), np.zeros(0)).shape == (0,)
    assert (root_labels(3, np.zeros(0, int), np.zeros(0, int)) == [0, 1, 2]).all()
    assert (connected_components(4, Edges.build(np.array([3]), np.array([1]), np.ones(1))) ==
            [0, 1, 2, 1]).all()  # fmt: skip
    with pytest.raises(ValueError):
        root_labels(3, np.array([0]), np.array([3]))
