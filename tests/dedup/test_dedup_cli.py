"""``curate dedup RUN_DIR`` and ``curate dedup calibrate RUN_DIR``, in-process."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.dedup.calibrate import calibrate_images


def test_dedup_command_adds_columns_and_prints_counts(photos_run):
    res = CliRunner().invoke(
        cli,
        ["dedup", str(photos_run), "--images", "exact,phash", "--phash-radius", "10",
         "--minhash-threshold", "0.7", "--device", "cpu", "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "dedup_images:" in res.output and "dedup_captions:" in res.output
    table = pl.read_parquet(photos_run / "table.parquet")
    assert {"dedup_images_drop", "dedup_captions_flag", "dedup_images_phash_cluster"} <= set(
        table.columns
    )
    assert table["dedup_images_is_dup"].sum() > 10


def test_dedup_command_errors_are_one_line_with_exit_codes(photos_run, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["dedup", str(photos_run), "--images", "sift", "--device", "cpu"])
    assert res.exit_code == 2 and "unknown tier 'sift'" in res.output
    res = runner.invoke(cli, ["dedup", str(tmp_path / "nowhere"), "--device", "cpu"])
    assert res.exit_code == 2 and "curate ingest" in res.output
    res = runner.invoke(
        cli,
        ["dedup", str(photos_run), "--images", "sscd", "--sscd-model", str(tmp_path / "x.onnx")],
    )
    assert res.exit_code == 1 and "SSCD model file" in res.output
    res = runner.invoke(cli, ["dedup", "calibrate", str(photos_run), "--tiers", "sift"])
    assert res.exit_code == 2 and "--tiers" in res.output


def test_calibrate_command_prints_precision_recall_per_threshold(photos_run, tmp_path):
    out = tmp_path / "cal.json"
    res = CliRunner().invoke(
        cli,
        [
            "dedup", "calibrate", str(photos_run), "--tiers", "phash,pixel", "--sample", "8",
            "--transforms", "jpeg,flip,crop", "--out", str(out), "--device", "cpu", "-q",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "best phash" in res.output and "best pixel" in res.output
    result = json.loads(out.read_text())
    assert result["n_copies"] == 24
    phash = {r["threshold"]: r for r in result["rows"] if r["tier"] == "phash"}
    assert phash[10]["recall_flip"] == 1.0 and phash[10]["recall_jpeg"] == 1.0


def test_calibration_recall_grows_and_precision_falls_with_the_threshold(photos):
    ids = [f"p{i}" for i in range(len(photos))]
    res = calibrate_images(photos, ids, tiers=("dhash",), transforms=("jpeg", "resize", "crop"))
    rows = [r for r in res["rows"] if r["tier"] == "dhash"]
    recalls = [r["recall"] for r in rows]
    assert recalls == sorted(recalls)  # a larger radius never loses a pair
    assert rows[0]["precision"] == 1.0
    assert res["best"]["dhash"]["f1"] == max(r["f1"] for r in rows)


def test_calibration_scores_embedding_tiers_with_the_steps_normalisation():
    from curate.dedup.calibrate import normalised_similarity

    # rows 0 and 1: a copy pair standing out from a low background; rows 2-5: a texture-like
    # crowd where every pair is similar, so no pair beats its background.
    sim = np.full((6, 6), 0.1, np.float32)
    sim[2:, 2:] = 0.8
    sim[0, 1] = sim[1, 0] = 0.9
    np.fill_diagonal(sim, 1.0)
    norm = normalised_similarity(sim, rank=2, margin=0.08)
    assert norm[0, 1] == pytest.approx(0.9)
    assert np.isneginf(norm[2, 3]) and np.isneginf(norm[0, 2])


def test_calibration_adds_normalised_rows_for_embedding_tiers(photos):
    ids = [f"p{i}" for i in range(len(photos))]
    res = calibrate_images(photos[:12], ids[:12], tiers=("pixel",), transforms=("jpeg", "flip"),
                           norm_rank=4)  # fmt: skip
    tiers = {r["tier"] for r in res["rows"]}
    assert tiers == {"pixel", "pixel-normalised"}
    raw = {r["threshold"]: r for r in res["rows"] if r["tier"] == "pixel"}
    norm = {r["threshold"]: r for r in res["rows"] if r["tier"] == "pixel-normalised"}
    assert all(norm[t]["recall"] <= raw[t]["recall"] for t in raw)  # it only removes pairs


def test_clip_weights_that_cannot_be_loaded_are_one_line_naming_the_flags(photos_run):
    """The CLIP tier with a pretrained tag open_clip does not know (or weights missing offline)
    stops with one line naming the model, the weights and the flag to give a local checkpoint,
    not a traceback or open_clip's log."""
    res = CliRunner().invoke(
        cli,
        ["dedup", str(photos_run), "--images", "exact,clip", "--clip-pretrained",
         "no_such_tag_2026", "--device", "cpu", "-q"],
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert "no_such_tag_2026" in lines[0] and "--clip-pretrained" in lines[0]
    assert "Traceback" not in res.output and "ERROR:root" not in res.output
