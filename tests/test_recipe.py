"""Recipe validation: every problem at once, each with its YAML path; type-checked overrides."""

from __future__ import annotations

import pytest

from curate.errors import RecipeError
from curate.recipe import apply_overrides, load_recipe, parse_recipe


def _parse(raw):
    return parse_recipe(raw, name="t")


def test_all_problems_reported_with_yaml_paths():
    raw = {
        "dataset": {"name": "builtin:digits", "limt": 3},
        "steps": [
            {"validate": {"min_side": "big"}},
            {"select": {"wher": "x"}},
            {"nonexistent": {}},
        ],
        "bogus": 1,
    }
    with pytest.raises(RecipeError) as info:
        _parse(raw)
    problems = info.value.problems
    assert "dataset.limt: unknown key (did you mean 'limit'?)" in problems
    assert any(p.startswith("steps[1].validate.min_side: must be an integer") for p in problems)
    assert any(p.startswith("steps[2].select.wher: unknown key") for p in problems)
    assert any(p.startswith("steps[3]: unknown step 'nonexistent'") for p in problems)
    assert any(p.startswith("bogus: unknown key") for p in problems)


def test_step_validate_problems_carry_the_path():
    with pytest.raises(RecipeError, match=r"steps\[1\]\.select\.where: not a valid SQL"):
        _parse({"dataset": "builtin:digits", "steps": [{"select": {"where": "a >>> ("}}]})


def test_literal_choices_are_checked():
    with pytest.raises(
        RecipeError, match=r"export\.format: must be one of 'disk' \| 'parquet' \| 'hub'"
    ):
        _parse({"dataset": "builtin:digits", "export": {"format": "zip"}})


def test_same_column_from_two_steps_is_rejected():
    raw = {
        "dataset": "builtin:digits",
        "steps": [{"select": {"where": "true"}}, {"select": {"where": "false"}}],
    }
    with pytest.raises(RecipeError, match="already produced"):
        _parse(raw)
    raw["steps"][1]["select"]["label"] = "second"
    assert len(_parse(raw).steps) == 2


def test_overrides_set_values_and_are_type_checked():
    raw = {"dataset": {"name": "builtin:digits"}, "steps": [{"validate": {"min_side": 4}}]}
    new = apply_overrides(raw, ["steps.1.min_side=8", "dataset.limit=10", "seed=3"])
    rec = _parse(new)
    assert rec.steps[0].min_side == 8 and rec.dataset.limit == 10 and rec.seed == 3
    assert raw["steps"][0]["validate"]["min_side"] == 4  # the input is not mutated
    with pytest.raises(RecipeError, match=r"steps\[1\]\.validate\.min_side: must be an integer"):
        _parse(apply_overrides(raw, ["steps.1.validate.min_side=huge"]))
    with pytest.raises(RecipeError, match="the recipe has 1 steps"):
        apply_overrides(raw, ["steps.5.min_side=1"])
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        apply_overrides(raw, ["steps.1.min_side"])


def test_recipe_files_load(tmp_path):
    for path in ("recipes/demo.yaml", "recipes/laion_subset.yaml"):
        rec = load_recipe(path)
        assert rec.steps and rec.resolved()["dataset"]["name"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [\n")
    with pytest.raises(RecipeError, match="not valid YAML at line"):
        load_recipe(bad)
    pwned = tmp_path / "PWNED"
    bad.write_text(f"!!python/object/apply:os.system ['touch {pwned}']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):  # safe_load builds no objects
        load_recipe(bad)
    assert not pwned.exists()


def test_a_caption_regex_the_run_cannot_use_is_caught_at_validation():
    """Python's re accepts look-ahead; polars, which runs the rule, does not: --dry-run must
    catch it, not the run."""
    raw = {
        "dataset": "builtin:digits",
        "steps": [{"validate": {"reject_caption_patterns": ["(?=x)y"]}}],
    }
    with pytest.raises(RecipeError, match=r"steps\[1\]\.validate\.reject_caption_patterns\[0\]"):
        _parse(raw)
