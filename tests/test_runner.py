"""The runner: step contract enforcement, resume after interruption, skipping unchanged steps."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import ClassVar

import polars as pl
import pytest

from curate.recipe import parse_recipe
from curate.registry import get_steps
from curate.runner import run_recipe
from curate.steps.base import Step
from curate.table import read_table, removal_frame

CALLS: list[str] = []


@dataclass(frozen=True)
class Counting(Step):
    """Adds ``counting_value``; records each call; can be told to fail (an interruption)."""

    name: ClassVar[str] = "counting"
    produces: ClassVar[tuple[str, ...]] = ("counting_value",)
    fail: bool = False
    offset: int = 0

    def compute(self, table, ctx):
        CALLS.append(self.name)
        if self.fail:
            raise KeyboardInterrupt
        return table.select((pl.col("source_index") * 2 + self.offset).alias("counting_value"))


@dataclass(frozen=True)
class Counting2(Counting):
    name: ClassVar[str] = "counting2"
    produces: ClassVar[tuple[str, ...]] = ("counting2_value",)

    def compute(self, table, ctx):
        CALLS.append(self.name)
        if self.fail:
            raise KeyboardInterrupt
        return table.select((pl.col("counting_value") + 1).alias("counting2_value"))


@pytest.fixture
def registry(monkeypatch):
    steps = dict(get_steps())
    steps.update({"counting": Counting, "counting2": Counting2})
    monkeypatch.setattr("curate.registry.STEPS", steps)
    CALLS.clear()
    return steps


def _recipe(fail_second=False):
    return parse_recipe(
        {
            "dataset": {"name": "builtin:digits", "limit": 30},
            "steps": [
                {"counting": {}},
                {"counting2": {"fail": fail_second}},
                {"select": {"where": "counting2_value > 40", "reason": "too big"}},
            ],
        }
    )


def test_interrupted_run_resumes_without_recomputing_finished_steps(tmp_path, registry):
    with pytest.raises(KeyboardInterrupt):
        run_recipe(_recipe(fail_second=True), tmp_path, quiet=True)
    assert CALLS == ["counting", "counting2"]
    CALLS.clear()
    # Same first step (same config, same data): only the failed step and later run again.
    # (The second step's config changes from fail=True to fail=False, as a fixed bug would.)
    run_recipe(_recipe(), tmp_path, quiet=True)
    assert CALLS == ["counting2"]
    CALLS.clear()
    results = run_recipe(_recipe(), tmp_path, quiet=True)
    assert CALLS == [] and all(r.skipped for r in results)
    table = read_table(tmp_path)
    assert table["counting2_value"].to_list() == [2 * i + 1 for i in range(30)]


def test_kept_plus_removed_equals_input(tmp_path, registry):
    run_recipe(_recipe(), tmp_path, quiet=True)
    table = read_table(tmp_path)
    rem = removal_frame(table)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["kept"] + stats["removed"] == stats["rows"] == 30
    assert rem.filter(~pl.col("keep"))["removed_reason"].unique().to_list() == ["too big"]
    assert (tmp_path / "report" / "index.html").read_text().count("too big") >= 1


def test_changing_a_step_reruns_it_and_everything_after(tmp_path, registry):
    run_recipe(_recipe(), tmp_path, quiet=True)
    CALLS.clear()
    raw = {
        "dataset": {"name": "builtin:digits", "limit": 30},
        "steps": [
            {"counting": {}},
            {"counting2": {"fail": False}},
            {"select": {"where": "counting2_value > 10"}},
        ],
    }
    results = run_recipe(parse_recipe(raw), tmp_path, quiet=True)
    assert CALLS == []  # counting steps unchanged; select re-ran (cheap, not counted)
    assert [r.skipped for r in results] == [True, True, False]
    assert read_table(tmp_path)["select_drop"].is_not_null().sum() == 25


def test_a_step_breaking_the_contract_is_caught(tmp_path, registry, monkeypatch):
    monkeypatch.setattr(
        Counting,
        "compute",
        lambda self, t, c: t.head(3).select(pl.col("source_index").alias("counting_value")),
    )
    with pytest.raises(RuntimeError, match="returned 3 rows"):
        run_recipe(_recipe(), tmp_path, quiet=True)


def test_changing_the_seed_recomputes_steps(tmp_path, registry):
    run_recipe(_recipe(), tmp_path, quiet=True)
    raw = {
        "seed": 1,
        "dataset": {"name": "builtin:digits", "limit": 30},
        "steps": [{"counting": {}}, {"counting2": {"fail": False}}],
    }
    CALLS.clear()
    results = run_recipe(parse_recipe(raw), tmp_path, quiet=True)
    assert CALLS == ["counting", "counting2"] and not any(r.skipped for r in results)


def test_summary_groups_reasons_without_per_row_details():
    from curate.runner import reason_kind

    reasons = pl.DataFrame(
        {
            "r": [
                "duplicate of s00000001 (sscd 0.91)",
                "duplicate of s00000042 (phash)",
                "smaller than 16px",
            ]
        }
    )
    kinds = reasons.select(reason_kind(pl.col("r")))["r"].to_list()
    assert kinds == ["duplicate of …", "duplicate of …", "smaller than 16px"]


def test_changing_an_upstream_step_reruns_the_steps_after_it(tmp_path, registry):
    """A step's cache key holds everything upstream: a later step whose own config did not
    change still reruns when an earlier one did."""
    run_recipe(_recipe(), tmp_path, quiet=True)
    CALLS.clear()
    raw = {
        "dataset": {"name": "builtin:digits", "limit": 30},
        "steps": [
            {"counting": {"offset": 100}},
            {"counting2": {}},
            {"select": {"where": "counting2_value > 40", "reason": "too big"}},
        ],
    }
    results = run_recipe(parse_recipe(raw), tmp_path, quiet=True)
    assert CALLS == ["counting", "counting2"] and not any(r.skipped for r in results)
    assert read_table(tmp_path)["counting2_value"].to_list() == [2 * i + 101 for i in range(30)]


def test_operational_settings_stay_out_of_the_fingerprint():
    """Thread counts say how fast, not what: changing one must not recompute a finished step,
    while a setting that changes the result must (and both stay in the recorded config)."""
    from curate.runner import step_fingerprint
    from curate.steps.dedup import DedupImages

    base = DedupImages(tiers=("exact", "sscd"))
    assert step_fingerprint(replace(base, sscd_threads=3), "up") == step_fingerprint(base, "up")
    assert step_fingerprint(replace(base, sscd_size=224), "up") != step_fingerprint(base, "up")
    assert replace(base, sscd_threads=3).config()["sscd_threads"] == 3
