"""A step used twice in one recipe (``id:``): distinct folders, columns and report sections,
later steps referring to an earlier one's output by id, and fingerprints / resume per use."""

from __future__ import annotations

import json

import polars as pl
import pytest

from curate.errors import RecipeError
from curate.recipe import parse_recipe
from curate.runner import run_recipe
from curate.steps.train import SIGMA_N_RULES_COLUMN, Train
from curate.table import read_table

TWO_VALIDATES = {
    "name": "twice",
    "dataset": {"name": "builtin:digits", "limit": 40},
    "steps": [
        {"validate": {"id": "loose", "min_side": 1}},
        {"validate": {"id": "strict", "min_side": 1, "min_caption_words": 2}},
    ],
}


def _raw(**second):
    raw = json.loads(json.dumps(TWO_VALIDATES))
    raw["steps"][1]["validate"].update(second)
    return raw


def test_ids_give_distinct_folders_columns_and_resume_per_use(tmp_path):
    run = tmp_path / "run"
    results = run_recipe(parse_recipe(_raw()), run, quiet=True)
    assert [r.name for r in results] == ["validate-loose", "validate-strict"]
    assert sorted(p.name for p in (run / "steps").iterdir()) == [
        "01-validate-loose",
        "02-validate-strict",
    ]
    cols = read_table(run).columns
    assert "validate_loose_drop" in cols and "validate_strict_drop" in cols
    done = json.loads((run / "steps/02-validate-strict/done.json").read_text())
    assert done["id"] == "strict" and done["step"] == "validate"
    # unchanged: both skipped; the second changed: only it runs again
    assert all(r.skipped for r in run_recipe(parse_recipe(_raw()), run, quiet=True))
    again = run_recipe(parse_recipe(_raw(min_caption_words=3)), run, quiet=True)
    assert [r.skipped for r in again] == [True, False]
    # the same config under another id is another step (its own fingerprint and folder)
    renamed = _raw()
    renamed["steps"][1]["validate"]["id"] = "other"
    out = run_recipe(parse_recipe(renamed), run, quiet=True)
    assert [r.skipped for r in out] == [True, False]
    assert (run / "steps/02-validate-other").is_dir()
    assert not (run / "steps/02-validate-strict").exists()
    stats = json.loads((run / "stats.json").read_text())
    assert [s.get("id") for s in stats["steps"]] == ["loose", "other"]


def test_a_step_twice_without_ids_names_the_clash_and_ids_are_checked():
    raw = {"dataset": "builtin:digits", "steps": [{"validate": {}}, {"validate": {}}]}
    with pytest.raises(RecipeError, match="already produced.*an id"):
        parse_recipe(raw)
    raw = {"dataset": "builtin:digits",
           "steps": [{"validate": {"id": "a"}}, {"validate": {"id": "a"}}]}  # fmt: skip
    with pytest.raises(RecipeError, match="already the id of steps\\[1\\]"):
        parse_recipe(raw)
    raw = {"dataset": "builtin:digits", "steps": [{"validate": {"id": "not an id"}}]}
    with pytest.raises(RecipeError, match="plain identifier"):
        parse_recipe(raw)


def test_a_reference_must_name_an_earlier_step():
    """``audit: {model: naive}`` needs a step with id naive before it; after it is too late."""
    audit = {"audit": {"id": "check", "model": "naive", "num_samples": 4}}
    train = {"train": {"id": "naive", "out": "m", "steps": 1}}
    ok = parse_recipe({"dataset": "builtin:digits", "steps": [train, audit]})
    assert ok.steps[1].model == "naive" and ok.steps[0].step_id == "naive"
    assert ok.resolved()["steps"][0]["train"]["id"] == "naive"
    with pytest.raises(RecipeError, match="neither an earlier step's id nor an existing path"):
        parse_recipe({"dataset": "builtin:digits", "steps": [audit, train]})


def test_training_table_all_rows_and_sigma_n_rules():
    """rows: all ignores the removal marks; sigma_n_rules: first true rule wins, the rest get
    sigma_n; the run's table is never changed."""
    table = pl.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d", "e"],
            "status": ["ok", "ok", "ok", "ok", "rejected"],
            "dup": [True, False, True, False, False],
            "flag": [True, True, False, None, False],
            "dedup_drop": [None, "copy", None, None, None],
        }
    )
    rules = ({"where": "dup", "sigma_n": 2.0}, {"where": "flag", "sigma_n": 1.0})
    naive = Train(rows="all").training_table(table)
    assert "dedup_drop" not in naive.columns
    step = Train(objective="ambient", sigma_n=0.0, sigma_n_rules=rules)
    assert step.validate() == []
    protected = step.training_table(table)
    assert protected[SIGMA_N_RULES_COLUMN].to_list() == [2.0, 1.0, 2.0, 0.0, 0.0]
    assert step.train_config().sigma_n_column == SIGMA_N_RULES_COLUMN
    assert "dedup_drop" in protected.columns  # kept rows: b stays removed
    problems = Train(sigma_n_rules=rules).validate()
    assert any("needs objective: ambient" in p for p in problems)
    bad = Train(objective="ambient", sigma_n_rules=({"where": "dup"},)).validate()
    assert any(p.startswith("sigma_n_rules[1]") for p in bad)
