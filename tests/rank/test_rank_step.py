"""The rank step on a run folder with a real (tiny, untrained) diffusers pipeline folder."""

from __future__ import annotations

import polars as pl
import pytest

from curate.errors import ModelError
from curate.runner import apply_step
from curate.steps.base import RunContext
from curate.steps.rank import Rank
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
    """``builtin:digits`` (first 20 rows) ingested into a run folder."""
    return digits_runs(20)


def test_rank_adds_scores_flags_and_resumes_from_shards(tiny_pipeline, digits_run, monkeypatch):
    step = Rank(
        model=str(tiny_pipeline),
        batch_size=8,
        shard_size=8,
        flag_top_fraction=0.25,
        drop_top_fraction=0.1,
    )
    ctx = RunContext(run_dir=digits_run, quiet=True)
    table = apply_step(digits_run, step, ctx)
    assert table["rank_vgr"].null_count() == 0
    assert table["rank_pct"].max() == 1.0
    assert table["rank_flag"].sum() == 5 and table["rank_drop"].is_not_null().sum() == 2
    riskiest = table.sort("rank_vgr", descending=True)["sample_id"][0]
    assert table.filter(pl.col("sample_id") == riskiest)["rank_drop"][0].startswith("top 10%")
    html = (digits_run / "report" / "index.html").read_text()
    assert "Reproduction risk" in html and riskiest in html

    # a re-run with --force recomputes the step but reuses every finished shard
    import curate.rank.ranker as ranker

    def boom(*a, **k):
        raise AssertionError("a finished shard was recomputed")

    monkeypatch.setattr(ranker, "volume_growth", boom)
    again = apply_step(digits_run, step, ctx, force=True)
    assert again["rank_vgr"].to_list() == table["rank_vgr"].to_list()


def test_not_a_pipeline_is_a_clear_error(tmp_path, digits_run):
    (tmp_path / "junk").mkdir()
    ctx = RunContext(run_dir=digits_run, quiet=True)
    with pytest.raises(ModelError, match="not a diffusers pipeline folder"):
        apply_step(digits_run, Rank(model=str(tmp_path / "junk")), ctx)


def test_unconditional_model_refuses_caption_conditioning(tiny_pipeline, digits_run):
    ctx = RunContext(run_dir=digits_run, quiet=True)
    with pytest.raises(ModelError):
        apply_step(
            digits_run,
            Rank(model=str(tiny_pipeline), condition="caption", text_encoder="tiny-clip"),
            ctx,
        )
    assert "rank_gap" not in read_table(digits_run).columns


def test_conditional_model_ranks_with_own_caption_and_reports_the_gap(tmp_path, digits_run):
    from curate.models.presets import build_model, save_pipeline

    bundle = build_model("tiny", channels=1, resolution=16, text_encoder="tiny-clip", seed=0)
    save_pipeline(
        tmp_path / "cond", bundle.unet, bundle.scheduler_config, text_encoder=bundle.text_encoder
    )
    ctx = RunContext(run_dir=digits_run, quiet=True)
    step = Rank(
        model=str(tmp_path / "cond"), condition="caption", text_encoder="tiny-clip", batch_size=8
    )
    table = apply_step(digits_run, step, ctx)
    for col in ("rank_vgr", "rank_vgr_empty", "rank_gap"):
        assert table[col].null_count() == 0
    gap = (table["rank_vgr"] - table["rank_vgr_empty"] - table["rank_gap"]).abs().max()
    assert gap < 1e-9
    assert table["rank_gap"].abs().max() > 0  # the caption changes the model's prediction
