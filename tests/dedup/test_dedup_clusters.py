"""Grouping from edges: the anti-chaining guards, the keep policy, the tiers combined."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from curate.core.neighbours import cosine_knn
from curate.dedup.clusters import group, mutual_filter, pair_scores
from curate.dedup.keep import keep_priority
from curate.dedup.search import Edges, cosine_pairs
from curate.dedup.tiers import combine_tiers, embedding_tier, exact_tier, hash_tier
from curate.errors import UsageError


def _chain():
    """0~1 and 1~2 match, 0 and 2 do not: the textbook chain."""
    edges = Edges.build(np.array([0, 1]), np.array([1, 2]), np.array([0.9, 0.9]))
    direct = {(0, 1), (1, 2)}

    def verify(rep, members):
        return np.array(
            [0.9 if (min(rep, m), max(rep, m)) in direct else np.nan for m in members], np.float32
        )

    return edges, verify


def test_without_a_guard_a_chain_merges_unrelated_rows():
    edges, _ = _chain()
    g = group(3, edges, priority=np.array([0, 1, 2]), guard="none")
    assert len(set(g.rep.tolist())) == 1


def test_verify_guard_splits_a_chain_at_its_most_connected_member():
    # 0-1-2-3: only the ends of each edge match directly. The star goes around 1 (two matches;
    # 1 and 2 tie, 1 has the better priority): 0 and 2 join it, 3 stays alone.
    edges = Edges.build(np.array([0, 1, 2]), np.array([1, 2, 3]), np.full(3, 0.9))
    direct = {(0, 1), (1, 2), (2, 3)}

    def verify(rep, members):
        return np.array(
            [0.9 if (min(rep, m), max(rep, m)) in direct else np.nan for m in members], np.float32
        )

    g = group(4, edges, priority=np.arange(4), guard="verify", verify=verify)
    assert g.rep.tolist() == [0, 0, 0, 3]
    assert g.is_dup.tolist() == [False, True, True, False]
    # 1 matches the kept row directly; 2 joined through the centre, no direct match with 0
    assert g.sim[1] == pytest.approx(0.9) and np.isnan(g.sim[2]) and np.isnan(g.sim[3])


def test_verify_guard_centres_on_the_original_not_on_the_kept_copy():
    """An original (0) with a crop (1), a rotation (2) and a text-overlay copy (3): every copy
    matches the original, no two copies match each other. The keep policy prefers the overlay
    copy; verifying against it split the crop and rotation off. Centred on the original, the
    group stays whole and the policy's pick is still the row kept."""
    edges = Edges.build(np.array([0, 0, 0]), np.array([1, 2, 3]), np.array([0.8, 0.7, 0.9]))

    def verify(rep, members):
        return np.array(
            [{0: 0.0, 1: 0.8, 2: 0.7, 3: 0.9}[m] if rep == 0 else (0.9 if m == 0 and rep == 3
             else np.nan) for m in members], np.float32)  # fmt: skip

    g = group(4, edges, priority=np.array([1, 2, 3, 0]), guard="verify", verify=verify)
    assert g.rep.tolist() == [3, 3, 3, 3]
    assert g.sim[0] == pytest.approx(0.9) and np.isnan(g.sim[1]) and np.isnan(g.sim[3])


def test_verify_guard_regroups_rejected_members_among_themselves():
    # 0-1-2-3 chain where only (0,1) and (2,3) match directly: two groups, not one or four.
    edges = Edges.build(np.array([0, 1, 2]), np.array([1, 2, 3]), np.ones(3))
    ok = {(0, 1), (2, 3)}

    def verify(rep, members):
        return np.array([1.0 if (min(rep, m), max(rep, m)) in ok else np.nan for m in members])

    g = group(4, edges, priority=np.arange(4), guard="verify", verify=verify)
    assert g.rep.tolist() == [0, 0, 2, 2]


def test_mutual_filter_keeps_edges_ranked_high_by_both_ends():
    # Node 0 is a hub: its best neighbours are 1 and 2; 3 reaches 0 only as 0's third choice.
    edges = Edges.build(
        np.array([0, 0, 0]), np.array([1, 2, 3]), np.array([0.99, 0.98, 0.6], np.float32)
    )
    kept = mutual_filter(4, edges, m=2)
    assert sorted(kept.pairs()) == [(0, 1), (0, 2)]


def test_pair_scores_counts_pairs():
    pred = np.array([0, 0, 0, 1])
    truth = np.array([0, 0, 1, 1])
    s = pair_scores(pred, truth)
    assert (s["pred_pairs"], s["true_pairs"]) == (3, 2)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 2)


