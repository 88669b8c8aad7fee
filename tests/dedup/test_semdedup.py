"""The clustered near-duplicate search (``semdedup_pairs``): exact cosine inside k-means
clusters, and multi-probe (each row in the clusters of its nearest ``probe`` centroids) for
pairs a cluster border splits."""

from __future__ import annotations

import numpy as np

from curate.dedup.tiers import semdedup_pairs


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _brute(x: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    s = x @ x.T
    i, j = np.nonzero(np.triu(s >= threshold, k=1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def _around(rng, centre: np.ndarray, cos: float, m: int) -> np.ndarray:
    """``m`` unit vectors at cosine ``cos`` to ``centre``, in directions orthogonal to it."""
    noise = rng.standard_normal((m, centre.size)).astype(np.float32)
    noise -= np.outer(noise @ centre, centre)
    return _unit(cos * centre + np.sqrt(1 - cos**2) * _unit(noise))


def _two_clusters_and_a_straddling_pair():
    """Two tight groups of 40 rows around e0 and e1 (two rows at cosine ~0.64: no pair), and
    rows 80, 81 between them, 80 nearer e0 and 81 nearer e1, at cosine 0.98 to each other."""
    rng = np.random.default_rng(0)
    dim = 32
    e0, e1 = np.eye(dim, dtype=np.float32)[:2]
    a, b = _around(rng, e0, 0.8, 40), _around(rng, e1, 0.8, 40)
    pair = _unit(np.array([[0.55, 0.45], [0.45, 0.55]], np.float32) @ np.stack([e0, e1]))
    return np.concatenate([a, b, pair]), 0.9


def test_a_pair_straddling_two_clusters_is_found_with_probe_2_only():
    x, threshold = _two_clusters_and_a_straddling_pair()
    assert _brute(x, threshold) == {(80, 81)}
    # probe 1: 80 and 81 fall in different clusters and are never compared
    assert semdedup_pairs(x, threshold, 2, seed=0, probe=1).pairs() == []
    edges = semdedup_pairs(x, threshold, 2, seed=0, probe=2)
    assert edges.pairs() == [(80, 81)]
    assert abs(float(edges.sim[0]) - float(x[80] @ x[81])) < 1e-6


def test_probe_2_gives_the_brute_force_pairs_on_a_small_set():
    """300 rows around 8 topics (the 8 clusters) and 30 planted groups of 2-5 rows at cosine
    0.86-0.99 around centres between two topics: with probe 2 the pairs are brute force's,
    each once with its cosine; probe 1 misses the groups a border splits, and never finds a
    pair brute force does not."""
    rng = np.random.default_rng(0)
    dim = 24
    topics = _unit(rng.standard_normal((8, dim)))
    rows = [_around(rng, topics[t], 0.75, 1)[0] for t in rng.integers(0, 8, 300)]
    for _ in range(30):
        a, b = rng.choice(8, 2, replace=False)
        centre = _unit(topics[a] + topics[b])
        rows.extend(_around(rng, centre, float(np.sqrt(rng.uniform(0.86, 0.99))),
                            int(rng.integers(2, 6))))  # fmt: skip
    x = np.stack(rows).astype(np.float32)
    threshold = 0.9
    brute = _brute(x, threshold)
    assert len(brute) > 100
    one = set(semdedup_pairs(x, threshold, 8, seed=0, probe=1).pairs())
    assert one < brute and len(brute - one) >= 10
    edges = semdedup_pairs(x, threshold, 8, seed=0, probe=2)
    assert sorted(edges.pairs()) == sorted(brute)
    assert len(set(edges.pairs())) == len(edges)  # a pair found in two clusters, kept once
    np.testing.assert_allclose(edges.sim, np.einsum("nd,nd->n", x[edges.i], x[edges.j]),
                               atol=1e-6)  # fmt: skip


def test_probe_at_every_cluster_is_brute_force():
    rng = np.random.default_rng(1)
    x = _unit(rng.standard_normal((120, 3)))  # low dimension: many pairs above 0.9
    brute = _brute(x, 0.9)
    assert len(brute) > 300
    assert set(semdedup_pairs(x, 0.9, 7, seed=0, probe=7).pairs()) == brute
    assert set(semdedup_pairs(x, 0.9, 7, seed=0, probe=1).pairs()) < brute


def test_the_clip_tier_probes_as_many_clusters_as_asked():
    """``embedding_tier`` (the clip tier's search) passes ``kmeans_probe`` on: the straddling
    pair is found at probe 2, not at probe 1; the step's ``clip_probe`` is that setting."""
    from curate.dedup.tiers import embedding_tier
    from curate.steps.dedup import DedupImages

    x, threshold = _two_clusters_and_a_straddling_pair()
    one = embedding_tier(x, threshold, "clip", kmeans_clusters=2, kmeans_probe=1)
    two = embedding_tier(x, threshold, "clip", kmeans_clusters=2, kmeans_probe=2)
    assert one.edges.pairs() == [] and two.edges.pairs() == [(80, 81)]
    assert two.info["kmeans_probe"] == 2
    assert DedupImages().clip_probe == 1
    assert any("clip_probe" in p for p in DedupImages(clip_probe=0).validate())
