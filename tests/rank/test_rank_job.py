"""``rank_job`` is the one ranking job: the ``rank`` step and ``curate rank`` both run it, it
takes scores from shards without loading a model, and its drop setting says what VGR is for."""

from __future__ import annotations

import shutil

import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

import curate.rank.job as job_module
from curate.errors import DataError
from curate.rank.config import RankConfig
from curate.rank.job import RankRows, rank_job
from curate.table import read_table


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from curate.models.presets import build_model, save_pipeline

    bundle = build_model("tiny", channels=1, resolution=16, seed=0)
    out = tmp_path_factory.mktemp("model") / "pipe"
    save_pipeline(out, bundle.unet, bundle.scheduler_config)
    return out


@pytest.fixture(scope="module")
def digits_run(digits_runs):
    return digits_runs(12)


@pytest.fixture
def calls(monkeypatch):
    """Every ``rank_job`` call (its ``scores`` argument), the real job still running."""
    seen: list = []
    real = job_module.rank_job

    def counting(*args, **kwargs):
        seen.append(kwargs.get("scores"))
        return real(*args, **kwargs)

    monkeypatch.setattr(job_module, "rank_job", counting)
    return seen


def test_the_command_and_the_step_both_run_rank_job(tiny_pipeline, digits_run, tmp_path, calls):
    from curate.cli.rank import rank
    from curate.runner import apply_step
    from curate.steps.base import RunContext
    from curate.steps.rank import Rank

    config = RankConfig(model=str(tiny_pipeline), batch_size=4, drop_top_fraction=0.25)
    direct = rank_job(digits_run, config)  # the library call on a run folder
    assert direct.columns.height == read_table(digits_run).height
    assert direct.columns["rank_drop"].is_not_null().sum() == 3  # 25 % of 12
    assert direct.stats["scored"] == 12

    step_run, cli_run = tmp_path / "step", tmp_path / "cli"
    shutil.copytree(digits_run, step_run)
    shutil.copytree(digits_run, cli_run)
    step = Rank(model=str(tiny_pipeline), batch_size=4, drop_top_fraction=0.25)
    stepped = apply_step(step_run, step, RunContext(run_dir=step_run, quiet=True))
    args = ["--dataset", str(cli_run), "--model", str(tiny_pipeline), "--batch-size", "4"]
    args += ["--drop-top-fraction", "0.25", "--out", str(tmp_path / "r.parquet"), "--quiet"]
    res = CliRunner().invoke(rank, args)
    assert res.exit_code == 0, res.output
    assert "ranked 12 samples" in res.output
    assert len(calls) == 2  # the step, and the command (through the step)

    cols = ["rank_vgr", "rank_pct", "rank_drop"]
    assert_frame_equal(stepped.select(cols), direct.columns.select(cols))
    assert_frame_equal(read_table(cli_run).select(cols), direct.columns.select(cols))
    written = pl.read_parquet(tmp_path / "r.parquet")
    assert written["rank_vgr"].to_list() == sorted(direct.columns["rank_vgr"], reverse=True)


def test_scores_from_shards_are_used_without_a_model(digits_run):
    table = read_table(digits_run)
    ids = table["sample_id"].to_list()
    scores = pl.DataFrame({"sample_id": ids, "vgr": [float(i) for i in range(len(ids))]})
    config = RankConfig(model="/nonexistent/model", flag_top_fraction=0.5)
    rows = RankRows(table, store=None)  # neither a model nor images are read
    got = rank_job(rows, config, scores=scores)
    assert got.columns["rank_vgr"].to_list() == scores["vgr"].to_list()
    assert got.columns["rank_pct"].max() == 1.0 and got.columns["rank_flag"].sum() == 6
    with pytest.raises(DataError, match=r"no score for sample_id " + ids[3]):
        rank_job(rows, config, scores=scores.filter(pl.col("sample_id") != ids[3]))


def test_bad_settings_are_named_by_key_before_any_work(digits_run):
    from curate.errors import UsageError

    with pytest.raises(UsageError, match=r"^axes/ode_steps: fd and jvp are one-axis"):
        rank_job(RankRows(read_table(digits_run), None), RankConfig(model="/none", axes=2))


def test_drop_top_fraction_says_what_vgr_is_validated_for():
    import dataclasses
    import re

    from curate.cli.rank import rank
    from curate.steps.rank import Rank

    help_text = {f.name: f for f in dataclasses.fields(RankConfig)}["drop_top_fraction"]
    help_text = help_text.metadata["help"]
    assert "drops the rows the model reproduces most easily (most clearly seen in training)" in (
        help_text
    )
    assert "0.41" in help_text and "does not predict which images the model will copy" in (
        help_text
    )
    res = CliRunner().invoke(rank, ["--help"], terminal_width=200)
    text = re.sub(r"\s+", " ", res.output)
    assert "drops the rows the model reproduces most easily (most clearly seen in training)" in text
    assert "copied vs not-copied" in text and "riskiest" not in text
    assert "most clearly seen in training" in " ".join(Rank.__doc__.split())
    assert "copies" not in job_module.DROP_REASON and "seen in training" in job_module.DROP_REASON
