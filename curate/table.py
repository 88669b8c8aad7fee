"""The sample table: one row per input row, keyed by ``sample_id``; steps append columns.

This module owns the column names every part of curate agrees on, the keep/remove rule (a row
is kept when ingest accepted it and every ``*_drop`` column is null), the rows a model trains
on (:func:`kept_rows`, :func:`caption_lists`), and deterministic parquet I/O (the same table
always gives byte-identical files; a table of :data:`PARTS_MIN_ROWS` rows or more is a folder of
parquet parts with a manifest, read back transparently by :func:`read_table`). It sits in curate's lowest layer with ``curate.core``:
it imports only ``curate.errors``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
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


#: ``write_table`` writes a table of at least this many rows as a folder of parquet parts
#: (``table/``, beside where ``table.parquet`` would be) instead of one file. A module setting so
#: tests and benchmarks can lower it.
PARTS_MIN_ROWS = 5_000_000
#: Rows per part of a parted table.
PART_ROWS = 1_000_000
PARTS_MANIFEST = "manifest.json"
PARTS_FORMAT = "curate-table-parts"
_GENERATION = re.compile(r"g(\d{6,})")


def parts_dir(path: Path | str) -> Path:
    """Where the parted form of the table ``path`` lives: ``RUN/table/`` for ``RUN/table.parquet``."""
    path = Path(path)
    return path.with_name(path.stem)


def _table_paths(path: Path | str) -> tuple[Path, Path]:
    """``(file, parts folder)`` of a table named by its file, its parts folder or its run folder."""
    path = Path(path)
    if path.is_dir() and (path / PARTS_MANIFEST).exists():
        return path.with_name(path.name + ".parquet"), path
    if path.is_dir():
        path = path / TABLE_FILE
    return path, parts_dir(path)


def _read_manifest(folder: Path) -> dict | None:
    """The parts manifest of ``folder``; None when there is none; DataError when it is torn."""
    file = folder / PARTS_MANIFEST
    if not file.exists():
        return None
    try:
        meta = json.loads(file.read_text())
        ok = meta.get("format") == PARTS_FORMAT and isinstance(meta.get("parts"), list)
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise DataError(f"{file}: not a curate table manifest; rerun the command that wrote it")
    return meta


def table_exists(path: Path | str) -> bool:
    """True when the table (a run folder's, or the file ``path``) exists in either form."""
    file, folder = _table_paths(path)
    return file.exists() or (folder / PARTS_MANIFEST).exists()


def table_readable(path: Path | str) -> bool:
    """True when the table exists and its file, or every part, has a readable parquet footer."""
    file, folder = _table_paths(path)
    try:
        meta = _read_manifest(folder)
        files = [file] if meta is None else [folder / p for p in meta["parts"]]
        for f in files:
            pl.read_parquet_schema(f)
    except Exception:  # missing, torn or foreign: polars raises several types
        return False
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _owned_entries(folder: Path, keep: set[str]) -> list[Path]:
    """What a parts folder holds that an earlier write left there: generations and temp files."""
    out = []
    for p in folder.iterdir() if folder.is_dir() else []:
        if p.name in keep:
            continue
        if _GENERATION.fullmatch(p.name) or (p.name.startswith(".") and p.name.endswith(".tmp")):
            out.append(p)
    return out


def _remove(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _write_parts(table: pl.DataFrame, file: Path, folder: Path) -> Path:
    """The table as ``folder/gNNNNNN/part-KKKKK.parquet`` + ``folder/manifest.json``.

    The manifest is the commit: the parts of a new generation are written (and synced) beside
    the old one, then the manifest is replaced by a rename, then the old generation and a
    single-file table of the same name are removed. A crash before the rename leaves the old
    table as it was (its manifest still names its own parts); after it, the new one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        old = _read_manifest(folder)
    except DataError:
        old = None
    used = [int(m.group(1)) for p in folder.iterdir() if (m := _GENERATION.fullmatch(p.name))]
    gen = f"g{max(used, default=0) + 1:06d}"
    keep = {PARTS_MANIFEST, *(str(Path(p).parts[0]) for p in (old or {}).get("parts", []))}
    _remove(_owned_entries(folder, keep))  # torn writes of earlier runs
    (folder / gen).mkdir()
    step = max(1, int(PART_ROWS))
    parts, rows = [], []
    for k, start in enumerate(range(0, table.height, step)):
        name = f"{gen}/part-{k:05d}.parquet"
        chunk = table.slice(start, step)
        chunk.write_parquet(folder / name, compression="zstd", statistics=False)
        _fsync(folder / name)
        parts.append(name)
        rows.append(chunk.height)
    meta = {
        "format": PARTS_FORMAT,
        "version": 1,
        "rows": table.height,
        "columns": table.columns,
        "parts": parts,
        "part_rows": rows,
        "order": "the table's rows are the parts' rows, parts in this order, rows in file order",
    }
    tmp = folder / f".{PARTS_MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    _fsync(tmp)
    os.replace(tmp, folder / PARTS_MANIFEST)  # the commit
    file.unlink(missing_ok=True)
    _remove(_owned_entries(folder, {PARTS_MANIFEST, gen}))
    return folder


def write_table(table: pl.DataFrame, path: Path | str) -> Path:
    """Write ``table`` to ``path`` atomically; returns what was written.

    Below :data:`PARTS_MIN_ROWS` rows: one file (temp file + rename), deterministic bytes for
    equal tables. From it on: a folder of parts (:func:`parts_dir`) committed by its manifest.
    Either way the other form of the same table, if an earlier write left one, is removed after
    the new one is in place, and :func:`read_table` reads whichever is there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = parts_dir(path)
    if table.height >= max(1, int(PARTS_MIN_ROWS)):
        return _write_parts(table, path, folder)
    tmp = path.with_suffix(path.suffix + ".tmp")
    table.write_parquet(tmp, compression="zstd", statistics=False)
    os.replace(tmp, path)
    if (folder / PARTS_MANIFEST).exists():
        # the parted table this one replaces: its manifest first (the file now wins), then parts
        (folder / PARTS_MANIFEST).unlink()
        _remove(_owned_entries(folder, set()))
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when nothing else is in it
    return path


def scan_table(path: Path | str) -> pl.LazyFrame:
    """The table (see :func:`read_table`) as a lazy frame: parts are read in manifest order."""
    file, folder = _table_paths(path)
    meta = _read_manifest(folder)
    if meta is None:
        if not file.exists():
            raise _no_table(file)
        return pl.scan_parquet(file)
    missing = [p for p in meta["parts"] if not (folder / p).exists()]
    if missing:
        raise DataError(
            f"{folder}: part {missing[0]} of the run's table is missing; "
            "rerun the command that wrote it"
        )
    return pl.scan_parquet([folder / p for p in meta["parts"]], hive_partitioning=False)


def _no_table(file: Path) -> UsageError:
    # the same mistake, the same exit code in every command: a usage error (2)
    return UsageError(
        f"{file.parent if file.name == TABLE_FILE else file} is not a curate run folder "
        "(no table.parquet): create one with `curate ingest --dataset NAME --out RUN_DIR`"
    )


def read_table(path: Path | str) -> pl.DataFrame:
    """A run's table from its run folder or its file: one ``table.parquet``, or the parts of
    ``table/`` in order when it was written as parts (:func:`write_table`)."""
    file, folder = _table_paths(path)
    where = file
    try:
        meta = _read_manifest(folder)
        if meta is None:
            if not file.exists():
                raise _no_table(file)
            return pl.read_parquet(file)
        where = folder
        frame = scan_table(folder).collect()
    except (UsageError, DataError):
        raise
    except Exception as err:  # torn or foreign file; polars raises several types
        raise DataError(
            f"{where}: cannot read the run's table ({str(err).splitlines()[0][:200]}); "
            "rerun the command that wrote it"
        ) from None
    if frame.height != meta.get("rows"):
        raise DataError(
            f"{folder}: the run's table has {frame.height} rows, its manifest says "
            f"{meta.get('rows')}; rerun the command that wrote it"
        )
    return frame


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
