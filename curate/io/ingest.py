"""Ingest: a source -> a run folder (``images/`` Arrow dataset + ``table.parquet``).

Every input row becomes exactly one table row. Rows that cannot be used are kept with
``status="rejected"`` and a ``reason``; nothing is dropped and nothing raises.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curate._version import __version__
from curate.errors import DataError, UsageError
from curate.io.folders import (
    atomic_write_json,
    claim_run_dir,
    disk_errors,
    read_json,
    replace_dir,
    reset_run_dir,
    run_lock,
    staging_dir,
)
from curate.io.images import DEFAULT_MAX_PIXELS, decode_image
from curate.io.load import ROW_ERROR, Source, open_source, source_fingerprint
from curate.io.paths import read_image_file
from curate.io.store import IMAGES_DIR
from curate.table import (
    SAMPLE_ID,
    STATUS_OK,
    STATUS_REJECTED,
    TABLE_FILE,
    table_readable,
    write_table,
)

INGEST_FILE = "ingest.json"
_OPERATIONAL = ("fetch_workers", "fetch_timeout", "fetch_retries")


@dataclass(frozen=True)
class IngestConfig:
    """What to ingest and how; recorded in ``ingest.json`` and the recipe's ``dataset:``."""

    name: str
    split: str = "train"
    image_column: str | None = None
    caption_column: str | None = None
    id_column: str | None = None
    limit: int | None = None
    streaming: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = 1
    allow_outside_paths: bool = False
    fetch_urls: bool = True  # download http(s) image URLs (the img2dataset / LAION layout)
    fetch_workers: int = 16
    fetch_timeout: float = 10.0
    fetch_retries: int = 2  # transient failures (timeouts, refused connections, 5xx) retried

    def validate(self) -> list[str]:
        problems = []
        if not self.name:
            problems.append("name: required (a Hub name, a local path or builtin:digits)")
        if self.limit is not None and self.limit < 0:
            problems.append("limit: must be >= 0")
        if self.max_pixels <= 0:
            problems.append("max_pixels: must be > 0")
        if self.min_side < 1:
            problems.append("min_side: must be >= 1")
        if self.fetch_workers < 1:
            problems.append("fetch_workers: must be >= 1")
        if not self.fetch_timeout > 0:
            problems.append("fetch_timeout: must be > 0 seconds")
        if self.fetch_retries < 0:
            problems.append("fetch_retries: must be >= 0")
        return problems

    def fingerprint(self) -> str:
        """What the ingest depends on; how fast URLs are fetched is not part of it."""
        settings = {k: v for k, v in asdict(self).items() if k not in _OPERATIONAL}
        blob = json.dumps(settings, sort_keys=True).encode()
        return hashlib.blake2b(blob, digest_size=8).hexdigest()


def _image_ref(cell: Any) -> str | None:
    """The path or URL string a cell points at (None for inline bytes or no reference)."""
    if isinstance(cell, str):
        return cell
    if isinstance(cell, dict) and not cell.get("bytes") and isinstance(cell.get("path"), str):
        return cell["path"]
    return None


def _read_bytes(
    cell: Any, source: Source, allow_outside: bool, fetched: dict | None = None
) -> tuple[bytes | None, str | None]:
    """The encoded image of one cell, or ``(None, reason)``.

    Paths resolve against the dataset's own folder; one that leaves it is ``outside_dataset``
    unless ``allow_outside``. Images of a Hub dataset come from the Hub client's own cache.
    URLs come from ``fetched`` (what the downloader got for this chunk of rows); without it
    they are ``url_not_fetched``.
    """
    if cell is None:
        return None, "empty_image"
    if isinstance(cell, bytes | bytearray):
        return bytes(cell), None
    path = None
    if isinstance(cell, dict):
        data = cell.get("bytes")
        if isinstance(data, str):  # base64 in a jsonl
            try:
                data = base64.b64decode(data, validate=True)
            except ValueError:
                return None, "invalid_image_cell"
        if data:
            return bytes(data), None
        path = cell.get("path")
    elif isinstance(cell, str):
        path = cell
    else:
        return None, "invalid_image_cell"
    if not path:
        return None, "empty_image"
    if not isinstance(path, str):
        return None, "invalid_image_cell"
    if fetched is not None and path in fetched:
        return fetched[path]
    return read_image_file(
        path, source.base_dir, allow_outside=allow_outside or source.kind == "hub"
    )


