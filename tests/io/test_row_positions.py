"""Row positions and ids stay int64 past 2^31 (LAION-2B has 2.3e9 rows) in the helpers that
carry them: similarity edges, the union-find, the shard hash. Checked on a few values, without
allocating that many rows."""

from __future__ import annotations

import numpy as np

from curate.dedup import unionfind
from curate.dedup.search import Edges
from curate.shards import shard_of

BIG = np.array([2**31 - 1, 2**31, 2**31 + 7, 2**32 + 3, 2**40], np.int64)


def test_edges_keep_positions_past_two_to_the_31():
    e = Edges.build(BIG[[1, 4, 2]], BIG[[0, 3, 4]], np.array([0.9, 0.5, 0.7]))
    assert e.i.dtype == np.int64 and e.j.dtype == np.int64
    assert sorted(zip(e.i.tolist(), e.j.tolist(), strict=True)) == [
        (2**31 - 1, 2**31),
        (2**31 + 7, 2**40),
        (2**32 + 3, 2**40),
    ]
    both = e.union(Edges.build(BIG[[0]], BIG[[4]], np.array([0.1])))
    assert int(both.j.max()) == 2**40


def test_union_find_over_ids_past_two_to_the_31_roots_at_the_smallest():
    ids, roots = unionfind.union_find(BIG[[1, 2, 3]], BIG[[2, 3, 4]], nodes=BIG[[0]])
    assert ids.tolist() == BIG.tolist()
    assert roots.dtype == np.int64
    assert roots.tolist() == [2**31 - 1, 2**31, 2**31, 2**31, 2**31]


def test_union_find_switches_to_int64_parents_before_two_to_the_31_nodes():
    assert unionfind._index_dtype(2**31 - 2) == np.int32
    assert unionfind._index_dtype(2**31 - 1) == np.int64
    assert unionfind._index_dtype(2**33) == np.int64


def test_shard_of_is_int64():
    got = shard_of(["a", "b", "c"], 2**40)
    assert got.dtype == np.int64 and (got >= 0).all() and int(got.max()) > 2**31
