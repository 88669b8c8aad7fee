"""Export: round trip of the kept rows, manifests, dataset card, and the Hub push payload."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from curate.errors import UsageError
from curate.export import export_run
from curate.recipe import parse_recipe
from curate.runner import run_recipe
from curate.table import read_table, removal_frame


@pytest.fixture
def cleaned_run(photos_run):
    """The photos run with a select rule that removes the wide images."""
    recipe = parse_recipe(
        {
            "dataset": "builtin:photos",
            "steps": [{"select": {"where": "width >= 250", "reason": "wide"}}],
        }
    )
    # same dataset config as the template, so ingest is skipped
    run_recipe(recipe, photos_run, quiet=True)
    return photos_run


def test_disk_export_round_trips_exactly_the_kept_rows(cleaned_run):
    from datasets import load_from_disk

    s = export_run(cleaned_run, "disk")
    table = read_table(cleaned_run)
    keep = removal_frame(table)["keep"]
    assert Path(s["out"]) == cleaned_run / "export" / "disk"
    ds = load_from_disk(s["out"])  # the export folder itself is the dataset
    assert ds["sample_id"] == table.filter(keep)["sample_id"].to_list()
    assert ds["text"] == table.filter(keep)["caption"].to_list()
    assert len(ds) + s["removed"] == table.height
    first = ds[0]["image"]
    assert first.size == (table.filter(keep)["width"][0], table.filter(keep)["height"][0])
    removed = pl.read_parquet(Path(s["out"]) / "removed.parquet")
    assert set(removed["sample_id"]) == set(table.filter(~keep)["sample_id"])
    assert {"wide", "truncated", "empty_image", "empty_caption"} <= set(removed["removed_reason"])


def test_parquet_shards_and_card(cleaned_run):
    s = export_run(cleaned_run, "parquet", shard_rows=10)
    out = Path(s["out"])
    shards = sorted((out / "data").glob("*.parquet"))
    assert len(shards) == -(-s["kept"] // 10)
    assert sum(pl.read_parquet(p).height for p in shards) == s["kept"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "path: data/train-*.parquet" in card
    assert f"kept: **{s['kept']}**" in card and "| select | wide |" in card
    assert "select:" in card  # the resolved recipe is recorded


def test_changed_captions_are_exported_and_recorded(photos_run):
    table = read_table(photos_run)
    new = pl.when(pl.col("source_index") == 0).then(pl.lit("a new caption")).otherwise(None)
    table = table.with_columns(caption_new=new, caption_strategy=pl.lit("test"))
    s = export_run(photos_run, "parquet", table=table)
    changes = pl.read_parquet(Path(s["out"]) / "changes.parquet")
    first = table.filter(pl.col("source_index") == 0)["sample_id"][0]
    assert changes.rows() == [(first, table["caption"][0], "a new caption", "test")]
    data = pl.read_parquet(next((Path(s["out"]) / "data").glob("*.parquet")))
    assert data["text"][0] == "a new caption" and data["text"][1] == table["caption"][1]


class FakeHfApi:
    """Records what would be uploaded instead of talking to the Hub."""

    def __init__(self):
        self.calls = []
        self.uploaded: dict[str, bytes] = {}

    def create_repo(self, **kw):
        self.calls.append(("create_repo", kw))
        return f"https://huggingface.co/datasets/{kw['repo_id']}"

    def upload_folder(self, **kw):
        import fnmatch

        self.calls.append(("upload_folder", kw))
        root = Path(kw["folder_path"])
        for p in root.rglob("*"):
            rel = p.relative_to(root).as_posix()
            ignored = any(fnmatch.fnmatch(rel, pat) for pat in kw.get("ignore_patterns") or [])
            if p.is_file() and not ignored:
                self.uploaded[rel] = p.read_bytes()


def test_hub_push_payload_has_card_and_shards_and_no_token(cleaned_run, monkeypatch):
    token = "hf_SECRETtokenVALUE123"
    monkeypatch.setenv("HF_TOKEN", token)
    api = FakeHfApi()
    s = export_run(cleaned_run, "hub", repo_id="me/clean", private=True, api=api)
    assert s["url"].endswith("me/clean")
    create = dict(api.calls)["create_repo"]
    assert create["private"] is True and create["repo_type"] == "dataset"
    assert "README.md" in api.uploaded and "removed.parquet" in api.uploaded
    shards = [k for k in api.uploaded if k.startswith("data/")]
    assert shards and sum(pl.read_parquet(api.uploaded[k]).height for k in shards) == s["kept"]
    for name, data in api.uploaded.items():
        assert token.encode() not in data, f"token leaked into {name}"
        assert str(cleaned_run.resolve()).encode() not in data, f"local path in {name}"
    # exactly the dataset repository the parquet export writes, none of curate's bookkeeping
    out = Path(s["out"])
    local = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(api.uploaded) == local - {".curate.json", "export.json"}
    assert out == cleaned_run / "export" / "parquet"
    for path in Path(cleaned_run).rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), f"token leaked into {path}"


def test_hub_export_needs_repo_id_and_a_token(cleaned_run, monkeypatch):
    with pytest.raises(UsageError, match="--repo-id"):
        export_run(cleaned_run, "hub")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(cleaned_run / "empty_hf_home"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(cleaned_run / "nope"), raising=False)
    with pytest.raises(UsageError, match="Hugging Face token"):
        export_run(cleaned_run, "hub", repo_id="me/clean")


def test_merged_duplicate_captions_export_as_a_list_and_feed_the_trainer(photos_run):
    from curate.train.data import from_table

    table = read_table(photos_run)
    merged = pl.when(pl.col("source_index") == 1).then(pl.lit(["cap a", "cap b"])).otherwise(None)
    table = table.with_columns(dedup_images_captions=merged.cast(pl.List(pl.String)))
    s = export_run(photos_run, "parquet", table=table)
    data = pl.read_parquet(next((Path(s["out"]) / "data").glob("*.parquet")))
    assert data.schema["text"] == pl.List(pl.String)
    texts = data["text"].to_list()
    assert texts[1] == ["cap a", "cap b"] and texts[0] == [table["caption"][0]]
    from curate.io.store import ImageStore

    train = from_table(table, ImageStore(photos_run), channels=1, resolution=8)
    second = table.filter(pl.col("source_index") == 1)["sample_id"][0]
    assert train.captions[train.sample_ids.index(second)] == ["cap a", "cap b"]


def test_parquet_export_is_a_dataset_repository_load_dataset_reads(cleaned_run):
    from datasets import load_dataset

    s = export_run(cleaned_run, "parquet", shard_rows=10)
    table = read_table(cleaned_run)
    keep = removal_frame(table)["keep"]
    kept = load_dataset(s["out"], split="train")
    assert kept["sample_id"] == table.filter(keep)["sample_id"].to_list()
    removed = load_dataset(s["out"], "removed", split="train")
    assert sorted(removed["sample_id"]) == sorted(table.filter(~keep)["sample_id"].to_list())


def test_formats_do_not_replace_each_other(cleaned_run):
    disk = export_run(cleaned_run, "disk")
    parquet = export_run(cleaned_run, "parquet")
    assert disk["out"] != parquet["out"]
    assert (Path(disk["out"]) / "state.json").exists() and (Path(parquet["out"]) / "data").is_dir()
    again = export_run(cleaned_run, "disk")  # the run's own export of the same format: replaced
    assert again["out"] == disk["out"]


def test_card_counts_every_ingest_rejection_and_first_reason_wins(photos_run):
    """The card's reason table includes ingest rejections, counts rewritten captions, and
    reports the first step's reason for a row two steps removed."""
    table = read_table(photos_run)
    first = pl.when(pl.col("source_index") == 0).then(pl.lit("first reason"))
    second = pl.when(pl.col("source_index").is_in([0, 1])).then(pl.lit("second reason"))
    new = pl.when(pl.col("source_index") == 2).then(pl.lit("a rewritten caption"))
    table = table.with_columns(
        a_drop=first.otherwise(None),
        b_drop=second.otherwise(None),
        caption_new=new.otherwise(None),
    )
    s = export_run(photos_run, "parquet", table=table)
    card = (Path(s["out"]) / "README.md").read_text()
    rejected = table.filter(pl.col("status") != "ok")
    for reason in set(rejected["reason"]):
        n = rejected.filter(pl.col("reason") == reason).height
        assert f"| ingest | {reason} | {n} |" in card
    assert "| a | first reason | 1 |" in card and "| b | second reason | 1 |" in card
    assert "captions rewritten: **1**" in card
