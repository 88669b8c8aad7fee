"""The protect loop end to end at a tiny budget: a naive model trained on every row, a protected
one on the curated rows, both audited from the same seeds (AMG on the protected one), and the
compare step's figures and report section. Asserts structure, not science."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import yaml

from curate.recipe import load_recipe, parse_recipe
from curate.runner import run_recipe
from curate.table import kept_rows, ok_mask, read_table

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ("memorized_fraction", "fraction_ratio_below_0.5", "copy_rate", "nn_ratio_histogram",
           "frechet", "copied_images", "seeds", "memorized_fraction_heldout_space")  # fmt: skip


def test_protect_loop_trains_audits_and_compares(tmp_path, recipe_at_test_budget):
    raw = yaml.safe_load((ROOT / "recipes/protect_digits_quick.yaml").read_text())
    load_recipe(ROOT / "recipes/protect_digits_quick.yaml")  # the shipped recipe parses
    run = tmp_path / "run"
    results = run_recipe(parse_recipe(recipe_at_test_budget(raw)), run, quiet=True)
    names = [r.name for r in results]
    assert names[-5:] == ["train-naive", "train-protected", "audit-naive_audit",
                          "audit-protected_audit", "compare"]  # fmt: skip
    table = read_table(run)
    steps = {p.name.split("-", 1)[1]: p for p in (run / "steps").iterdir()}

    # naive trained on every row ingest accepted, protected on the kept rows only
    naive = pl.read_parquet(steps["train-naive"] / "trained_rows.parquet")
    protected = pl.read_parquet(steps["train-protected"] / "trained_rows.parquet")
    assert set(naive["sample_id"]) == set(table.filter(ok_mask(table))["sample_id"])
    assert set(protected["sample_id"]) == set(kept_rows(table)["sample_id"])
    assert protected.height < naive.height  # the exact copies were removed
    assert set(protected["train_sigma_n"].to_list()) <= {0.0, 1.0}
    assert 1.0 in protected["train_sigma_n"].to_list()  # shared captions are flagged
    for model in ("model_naive", "model_protected"):
        info = json.loads((run / model / "curate_train.json").read_text())
        assert info["data"]["num_samples"] in (naive.height, protected.height)

    # both audits (and the AMG one) from the same seeds and settings
    audits = [steps["audit-naive_audit"], steps["audit-protected_audit"],
              steps["audit-protected_audit"] / "amg"]  # fmt: skip
    settings = [json.loads((d / "audit.json").read_text())["settings"] for d in audits]
    keys = ("seed", "num_samples", "steps", "sampler")
    assert len({tuple(s[k] for k in keys) for s in settings}) == 1
    assert "audit_naive_audit_copies" in table.columns
    assert "audit_protected_audit_copies" in table.columns

    # compare.json: every figure for every model, and the naive/other ratios
    out = json.loads((steps["compare"] / "compare.json").read_text())
    assert out["same_seeds"] is True
    assert set(out["models"]) == {"naive", "protected", "protected+amg"}
    for label, fig in out["models"].items():
        for key in FIGURES:
            assert fig[key] is not None, (label, key)
        assert sum(fig["nn_ratio_histogram"]["counts"]) == 8
        assert fig["frechet_reference"].startswith("held-out")
        assert (steps["compare"] / out["galleries"][label]).is_file()
    assert set(out["ratios"]) == {"naive/protected", "naive/protected+amg"}
    assert out["reference"]["num_images"] == 40  # one per ground-truth digit

    # the report: the comparison is its first section, each use of a step has its own
    page = (run / "report" / "index.html").read_text()
    sections = sorted(p.name for p in (run / "report" / "sections").glob("*.json"))
    assert sections[0] == "000--compare.json"
    assert page.index("Protect loop") < page.index("<h2>Summary")
    assert "Training (naive)" in page and "Training (protected)" in page


def test_text_protect_loop_rewrites_only_the_protected_models_captions(
    tmp_path, recipe_at_test_budget
):
    """The text variant: the naive model trains on the raw captions (it runs before the
    rewrite), the protected one on rna-rewritten captions of the flagged rows; the audits are
    prompted with the training captions, and compare scores the prompt accuracy."""
    path = ROOT / "recipes/protect_digits_text_quick.yaml"
    load_recipe(path)
    load_recipe(ROOT / "recipes/protect_digits_text.yaml")
    run = tmp_path / "run"
    run_recipe(
        parse_recipe(recipe_at_test_budget(yaml.safe_load(path.read_text()))), run, quiet=True
    )
    table = read_table(run)
    flagged = table.filter(pl.col("caption_new").is_not_null())
    assert flagged.height > 0
    assert (flagged["caption_new"] != flagged["caption"]).any()  # numbers were added
    for model in ("model_naive", "model_protected"):
        info = json.loads((run / model / "curate_train.json").read_text())
        assert info["config"]["conditioning"] == "caption"
    steps = {p.name.split("-", 1)[1]: p for p in (run / "steps").iterdir()}
    prompts = pl.read_parquet(steps["audit-naive_audit"] / "samples.parquet")["prompt"]
    assert set(prompts.to_list()) <= set(table["caption"].to_list())  # raw captions as prompts
    out = json.loads((steps["compare"] / "compare.json").read_text())
    for label, fig in out["models"].items():
        assert 0.0 <= fig["prompt_accuracy"] <= 1.0, label
