"""validate removes what breaks its rules and keeps the rest; a select rule that is null keeps."""

from __future__ import annotations

import polars as pl

from curate.runner import compute_step
from curate.steps.base import RunContext
from curate.steps.select import Select
from curate.steps.validate import Validate
from curate.table import read_table


def test_validate_removes_small_images_and_keeps_large_ones(photos_run):
    table = read_table(photos_run)
    out = compute_step(Validate(min_side=100), table, RunContext(photos_run, quiet=True))
    ok = out.filter(pl.col("status") == "ok")
    small = ok.filter(pl.min_horizontal("width", "height") < 100)
    large = ok.filter(pl.min_horizontal("width", "height") >= 100)
    assert small.height and large.height
    assert small["validate_drop"].null_count() == 0
    assert large["validate_drop"].null_count() == large.height


def test_a_select_rule_that_is_null_keeps_the_row(photos_run):
    table = read_table(photos_run).with_columns(
        score=pl.when(pl.col("source_index") < 5).then(None).otherwise(pl.lit(1.0))
    )
    out = compute_step(
        Select(where="score > 0.5", reason="high"), table, RunContext(photos_run, quiet=True)
    )
    unknown = out.filter((pl.col("source_index") < 5) & (pl.col("status") == "ok"))
    assert unknown.height and unknown["select_drop"].null_count() == unknown.height
    known = out.filter((pl.col("source_index") >= 5) & (pl.col("status") == "ok"))
    assert (known["select_drop"] == "high").all()
