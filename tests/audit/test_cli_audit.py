"""``curate audit`` in-process with Click's CliRunner, including one bad input per error class."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner

from curate.cli.audit import audit
from curate.io.training import load_training_set


@pytest.fixture(scope="module")
def digits_run(digits_runs):
    """``builtin:digits`` (first 48 rows) ingested into a run folder."""
    return digits_runs(48)


def test_oracle_audit_end_to_end(digits_run, tmp_path):
    out = tmp_path / "audit"
    args = ["--oracle", "--train", str(digits_run), "--resolution", "16", "--out", str(out)]
    args += ["--num-samples", "24", "--steps", "12", "--device", "cpu", "--quiet"]
    args += ["--fd-reference", str(digits_run)]
    result = CliRunner().invoke(audit, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "audit.json").read_text())
    assert summary["settings"]["sampler"] == "euler"  # the oracle has no discrete timesteps
    assert summary["memorized_fraction"] >= 0.9  # a perfect memorizer
    assert summary["model"].startswith("oracle")
    assert summary["metrics"]["frechet"]["reference"].startswith("kept rows of")
    assert "memorized (NN1/NN2 < 0.333)" in result.output
    assert (out / "report" / "index.html").exists()


def test_model_dir_and_oracle_are_exclusive(digits_run, tmp_path):
    result = CliRunner().invoke(
        audit, [str(tmp_path), "--oracle", "--train", str(digits_run), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "exactly one" in result.output


def test_bad_num_samples_is_a_usage_error(digits_run, tmp_path):
    args = ["--oracle", "--train", str(digits_run), "--out", str(tmp_path), "--num-samples", "1"]
    result = CliRunner().invoke(audit, args)
    assert result.exit_code == 2 and "--num-samples" in result.output


def test_missing_run_folder_is_a_data_error(tmp_path):
    args = ["--oracle", "--train", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(audit, args)
    assert result.exit_code == 1 and "curate ingest" in result.output


def test_a_folder_that_is_not_a_model_is_a_model_error(digits_run, tmp_path):
    result = CliRunner().invoke(
        audit, [str(tmp_path), "--train", str(digits_run), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1 and "model_index.json" in result.output


@pytest.mark.parametrize("text_encoder", [None, "tiny-clip"])
def test_model_audit_end_to_end(digits_run, tmp_path, text_encoder, tiny_model):
    model = tiny_model(tmp_path / "model", text_encoder)
    out = tmp_path / "audit"
    args = [str(model), "--train", str(digits_run), "--out", str(out), "--num-samples", "6"]
    args += ["--steps", "2", "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(audit, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "audit.json").read_text())
    assert summary["settings"]["sampler"] == "ddim" and summary["num_samples"] == 6
    table = pl.read_parquet(out / "samples.parquet")
    if text_encoder:
        # generation i is prompted with the caption of training row i
        train = load_training_set(digits_run, resolution=16)
        assert table["prompt"].to_list() == train.captions[:6]
        assert "nn_is_prompt_image_fraction" in summary
    else:
        assert "prompt" not in table.columns
