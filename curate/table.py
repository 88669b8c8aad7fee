"""The sample table: one row per input row, keyed by ``sample_id``; steps append columns.

This module owns the column names every part of curate agrees on, the keep/remove rule (a row
is kept when ingest accepted it and every ``*_drop`` column is null), the rows a model trains
on (:func:`kept_rows`, :func:`caption_lists`), and deterministic parquet I/O (the same table
always gives byte-identical files). It sits in curate's lowest layer with ``curate.core``:
it imports only ``curate.errors``.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from curate.errors import DataError, UsageError

#: A column named ``<step>_drop`` holding a reason string marks a row for removal; null keeps it.
DROP_SUFFIX = "_drop"
SAMPLE_ID = "sample_id"
STATUS = "status"
REASON = "reason"
STATUS_OK = "ok"
STATUS_REJECTED = "rejected"
TABLE_FILE = "table.parquet"

#: Columns written by ingest, in order. Source columns follow, prefixed ``src_``.
BASE_COLUMNS = (
    SAMPLE_ID,
    "source_index",
    "caption",
    "captions",
    "width",
    "height",
    "mode",
    "format",
    "num_bytes",
    "pixel_hash",
    STATUS,
    REASON,
)


def write_table(table: pl.DataFrame, path: Path | str) -> Path:
    """Write ``table`` atomically (temp file + rename), deterministic bytes for equal tables."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    table.write_parquet(tmp, compression="zstd", statistics=False)
    os.replace(tmp, path)
    return path


def read_table(path: Path | str) -> pl.DataFrame:
    path = Path(path)
    if path.is_dir():
        path = path / TABLE_FILE
    if not path.exists():
        # the same mistake, the same exit code in every command: a usage error (2)
        raise UsageError(
            f"{path.parent if path.name == TABLE_FILE else path} is not a curate run folder "
            "(no table.parquet): create one with `curate ingest --dataset NAME --out RUN_DIR`"
        )
    try:
        return pl.read_parquet(path)
    except Exception as err:  # torn or foreign file; polars raises several types
        raise DataError(
            f"{path}: cannot read the run's table ({str(err).splitlines()[0][:200]}); "
            "rerun the command that wrote it"
        ) from None


def drop_columns(table: pl.DataFrame) -> list[str]:
    """The removal-reason columns, in the order they were added."""
    return [c for c in table.columns if c.endswith(DROP_SUFFIX)]


def removal_frame(table: pl.DataFrame) -> pl.DataFrame:
    """``sample_id``, ``keep``, ``removed_by`` and ``removed_reason`` for every row.

    A row is removed when ingest rejected it or any ``*_drop`` column holds a reason; the first
    reason (in column order, i.e. step order) is the one reported.
    """
    by = pl.when(pl.col(STATUS) != STATUS_OK).then(pl.lit("ingest"))
    why = pl.when(pl.col(STATUS) != STATUS_OK).then(pl.col(REASON))
    for col in drop_columns(table):
        step = col[: -len(DROP_SUFFIX)]
        by = by.when(pl.col(col).is_not_null()).then(pl.lit(step))
        why = why.when(pl.col(col).is_not_null()).then(pl.col(col))
    by = by.otherwise(pl.lit(None, dtype=pl.String))
    why = why.otherwise(pl.lit(None, dtype=pl.String))
    return table.select(
        pl.col(SAMPLE_ID),
        by.alias("removed_by"),
        why.alias("removed_reason"),
    ).with_columns(keep=pl.col("removed_by").is_null())


def reason_kind(reason: pl.Expr) -> pl.Expr:
    """A removal reason without its per-row details (sample ids, scores in parentheses), so the
    summary counts "duplicate image and caption of ..." once, not once per kept sample."""
    return (
        reason.str.replace_all(r"\s*\([^)]*\)", "")
        .str.replace_all(r"\b[A-Za-z][\w~#-]*\d[\w~#.-]*\b", "…")
        .str.strip_chars()
    )


def removal_counts(table: pl.DataFrame) -> pl.DataFrame:
    """Removed rows counted by step and reason kind (``removed_by``, ``reason_kind``, ``rows``),
    largest first: what ``curate info`` and the dataset card show."""
    return (
        removal_frame(table)
        .filter(~pl.col("keep"))
        .with_columns(reason_kind=reason_kind(pl.col("removed_reason")))
        .group_by(["removed_by", "reason_kind"])
        .len(name="rows")
        .sort(["rows", "removed_by", "reason_kind"], descending=[True, False, False])
    )


def kept_mask(table: pl.DataFrame) -> pl.Series:
    """Boolean Series: True for rows that survive ingest and every step."""
    return removal_frame(table)["keep"]


def kept_rows(table: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``table`` that survive ingest and every step (:func:`kept_mask`), in order."""
    return table.filter(kept_mask(table))


def ok_mask(table: pl.DataFrame) -> pl.Series:
    """True for rows that ingest accepted (steps compute on these; others get nulls)."""
    return table[STATUS] == STATUS_OK


def caption_lists(table: pl.DataFrame) -> pl.Series:
    """The captions each row trains with, as a list per row (empty for rows without any).

    In order of precedence: a rewrite by the ``captions`` step (``caption_new``: a string, or a
    list for ``mc``), the distinct captions of a collapsed same-image group
    (``dedup_images_captions``), the source's own caption list (``captions``), and ``caption``.
    The trainer draws one per use; export writes them (as a list column when any row has more
    than one).
    """
    candidates: list[pl.Expr] = []
    if "caption_new" in table.columns:
        new = pl.col("caption_new")
        if table.schema["caption_new"] != pl.List(pl.String):
            new = pl.concat_list(new)
        candidates.append(pl.when(pl.col("caption_new").is_not_null()).then(new))
    if "dedup_images_captions" in table.columns:
        merged = pl.col("dedup_images_captions")
        candidates.append(pl.when(merged.list.len() > 0).then(merged))
    if "captions" in table.columns:
        candidates.append(pl.when(pl.col("captions").list.len() > 0).then(pl.col("captions")))
    if "caption" in table.columns:
        candidates.append(pl.when(pl.col("caption").is_not_null()).then(pl.concat_list("caption")))
    if not candidates:
        return pl.Series("captions", [[] for _ in range(table.height)], dtype=pl.List(pl.String))
    expr = pl.coalesce(candidates).fill_null(pl.lit([], dtype=pl.List(pl.String)))
    return table.select(expr.alias("captions"))["captions"]


def evaluate_rule(table: pl.DataFrame, rule: str, key: str) -> pl.Series:
    """A boolean per row from a column name or a SQL rule over columns (``vgr_pct >= 0.9``).

    ``key`` names the recipe key in the one-line error (``select.where``, ``captions.only``).
    Nulls stay null: the caller decides what a missing value means.
    """
    if rule in table.columns:
        hit = table[rule]
    else:
        try:
            hit = table.select(pl.sql_expr(rule).alias("hit"))["hit"]
        except Exception as err:
            raise DataError(
                f"{key} {rule!r} failed on this table: {str(err).splitlines()[0]}"
            ) from None
    if hit.dtype != pl.Boolean:
        raise DataError(f"{key} {rule!r} must be true/false per row, got {hit.dtype}")
    return hit
