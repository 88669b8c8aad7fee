"""Protects duplicate grouping: the ``mutual`` anti-chaining guard, and caption deduplication
that reads image identity from the image dedup step's clusters."""

from __future__ import annotations

import numpy as np
import polars as pl

from curate.dedup.clusters import group
from curate.dedup.search import Edges
from curate.runner import compute_step
from curate.steps.base import RunContext
from curate.steps.dedup import DedupCaptions


def _star(n_leaves: int = 7) -> Edges:
    """A hub (row 0) similar to every leaf, the leaves similar to nothing else: the shape that
    chains unrelated images together (a flat or strongly textured image matches them all)."""
    leaves = np.arange(1, n_leaves + 1)
    sims = np.linspace(0.99, 0.9, n_leaves)
    return Edges.build(np.zeros(n_leaves, np.int64), leaves, sims)


def test_mutual_guard_keeps_only_edges_in_both_ends_top_m():
    """guard="mutual": an edge survives only when each end is among the other's m most similar
    neighbours, so a hub cannot pull all its leaves into one group; "none" chains them."""
    n, edges, priority = 8, _star(), np.arange(8)
    mutual = group(n, edges, priority, guard="mutual", mutual_m=2)
    assert mutual.rep.tolist() == [0, 0, 0, 3, 4, 5, 6, 7]  # the hub's top 2 only
    chained = group(n, edges, priority, guard="none")
    assert chained.rep.tolist() == [0] * 8


def _captions_table() -> pl.DataFrame:
    """s0 and s1: one image by the image dedup step (a near copy: other pixels, other hash)
    under one caption; s2: a different image under the same caption; s3: another caption."""
    cap = "a red bicycle leaning on a brick wall"
    return pl.DataFrame(
        {
            "sample_id": ["s0", "s1", "s2", "s3"],
            "caption": [cap, cap, cap, "a bowl of oranges on a table"],
            "width": [64, 60, 64, 64],
            "height": [64, 60, 64, 64],
            "num_bytes": [900, 800, 900, 900],
            "pixel_hash": ["h0", "h1", "h2", "h3"],
            "status": ["ok"] * 4,
            "dedup_images_cluster": ["s0", "s0", None, None],
        }
    )


def test_caption_dedup_takes_image_identity_from_the_image_clusters(tmp_path):
    """A near copy in the same dedup_images cluster with the same caption is a same_pair copy
    (dropped), not a shared caption to rewrite; only a different image sharing the caption is."""
    out = compute_step(
        DedupCaptions(tiers=("exact",)), _captions_table(), RunContext(run_dir=tmp_path, quiet=True)
    )
    by_id = {r["sample_id"]: r for r in out.iter_rows(named=True)}
    assert by_id["s1"]["dedup_captions_type"] == "same_pair"
    assert by_id["s1"]["dedup_captions_drop"] is not None
    assert by_id["s1"]["dedup_captions_flag"] is False
    assert by_id["s2"]["dedup_captions_type"] == "shared_caption"
    assert by_id["s2"]["dedup_captions_flag"] is True and by_id["s2"]["dedup_captions_drop"] is None
    assert by_id["s3"]["dedup_captions_type"] is None
