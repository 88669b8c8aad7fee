"""The ``captions`` step on an ingested builtin:photos run: targeting, originals kept, mc lists,
determinism per seed, config errors, and export of the rewritten captions."""

from __future__ import annotations

import polars as pl
import pytest

from curate.captions import multi
from curate.errors import DataError
from curate.recipe import build_config
from curate.runner import compute_step
from curate.steps.base import RunContext
from curate.steps.captions import Captions
from curate.table import read_table


def _ctx(run, seed: int = 0) -> RunContext:
    return RunContext(run_dir=run, seed=seed, quiet=True, step_dir=run / "steps" / "cap")


@pytest.fixture
def table(photos_run) -> pl.DataFrame:
    t = read_table(photos_run)
    # the flag a dedup step would add: the planted copies that kept their source's caption
    return t.with_columns(dup_flag=pl.col("src_gt_caption") == "same")


def test_originals_are_kept_and_every_ok_row_is_targeted_by_default(photos_run, table):
    out = compute_step(Captions(strategy="rt", p=1.0), table, _ctx(photos_run))
    assert out["caption"].equals(table["caption"])
    ok = out.filter(pl.col("status") == "ok")
    assert ok["caption_new"].null_count() == 0
    assert (ok["caption_new"] != ok["caption"]).all()
    assert set(ok["caption_strategy"]) == {"rt(p=1, k=2, seed=0, vocab=words)"}
    rejected = out.filter(pl.col("status") != "ok")
    assert rejected.height == 3
    assert rejected["caption_new"].null_count() == rejected["caption_strategy"].null_count() == 3


def test_only_a_boolean_column_targets_the_flagged_rows(photos_run, table):
    out = compute_step(Captions(strategy="cwr", p=1.0, only="dup_flag"), table, _ctx(photos_run))
    targeted = out["caption_new"].is_not_null()
    assert targeted.equals(out["dup_flag"] & (out["status"] == "ok"), check_names=False)
    assert out.filter(~targeted)["caption_strategy"].null_count() == out.filter(~targeted).height


def test_only_a_sql_rule_targets_matching_rows(photos_run, table):
    step = Captions(strategy="rna", only="width >= 200 AND src_gt_transform = 'original'")
    out = compute_step(step, table, _ctx(photos_run))
    expected = (
        (out["width"] >= 200) & (out["src_gt_transform"] == "original") & (out["status"] == "ok")
    )
    assert out["caption_new"].is_not_null().equals(expected, check_names=False)


def test_only_must_be_true_or_false(photos_run, table):
    with pytest.raises(DataError, match="must be true/false per row"):
        compute_step(Captions(strategy="rt", only="width"), table, _ctx(photos_run))


def test_results_depend_on_the_seed_only(photos_run, table):
    step = Captions(strategy="rt", p=0.5)
    a = compute_step(step, table, _ctx(photos_run, seed=1))
    b = compute_step(step, table.reverse(), _ctx(photos_run, seed=1)).reverse()
    c = compute_step(step, table, _ctx(photos_run, seed=2))
    assert a["caption_new"].equals(b["caption_new"])  # row order does not matter
    assert not a["caption_new"].equals(c["caption_new"])


def test_p_zero_leaves_every_caption_as_it_was(photos_run, table):
    out = compute_step(Captions(strategy="rc", p=0.0), table, _ctx(photos_run))
    ok = out.filter(pl.col("status") == "ok")
    assert ok["caption_new"].equals(ok["caption"], check_names=False)


def test_mc_pools_the_captions_of_a_group(photos_run, table):
    step = Captions(strategy="mc", mc_group="src_gt_group", only="src_gt_group >= 0")
    out = compute_step(step, table, _ctx(photos_run))
    assert out["caption_new"].dtype == pl.List(pl.String)
    coffee = out.filter(pl.col("src_gt_name") == "coffee")
    expected = {"a cup of coffee on a saucer seen from above", "a morning espresso"}
    for caption, new in zip(coffee["caption"], coffee["caption_new"], strict=True):
        assert new[0] == caption and set(new) == expected
    blobs = out.filter(pl.col("src_gt_name") == "blobs_1")
    assert blobs["caption_new"][0].to_list() == ["black and white random blobs"]
    assert out.filter(pl.col("src_gt_group") < 0)["caption_new"].null_count() == 6


def test_mc_adds_the_captions_of_an_injected_captioner(photos_run, table, monkeypatch):
    calls = []

    def fake_loader(model, device, num):
        calls.append((model, device, num))
        return lambda images: [[f"a {img.width} px wide picture", "generic"] for img in images]

    monkeypatch.setattr(multi, "load_captioner", fake_loader)
    step = Captions(strategy="mc", captioner="my/captioner", captioner_num=2, only="dup_flag")
    out = compute_step(step, table, _ctx(photos_run))
    assert calls == [("my/captioner", "cpu", 2)]
    row = out.filter(pl.col("dup_flag") & (pl.col("status") == "ok")).row(0, named=True)
    assert row["caption_new"] == [row["caption"], f"a {row['width']} px wide picture", "generic"]
    assert "model:my/captioner" in row["caption_strategy"]
    assert (
        out.filter(~pl.col("dup_flag"))["caption_new"].null_count()
        == out.filter(~pl.col("dup_flag")).height
    )


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"strategy": "rt", "p": 1.2}, "captions.p: must be a probability between 0 and 1"),
        ({"strategy": "rt", "k": -2}, "captions.k: must be a whole number >= 0"),
        ({"strategy": "rt", "only": "width >>> 3"}, "captions.only: not a column name or SQL rule"),
        ({"strategy": "rt", "mc_group": "g"}, "captions.mc_group: only used with strategy mc"),
        ({"strategy": "rt", "vocab": "/no/such/file"}, "captions.vocab:"),
        ({"strategy": "mc", "p": 0.5}, "captions.p: not used by mc here"),
    ],
)
def test_bad_configs_are_reported_with_their_key(params, problem):
    problems: list[str] = []
    build_config(Captions, params, "captions", problems)
    assert any(p.startswith(problem) for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_unknown_strategy_is_a_recipe_problem():
    problems: list[str] = []
    build_config(Captions, {"strategy": "shuffle"}, "steps[2].captions", problems)
    assert problems and problems[0].startswith("steps[2].captions.strategy")


def test_export_writes_new_captions_and_records_the_old(photos_run, table):
    from curate.export import export_run
    from curate.table import write_table

    out = compute_step(Captions(strategy="rt", p=1.0, only="dup_flag"), table, _ctx(photos_run))
    write_table(out, photos_run / "table.parquet")
    summary = export_run(photos_run, "parquet", quiet=True)
    changes = pl.read_parquet(photos_run / "export" / "parquet" / "changes.parquet")
    flagged = out.filter(pl.col("dup_flag") & (pl.col("status") == "ok"))
    assert summary["changed_captions"] == changes.height == flagged.height
    assert set(changes["caption_old"]) <= set(flagged["caption"])
    exported = pl.read_parquet(next((photos_run / "export" / "parquet" / "data").glob("*.parquet")))
    by_id = dict(zip(exported["sample_id"], exported["text"], strict=True))
    for sid, new in zip(flagged["sample_id"], flagged["caption_new"], strict=True):
        assert by_id[sid] == new


def test_report_section_shows_the_rewrites(photos_run, table):
    compute_step(Captions(strategy="rt", p=1.0, only="dup_flag"), table, _ctx(photos_run))
    page = (photos_run / "report" / "index.html").read_text(encoding="utf-8")
    assert "Caption rewriting" in page and "rows targeted" in page
