"""Each memorization metric on constructed cases whose answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from curate.audit import metrics
from curate.core.neighbours import knn
from curate.errors import DataError


def _points(rng, n, d=32):
    return rng.normal(size=(n, d)).astype(np.float32)


def test_search_l2_reads_an_exact_copy_as_zero_distance():
    rng = np.random.default_rng(0)
    base = _points(rng, 200, 256) * 10  # large norms: the float32 expansion would read ~1e-2
    dist, idx = knn(base[[5, 17]], base, k=3, metric="l2")
    assert idx[:, 0].tolist() == [5, 17]
    assert np.all(dist[:, 0] == 0.0)
    assert np.all(np.diff(dist, axis=1) >= 0)  # nearest first


def test_search_does_not_depend_on_query_batch_size():
    rng = np.random.default_rng(1)
    base, queries = _points(rng, 100), _points(rng, 37)
    for metric in ("l2", "ip"):
        v1, i1 = knn(queries, base, k=5, metric=metric, batch_size=1)
        v2, i2 = knn(queries, base, k=5, metric=metric, batch_size=1024)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(v1, v2)


def test_search_matches_brute_force():
    rng = np.random.default_rng(2)
    base, queries = _points(rng, 80), _points(rng, 20)
    dist, idx = knn(queries, base, k=4, metric="l2", batch_size=7)
    brute = np.linalg.norm(queries[:, None].astype(np.float64) - base[None], axis=2)
    np.testing.assert_array_equal(idx, np.argsort(brute, axis=1)[:, :4])
    np.testing.assert_allclose(dist, np.sort(brute, axis=1)[:, :4], rtol=1e-6)


def test_cosine_top1_ignores_feature_scale():
    rng = np.random.default_rng(3)
    train, samples = _points(rng, 50), _points(rng, 10)
    sim, idx = metrics.cosine_top1(samples, train)
    sim2, idx2 = metrics.cosine_top1(samples * 7.0, train * 0.01)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_allclose(sim, sim2, atol=1e-6)
    copy_sim, copy_idx = metrics.cosine_top1(train[[3]], train)
    assert copy_idx[0] == 3 and copy_sim[0] == pytest.approx(1.0, abs=1e-6)


def test_similarity_summary_threshold_is_strict_and_p95_interpolates():
    values = np.array([0.5, 0.5, 0.6, 0.2] + [0.1] * 16)  # 20 values
    s = metrics.similarity_summary(values, threshold=0.5)
    assert s["frac_above"] == pytest.approx(1 / 20)  # 0.5 itself is not above 0.5
    assert s["max"] == 0.6
    assert s["p95"] == pytest.approx(np.percentile(values, 95))
    assert metrics.similarity_summary(values, threshold=0.49)["frac_above"] == pytest.approx(3 / 20)


def test_fraction_below_is_strict():
    third = 1.0 / 3.0
    assert metrics.fraction_below(np.array([third, third - 1e-9, 0.9, 0.0]), third) == 0.5


def test_nn_ratio_and_normalized_l2_by_hand():
    # Training points on one axis at 0, 1, 2, 3; the generation sits at 0.1.
    train = np.zeros((4, 8), dtype=np.float32)
    train[:, 0] = [0, 1, 2, 3]
    sample = np.zeros((1, 8), dtype=np.float32)
    sample[0, 0] = 0.1
    nb = metrics.pixel_neighbours(sample, train, k=3)
    assert nb.nn1.tolist() == [0] and nb.nn2.tolist() == [1]
    np.testing.assert_allclose([nb.d1[0], nb.d2[0]], [0.1, 0.9], rtol=1e-6)
    assert metrics.nn_ratio(nb.d1, nb.d2)[0] == pytest.approx(0.1 / 0.9, rel=1e-6)
    mean3 = (0.1 + 0.9 + 1.9) / 3  # NN1 is one of the k neighbours
    assert nb.k == 3 and nb.mean_k[0] == pytest.approx(mean3, rel=1e-6)
    nl2 = metrics.normalized_l2(nb.d1, nb.mean_k, alpha=0.5)
    assert nl2[0] == pytest.approx(0.1 / (0.5 * mean3), rel=1e-6)


def test_k_is_capped_by_the_number_of_distinct_images():
    rng = np.random.default_rng(4)
    train = _points(rng, 6)
    nb = metrics.pixel_neighbours(train[:2] + 0.01, np.concatenate([train, train[:3]]), k=50)
    assert nb.k == 6 and nb.num_distinct == 6


def test_an_exact_duplicate_in_training_does_not_hide_a_copy():
    rng = np.random.default_rng(5)
    train = _points(rng, 20, 64)
    train_dup = np.concatenate([train, train[[7]]])  # image 7 appears twice
    copy = train[[7]] + 0.01 * rng.normal(size=(1, 64)).astype(np.float32)

    nb = metrics.pixel_neighbours(copy, train_dup)
    ratio = metrics.nn_ratio(nb.d1, nb.d2)
    assert nb.nn1[0] == 7 and nb.nn1_copies[0] == 2 and nb.nn2[0] != 20
    assert ratio[0] < 0.05

    # What the distinct-neighbour rule prevents: the naive NN2 is the duplicate and the ratio ~1.
    naive = metrics.pixel_neighbours(copy, train_dup, groups=np.arange(len(train_dup)))
    assert metrics.nn_ratio(naive.d1, naive.d2)[0] > 0.9


def test_distinct_groups_by_bytes_keys_and_eps():
    rng = np.random.default_rng(6)
    x = _points(rng, 5, 16)
    x[3] = x[0]  # byte-identical
    x[4] = x[1] + 1e-3  # near-identical
    assert metrics.distinct_groups(x).tolist() == [0, 1, 2, 0, 4]
    assert metrics.distinct_groups(x, eps=0.1).tolist() == [0, 1, 2, 0, 1]
    keys = ["a", "b", "c", "d", "b"]  # a hash says 4 is 1 (e.g. same source pixels)
    assert metrics.distinct_groups(x, keys=keys).tolist() == [0, 1, 2, 0, 1]
    assert metrics.distinct_groups(x, keys=[None] * 5).tolist() == [0, 1, 2, 0, 4]


def test_ratio_needs_two_distinct_training_images():
    one = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(DataError, match="2 distinct"):
        metrics.pixel_neighbours(one[:1], one)


def test_leave_one_out_excludes_the_image_itself_and_its_duplicates():
    train = np.zeros((6, 4), dtype=np.float32)
    train[:, 0] = [0, 1, 3, 10, 0, 6]  # row 4 duplicates row 0
    nb = metrics.leave_one_out_neighbours(train, k=2)
    assert nb.num_distinct == 5 and nb.k == 2
    # distinct images 0, 1, 3, 10, 6 (rows 0, 1, 2, 3, 5)
    assert nb.nn1.tolist() == [1, 0, 1, 5, 2]
    np.testing.assert_allclose(nb.d1, [1, 1, 2, 4, 3])
    np.testing.assert_allclose(nb.d2, [3, 2, 3, 7, 4])
    assert metrics.leave_one_out_neighbours(train[:2], k=2) is None


def test_leave_one_out_on_a_subset_of_queries_matches_the_full_run():
    rng = np.random.default_rng(7)
    train = _points(rng, 30)
    full = metrics.leave_one_out_neighbours(train, k=5)
    part = metrics.leave_one_out_neighbours(train, k=5, queries=np.array([2, 17]))
    np.testing.assert_array_equal(part.nn1, full.nn1[[2, 17]])
    np.testing.assert_allclose(part.mean_k, full.mean_k[[2, 17]])