def parse_caption(value: Any, required: bool) -> tuple[list[str], str | None]:
    """Caption cell -> list of non-empty stripped strings, or a rejection reason."""
    if value is None:
        return [], ("missing_caption" if required else None)
    items = value if isinstance(value, list | tuple) else [value]
    if not all(isinstance(v, str) for v in items):
        return [], "invalid_caption"
    if any(_has_surrogate(v) or "\x00" in v for v in items):
        return [], "invalid_caption"
    caps = [v.strip() for v in items if v.strip()]
    if not caps and required:
        return [], "empty_caption"
    return caps, None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _as_id(value: Any) -> str | None:
    """A source id value as text ("007" stays "007"; an integer has no ".0")."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value)
    return text if text.strip() and not _has_surrogate(text) else None


def content_id(data: bytes | None, cell: Any, caption: Any) -> str:
    """A sample id from the content: the image bytes (or the cell when unreadable) and caption.

    The same row gets the same id wherever it sits in the source, so reordering the source
    changes nothing downstream.
    """
    h = hashlib.blake2b(digest_size=10)
    if data is not None:
        h.update(b"bytes:")
        h.update(data)
    else:
        h.update(b"cell:")
        h.update(repr(cell).encode("utf-8", "surrogatepass"))
    h.update(b"\0caption:")
    h.update(json.dumps(caption, sort_keys=True, default=str).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


class _IdAssigner:
    """Unique ids: a repeated id gets the first free ``~k`` suffix, free of every source id."""

    def __init__(self, reserved: set[str]):
        self.reserved = reserved  # every id the source holds (empty when unknown)
        self.used: set[str] = set()
        self.next_k: Counter = Counter()

    def assign(self, sid: str) -> tuple[str, bool]:
        if sid not in self.used:
            self.used.add(sid)
            return sid, False
        k = self.next_k[sid] or 1
        while f"{sid}~{k}" in self.used or f"{sid}~{k}" in self.reserved:
            k += 1
        self.next_k[sid] = k + 1
        new = f"{sid}~{k}"
        self.used.add(new)
        return new, True


def ingest(
    config: IngestConfig, run_dir: Path | str, *, quiet: bool = False, overwrite: bool = False
) -> dict:
    """Load ``config.name`` into the run folder ``run_dir``; returns the ingest summary.

    ``run_dir`` must be new, empty, or a curate run folder. A run folder that already holds a
    different dataset (another source or ingest config) is replaced only with ``overwrite``;
    then its steps, report and export go too, since they describe the old data. The summary is
    also written to ``ingest.json``, last, so an interrupted ingest reads as not done.
    """
    problems = config.validate()
    if problems:
        raise UsageError("; ".join(problems))
    run_dir = claim_run_dir(run_dir)
    with run_lock(run_dir):
        old = read_ingest_summary(run_dir)
        src_fp = source_fingerprint(config.name, config.split)
        state, _ = ingest_state(run_dir, config, src_fp)
        if state == "current" and not overwrite:
            return {**old, "unchanged": True}  # this exact source and config: nothing to do
        if old is not None and old.get("fingerprint") != config.fingerprint() and not overwrite:
            was = (old.get("config") or {}).get("name", "another dataset")
            raise UsageError(
                f"out_dir: {run_dir}: already holds an ingest of {was} with other settings; "
                "pass overwrite: true to replace it (its steps, report and export are removed "
                "too), or choose a new out_dir"
            )
        return _ingest_locked(config, run_dir, src_fp, quiet)


def _ingest_locked(config: IngestConfig, run_dir: Path, src_fp: str | None, quiet: bool) -> dict:
    from datasets import Dataset, Features, Image, Value
    from datasets.arrow_writer import ArrowWriter
    from tqdm.auto import tqdm

    source = open_source(
        config.name,
        split=config.split,
        image_column=config.image_column,
        caption_column=config.caption_column,
        id_column=config.id_column,
        streaming=config.streaming,
    )
    total = source.num_rows
    if config.limit is not None:
        total = config.limit if total is None else min(total, config.limit)

    reserved: set[str] = set()
    if source.id_column is not None:
        values = source.column_values(source.id_column, config.limit)
        reserved = {v for v in map(_as_id, values or []) if v is not None}
    ids = _IdAssigner(reserved)
    staged = staging_dir(run_dir / IMAGES_DIR)
    tmp_arrow = staged / "images.arrow"
    features = Features({SAMPLE_ID: Value("string"), "image": Image()})
    cols: dict[str, list] = {
        k: []
        for k in (
            SAMPLE_ID, "source_index", "caption", "captions", "width", "height", "mode",
            "format", "num_bytes", "pixel_hash", "status", "reason",
        )
    }  # fmt: skip
    extra: dict[str, list] = {f"src_{c}": [] for c in source.extra_columns}
    reasons: Counter = Counter()
    start = time.perf_counter()
    try:
        with disk_errors("write", tmp_arrow):
            writer = ArrowWriter(features=features, path=str(tmp_arrow))
            try:
                rows = tqdm(
                    source.iter_rows(config.limit),
                    total=total,
                    disable=quiet,
                    desc="ingest",
                    unit="img",
                )
                fetcher = _fetcher(config, run_dir, quiet)
                idx = 0
                for chunk in _chunks(rows, FETCH_CHUNK):
                    fetched = _fetch_chunk(fetcher, chunk, source)
                    for row in chunk:
                        _ingest_row(
                            idx, row, source, config, ids, cols, extra, reasons, writer,
                            features, fetched,
                        )  # fmt: skip
                        idx += 1
                writer.finalize()
            finally:
                writer.close()
                if fetcher is not None:
                    fetcher.close()
        elapsed = time.perf_counter() - start
        n = len(cols[SAMPLE_ID])
        if n == 0:
            raise DataError(
                f"dataset: {config.name}: the source has no rows (split: {config.split!r})"
            )
        table = pl.DataFrame(
            {**cols, **{k: _homogeneous(v) for k, v in extra.items()}},
            schema_overrides={
                SAMPLE_ID: pl.String, "source_index": pl.Int64, "caption": pl.String,
                "captions": pl.List(pl.String), "width": pl.Int32, "height": pl.Int32,
                "mode": pl.String, "format": pl.String, "num_bytes": pl.Int64,
                "pixel_hash": pl.String, "status": pl.String, "reason": pl.String,
            },
            strict=False,
        )  # fmt: skip
        with disk_errors("write", staged), _datasets_bars(not quiet):
            Dataset.from_file(str(tmp_arrow)).save_to_disk(str(staged / "dataset"))
        # Commit: the old ingest stops being "done" first, then everything that described the
        # old data goes, then the new images, table and (last) ingest.json arrive.
        (run_dir / INGEST_FILE).unlink(missing_ok=True)
        reset_run_dir(run_dir)
        replace_dir(staged / "dataset", run_dir / IMAGES_DIR)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    write_table(table, run_dir / TABLE_FILE)
    summary = {
        "tool": f"curate {__version__}",
        "config": asdict(config),
        "fingerprint": config.fingerprint(),
        "source_fingerprint": src_fp,
        "source": {
            "kind": source.kind,
            "image_column": source.image_column,
            "caption_column": source.caption_column,
            "id_column": source.id_column,
            "extra_columns": source.extra_columns,
        },
        "notes": source.notes,
        "columns": table.columns,
        "rows": n,
        "kept": reasons.get(STATUS_OK, 0),
        "rejected": {k: v for k, v in sorted(reasons.items()) if k != STATUS_OK},
        "urls_to_retry": _transient_failures(reasons),
        "seconds": round(elapsed, 3),
        "rows_per_second": round(n / elapsed, 1) if elapsed > 0 else None,
    }
    atomic_write_json(run_dir / INGEST_FILE, summary)
    return summary


@contextlib.contextmanager
def _datasets_bars(show: bool):
    """The ``datasets`` progress bars on or off for a block (``--quiet`` hides them)."""
    from datasets import utils

    was = not utils.are_progress_bars_disabled()
    if not show:
        utils.disable_progress_bars()
    try:
        yield
    finally:
        if was and not show:
            utils.enable_progress_bars()


def _transient_failures(reasons: Counter) -> int:
    """Rows whose URL failed in a way worth trying again (timeouts, 5xx, connection errors)."""
    from curate.io.fetch import is_permanent

    fetch_codes = ("timeout", "connection_error", "fetch_error", "http_")
    return sum(
        n for code, n in reasons.items() if code.startswith(fetch_codes) and not is_permanent(code)
    )


def _homogeneous(values: list) -> list:
    """A source column as one type: its values as text when they mix types."""
    kinds = {type(v) for v in values if v is not None}
    if len(kinds) <= 1 and not (kinds & {dict, list, tuple}):
        return values
    return [
        None if v is None else (v if isinstance(v, str) else json.dumps(v, default=str))
        for v in values
    ]


FETCH_CHUNK = 256  # rows whose URLs are downloaded together
DOWNLOADS_DIR = "downloads"


def _chunks(rows, size: int):
    chunk: list = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _fetcher(config: IngestConfig, run_dir: Path, quiet: bool):
    """The URL downloader, caching in ``RUN_DIR/downloads`` (kept across re-ingests and
    ``--overwrite``, so a rerun fetches only what it does not have); None with ``fetch: false``."""
    if not config.fetch_urls:
        return None
    from curate.io.fetch import FetchConfig, Fetcher

    cfg = FetchConfig(
        workers=config.fetch_workers, timeout=config.fetch_timeout, retries=config.fetch_retries
    )
    return Fetcher(run_dir / DOWNLOADS_DIR, cfg, progress=not quiet)


def _fetch_chunk(fetcher, chunk: list, source: Source) -> dict | None:
    """Download the URLs a chunk of rows points at: ``{url: (bytes | None, reason | None)}``."""
    if fetcher is None:
        return None
    from curate.io.fetch import looks_like_url

    urls = sorted(
        {
            ref
            for row in chunk
            if isinstance(row, dict) and ROW_ERROR not in row
            for ref in [_image_ref(row.get(source.image_column))]
            if ref is not None and looks_like_url(ref)
        }
    )
    if not urls:
        return None
    return dict(zip(urls, fetcher.fetch_many(urls), strict=True))


def _ingest_row(
    idx, row, source, config, ids, cols, extra, reasons, writer, features, fetched=None
) -> None:
    row_error = row.get(ROW_ERROR) if isinstance(row, dict) else "bad_line (not a record)"
    if row_error is not None:
        sid = "bad-" + content_id(None, (idx, row_error), None)
        data, dec, caps = None, decode_image(None), []
        reason = str(row_error)
    else:
        cell = row.get(source.image_column)
        raw_caption = row.get(source.caption_column) if source.caption_column else None
        data, why = _read_bytes(cell, source, config.allow_outside_paths, fetched)
        raw_id = _as_id(row.get(source.id_column)) if source.id_column is not None else None
        if source.id_column is not None and raw_id is None:
            raw_id = "missing-id-" + content_id(data, cell, raw_caption)
        sid = raw_id if raw_id is not None else content_id(data, cell, raw_caption)
        dec = decode_image(data, max_pixels=config.max_pixels, min_side=config.min_side)
        caps, cap_reason = parse_caption(raw_caption, required=source.caption_column is not None)
        reason = why or dec.reason or cap_reason
    sid, repeated = ids.assign(sid)
    if repeated and source.id_column is not None and row_error is None:
        reason = "duplicate_id"  # the source's own ids clash; identical content is dedup's job
    ok = reason is None
    reasons[_reason_code(reason) if reason else STATUS_OK] += 1
    cols[SAMPLE_ID].append(sid)
    cols["source_index"].append(idx)
    cols["caption"].append(caps[0] if caps else None)
    cols["captions"].append(caps)
    cols["width"].append(dec.width)
    cols["height"].append(dec.height)
    cols["mode"].append(dec.mode)
    cols["format"].append(dec.format)
    cols["num_bytes"].append(dec.num_bytes)
    cols["pixel_hash"].append(dec.pixel_hash)
    cols["status"].append(STATUS_OK if ok else STATUS_REJECTED)
    cols["reason"].append(reason)
    for c in source.extra_columns:
        v = row.get(c) if row_error is None else None
        extra[f"src_{c}"].append(None if isinstance(v, str) and _has_surrogate(v) else v)
    # a decodable image is kept even when the row is rejected for another reason (caption,
    # id), so the report can show it
    stored = {"bytes": dec.encoded, "path": None} if dec.ok else None
    writer.write(features.encode_example({SAMPLE_ID: sid, "image": stored}))


def _reason_code(reason: str) -> str:
    """``bad_line (line 3: ...)`` -> ``bad_line``: the summary counts codes, not details."""
    return reason.split(" (", 1)[0]


def ingest_state(run_dir: Path, config, source_fp: str | None = None) -> tuple[str, str | None]:
    """Whether ``run_dir`` holds an ingest of ``config``: ``(state, why)``.

    state: ``current`` (nothing to do), ``stale`` (same settings, but the source changed or
    the ingest is incomplete: ingest again), ``other`` (other settings), ``none``.
    """
    summary = read_ingest_summary(run_dir)
    if summary is None:
        return "none", None
    if summary.get("fingerprint") != config.fingerprint():
        return "other", None
    if not (run_dir / IMAGES_DIR).is_dir() or not table_readable(run_dir / TABLE_FILE):
        return "stale", "the run's images or table are missing or unreadable"
    old_fp = summary.get("source_fingerprint")
    new_fp = source_fp or source_fingerprint(config.name, config.split)
    if old_fp is not None and new_fp is not None and old_fp != new_fp:
        return "stale", f"the source {config.name} changed since it was ingested"
    return "current", None


def read_ingest_summary(run_dir: Path | str) -> dict | None:
    """The ingest summary, or None when there is none (or it is torn: ingest is then not done)."""
    summary = read_json(Path(run_dir) / INGEST_FILE)
    if summary is None or "fingerprint" not in summary or "columns" not in summary:
        return None
    return summary
