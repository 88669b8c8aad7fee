"""The proxy rule of recipes/protect_digits_proxy.yaml: a proxy model trained with its own seed
and audited against the kept rows, whose per-row copy column decides which rows the protected
model only sees above ambient noise. Wiring at a tiny budget (seconds), not science."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import yaml

from curate.recipe import load_recipe, parse_recipe
from curate.runner import run_recipe
from curate.table import kept_rows, ok_mask, read_table

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/protect_digits_proxy.yaml"


def test_proxy_copies_set_the_protected_models_noise(tmp_path, recipe_at_test_budget):
    load_recipe(RECIPE)  # the shipped recipe parses
    raw = recipe_at_test_budget(
        yaml.safe_load(RECIPE.read_text()), report_samples=0, proxy_ratio=1.01
    )
    run = tmp_path / "run"
    results = run_recipe(parse_recipe(raw), run, quiet=True)
    assert [r.name for r in results][2:5] == ["train-proxy", "audit-proxy_audit", "train-naive"]
    table = read_table(run)
    steps = {p.name.split("-", 1)[1]: p for p in (run / "steps").iterdir()}

    # the proxy: every ok row, its own seed (not the recipe's), audited with that seed
    proxy = pl.read_parquet(steps["train-proxy"] / "trained_rows.parquet")
    assert set(proxy["sample_id"]) == set(table.filter(ok_mask(table))["sample_id"])
    info = json.loads((run / "model_proxy" / "curate_train.json").read_text())
    assert info["config"]["seed"] == 7 != raw["seed"]
    audit = json.loads((steps["audit-proxy_audit"] / "audit.json").read_text())
    assert audit["settings"]["seed"] == 7

    # its per-row columns land under the audit's id and drive the protected model's noise
    kept = kept_rows(table)
    copied = kept["audit_proxy_audit_copies"].fill_null(0) > 0
    flagged = kept["dedup_images_cluster"].is_not_null() | kept["dedup_captions_flag"]
    assert copied.any() and (copied & ~flagged).any()  # the proxy adds rows curation missed
    protected = pl.read_parquet(steps["train-protected"] / "trained_rows.parquet")
    levels = dict(zip(protected["sample_id"], protected["train_sigma_n"], strict=True))
    expected = (copied | flagged).to_list()
    got = [levels[s] for s in kept["sample_id"]]
    assert got == [1.0 if e else 0.0 for e in expected]
    assert 0.0 in got  # rows neither copied nor flagged stay clean

    out = json.loads((steps["compare"] / "compare.json").read_text())
    assert out["same_seeds"] is True
    assert set(out["models"]) == {"naive", "protected", "protected+amg"}
