"""AMG's training index counts each distinct image once (as the audit does), and caption
deduplication is capped by the despecification actually applied."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from curate.audit import metrics
from curate.guidance.amg import AMGConfig
from curate.guidance.run import build_amg, load_amg
from curate.models.denoiser import DiffusersDenoiser
from curate.models.presets import build_model
from curate.models.sampling import sample


class _Train:
    """The TrainingSet fields build_amg reads."""

    def __init__(self, images, captions=None, keys=None):
        self.images = images
        self.captions = captions
        self.keys = keys
        self.sample_ids = [f"s{i}" for i in range(len(images))]


def _images(n, res=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, res, res, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def uncond_model():
    bundle = build_model("tiny", channels=1, resolution=8, seed=2)
    return DiffusersDenoiser(bundle.unet, bundle.scheduler_config).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def cond_model():
    bundle = build_model("tiny", channels=1, resolution=8, text_encoder="tiny-clip", seed=1)
    den = DiffusersDenoiser(bundle.unet, bundle.scheduler_config).eval().requires_grad_(False)
    return den, bundle.text_encoder


# ------------------------------------------------------------ (a) a deduplicated index


def _five_copies():
    """20 distinct images, the first stored 5 times (rows 0, 20, 21, 22, 23)."""
    distinct = _images(20, seed=3)
    return torch.cat([distinct, distinct[:1].expand(4, -1, -1, -1)])


def test_amg_similarity_of_a_near_copy_matches_the_audit_when_the_image_is_stored_5_times(
    uncond_model,
):
    """A training image stored 5 times is one image: AMG's -nL2 of a near copy of it is the
    audit's normalised L2 over distinct training images (Carlini et al.; AMG deduplicates)."""
    images = _five_copies()
    query = images[:2] + 0.05 * _images(2, seed=9)  # near copies of row 0 and row 1
    k, alpha = 8, 0.5
    amg = build_amg(uncond_model, _Train(images), AMGConfig(k=k, alpha=alpha))
    sim, _ = amg.index.search(query)
    ref = images.numpy()
    groups = metrics.distinct_groups(ref)
    nb = metrics.pixel_neighbours(query.numpy(), ref, k=k, groups=groups)
    audit = metrics.normalized_l2(nb.d1, nb.mean_k, alpha=alpha)
    np.testing.assert_allclose(-sim.numpy(), audit, rtol=1e-4)
    assert amg.index.num == 20 and amg.index.folded == 4
    # and the nearest image of the near copy is the one stored image, by its first row's id
    assert amg.index.sample_ids[int(amg.index.search(query[:1])[1][0, 0])] == "s0"


def test_amg_folds_rows_with_the_same_pixel_hash_and_records_the_count(uncond_model, tmp_path):
    images = _images(10, seed=4)
    keys = [f"h{i}" for i in range(10)]
    keys[7] = keys[2] = "same"  # the run says rows 2 and 7 are one image
    amg = build_amg(uncond_model, _Train(images, keys=keys), AMGConfig(k=4))
    assert amg.index.num == 9 and amg.index.folded == 1
    assert "s7" not in amg.index.sample_ids and "s2" in amg.index.sample_ids
    amg.write(tmp_path)
    summary = json.loads((tmp_path / "amg.json").read_text())
    assert summary["training_index"] == {"rows": 10, "distinct": 9, "folded": 1}


def test_amg_over_a_run_folder_counts_a_dedup_cluster_once(digits_runs, tmp_path):
    """Rows the dedup step put in one cluster are one training image for AMG's search."""
    run = digits_runs(24)
    table = pl.read_parquet(run / "table.parquet")
    ids = table["sample_id"].to_list()
    cluster = [ids[0] if i < 3 else None for i in range(table.height)]  # rows 0-2: one cluster
    table.with_columns(pl.Series("dedup_images_cluster", cluster, dtype=pl.String)).write_parquet(
        run / "table.parquet"
    )
    bundle = build_model("tiny", channels=1, resolution=8, seed=2)
    den = DiffusersDenoiser(bundle.unet, bundle.scheduler_config).eval()
    amg = load_amg(den, run, AMGConfig(k=4), device="cpu")
    assert amg.index.num == 22 and amg.index.folded == 2
    assert ids[0] in amg.index.sample_ids and ids[1] not in amg.index.sample_ids


# ------------------------------------------- (b) caption deduplication without despecification


CAPTIONS = [f"a handwritten digit {w}" for w in ("zero", "one", "two", "three", "four", "five")] * 2


@pytest.mark.parametrize("guidances", [("dup",), ("dup", "sim")])
def test_caption_deduplication_applies_when_despecification_is_off(cond_model, guidances):
    """With spe left out, s2 = clip(c2 * s_t, 0, s0 - 1): the despecification scale that is not
    applied (however large c1 is) takes none of the room."""
    den, enc = cond_model
    s0, c2 = 3.0, 5.0
    train = _Train(_images(12, seed=0), CAPTIONS)
    cond, uncond = enc.encode(CAPTIONS[:4]), enc.encode([""])
    cfg = AMGConfig(features="pixel-cosine", threshold="always", guidances=guidances,
                    scales=(100.0, c2, 1.0))  # fmt: skip
    amg = build_amg(den, train, cfg, text_encoder=enc)
    sample(den, 4, steps=3, seed=0, progress=False, cond=cond, uncond=uncond, cfg_scale=s0,
           guidance=amg)  # fmt: skip
    steps = amg.steps_frame()
    assert (steps["s1"] == 0).all()
    positive = steps.filter(pl.col("similarity") > 0)
    assert positive.height > 0
    expected = np.minimum(c2 * positive["similarity"].to_numpy(), s0 - 1)
    np.testing.assert_allclose(positive["s2"].to_numpy(), expected, rtol=1e-5)
    assert amg.samples_frame()["amg_used_dup"].any()
