"""The audit job: training set from a run folder, outputs on disk, report ordering."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from curate.audit.job import run_audit
from curate.audit.oracle import EmpiricalDenoiser
from curate.audit.scoring import audit_samples
from curate.audit.settings import AuditSettings
from curate.core.images import pil_to_tensor, tensor_to_pil
from curate.errors import DataError, UsageError
from curate.io.training import TrainingSet, load_training_set


@pytest.fixture(scope="module")
def digits_run(digits_runs):
    """``builtin:digits`` (first 64 rows) ingested into a run folder."""
    return digits_runs(64)


def test_load_training_set_reads_kept_rows_at_the_requested_size(digits_run, digits):
    train = load_training_set(digits_run, resolution=16)
    assert tuple(train.images.shape) == (64, 1, 16, 16)
    assert train.images.min() >= -1 and train.images.max() <= 1
    assert len(set(train.keys)) == len(train.keys)  # pixel hashes travel along
    native = load_training_set(digits_run)  # one square size: no resolution needed
    assert tuple(native.images.shape) == (64, 1, 8, 8)
    # builtin digits store 0..16 scaled to 0..255, so the native images are the sklearn ones.
    torch.testing.assert_close(native.images, digits[:64], atol=1.0 / 127.5, rtol=0)


def test_load_training_set_skips_removed_rows(digits_run, tmp_path):
    import shutil

    from curate.table import read_table, write_table

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    table = read_table(run)
    drop = [None] * table.height
    drop[0] = "test"
    write_table(
        table.with_columns(pl.Series("x_drop", drop, dtype=pl.String)), run / "table.parquet"
    )
    train = load_training_set(run)
    assert len(train.sample_ids) == 63 and table["sample_id"][0] not in train.sample_ids


def test_pil_round_trip_is_lossless_at_uint8():
    x = torch.randint(0, 256, (3, 1, 8, 8)).float() / 127.5 - 1
    back = pil_to_tensor(tensor_to_pil(x), channels=1, resolution=8)
    torch.testing.assert_close(back, x, atol=1e-6, rtol=0)
    rgb = torch.randint(0, 256, (2, 3, 8, 8)).float() / 127.5 - 1
    torch.testing.assert_close(
        pil_to_tensor(tensor_to_pil(rgb), channels=3, resolution=8), rgb, atol=1e-6, rtol=0
    )


def _sampler(euler_sample):
    """The test Euler loop behind the signature of ``curate.models.sampling.sample``."""

    def sample(denoiser, num, *, steps=50, method="ddim", seed=0, **_):
        return euler_sample(denoiser, num, steps=steps, seed=seed)

    return sample


def test_run_audit_writes_every_output(digits, euler_sample, tmp_path):
    # Half the generations are oracle copies, half are held-out digits: the report must put
    # the copies first.
    train = TrainingSet.from_tensor(digits[:48], [f"t{i}" for i in range(48)])
    den = EmpiricalDenoiser(train.images)
    settings = AuditSettings(num_samples=32, steps=20, seed=3)
    res = run_audit(
        den, train, tmp_path / "a", settings, sampler=_sampler(euler_sample), quiet=True
    )

    out = tmp_path / "a"
    summary = json.loads((out / "audit.json").read_text())
    assert summary["num_samples"] == 32 and summary["num_train"] == 48
    assert summary["settings"]["seed"] == 3 and summary["settings"]["sim_threshold"] == 0.9
    for key in ("nn_ratio", "normalized_l2", "similarity", "frechet"):
        assert summary["metrics"][key]["definition"]
    assert summary["metrics"]["frechet"]["name"] == "FD_pixel@16"
    table = pl.read_parquet(out / "samples.parquet")
    assert table.height == 32 and set(table["nn_sample_id"]) <= set(train.sample_ids)
    assert table["memorized_ratio"].to_list() == (table["nn_ratio"] < 1 / 3).to_list()
    assert len(list((out / "samples").glob("*.png"))) == 32
    assert (out / "samples_grid.png").exists()
    html = (out / "report" / "index.html").read_text()
    assert "Memorization audit" in html and html.count("nearest training image t") >= 32
    assert res.summary == summary


def test_report_lists_worst_copies_first(digits, tmp_path):
    from curate.audit.report import write_audit

    train = TrainingSet.from_tensor(digits[:40], [f"t{i}" for i in range(40)])
    held_out = digits[100:104]
    copies = digits[[5, 9]]
    samples = torch.cat([held_out, copies])  # copies are generations 4 and 5
    res = audit_samples(samples, train, AuditSettings(num_samples=6))
    write_audit(res, train, tmp_path)
    html = (tmp_path / "report" / "index.html").read_text()
    first, second = html.index("generation 4:"), html.index("generation 5:")
    assert max(first, second) < min(html.index(f"generation {i}:") for i in range(4))
    counts = res.training_counts(train)
    assert counts.filter(pl.col("copies") > 0)["sample_id"].sort().to_list() == ["t5", "t9"]


def test_training_counts_are_shared_by_duplicate_rows(digits):
    base = digits[:20]
    train = TrainingSet.from_tensor(torch.cat([base, base[[3]]]), [f"t{i}" for i in range(21)])
    res = audit_samples(digits[[3, 3, 7]], train, AuditSettings(num_samples=3))
    counts = {r["sample_id"]: r for r in res.training_counts(train).iter_rows(named=True)}
    assert counts["t3"]["copies"] == 2 and counts["t20"]["copies"] == 2
    assert counts["t7"]["copies"] == 1 and counts["t0"]["nn_count"] == 0
    assert counts["t0"]["min_ratio"] is None


def test_audit_rejects_mismatched_shapes(digits):
    train = TrainingSet.from_tensor(digits[:10])
    with pytest.raises(DataError, match="resolution"):
        audit_samples(torch.zeros(4, 1, 16, 16), train)


def test_run_audit_rejects_a_model_of_another_size(digits, tmp_path):
    den = EmpiricalDenoiser(digits[:10])
    train = TrainingSet.from_tensor(
        torch.zeros(10, 1, 16, 16) + torch.arange(10)[:, None, None, None]
    )
    with pytest.raises(DataError, match="resolution: 8"):
        run_audit(den, train, tmp_path)


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_samples", 1), ("features", "dino"), ("sampler", "ancestral"),
     ("fd_features", "inception"), ("dup_eps", -1.0), ("k", 1)],
)  # fmt: skip
def test_settings_name_the_bad_key(field, value):
    """The library names config keys (as a recipe does); the CLI rewrites them as flags."""
    with pytest.raises(UsageError, match=f"^{field}: ") as err:
        AuditSettings(**{field: value}).validate()
    assert "--" not in str(err.value)


def test_similarity_threshold_follows_the_feature_space():
    assert AuditSettings(features="sscd").similarity_threshold == 0.5
    assert AuditSettings(features="pixel").similarity_threshold == 0.9
    assert AuditSettings(features="sscd", sim_threshold=0.3).similarity_threshold == 0.3


def test_pixel_features_are_centred_at_the_model_resolution(digits):
    from curate.audit.scoring import image_embedder
    from curate.core.images import embed_tensor as embed

    embedder = image_embedder("pixel", tuple(digits[:5].shape))
    f = embed(embedder, digits[:5])
    assert f.shape == (5, 64) and embedder.name == "pixel-8-grey"
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(f.sum(axis=1), 0.0, atol=1e-4)


def test_missing_sscd_model_is_a_clear_error(digits):
    from curate.audit.scoring import image_embedder
    from curate.errors import ModelError

    with pytest.raises(ModelError, match="does not exist"):
        image_embedder("sscd", tuple(digits[:2].shape), model="/no/such/sscd.onnx")


def test_fd_reference_replaces_the_training_set(digits):
    train = TrainingSet.from_tensor(digits[:40])
    copies = digits[:40]
    own = audit_samples(copies, train).summary["metrics"]["frechet"]
    held = audit_samples(copies, train, fd_reference=digits[200:400], fd_reference_name="held-out")
    held = held.summary["metrics"]["frechet"]
    assert own["reference"] == "training set" and own["value"] == pytest.approx(0.0, abs=1e-6)
    assert held["reference"] == "held-out" and held["reference_size"] == 200
    assert held["value"] > 0.1  # copies of 40 digits are far from the digit distribution
