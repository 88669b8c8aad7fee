"""Export the kept rows of a run: a ``save_to_disk`` folder, parquet shards, or a Hub push.

Every export also writes ``removed.parquet`` (every removed ``sample_id`` with the step and
reason), ``changes.parquet`` (every kept row whose caption was rewritten, old and new) and a
dataset card (``README.md`` with YAML metadata) recording the recipe, the tool version and the
counts. The Hub token is read by ``huggingface_hub`` itself and never written anywhere.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import polars as pl

from curate._version import __version__
from curate.errors import DataError, UsageError
from curate.io.folders import (
    atomic_write_json,
    disk_errors,
    finish_output_dir,
    prepare_output_dir,
    read_json,
    require_run_dir,
    run_id,
    run_lock,
)
from curate.table import SAMPLE_ID, caption_lists, removal_counts, removal_frame

log = logging.getLogger("curate")
Format = Literal["disk", "parquet", "hub"]
IMAGE_COLUMN = "image"
CAPTION_COLUMN = "text"
EXPORT_DIR = "export"
#: curate's own files in an export folder (its marker; export.json names local paths): they
#: stay local, everything else is the dataset repository a Hub push uploads.
BOOKKEEPING = (".curate.json", "export.json", ".*")


def export_columns(table: pl.DataFrame) -> pl.DataFrame:
    """The per-row metadata columns of the exported dataset (images are added separately).

    The caption column holds what the row trains with (``curate.table.caption_lists``): the
    rewritten caption where a step wrote one, the merged captions of a collapsed duplicate
    group, or the original. It is a list column when any row has more than one caption (the
    diffusers trainers draw one per use), else a string. Source columns keep their names.
    """
    lists = caption_lists(table)
    multi = table.height > 0 and int(lists.list.len().max() or 0) > 1
    text = lists if multi else lists.list.first()
    src = [c for c in table.columns if c.startswith("src_")]
    return table.select(
        pl.col(SAMPLE_ID),
        *[
            pl.col(c).alias(c[4:])
            for c in src
            if c[4:] not in (SAMPLE_ID, CAPTION_COLUMN, IMAGE_COLUMN)
        ],
    ).insert_column(1, text.alias(CAPTION_COLUMN))


def removed_manifest(table: pl.DataFrame) -> pl.DataFrame:
    """Every removed row: id, source index, which step removed it and why, plus ``*_of`` links."""
    rem = removal_frame(table)
    links = [c for c in table.columns if c.endswith("_of")]
    return (
        table.select(SAMPLE_ID, "source_index", "caption", *links)
        .join(rem, on=SAMPLE_ID, maintain_order="left")
        .filter(~pl.col("keep"))
        .select(SAMPLE_ID, "source_index", "removed_by", "removed_reason", "caption", *links)
    )


def changes_manifest(table: pl.DataFrame) -> pl.DataFrame:
    """Every kept row whose caption a step rewrote: old caption, new caption, strategy."""
    rem = removal_frame(table)
    if "caption_new" not in table.columns:
        return pl.DataFrame(
            schema={
                SAMPLE_ID: pl.String,
                "caption_old": pl.String,
                "caption_new": pl.String,
                "strategy": pl.String,
            }
        )
    strategy = (
        pl.col("caption_strategy")
        if "caption_strategy" in table.columns
        else pl.lit(None, dtype=pl.String)
    )
    new = pl.col("caption_new")
    if table["caption_new"].dtype == pl.List(pl.String):
        new = new.list.join(" | ")
    return (
        table.join(rem.select(SAMPLE_ID, "keep"), on=SAMPLE_ID, maintain_order="left")
        .filter(pl.col("keep") & pl.col("caption_new").is_not_null())
        .select(
            pl.col(SAMPLE_ID),
            pl.col("caption").alias("caption_old"),
            new.alias("caption_new"),
            strategy.cast(pl.String).alias("strategy"),
        )
        .filter(pl.col("caption_old") != pl.col("caption_new"))
    )


def build_dataset(table: pl.DataFrame, run_dir: Path, work_dir: Path):
    """A ``datasets.Dataset`` of the kept rows: image (stored bytes) + metadata columns."""
    from datasets import Dataset, Features, Image, Value
    from datasets.arrow_writer import ArrowWriter

    from curate.io.store import ImageStore

    rem = removal_frame(table)
    kept = table.filter(rem["keep"])
    meta = export_columns(kept)
    store = ImageStore(run_dir)
    meta_ds = Dataset(meta.to_arrow())
    features = Features({IMAGE_COLUMN: Image(), **meta_ds.features})
    if CAPTION_COLUMN in features and isinstance(features[CAPTION_COLUMN], Value):
        features[CAPTION_COLUMN] = Value("string")
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "export.arrow"
    writer = ArrowWriter(features=features, path=str(path))
    try:
        for row in meta.iter_rows(named=True):
            data = store.encoded(row[SAMPLE_ID])
            if data is None:
                raise DataError(f"kept row {row[SAMPLE_ID]} has no stored image; re-run ingest")
            writer.write(
                features.encode_example({IMAGE_COLUMN: {"bytes": data, "path": None}, **row})
            )
        writer.finalize()
    finally:
        writer.close()
    return Dataset.from_file(str(path))


def dataset_card(
    table: pl.DataFrame,
    recipe_yaml: str | None,
    repo_id: str | None,
    num_shards: int,
    layout: str = "parquet",
) -> str:
    """README.md with YAML metadata: what was kept, what was removed and why, and how.

    For the parquet layout its ``configs:`` make the folder a dataset repository:
    ``load_dataset(OUT, split="train")`` gives the kept rows, ``load_dataset(OUT, "removed")``
    the removal manifest and ``load_dataset(OUT, "changes")`` the rewritten captions.
    """
    rem = removal_frame(table)
    kept = int(rem["keep"].sum())
    counts = removal_counts(table)
    changed = changes_manifest(table).height
    title = repo_id or "curated dataset"
    rows = "\n".join(f"| {r[0]} | {r[1]} | {r[2]} |" for r in counts.iter_rows()) or "| - | - | 0 |"
    recipe_block = (
        f"```yaml\n{recipe_yaml.strip()}\n```"
        if recipe_yaml
        else "_no recipe: built with individual commands_"
    )
    if layout == "disk":
        configs = ""
        where = "a `save_to_disk` dataset at this folder's root: `datasets.load_from_disk(DIR)`"
    else:
        configs = (
            "configs:\n- config_name: default\n  data_files:\n  - split: train\n"
            "    path: data/train-*.parquet\n- config_name: removed\n  data_files:\n"
            "  - split: train\n    path: removed.parquet\n- config_name: changes\n"
            "  data_files:\n  - split: train\n    path: changes.parquet\n"
        )
        where = f"in {num_shards} parquet shard(s) under `data/`"
    return f"""---
