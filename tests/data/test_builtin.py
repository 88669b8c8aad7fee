"""The built-in datasets: deterministic bytes, the documented counts, a consistent answer key."""

from __future__ import annotations

import hashlib
import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageOps

from curate.data import builtin
from curate.data.builtin import BUILTINS, load_builtin
from curate.errors import DataError


@pytest.fixture(scope="module")
def photos():
    return load_builtin("photos")


def _digest(ds) -> str:
    h = hashlib.sha256()
    for row in ds:
        cell = row["image"]
        h.update(cell["bytes"] if isinstance(cell, dict) else cell.tobytes())
        h.update(row["text"].encode())
    return h.hexdigest()


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_builtins_lists_every_name():
    assert BUILTINS == ("digits", "photos", "digits_loop", "digits_loop_heldout")


def test_unknown_name_is_a_data_error_listing_the_known_ones():
    with pytest.raises(DataError, match="digits, photos"):
        load_builtin("faces")


def test_builtin_prefix_is_accepted():
    assert len(load_builtin("builtin:digits")) == 1797


@pytest.mark.parametrize("name", BUILTINS)
def test_two_builds_give_identical_bytes(name):
    first = _digest(load_builtin(name).cast_column("image", _undecoded()))
    builtin._photos_rows.cache_clear()
    builtin._digits_rows.cache_clear()
    builtin._lfw.cache_clear()
    second = _digest(load_builtin(name).cast_column("image", _undecoded()))
    assert first == second


def _undecoded():
    from datasets import Image as ImageFeature

    return ImageFeature(decode=False)


def test_digits_labels_match_captions_and_pixels_span_0_255():
    ds = load_builtin("digits")
    assert len(ds) == 1797
    assert set(ds["label"]) == set(range(10))
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    for label, text in zip(ds["label"], ds["text"], strict=True):
        assert text == f"a handwritten digit {words[label]}"
    img = ds[0]["image"]
    assert img.size == (8, 8) and img.mode == "L"
    from sklearn.datasets import load_digits

    expected = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(img), expected)


def test_photos_has_the_documented_counts(photos):
    assert 60 <= len(photos) <= 80
    transforms = Counter(photos["gt_transform"])
    assert transforms["original"] == 30
    for kind in ("exact", "jpeg", "resize", "crop", "flip"):
        assert transforms[kind] >= 4, kind
    bad = [t for t in transforms if t.startswith("bad_")]
    assert sorted(bad) == sorted(
        [
            "bad_truncated",
            "bad_zero_bytes",
            "bad_empty_caption",
            "bad_rgba",
            "bad_palette",
            "bad_16bit",
        ]
    )
    captions = Counter(photos["gt_caption"])
    assert captions["same"] >= 10 and captions["different"] >= 8 and captions["reused"] >= 3


def test_photos_images_fit_in_256_px(photos):
    for row in photos:
        if row["gt_transform"] in ("bad_truncated", "bad_zero_bytes"):
            continue
        assert max(_open(row["image"]["bytes"]).size) <= 256


def test_every_copy_points_to_an_original_and_keeps_or_changes_its_caption(photos):
    rows = photos.to_list()
    originals = {r["gt_group"]: r for r in rows if r["gt_transform"] == "original"}
    assert sorted(originals) == list(range(len(originals)))
    for r in rows:
        if r["gt_transform"] in ("original",) or r["gt_transform"].startswith("bad_"):
            continue
        src = originals[r["gt_group"]]
        assert r["gt_name"] == src["gt_name"]
        if r["gt_caption"] == "same":
            assert r["text"] == src["text"]
        else:
            assert r["gt_caption"] == "different" and r["text"] != src["text"]


def test_reused_captions_belong_to_another_distinct_picture(photos):
    rows = photos.to_list()
    originals = [r for r in rows if r["gt_transform"] == "original"]
    for r in originals:
        if r["gt_caption"] != "reused":
            continue
        owners = [o for o in originals if o["text"] == r["text"] and o["gt_caption"] == "original"]
        assert len(owners) == 1 and owners[0]["gt_group"] != r["gt_group"]
        assert r["image"]["bytes"] != owners[0]["image"]["bytes"]


def test_copies_are_the_transform_they_claim(photos):
    rows = photos.to_list()
    originals = {r["gt_group"]: r for r in rows if r["gt_transform"] == "original"}
    for r in rows:
        t = r["gt_transform"]
        if t == "original" or t.startswith("bad_"):
            continue
        src_bytes = originals[r["gt_group"]]["image"]["bytes"]
        src, img = _open(src_bytes), _open(r["image"]["bytes"])
        if t == "exact":
            assert r["image"]["bytes"] == src_bytes
        elif t == "jpeg":
            assert (
                img.format == "JPEG" and r["image"]["bytes"] != src_bytes and img.size == src.size
            )
            diff = np.abs(np.asarray(img, np.float32) - np.asarray(src, np.float32)).mean()
            assert 0 < diff < 12
        elif t == "resize":
            assert img.size == (round(src.width / 2), round(src.height / 2))
        elif t == "crop":
            assert img.size == (round(src.width * 0.8), round(src.height * 0.8))
        elif t == "flip":
            mirrored = np.asarray(ImageOps.mirror(src), np.float32)
            diff = np.abs(np.asarray(img, np.float32) - mirrored).mean()
            assert diff < 3  # equal up to one JPEG re-encode
        else:
            pytest.fail(f"unexpected transform {t}")


def test_bad_rows_carry_the_problem_they_name(photos):
    bad = {r["gt_transform"]: r for r in photos.to_list() if r["gt_transform"].startswith("bad_")}
    assert all(r["gt_group"] == -1 for r in bad.values())
    assert bad["bad_zero_bytes"]["image"]["bytes"] == b""
    with pytest.raises(OSError):
        _open(bad["bad_truncated"]["image"]["bytes"])
    assert bad["bad_empty_caption"]["text"] == ""
    assert bad["bad_empty_caption"]["gt_caption"] == "empty"
    assert _open(bad["bad_empty_caption"]["image"]["bytes"]).mode == "L"
    assert _open(bad["bad_rgba"]["image"]["bytes"]).mode == "RGBA"
    assert _open(bad["bad_palette"]["image"]["bytes"]).mode == "P"
    assert _open(bad["bad_16bit"]["image"]["bytes"]).mode == "I;16"


def test_photos_survive_save_to_disk(photos, tmp_path):
    from datasets import load_from_disk

    photos.save_to_disk(str(tmp_path / "ds"))
    back = load_from_disk(str(tmp_path / "ds"))
    assert back.features == photos.features
    assert back[len(back) - 5]["image"]["bytes"] == b""
