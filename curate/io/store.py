"""The run's image store: an Arrow dataset (``save_to_disk``) of ``sample_id`` + encoded image.

Images are kept encoded (the source bytes when they were already RGB JPEG/PNG/WebP, else a
lossless PNG of the RGB conversion), so a run folder never holds decoded pixels and export can
write exactly what came in. Rows whose image could not be decoded have no image (null).

Lookups by ``sample_id`` go through :class:`IdIndex`: a 64-bit hash of every id, sorted, with
the row each came from (16 bytes a row, two numpy arrays; no Python object per id), searched
with ``searchsorted`` for a whole batch of ids at once. The ids themselves stay in the
memory-mapped Arrow column, and every hit is checked against them, so a hash collision costs a
short scan, never a wrong image.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from curate.core.images import decode_rgb_many
from curate.errors import DataError

IMAGES_DIR = "images"
#: Ids hashed per slice while the index is built (bounds the temporary memory of an open).
_BUILD_ROWS = 1 << 16
_SEED = 0x5EED


def _hash_ids(ids) -> object:
    """uint64 hash per id (a polars String series), the same for the same text in this process."""
    return ids.hash(seed=_SEED).to_numpy()


def _as_list(sample_ids) -> list[str]:
    if hasattr(sample_ids, "to_list"):  # a polars / pandas series
        sample_ids = sample_ids.to_list()
    ids = list(sample_ids)
    bad = next((s for s in ids if not isinstance(s, str)), ids)
    if bad is not ids:
        raise DataError(f"sample ids must be strings, got {type(bad).__name__} {bad!r}")
    return ids


class IdIndex:
    """Row positions of string ids by sorted 64-bit hashes: ``keys`` (uint64, ascending) and
    ``rows`` (int64, the row of each key), so positions past 2^31 (and 2^32) are kept as they
    are. ``ids_at(rows)`` returns the stored ids at those rows (a list), to confirm each hit."""

    def __init__(self, keys, rows, ids_at):
        import numpy as np

        self.keys = np.asarray(keys, np.uint64)
        self.rows = np.asarray(rows, np.int64)
        self.ids_at = ids_at

    @classmethod
    def build(cls, column, ids_at) -> IdIndex:
        """The index of an Arrow string column (``pyarrow`` array or chunked array)."""
        import numpy as np
        import polars as pl

        n = len(column)
        keys = np.empty(n, np.uint64)
        for start in range(0, n, _BUILD_ROWS):
            part = pl.Series("sample_id", column.slice(start, _BUILD_ROWS), dtype=pl.String)
            keys[start : start + len(part)] = _hash_ids(part)
        order = np.argsort(keys, kind="stable").astype(np.int64, copy=False)
        return cls(keys[order], order, ids_at)

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, sample_ids) -> object:
        """The row of each id (int64), -1 for an id that is not stored."""
        import numpy as np
        import polars as pl

        ids = _as_list(sample_ids)
        out = np.full(len(ids), -1, np.int64)
        if not ids or len(self.keys) == 0:
            return out
        h = _hash_ids(pl.Series("sample_id", ids, dtype=pl.String))
        lo = np.searchsorted(self.keys, h, side="left")
        at = np.minimum(lo, len(self.keys) - 1)
        hit = np.flatnonzero((lo < len(self.keys)) & (self.keys[at] == h))
        if hit.size == 0:
            return out
        rows = self.rows[at[hit]]
        stored = self.ids_at(rows)
        same = np.fromiter((stored[k] == ids[i] for k, i in enumerate(hit.tolist())), bool)
        out[hit[same]] = rows[same]
        for k in hit[~same].tolist():  # another id with the same hash comes first: scan them
            hi = int(np.searchsorted(self.keys, h[k], side="right"))
            cand = self.rows[int(lo[k]) : hi]
            match = [
                r for r, s in zip(cand.tolist(), self.ids_at(cand), strict=True) if s == ids[k]
            ]
            if match:
                out[k] = match[0]
        return out


class _Chunks:
    """Values of a chunked Arrow column at any rows, without ``take`` over every chunk (an Arrow
    dataset holds one chunk per ~100 rows; a take across them all is slow for a few rows): each
    run of consecutive rows inside one chunk is one zero-copy slice."""

    def __init__(self, column):
        import numpy as np

        self.column = column
        sizes = [len(column.chunk(i)) for i in range(column.num_chunks)]
        self.starts = np.cumsum([0, *sizes], dtype=np.int64)[:-1]

    def take(self, rows) -> list:
        import numpy as np
        import pyarrow as pa

        rows = np.asarray(rows, np.int64)
        if rows.size == 0:
            return []
        chunk = np.searchsorted(self.starts, rows, side="right") - 1
        local = rows - self.starts[chunk]
        cut = np.flatnonzero((chunk[1:] != chunk[:-1]) | (rows[1:] != rows[:-1] + 1)) + 1
        begin = np.concatenate([[0], cut])
        length = np.diff(np.concatenate([begin, [rows.size]]))
        pieces = [
            self.column.chunk(c).slice(s, n)
            for c, s, n in zip(
                chunk[begin].tolist(), local[begin].tolist(), length.tolist(), strict=True
            )
        ]
        return pa.concat_arrays(pieces).to_pylist()


class ImageStore:
    """Read access to ``RUN_DIR/images`` by ``sample_id``; images come back in the order asked."""

    def __init__(self, run_dir: Path | str):
        self.path = Path(run_dir) / IMAGES_DIR
        if not self.path.exists():
            raise DataError(f"{self.path} does not exist: run `curate ingest` first")
        from datasets import Image, load_from_disk

        ds = load_from_disk(str(self.path))
        if ds._indices is not None:  # a selection over the files: make rows the file rows
            ds = ds.flatten_indices(keep_in_memory=True)
        self.dataset = ds.cast_column("image", Image(decode=False))
        self._ids = self.dataset.data.column("sample_id")  # memory-mapped Arrow strings
        self._images = _Chunks(self.dataset.data.column("image"))  # {bytes, path} or null
        self._index = IdIndex.build(self._ids, _Chunks(self._ids).take)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, sample_id: str) -> bool:
        return isinstance(sample_id, str) and bool(self._index.find([sample_id])[0] >= 0)

    def rows(self, sample_ids: Sequence[str]) -> list[int]:
        """The store row of each id, in the order given; one line naming an id not stored."""
        ids = _as_list(sample_ids)
        found = self._index.find(ids)
        missing = (found < 0).nonzero()[0]
        if missing.size:
            raise DataError(
                f"{self.path}: {missing.size} of {len(ids)} sample ids are not in this run's "
                f"image store (first: {ids[int(missing[0])]!r}); the table and images are from "
                "different ingests: rerun `curate ingest`"
            )
        return found.tolist()

    def encoded(self, sample_id: str) -> bytes | None:
        """The stored bytes of one image (None for a rejected row)."""
        return self.encoded_many([sample_id])[0]

    def encoded_many(self, sample_ids: Sequence[str]) -> list[bytes | None]:
        """The stored bytes per id (None for rows without an image), one read for all."""
        rows = self._images.take(self.rows(sample_ids))
        return [None if cell is None else cell.get("bytes") for cell in rows]

    def get(self, sample_ids: Sequence[str]) -> list:
        """Decoded RGB ``PIL.Image`` per id (None for rows without an image)."""
        return decode_rgb_many(self.encoded_many(sample_ids))

    def iter_batches(
        self, sample_ids: Sequence[str], batch_size: int = 64
    ) -> Iterator[tuple[list[str], list]]:
        """Yield ``(ids, images)`` in the given order, ``batch_size`` at a time."""
        ids = list(sample_ids)
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            yield chunk, self.get(chunk)
