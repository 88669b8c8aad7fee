"""Protects recipe loading: YAML is parsed with the safe loader, in recipe files and in
``--set`` overrides, so a recipe can never run code."""

from __future__ import annotations

import pytest

from curate.errors import RecipeError
from curate.recipe import apply_overrides, load_recipe


def _payload(marker) -> str:
    return f'!!python/object/apply:os.mkdir ["{marker}"]'


def test_recipe_file_with_a_python_tag_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"dataset: builtin:digits\nsteps:\n  - validate:\n      x: {_payload(marker)}\n"
    )
    with pytest.raises(RecipeError):
        load_recipe(recipe)
    assert not marker.exists()


def test_set_override_with_a_python_tag_stays_text_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    raw = {"dataset": "builtin:digits", "seed": 0}
    out = apply_overrides(raw, [f"seed={_payload(marker)}"])
    assert not marker.exists()
    assert out["seed"] == _payload(marker)  # not a YAML value: kept as the text given
