"""The held-out feature space of the protect loop's second copy test: fitted on images no model
saw, it flags near copies of reference digits, not new digits nor reference digits against each
other, and it is not the pixel metric AMG optimises."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from curate.audit.metrics import HeldoutSpace, nn_ratio, pixel_neighbours
from curate.errors import DataError


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = d.images.reshape(len(d.images), -1) / 16 * 2 - 1
    order = np.random.default_rng(0).permutation(len(x))
    return x[order[:40]], x[order[40:296]], x[order[300:556]]  # reference, held out, novel


def test_flags_near_copies_and_not_new_or_reference_digits(digits):
    ref, held, novel = digits
    space = HeldoutSpace.fit(held)
    assert space.basis.shape == (16, 64)
    noisy = np.clip(ref + np.random.default_rng(1).normal(0, 0.05, ref.shape), -1, 1)
    assert (space.nn_ratio(noisy, ref) < 1 / 3).mean() == 1.0
    assert (space.nn_ratio(novel, ref) < 1 / 3).mean() < 0.02
    assert (space.reference_nn_ratio(ref) < 1 / 3).mean() == 0.0


def test_is_not_the_pixel_metric(digits):
    """Whitening weighs directions by the held-out spread: the NN ratios differ from pixel ones
    (a space equal to pixels would read whatever AMG's pixel guidance made of a sample)."""
    ref, held, novel = digits
    space = HeldoutSpace.fit(held)
    pixel = pixel_neighbours(novel, ref)
    ours = space.nn_ratio(novel, ref)
    assert not np.allclose(ours, nn_ratio(pixel.d1, pixel.d2), atol=0.05)


def test_needs_a_few_held_out_images():
    with pytest.raises(DataError, match="at least 3 images"):
        HeldoutSpace.fit(np.zeros((2, 64)))