tags:
- curate
- image-text
size_categories:
- {_size_category(kept)}
{configs}---

# {title}

Cleaned with curate {__version__} before diffusion training: duplicated or
easily reproduced samples were removed or had their captions rewritten so that a model trained
on this data copies less.

- input rows: **{table.height}**
- kept: **{kept}** ({where})
- removed: **{table.height - kept}** (listed with reasons in `removed.parquet`)
- captions rewritten: **{changed}** (old and new in `changes.parquet`)

## Removed rows

| step | reason | rows |
| --- | --- | --- |
{rows}

## Recipe

{recipe_block}
"""


def _size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "n>1M"


def export_run(
    run_dir: Path | str,
    format: Format = "disk",
    *,
    out: Path | str | None = None,
    table: pl.DataFrame | None = None,
    repo_id: str | None = None,
    private: bool = False,
    shard_rows: int = 5000,
    api: Any = None,
    quiet: bool = False,
    progress: Callable | None = None,
    overwrite: bool = False,
) -> dict:
    """Export the kept rows of ``run_dir``; returns a summary with paths and counts.

    ``api`` is the Hub client used for ``format="hub"`` (default ``huggingface_hub.HfApi()``,
    which finds the token from ``hf auth login`` or ``HF_TOKEN``); tests inject a fake.

    ``out`` (default ``RUN_DIR/export``) must be new, empty, or this run's own earlier export
    in the same format; another curate export is replaced only with ``overwrite``, and a
    folder curate did not make is never written into. The export is built beside ``out`` and
    moved into place when complete.
    """
    from curate.table import read_table

    if format not in ("disk", "parquet", "hub"):
        raise UsageError(f"--format {format!r}: use disk, parquet or hub")
    if format == "hub" and not repo_id:
        raise UsageError("--format hub needs --repo-id user/name")
    if shard_rows < 1:
        raise UsageError("shard_rows: must be >= 1")
    run_dir = require_run_dir(run_dir)
    with run_lock(run_dir):
        table = read_table(run_dir) if table is None else table
        return _export_locked(
            run_dir, table, format, out, repo_id, private, shard_rows, api, overwrite
        )


def _export_locked(
    run_dir: Path,
    table: pl.DataFrame,
    format: Format,
    out: Path | str | None,
    repo_id: str | None,
    private: bool,
    shard_rows: int,
    api: Any,
    overwrite: bool,
) -> dict:
    layout = "parquet" if format == "hub" else format  # a Hub push uploads the parquet folder
    out = Path(out) if out is not None else default_export_dir(run_dir, format)
    owner = _owner_key(run_dir, layout)
    staged = prepare_output_dir(out, "export", overwrite=overwrite, owner=owner, protect=(run_dir,))
    try:
        summary = _write_export(run_dir, table, format, staged, repo_id, shard_rows)
        summary["out"] = str(out)
        atomic_write_json(staged / "export.json", summary)
        finish_output_dir(staged, out, "export", owner=owner, what=f"{layout} export")
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    if format == "hub":
        summary["url"] = push_folder(out, repo_id, private=private, api=api)
        atomic_write_json(out / "export.json", summary)
    return summary


def _owner_key(run_dir: Path, layout: str) -> str:
    """Which run and layout an export folder belongs to: the run's id (it moves with the run
    folder), never a local path (the folder may be pushed to the Hub)."""
    blob = f"{run_id(run_dir)}|{layout}".encode()
    return hashlib.blake2b(blob, digest_size=12).hexdigest()


def default_export_dir(run_dir: Path | str, format: str) -> Path:
    """``RUN_DIR/export/disk`` or ``RUN_DIR/export/parquet`` (a Hub push uses the latter)."""
    return Path(run_dir) / EXPORT_DIR / ("parquet" if format == "hub" else format)


def export_is_current(out: Path, stats: dict) -> bool:
    """Whether ``out`` still holds the export a finished export step recorded in ``stats``."""
    meta = read_json(out / "export.json")
    return meta is not None and all(meta.get(k) == stats.get(k) for k in ("rows", "kept", "format"))


def _write_export(
    run_dir: Path,
    table: pl.DataFrame,
    format: Format,
    out: Path,
    repo_id: str | None,
    shard_rows: int,
) -> dict:
    removed = removed_manifest(table)
    kept = table.height - removed.height
    if kept == 0:
        raise DataError(
            f"{run_dir}: nothing to export, all {table.height} rows were removed "
            f"(see `curate info {run_dir}`)"
        )
    recipe_path = run_dir / "recipe.resolved.yaml"
    recipe_yaml = recipe_path.read_text(encoding="utf-8") if recipe_path.exists() else None
    with disk_errors("write", out):
        ds = build_dataset(table, run_dir, out / ".work")
        changes = changes_manifest(table)
        removed.write_parquet(out / "removed.parquet")
        changes.write_parquet(out / "changes.parquet")
        summary: dict[str, Any] = {
            "format": format,
            "rows": table.height,
            "kept": len(ds),
            "removed": removed.height,
            "changed_captions": changes.height,
        }
        if summary["kept"] + summary["removed"] != summary["rows"]:
            raise DataError("internal: kept + removed != rows; refusing to export")
        if format == "disk":
            # the dataset at the folder's root, so ``load_from_disk(OUT)`` opens it
            ds.save_to_disk(str(out))
            num_shards = 1
        else:
            data_dir = out / "data"
            data_dir.mkdir()
            num_shards = max(1, -(-len(ds) // shard_rows))
            for i in range(num_shards):
                shard = ds.shard(num_shards=num_shards, index=i, contiguous=True)
                shard.to_parquet(str(data_dir / f"train-{i:05d}-of-{num_shards:05d}.parquet"))
        del ds
        shutil.rmtree(out / ".work", ignore_errors=True)
        (out / "README.md").write_text(
            dataset_card(table, recipe_yaml, repo_id, num_shards, layout=format),
            encoding="utf-8",
        )
    return summary


def push_folder(folder: Path, repo_id: str, *, private: bool = False, api: Any = None) -> str:
    """Create the dataset repo (if needed) and upload ``folder``; returns the repo URL."""
    if api is None:
        from huggingface_hub import HfApi, get_token

        if get_token() is None:
            raise UsageError(
                "--format hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN"
            )
        api = HfApi()
    try:
        url = api.create_repo(repo_id=repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(folder),
            ignore_patterns=list(BOOKKEEPING),
            commit_message=f"Upload dataset cleaned with curate {__version__}",
        )
    except UsageError:
        raise
    except Exception as err:  # network, auth, permissions: one line, never the token
        raise DataError(
            f"--repo-id {repo_id}: push to the Hub failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'})"
        ) from None
    log.info("pushed %s", repo_id)
    return str(url)
