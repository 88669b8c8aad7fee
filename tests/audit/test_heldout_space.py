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
    # whitened: on the held-out images the features have unit variance and no correlation
    cov = np.cov(space.features(held).T)
    np.testing.assert_allclose(cov, np.eye(16), atol=1e-6)


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


def test_prompt_accuracy_votes_with_held_out_captions(tmp_path):
    """Generations that are digits of their prompt's class score near 1; the same generations
    under a wrong prompt score near 0."""
    import polars as pl
    import torch

    from curate.steps.compare import _prompt_accuracy

    d = load_digits()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    x = torch.from_numpy(d.images.reshape(-1, 1, 8, 8) / 16 * 2 - 1).float()
    caps = [f"a handwritten digit {names[t]}" for t in d.target]
    held, held_caps = x[:600], caps[:600]
    # prompts carry more than the class, as training captions do ("..., sample 12")
    gen, gen_caps = x[1000:1100], [f"{c}, sample {i}" for i, c in enumerate(caps[1000:1100])]
    space = HeldoutSpace.fit(held.flatten(1).numpy())
    for prompts, lo, hi in ((gen_caps, 0.8, 1.0), (gen_caps[1:] + gen_caps[:1], 0.0, 0.2)):
        frame = pl.DataFrame({"index": list(range(100)), "prompt": prompts})
        frame.write_parquet(tmp_path / "samples.parquet")
        acc = _prompt_accuracy(space, held, held_caps, gen, tmp_path)
        assert lo <= acc <= hi, acc