def _table():
    return pl.DataFrame(
        {
            "sample_id": ["c", "a", "b", "d"],
            "caption": ["a long caption here", "short", "mid caption", None],
            "width": [10, 20, 20, 5],
            "height": [10, 20, 20, 5],
            "num_bytes": [100, 50, 60, 10],
            "score": [0.1, 0.9, 0.5, 0.2],
        }
    )


@pytest.mark.parametrize(
    ("policy", "first"),
    [("largest", "b"), ("longest_caption", "c"), ("first", "a"), ("column:score", "a")],
)
def test_keep_policy_picks_the_same_sample_whatever_the_row_order(policy, first):
    t = _table()
    for seed in range(3):
        shuffled = t.sample(fraction=1.0, shuffle=True, seed=seed)
        rank = keep_priority(shuffled, policy)
        assert shuffled["sample_id"][int(np.argmin(rank))] == first


def test_unknown_keep_policy_is_a_usage_error():
    with pytest.raises(UsageError, match="keep policy"):
        keep_priority(_table(), "biggest")
    with pytest.raises(UsageError, match="not in the table"):
        keep_priority(_table(), "column:nope")


def test_cosine_knn_flat_and_ivf_agree_with_numpy():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 32)).astype(np.float32)
    x = np.repeat(centres, 40, axis=0) + 0.05 * rng.normal(size=(2000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ref_s, ref_i = cosine_knn(x, k=5, method="numpy")
    for method in ("flat", "ivf"):
        s, i = cosine_knn(x, k=5, method=method)
        assert (i != np.arange(len(x))[:, None]).all()  # never the row itself
        np.testing.assert_allclose(s[:, 0], ref_s[:, 0], atol=1e-4)
    edges = cosine_pairs(x, threshold=0.9, k=5)
    assert (np.repeat(np.arange(50), 40)[edges.i] == np.repeat(np.arange(50), 40)[edges.j]).all()


def test_any_tier_can_admit_a_member_to_the_group(planted):
    """A flip is invisible to a plain hash, a crop to any hash; pixels and hashes together still
    find the exact and resized copies, and combining keeps each tier's evidence."""
    from curate.core.embed import PixelEmbedder
    from curate.dedup.hashing import image_hashes

    images, truth, kinds = planted
    n = len(images)
    codes, mirrored = image_hashes(images, "phash", mirrored=True)
    pix = PixelEmbedder(16).embed(images)
    tiers = [
        exact_tier([None] * n),
        hash_tier(codes, 10, mirrored=mirrored, name="phash"),
        embedding_tier(pix, 0.97, name="pixel"),
    ]
    priority = np.arange(n)  # originals come first, so they are kept
    combined = combine_tiers(n, tiers, priority)
    rep = combined.groups.rep
    for i, k in enumerate(kinds):
        if k in ("exact", "jpeg", "resize", "flip"):
            assert truth[rep[i]] == truth[i] and rep[i] != i, (k, truth[i])
            assert "phash" in combined.evidence[i]
    assert pair_scores(rep, truth)["precision"] == 1.0
    alone = combined.per_tier["pixel"].rep
    assert all(alone[i] == i for i, k in enumerate(kinds) if k == "flip")  # pixels miss flips


def test_score_normalisation_rejects_texture_lookalikes_but_keeps_copies():
    """SSCD-style normalisation: 30 distinct 'texture tiles' all at cosine ~0.8 to each other
    pass a plain 0.5 threshold; against their background (the 16th neighbour, itself ~0.8)
    they do not stand out, while a real copy (~0.99) of an ordinary image does."""
    rng = np.random.default_rng(0)
    d = 512  # high dimension: the tiles' cosines concentrate near 0.8
    common = rng.normal(size=d)
    tiles = common + 0.5 * rng.normal(size=(30, d))  # pairwise cosine ~0.8
    others = rng.normal(size=(40, d))
    copy = others[:1] + 0.05 * rng.normal(size=(1, d))
    x = np.concatenate([tiles, others, copy]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    plain = embedding_tier(x, 0.5, name="sscd")
    assert sum(1 for i, j in plain.edges.pairs() if i < 30 and j < 30) > 30
    normed = embedding_tier(x, 0.5, name="sscd", norm_rank=16, norm_margin=0.05)
    assert normed.edges.pairs() == [(30, 70)]
    a, b = np.array([0, 30]), np.array([1, 70])
    assert np.isnan(normed.pair_sim(a, b)[0]) and normed.pair_sim(a, b)[1] > 0.9
