"""Ingest: a source -> a run folder (``images/`` Arrow dataset + ``table.parquet``).

Every input row becomes exactly one table row. Rows that cannot be used are kept with
``status="rejected"`` and a ``reason``; nothing is dropped and nothing raises.
"""

from __future__ import annotations

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
from curate.io.images import DEFAULT_MAX_PIXELS, decode_image
from curate.io.load import Source, open_source
from curate.io.store import IMAGES_DIR
from curate.table import SAMPLE_ID, STATUS_OK, STATUS_REJECTED, TABLE_FILE, write_table

INGEST_FILE = "ingest.json"


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
        return problems

    def fingerprint(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.blake2b(blob, digest_size=8).hexdigest()


def _read_bytes(cell: Any, source: Source) -> tuple[bytes | None, str | None]:
    """The encoded image of one cell, or ``(None, reason)``."""
    if cell is None:
        return None, "empty_image"
    if isinstance(cell, bytes | bytearray):
        return bytes(cell), None
    path = None
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return bytes(cell["bytes"]), None
        path = cell.get("path")
    elif isinstance(cell, str):
        path = cell
    else:
        return None, "invalid_image_cell"
    if not path:
        return None, "empty_image"
    p = Path(path)
    if not p.is_absolute() and source.base_dir is not None:
        p = source.base_dir / p
    if not p.is_file():
        return None, "missing_file"
    return p.read_bytes(), None


def parse_caption(value: Any, required: bool) -> tuple[list[str], str | None]:
    """Caption cell -> list of non-empty stripped strings, or a rejection reason."""
    if value is None:
        return [], ("missing_caption" if required else None)
    items = value if isinstance(value, list | tuple) else [value]
    if not all(isinstance(v, str) for v in items):
        return [], "invalid_caption"
    caps = [v.strip() for v in items if v.strip()]
    if not caps and required:
        return [], "empty_caption"
    return caps, None


def _iter_rows(source: Source, limit: int | None, batch_size: int = 256):
    ds = source.dataset
    if source.streaming:
        if limit is not None:
            ds = ds.take(limit)
        yield from ds
        return
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    for batch in ds.iter(batch_size=batch_size):
        keys = list(batch.keys())
        for i in range(len(batch[keys[0]])):
            yield {k: batch[k][i] for k in keys}


def ingest(
    config: IngestConfig, run_dir: Path | str, *, quiet: bool = False, overwrite: bool = True
) -> dict:
    """Load ``config.name`` into ``run_dir``; returns the ingest summary (also in ingest.json)."""
    from datasets import Features, Image, Value
    from datasets.arrow_writer import ArrowWriter
    from tqdm.auto import tqdm

    problems = config.validate()
    if problems:
        raise UsageError("; ".join(problems))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    source = open_source(
        config.name,
        split=config.split,
        image_column=config.image_column,
        caption_column=config.caption_column,
        id_column=config.id_column,
        streaming=config.streaming,
    )
    total = None if source.streaming else len(source.dataset)
    if config.limit is not None and total is not None:
        total = min(total, config.limit)
    elif config.limit is not None:
        total = config.limit

    images_dir = run_dir / IMAGES_DIR
    tmp_arrow = run_dir / ".images.arrow.tmp"
    features = Features({SAMPLE_ID: Value("string"), "image": Image()})
    cols: dict[str, list] = {
        k: []
        for k in (
            SAMPLE_ID, "source_index", "caption", "captions", "width", "height", "mode",
            "format", "num_bytes", "pixel_hash", "status", "reason",
        )
    }  # fmt: skip
    extra: dict[str, list] = {f"src_{c}": [] for c in source.extra_columns}
    seen_ids: Counter = Counter()
    reasons: Counter = Counter()
    start = time.perf_counter()
    writer = ArrowWriter(features=features, path=str(tmp_arrow))
    try:
        rows = tqdm(
            _iter_rows(source, config.limit), total=total, disable=quiet, desc="ingest", unit="img"
        )
        for idx, row in enumerate(rows):
            if source.id_column is not None:
                raw_id = row.get(source.id_column)
                sid = str(raw_id) if raw_id is not None else f"s{idx:08d}"
            else:
                sid = f"s{idx:08d}"
            reason = None
            seen_ids[sid] += 1
            if seen_ids[sid] > 1:
                sid, reason = f"{sid}~{idx}", "duplicate_id"
            data, why = _read_bytes(row.get(source.image_column), source)
            dec = decode_image(data, max_pixels=config.max_pixels, min_side=config.min_side)
            reason = reason or why or dec.reason
            caps, cap_reason = parse_caption(
                row.get(source.caption_column) if source.caption_column else None,
                required=source.caption_column is not None,
            )
            reason = reason or cap_reason
            ok = reason is None
            reasons[reason or STATUS_OK] += 1
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
                extra[f"src_{c}"].append(row.get(c))
            # a decodable image is kept even when the row is rejected for another reason (caption,
            # id), so the report can show it
            stored = {"bytes": dec.encoded, "path": None} if dec.ok else None
            writer.write(features.encode_example({SAMPLE_ID: sid, "image": stored}))
        writer.finalize()
    finally:
        writer.close()
    elapsed = time.perf_counter() - start
    n = len(cols[SAMPLE_ID])
    if n == 0:
        tmp_arrow.unlink(missing_ok=True)
        raise DataError(f"--dataset {config.name}: the source has no rows (split {config.split!r})")

    table = pl.DataFrame(
        {**cols, **extra},
        schema_overrides={
            SAMPLE_ID: pl.String, "source_index": pl.Int64, "caption": pl.String,
            "captions": pl.List(pl.String), "width": pl.Int32, "height": pl.Int32,
            "mode": pl.String, "format": pl.String, "num_bytes": pl.Int64,
            "pixel_hash": pl.String, "status": pl.String, "reason": pl.String,
        },
        strict=False,
    )  # fmt: skip
    from datasets import Dataset

    if images_dir.exists():
        if not overwrite:
            raise DataError(f"{images_dir} exists; pass a new --out or remove it")
        shutil.rmtree(images_dir)
    Dataset.from_file(str(tmp_arrow)).save_to_disk(str(images_dir))
    tmp_arrow.unlink(missing_ok=True)
    write_table(table, run_dir / TABLE_FILE)
    summary = {
        "tool": f"curate {__version__}",
        "config": asdict(config),
        "fingerprint": config.fingerprint(),
        "source": {
            "kind": source.kind,
            "image_column": source.image_column,
            "caption_column": source.caption_column,
            "id_column": source.id_column,
            "extra_columns": source.extra_columns,
        },
        "columns": table.columns,
        "rows": n,
        "kept": reasons.get(STATUS_OK, 0),
        "rejected": {k: v for k, v in sorted(reasons.items()) if k != STATUS_OK},
        "seconds": round(elapsed, 3),
        "rows_per_second": round(n / elapsed, 1) if elapsed > 0 else None,
    }
    (run_dir / INGEST_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def read_ingest_summary(run_dir: Path | str) -> dict | None:
    path = Path(run_dir) / INGEST_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
