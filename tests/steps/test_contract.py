"""One contract test over every registered step.

Every step, with the example config below: keeps the sample_id set and order, adds exactly its
declared columns, leaves its input unchanged, is deterministic, handles an empty table, and its
config round-trips through YAML. A new step must add an example here (the first test fails
otherwise), and then gets these checks for free.
"""

from __future__ import annotations

import copy

import polars as pl
import pytest
import yaml

from curate.recipe import build_config
from curate.registry import get_steps
from curate.runner import compute_step
from curate.steps.base import RunContext
from curate.table import read_table

# Small, fast configs that exercise each step's real code path offline.
EXAMPLES: dict[str, dict] = {
    "validate": {"min_side": 64, "min_caption_words": 3},
    "select": {"where": "width > 100", "reason": "too wide"},
    "export": {"format": "parquet"},
    "captions": {"strategy": "rt", "p": 0.5, "only": "width > 100"},
    "dedup_images": {"tiers": ["exact", "phash"]},
    "dedup_captions": {"tiers": ["exact", "minhash"]},
    "rank": {"model": "digits-tiny", "batch_size": 32, "flag_top_fraction": 0.1},
    "audit": {"oracle": True, "num_samples": 8, "steps": 4, "resolution": 16},
    "train": {
        "steps": 2,
        "batch_size": 8,
        "resolution": 8,
        "checkpoint_every": 0,
        "report_samples": 2,
    },
    # reads earlier audits by id: its full path is tests/steps/test_protect_loop.py
    "compare": {"models": {"a": "audit_a", "b": "audit_b"}, "copy_features": "pixel"},
}
NEEDS_EARLIER_STEPS = {"compare"}


def test_every_registered_step_has_an_example():
    missing = sorted(set(get_steps()) - set(EXAMPLES))
    assert not missing, f"add example configs for {missing} to EXAMPLES"


def _make(name):
    problems: list[str] = []
    step = build_config(get_steps()[name], copy.deepcopy(EXAMPLES[name]), name, problems)
    assert not problems, problems
    return step


def _ctx(run_dir, sub):
    return RunContext(run_dir=run_dir, seed=0, quiet=True, step_dir=run_dir / "steps" / sub)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_step_contract(name, photos_run):
    if name in NEEDS_EARLIER_STEPS:
        pytest.skip("needs earlier steps' outputs: covered end to end elsewhere")
    step = _make(name)
    table = read_table(photos_run)
    before = table.clone()
    out1 = compute_step(step, table, _ctx(photos_run, "a"))
    out2 = compute_step(step, table, _ctx(photos_run, "b"))
    assert table.equals(before), "the step mutated its input"
    assert out1["sample_id"].to_list() == table["sample_id"].to_list()
    added = [c for c in out1.columns if c not in table.columns]
    assert sorted(added) == sorted(step.produced_columns())
    assert out1.select(table.columns).equals(table), "the step changed existing columns"
    assert out1.equals(out2), "the step is not deterministic"
    # rejected rows get nulls, never a verdict
    rejected = out1.filter(pl.col("status") != "ok").select(added)
    assert all(rejected[c].null_count() == rejected.height for c in added)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_step_handles_an_empty_table(name, photos_run):
    step = _make(name)
    empty = read_table(photos_run).head(0)
    out = compute_step(step, empty, _ctx(photos_run, "empty"))
    assert out.height == 0
    assert sorted(c for c in out.columns if c not in empty.columns) == sorted(
        step.produced_columns()
    )


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_step_config_round_trips_through_yaml(name):
    step = _make(name)
    text = yaml.safe_dump({name: step.config()})
    problems: list[str] = []
    again = build_config(get_steps()[name], yaml.safe_load(text)[name], name, problems)
    assert not problems and again == step
