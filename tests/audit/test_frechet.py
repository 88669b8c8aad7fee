"""Fréchet distance against closed forms, and the offline feature spaces it uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curate.audit import frechet
from curate.errors import DataError


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_matches_the_closed_form_for_diagonal_gaussians(method):
    # For diagonal covariances FD = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = frechet.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8))
    assert frechet.frechet_distance_features(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.zeros(8)
    shift[0] = 3.0
    assert frechet.frechet_distance_features(a, a + shift) == pytest.approx(9.0, rel=1e-6)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_is_finite_when_covariances_are_singular(method):
    # 20 samples in 64 dims: rank-deficient covariances, the case sqrtm warns about.
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5
    fd = frechet.frechet_distance_features(a, b, method=method)
    assert np.isfinite(fd) and fd > 0
    assert frechet.frechet_distance_features(a, a, method=method) == pytest.approx(0.0, abs=1e-3)


def test_eigh_and_sqrtm_agree_on_correlated_features():
    rng = np.random.default_rng(2)
    mix = rng.normal(size=(16, 16))
    a = rng.normal(size=(300, 16)) @ mix
    b = rng.normal(size=(300, 16)) @ (mix + 0.3 * rng.normal(size=(16, 16))) + 0.2
    fd_eigh = frechet.frechet_distance_features(a, b, method="eigh")
    fd_sqrtm = frechet.frechet_distance_features(a, b, method="sqrtm")
    assert fd_eigh == pytest.approx(fd_sqrtm, rel=1e-6)


def test_frechet_rejects_mismatched_dimensions():
    with pytest.raises(DataError, match="dimension"):
        frechet.frechet_distance_features(np.zeros((5, 3)), np.zeros((5, 4)))


def test_pixel_features_downsample_to_max_side():
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    assert frechet.pixel_features(x, max_side=16).shape == (4, 3 * 16 * 16)
    assert frechet.pixel_features(x[:, :, :8, :8], max_side=16).shape == (4, 3 * 8 * 8)


def test_randconv_features_are_fixed_by_the_seed():
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    f1 = frechet.randconv_features(x, dim=32, seed=0)
    f2 = frechet.randconv_features(x, dim=32, seed=0, batch_size=2)
    assert f1.shape == (6, 32)
    np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(f1, frechet.randconv_features(x, dim=32, seed=1))


def test_feature_space_names_say_what_they_are():
    assert frechet.feature_space_name("pixel", 16) == "FD_pixel@16"
    assert frechet.feature_space_name("randconv") == "FD_randconv"
