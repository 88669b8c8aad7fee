"""``builtin:digits_loop``: deterministic, a realistic share of planted copies with their ground
truth, held-out digits that are not in it, and the data layer's planting transforms identical to
``curate.dedup.planting``'s."""

from __future__ import annotations

import collections

import numpy as np

from curate.data import planting as data_planting
from curate.data.builtin import (
    LOOP_COPIES,
    LOOP_ORIGINALS,
    _loop_dataset,
    _loop_heldout_dataset,
    _loop_rows,
)
from curate.dedup import planting as dedup_planting


def test_digits_loop_copies_ground_truth_and_determinism():
    ds = _loop_dataset()
    n_copies = sum(len(t) for _, t in LOOP_COPIES)
    assert len(ds) == LOOP_ORIGINALS + n_copies
    assert 0.10 <= n_copies / len(ds) <= 0.20
    kinds = collections.Counter(ds["gt_transform"])
    assert kinds["original"] == LOOP_ORIGINALS
    copies = [r for r in ds if r["gt_transform"] != "original"]
    assert {r["gt_group"] for r in copies} == {g for g, _ in LOOP_COPIES}
    assert all(r["gt_caption"] == "same" for r in copies)
    assert collections.Counter(ds["gt_caption"])["reused"] == 4
    # the exact copies have the original's pixels; the others differ but stay close
    orig = {
        r["gt_group"]: np.asarray(r["image"], np.float32)
        for r in ds
        if r["gt_transform"] == "original"
    }
    for r in copies:
        if r["gt_transform"] == "exact":
            assert np.array_equal(np.asarray(r["image"], np.float32), orig[r["gt_group"]])
    _loop_rows.cache_clear()
    again = _loop_dataset()
    assert [r["image"].tobytes() for r in again] == [r["image"].tobytes() for r in ds]


def test_heldout_digits_are_not_in_the_loop_set():
    loop = {np.asarray(r["image"]).tobytes() for r in _loop_dataset()}
    held = _loop_heldout_dataset()
    assert len(held) == 256
    assert not loop & {np.asarray(r["image"]).tobytes() for r in held}


def test_dedup_planting_is_the_data_layers_one_implementation():
    """Calibration plants exactly the copies the built-in loop set holds: one implementation."""
    assert dedup_planting.TRANSFORMS is data_planting.TRANSFORMS
    assert dedup_planting.plant_copies is data_planting.plant_copies
