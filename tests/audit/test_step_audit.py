"""The ``audit`` recipe step: per-training-row copy counts from an audit of the kept rows."""

from __future__ import annotations

import json

import polars as pl
import pytest

from curate.runner import compute_step
from curate.steps.audit import Audit
from curate.steps.base import RunContext
from curate.table import read_table


@pytest.fixture
def digits_run(tmp_path):
    from curate.io.ingest import IngestConfig, ingest

    run = tmp_path / "run"
    ingest(IngestConfig(name="builtin:digits", limit=40), run, quiet=True)
    return run


def _ctx(run):
    return RunContext(run_dir=run, seed=0, quiet=True, step_dir=run / "steps" / "01-audit")


def test_oracle_step_marks_copied_training_rows(digits_run):
    step = Audit(oracle=True, num_samples=24, steps=12, resolution=16, drop_copied=1)
    assert step.validate() == []
    table = read_table(digits_run)
    out = compute_step(step, table, _ctx(digits_run))
    assert out["sample_id"].to_list() == table["sample_id"].to_list()
    assert out["audit_nn_count"].sum() == 24  # every generation has one nearest training row
    copied = out.filter(pl.col("audit_copies") > 0)
    assert copied.height > 5  # the oracle copies many different digits
    assert copied["audit_drop"].null_count() == 0
    assert out.filter(pl.col("audit_copies") == 0)["audit_drop"].null_count() == (
        out.height - copied.height
    )
    summary = json.loads((digits_run / "steps" / "01-audit" / "audit.json").read_text())
    assert summary["memorized_fraction"] >= 0.9
    assert "Memorization audit" in (digits_run / "report" / "index.html").read_text()


def test_rows_outside_the_training_set_get_nulls(digits_run):
    table = read_table(digits_run)
    drop = [None] * table.height
    drop[0] = "removed earlier"
    table = table.with_columns(pl.Series("x_drop", drop, dtype=pl.String))
    out = compute_step(Audit(oracle=True, num_samples=8, steps=8), table, _ctx(digits_run))
    assert out["audit_nn_count"][0] is None
    assert out["audit_nn_count"][1:].null_count() == 0


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "model:"),
        ({"oracle": True, "model": "m"}, "model:"),
        ({"model": "/no/such/model"}, "does not exist"),
        ({"oracle": True, "num_samples": 1}, "num_samples:"),
        ({"oracle": True, "drop_copied": 0}, "drop_copied:"),
    ],
)
def test_validate_names_the_key(config, key):
    assert any(key in p for p in Audit(**config).validate())


def test_drop_column_only_when_asked():
    assert "audit_drop" not in Audit(oracle=True).produced_columns()
    assert "audit_drop" in Audit(oracle=True, drop_copied=2).produced_columns()
