"""``curate sample --amg`` and ``curate audit --amg`` end to end, offline, on real digits."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner

from curate.cli.audit import audit
from curate.cli.model import sample


@pytest.fixture(scope="module")
def digits_run(digits_runs):
    """``builtin:digits`` (first 64 rows) ingested into a run folder."""
    return digits_runs(64)


def test_sample_with_amg_writes_per_step_records_and_a_report(digits_run, tmp_path):
    out = tmp_path / "s"
    args = ["digits-tiny", "--num", "5", "--steps", "6", "--out", str(out), "--quiet"]
    args += ["--amg", "--amg-train", str(digits_run), "--amg-lambdas=-1.95,-1.7"]
    result = CliRunner().invoke(sample, args)
    assert result.exit_code == 0, result.output
    steps = pl.read_parquet(out / "amg_steps.parquet")
    assert steps.height == 5 * 6
    assert set(steps.columns) >= {"sample", "step", "similarity", "threshold", "active", "s1"}
    summary = json.loads((out / "amg.json").read_text())
    assert summary["config"]["lambdas"] == [-1.95, -1.7] and summary["samples"] == 5
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["amg_active_steps"] for r in records] == (
        steps.group_by("sample").agg(pl.col("active").sum()).sort("sample")["active"].to_list()
    )
    assert "similarity trajectories" in (out / "report" / "index.html").read_text()
    assert "AMG guided" in result.output


def test_sample_amg_without_a_training_run_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(sample, ["digits-tiny", "--num", "2", "--out", str(tmp_path / "o"),
                                         "--amg", "--quiet"])  # fmt: skip
    assert result.exit_code == 2 and "--amg-train" in result.output


def test_sample_amg_with_a_folder_that_is_not_a_run_is_a_data_error(tmp_path):
    result = CliRunner().invoke(
        sample, ["digits-tiny", "--num", "2", "--out", str(tmp_path / "o"), "--amg",
                 "--amg-train", str(tmp_path), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 1 and "table.parquet" in result.output
    assert "Traceback" not in result.output


def test_guidance_scale_on_an_unconditional_model_is_refused(tmp_path):
    result = CliRunner().invoke(sample, ["digits-tiny", "--num", "2", "--out", str(tmp_path / "o"),
                                         "--guidance-scale", "3", "--quiet"])  # fmt: skip
    assert result.exit_code == 2 and "unconditional" in result.output


def test_oracle_audit_with_amg_reports_plain_and_guided_side_by_side(digits_run, tmp_path):
    out = tmp_path / "audit"
    args = ["--oracle", "--train", str(digits_run), "--resolution", "8", "--out", str(out)]
    args += ["--num-samples", "16", "--steps", "10", "--device", "cpu", "--quiet"]
    args += ["--amg", "--amg-threshold", "always", "--amg-scales", "0,0,20"]
    result = CliRunner().invoke(audit, args)
    assert result.exit_code == 0, result.output
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["plain"]["nn_ratio"]["fraction_memorized"] >= 0.9  # a perfect memorizer
    # The empirical denoiser snaps to a training image at the last, almost noiseless step,
    # where sigma^2 makes the dissimilarity term vanish: it stays a copier even when guided.
    assert comparison["amg_metrics"]["nn_ratio"]["fraction_memorized"] >= 0.9
    steps = pl.read_parquet(out / "amg" / "amg_steps.parquet")
    assert steps.height == 16 * 10 and steps["active"].all() and (steps["grad_norm"] > 0).any()
    assert (out / "amg" / "audit.json").exists() and (out / "amg" / "amg_steps.parquet").exists()
    html = (out / "report" / "index.html").read_text()
    assert "Anti-memorization guidance" in html and "AMG (same seeds)" in html
    assert "plain" in result.output and "AMG" in result.output


def test_text_model_audit_with_cfg_and_amg(digits_run, tmp_path, tiny_model):
    model = tiny_model(tmp_path / "model", "tiny-clip")
    out = tmp_path / "audit"
    args = [str(model), "--train", str(digits_run), "--out", str(out), "--num-samples", "4"]
    args += ["--steps", "3", "--device", "cpu", "--quiet", "--guidance-scale", "3"]
    args += ["--amg", "--amg-threshold", "always"]
    result = CliRunner().invoke(audit, args)
    assert result.exit_code == 0, result.output
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["guidance_scale"] == 3.0
    steps = pl.read_parquet(out / "amg" / "amg_steps.parquet")
    assert steps["active"].all() and (steps["s1"] == 0).all()  # pixel nL2: text guidances off


def test_audit_recipe_step_with_amg(digits_run, tmp_path):
    """A recipe's audit step with ``amg:`` audits plain and guided sampling side by side."""
    import shutil

    from curate.recipe import parse_recipe
    from curate.runner import run_recipe

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    recipe = parse_recipe(
        {
            "dataset": {"name": "builtin:digits", "limit": 64},
            "steps": [
                {"audit": {"oracle": True, "num_samples": 8, "steps": 6, "resolution": 8,
                           "amg": {"threshold": "always", "scales": [0, 0, 5]}}},
            ],
        }
    )  # fmt: skip
    run_recipe(recipe, run, quiet=True)
    step_dir = next((run / "steps").glob("*-audit"))
    comparison = json.loads((step_dir / "comparison.json").read_text())
    assert comparison["amg"]["threshold"] == "always"
    assert "Anti-memorization guidance" in (run / "report" / "index.html").read_text()


def test_audit_recipe_step_rejects_a_bad_amg_key():
    from curate.errors import RecipeError
    from curate.recipe import parse_recipe

    with pytest.raises(RecipeError, match="amg"):
        parse_recipe(
            {"dataset": {"name": "builtin:digits"},
             "steps": [{"audit": {"oracle": True, "amg": {"treshold": "always"}}}]}
        )  # fmt: skip
