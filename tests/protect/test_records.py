"""Protects what a run records and hands on: ``stats.json`` counts ingest rejections, a Hub
push never logs the token, and a rewritten caption beats merged duplicate captions in both the
export and the trainer."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl
from click.testing import CliRunner

from curate.export import export_run
from curate.runner import apply_step
from curate.steps.base import RunContext
from curate.steps.validate import Validate
from curate.table import read_table

TOKEN = "hf_PROTECTsecretTOKEN0987"


def test_stats_json_counts_ingest_rejections_by_reason(photos_run):
    """stats.json's removed_by_reason holds the rows ingest rejected (builtin:photos has a
    truncated JPEG and an empty file), and the counts add up to every removed row."""
    table = read_table(photos_run)
    rejected = table.filter(pl.col("status") != "ok").height
    assert rejected >= 2
    apply_step(photos_run, Validate(min_side=1), RunContext(run_dir=photos_run, quiet=True))
    stats = json.loads((photos_run / "stats.json").read_text())
    by_ingest = sum(r["count"] for r in stats["removed_by_reason"] if r["step"] == "ingest")
    assert by_ingest == rejected
    assert sum(r["count"] for r in stats["removed_by_reason"]) == stats["removed"]
    assert stats["kept"] + stats["removed"] == stats["rows"] == table.height


class _FakeHub:
    """Records an upload instead of talking to the Hub."""

    def __init__(self, *args, **kwargs):
        self.calls = []

    def create_repo(self, **kw):
        self.calls.append(("create_repo", kw))
        return f"https://huggingface.co/datasets/{kw['repo_id']}"

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw))


def _assert_no_token(caplog, run: Path, *texts: str) -> None:
    for record in caplog.records:
        assert TOKEN not in record.getMessage(), f"token in a log record: {record.getMessage()}"
    for text in texts:
        assert TOKEN not in text
    for path in run.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), f"token written to {path}"


def test_hub_push_never_logs_the_token(photos_run, monkeypatch, caplog):
    """Library path: with HF_TOKEN set, no log record (at any level) and no file holds it."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    s = export_run(photos_run, "hub", repo_id="me/clean", api=_FakeHub())
    assert s["url"].endswith("me/clean")
    assert any(r.name == "curate" for r in caplog.records)  # curate did log the push
    _assert_no_token(caplog, photos_run, json.dumps(s))


def test_export_command_hub_push_never_logs_the_token(photos_run, monkeypatch, caplog):
    """`curate export --format hub`: neither its output nor its log shows the token."""
    import huggingface_hub

    from curate.cli.data import export

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHub)
    caplog.set_level(logging.DEBUG)
    res = CliRunner().invoke(export, [str(photos_run), "--format", "hub", "--repo-id", "me/x"])
    assert res.exit_code == 0, res.output
    _assert_no_token(caplog, photos_run, res.output)


def _both_captions(run: Path) -> tuple[pl.DataFrame, str, str]:
    """Row 0 rewritten by the captions step AND the kept sample of a merged duplicate group;
    row 1 only merged."""
    table = read_table(run)
    first, second = table["sample_id"][0], table["sample_id"][1]
    new = pl.when(pl.col("sample_id") == first).then(pl.lit("a rewritten caption"))
    merged = pl.when(pl.col("sample_id").is_in([first, second])).then(pl.lit(["dup a", "dup b"]))
    table = table.with_columns(
        caption_new=new.otherwise(None),
        caption_strategy=pl.lit("rc"),
        dedup_images_captions=merged.otherwise(None).cast(pl.List(pl.String)),
    )
    return table, first, second


def test_rewritten_caption_beats_merged_captions_in_the_export(photos_run):
    table, first, second = _both_captions(photos_run)
    s = export_run(photos_run, "parquet", table=table)
    data = pl.read_parquet(next((Path(s["out"]) / "data").glob("*.parquet")))
    text = dict(zip(data["sample_id"].to_list(), data["text"].to_list(), strict=True))
    assert text[first] == ["a rewritten caption"]
    assert text[second] == ["dup a", "dup b"]


def test_rewritten_caption_beats_merged_captions_in_training(photos_run):
    from curate.io.store import ImageStore
    from curate.train.data import from_table

    table, first, second = _both_captions(photos_run)
    data = from_table(table, ImageStore(photos_run), channels=1, resolution=8)
    assert data.captions[data.sample_ids.index(first)] == ["a rewritten caption"]
    assert data.captions[data.sample_ids.index(second)] == ["dup a", "dup b"]
