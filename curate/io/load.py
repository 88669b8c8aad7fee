"""Open a dataset source: a Hub name, a ``save_to_disk`` folder, an imagefolder, a
parquet/jsonl/json/csv file (or folder of them), or a built-in set (``builtin:digits``).

The result is a ``Source``: the resolved column mapping plus ``iter_rows()``, one dict per
source row in source order. Images are never decoded or read here: an image value is a path
string, a ``{"bytes", "path"}`` dict, bytes or None, and ingest turns every broken one into a
rejected row.

Local files are read by curate's own readers, not by ``datasets``, so that one bad line is one
rejected row instead of an aborted load, and so that nothing is guessed:

- **jsonl** (and ``.json`` holding JSON lines or one array of objects): a line that is not
  valid UTF-8, not valid JSON, holds a lone surrogate escape (``"\\ud800"``) or is not an object
  becomes ``{ROW_ERROR: "bad_line (line N: why)"}``; blank lines are skipped. Values are kept as
  parsed, except that number and boolean captions and ids become their JSON text (``7.0`` stays
  ``"7.0"``, ``true`` is ``"true"``).
- **csv** is read as text: every field is a string (``"NaN"``, ``"null"``, ``"007"`` stay what
  they are) and an empty field is None. A ragged row or one that is not valid UTF-8 is a
  ``bad_line`` row; quoted fields may span lines.
- **parquet** keeps its types; numeric captions and ids become text (``7`` -> ``"7"``).
- **imagefolder** (a folder of images, optionally with ``metadata.jsonl`` / ``metadata.csv`` /
  ``metadata.parquet`` holding ``file_name`` and caption columns): without metadata every image
  is a row (with a ``label`` column from the folder names when the layout has classes, as the
  ``datasets`` imagefolder does). With metadata the rows are the metadata rows, in order; the
  ``image`` value is ``file_name`` as written, relative to the metadata file's folder, and is
  never resolved here, so ``../`` and absolute names are refused later by
  ``read_image_file`` (``outside_dataset``) and names of missing files become ``missing_file``
  rows. Images in the folder that no metadata row names are **not** ingested; they are counted
  in ``Source.notes["unlisted_images"]`` (``{"count": n, "first": [up to 10 names]}``).
- A folder of data files: the rows of every file, in sorted path order (errors name the file).

A source that cannot be used as a whole (empty, no rows, corrupt, unreadable) raises a one-line
``DataError`` naming the file and, where known, the line. Nothing outside the file or folder
the user named is read: folders are walked without following symlinks, and data files that are
symlinks leading out of the folder are skipped (and counted in ``notes``).

``save_to_disk`` folders, ``builtin:*`` sets and Hub names are ``datasets`` objects
(``Source.dataset``); their image column is cast to ``Image(decode=False)``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any

from curate.errors import DataError, UsageError

#: The key of a row that could not be parsed; its value is the reason (``bad_line (...)``).
ROW_ERROR = "__curate_row_error__"

IMAGE_COLUMN_GUESSES = ("image", "img", "jpg", "png", "image_path", "file_name", "path", "url")
CAPTION_COLUMN_GUESSES = ("text", "caption", "captions", "prompt", "txt", "TEXT", "description")
FILE_LOADERS = {
    ".parquet": "parquet",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".csv": "csv",
}
# fmt: off
IMAGE_EXTENSIONS = frozenset((
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm",
    ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".avif", ".heic", ".heif", ".jp2", ".j2k", ".dds",
    ".pcx", ".sgi", ".icns", ".psd", ".qoi",
))
# fmt: on
METADATA_NAMES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
SPLIT_WORDS = ("train", "test", "validation", "valid", "dev", "eval")
IMAGE_COLUMN = "image"  # the image column of an imagefolder
SAMPLE_ROWS = 1000  # jsonl rows parsed at open time to learn the columns
MAX_NOTED = 10  # names listed in a note
MAX_DEPTH = 100  # nesting levels of one JSON row

csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # base64 images in a csv field


# --------------------------------------------------------------------------------- the source
@dataclass
class Source:
    kind: str  # builtin | disk | imagefolder | file | hub
    name: str
    split: str
    image_column: str
    caption_column: str | None
    id_column: str | None
    base_dir: Path | None  # the dataset's own folder: relative image paths resolve here
    extra_columns: list[str] = field(default_factory=list)
    fingerprint: str | None = None  # see source_fingerprint
    num_rows: int | None = None  # None when streaming / unknown
    notes: dict = field(default_factory=dict)  # facts for the ingest summary
    dataset: Any = None  # the datasets.Dataset / IterableDataset (builtin, disk, hub); else None
    image_is_path: bool = False  # the image column holds path strings (as far as is known)
    _rows: Callable[[], Iterator[dict]] | None = field(default=None, repr=False)

    @property
    def streaming(self) -> bool:
        if self.dataset is None:
            return False
        from datasets import IterableDataset

        return isinstance(self.dataset, IterableDataset)

    def iter_rows(self, limit: int | None = None) -> Iterator[dict]:
        """One dict per source row, in source order (column -> value).

        A row that cannot be parsed is ``{ROW_ERROR: "bad_line (line 17: invalid JSON: ...)"}``
        so it becomes a rejected row and rows in = rows out. Number and boolean captions and ids
        of local files come as their text.
        """
        if self.dataset is not None:
            yield from self._dataset_rows(limit)
            return
        if limit is not None and limit <= 0:
            return
        text_cols = [c for c in (self.caption_column, self.id_column) if c is not None]
        for row in islice(self._rows(), limit):
            if ROW_ERROR not in row:
                row = {k: _as_text(v) if k in text_cols else _plain(v) for k, v in row.items()}
            yield row

    def column_values(self, column: str, limit: int | None = None) -> list | None:
        """The values of ``column`` (None for rows that could not be parsed), in row order;
        None for a streaming source (one pass only)."""
        if self.dataset is not None:
            if self.streaming:
                return None
            ds = self.dataset
            if limit is not None:
                ds = ds.select(range(min(max(limit, 0), len(ds))))
            return list(ds[column])
        return [row.get(column) for row in self.iter_rows(limit)]

    def _dataset_rows(self, limit: int | None) -> Iterator[dict]:
        ds = self.dataset
        index = 0
        try:
            if self.streaming:
                it = ds.take(limit) if limit is not None else ds
                for row in it:
                    index += 1
                    yield row
                return
            if limit is not None:
                ds = ds.select(range(min(max(limit, 0), len(ds))))
            for batch in ds.iter(batch_size=256):
                keys = list(batch.keys())
                for i in range(len(batch[keys[0]]) if keys else 0):
                    index += 1
                    yield {k: batch[k][i] for k in keys}
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
            raise DataError(
                f"dataset: {_show(self.name)}: reading row {index + 1} failed ({_why(err)})"
            ) from None


def _as_text(value: Any) -> Any:
    """A number or boolean caption/id as its text; anything else unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _JsonNumber):
        return value.text
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Decimal):
        return str(value)
    return value


class _JsonNumber(float):
    """A JSON number with a fraction or exponent, remembering how it was written."""

    def __new__(cls, text: str):
        obj = super().__new__(cls, text)
        obj.text = text
        return obj


def _plain(value: Any) -> Any:
    """``_JsonNumber`` -> float, in nested values too."""
    if type(value) is _JsonNumber:
        return float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------ helpers
def _show(path: Any) -> str:
    """A path or name fit for a one-line message (undecodable bytes as ``\\xff``)."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.replace("\n", "\\n").replace("\r", "\\r")


def _why(err: BaseException) -> str:
    msg = str(err).strip().splitlines()
    detail = msg[0][:300] if msg else "no detail"
    return f"{type(err).__name__}: {_show(detail)}"


def _bad(where: str, why: str) -> dict:
    return {ROW_ERROR: f"bad_line ({where}: {why})"}


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False


def _open_binary(path: Path):
    try:
        return open(path, "rb")
    except OSError as err:
        raise DataError(f"{_show(path)}: cannot read it ({_why(err)})") from None


# --------------------------------------------------------------------------------- the readers
class _Reader:
    """One local data file: its columns, row count, and a fresh row iterator per call."""

    path: Path
    label: str  # prefix of a bad line's location: "" for a single file, "a.jsonl " in a folder
    columns: list[str]
    scalar: set[str]  # columns whose (sampled) values are all scalars
    num_rows: int
    image_struct: set[str]  # columns that look like {"bytes", "path"} images

    def rows(self) -> Iterator[dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def where(self, line: int) -> str:
        return f"{self.label}line {line}"


_SCALARS = (str, int, float, bool, type(None))


class _JsonLines(_Reader):
    def __init__(self, path: Path, label: str = ""):
        self.path, self.label = path, label
        self.image_struct = set()
        self.array = _load_json_array(path)[0] is not None
        seen: dict[str, None] = {}
        not_scalar: set[str] = set()
        good = total = 0
        first_error = None

        def sample(row: dict) -> None:
            nonlocal good, first_error
            if ROW_ERROR in row:
                first_error = first_error or row[ROW_ERROR]
                return
            good += 1
            for k, v in row.items():
                seen.setdefault(k, None)
                if not isinstance(v, _SCALARS):
                    not_scalar.add(k)
                    if isinstance(v, dict) and "bytes" in v:
                        self.image_struct.add(k)

        if self.array:
            for row in self._parse_array():
                total += 1
                if good < SAMPLE_ROWS:
                    sample(row)
        else:
            for lineno, raw in self._lines():
                total += 1
                if good < SAMPLE_ROWS:  # then only count: the columns are known
                    sample(self._line(raw, lineno))
        if total == 0:
            raise DataError(f"{_show(path)} has no rows (the file is empty or only blank lines)")
        if good == 0:
            raise DataError(
                f"{_show(path)}: no line could be read ({total} bad; first: {first_error})"
            )
        self.columns = list(seen)
        self.scalar = set(self.columns) - not_scalar
        self.num_rows = total

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        """``(line number, bytes)`` of every non-blank line."""
        with _open_binary(self.path) as f:
            lineno = 0
            try:
                for raw in f:
                    lineno += 1
                    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                        raw = raw[3:]
                    if raw.strip():
                        yield lineno, raw
            except OSError as err:
                raise DataError(
                    f"{_show(self.path)}: line {lineno + 1}: cannot read it ({_why(err)})"
                ) from None

    def rows(self) -> Iterator[dict]:
        if self.array:
            yield from self._parse_array()
            return
        for lineno, raw in self._lines():
            yield self._line(raw, lineno)

    def _line(self, raw: bytes, lineno: int) -> dict:
        try:
            text = raw.rstrip().decode("utf-8")
        except UnicodeDecodeError as err:
            return _bad(self.where(lineno), f"invalid UTF-8 at byte {err.start}")
        try:
            obj = json.loads(text, parse_float=_JsonNumber, parse_constant=_JsonNumber)
        except json.JSONDecodeError as err:
            return _bad(self.where(lineno), f"invalid JSON: {err.msg} at column {err.colno}")
        except (RecursionError, ValueError) as err:
            return _bad(self.where(lineno), f"invalid JSON: {type(err).__name__}")
        deep = raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
        return self._record(obj, self.where(lineno), _SURROGATE_ESCAPE.search(raw), deep)

    @staticmethod
    def _record(obj: Any, where: str, maybe_surrogate: Any, maybe_deep: bool) -> dict:
        if not isinstance(obj, dict):
            return _bad(where, f"not a JSON object (a {type(obj).__name__})")
        if ROW_ERROR in obj:
            return _bad(where, f"uses the reserved key {ROW_ERROR}")
        if maybe_deep and _depth(obj) > MAX_DEPTH:
            return _bad(where, f"nested more than {MAX_DEPTH} levels deep")
        if maybe_surrogate and _has_surrogate(obj):
            return _bad(where, "a lone surrogate escape (not valid Unicode)")
        return obj

    def _parse_array(self) -> Iterator[dict]:
        items, data = _load_json_array(self.path)
        if items is None:
            raise DataError(f"{_show(self.path)}: changed while it was read")
        check = _SURROGATE_ESCAPE.search(data) is not None
        for i, obj in enumerate(items, 1):
            yield self._record(obj, f"{self.label}item {i}", check, True)


def _load_json_array(path: Path) -> tuple[list | None, bytes]:
    """The items of a ``.json`` file holding one array, or ``(None, b"")`` when it holds JSON
    lines (or is not a ``.json`` file). A broken array is a ``DataError`` naming the line."""
    if path.suffix.lower() != ".json":
        return None, b""
    with _open_binary(path) as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        if not head.startswith(b"["):
            return None, b""
        f.seek(0)
        data = f.read()
    try:
        items = json.loads(
            data.decode("utf-8-sig"), parse_float=_JsonNumber, parse_constant=_JsonNumber
        )
    except UnicodeDecodeError as err:
        raise DataError(f"{_show(path)}: invalid UTF-8 at byte {err.start}") from None
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # "[...]" on the first line, then more lines: JSON lines
            return None, b""
        raise DataError(f"{_show(path)}: line {err.lineno}: invalid JSON: {err.msg}") from None
    except (RecursionError, ValueError) as err:
        raise DataError(f"{_show(path)}: invalid JSON ({_why(err)})") from None
    if not isinstance(items, list):  # pragma: no cover - it starts with "["
        return None, b""
    return items, data


def _depth(obj: Any) -> int:
    """How deeply lists and dicts nest in ``obj`` (iteratively: no recursion limit)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, d = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, d)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((v, d + 1) for v in value if isinstance(v, list | dict))
    return deepest


class _Csv(_Reader):
    def __init__(self, path: Path, label: str = ""):
        self.path, self.label = path, label
        self.scalar, self.image_struct = set(), set()
        header, start = self._header()
        self.columns = header
        self.scalar = set(header)
        total = good = 0
        first_error = None
        for row in self._records(start):
            total += 1
            if ROW_ERROR in row:
                first_error = first_error or row[ROW_ERROR]
            else:
                good += 1
        if total == 0:
            raise DataError(f"{_show(path)} has no rows (only a header line)")
        if good == 0:
            raise DataError(
                f"{_show(path)}: not a CSV file curate can read ({total} bad rows; "
                f"first: {first_error})"
            )
        self.num_rows = total

    def _open(self):
        try:
            return open(self.path, encoding="utf-8-sig", errors="surrogateescape", newline="")
        except OSError as err:
            raise DataError(f"{_show(self.path)}: cannot read it ({_why(err)})") from None

    def _header(self) -> tuple[list[str], int]:
        with self._open() as f:
            reader = csv.reader(f)
            try:
                header = next(reader)
                while not header:  # blank lines before the header
                    header = next(reader)
            except StopIteration:
                raise DataError(f"{_show(self.path)} has no rows (the file is empty)") from None
            except csv.Error as err:
                raise DataError(
                    f"{_show(self.path)}: line {reader.line_num}: not valid CSV ({err})"
                ) from None
            except OSError as err:
                raise DataError(f"{_show(self.path)}: cannot read it ({_why(err)})") from None
            line = reader.line_num
        if any(_SURROGATE.search(h) or "\x00" in h for h in header):
            raise DataError(
                f"{_show(self.path)}: line {line}: not a CSV header (invalid UTF-8 or NUL bytes; "
                "is this a CSV file?)"
            )
        names = [h.strip() or f"column_{i + 1}" for i, h in enumerate(header)]
        if ROW_ERROR in names:
            raise DataError(
                f"{_show(self.path)}: a column is named {ROW_ERROR}, which curate reserves"
            )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataError(
                f"{_show(self.path)}: line {line}: duplicate column name(s) {', '.join(dupes)}"
            )
        return names, line

    def rows(self) -> Iterator[dict]:
        _, start = self._header()
        yield from self._records(start)

    def _records(self, header_line: int) -> Iterator[dict]:
        k = len(self.columns)
        with self._open() as f:
            reader = csv.reader(f)
            last = 0
            while True:
                try:
                    rec = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:
                    start, last = last + 1, reader.line_num
                    if start > header_line:
                        yield _bad(self.where(start), f"not valid CSV ({err})")
                    continue
                except OSError as err:
                    raise DataError(f"{_show(self.path)}: cannot read it ({_why(err)})") from None
                start, last = last + 1, reader.line_num
                if start <= header_line or not rec:
                    continue  # the header (and blank lines before it), or a blank line
                if len(rec) != k:
                    yield _bad(self.where(start), f"expected {k} fields, got {len(rec)}")
                elif any(_SURROGATE.search(v) for v in rec):
                    yield _bad(self.where(start), "invalid UTF-8")
                else:
                    yield {
                        c: (v if v != "" else None) for c, v in zip(self.columns, rec, strict=True)
                    }


class _Parquet(_Reader):
    def __init__(self, path: Path, label: str = ""):
        self.path, self.label = path, label
        pf = self._open()
        schema = pf.schema_arrow
        self.num_rows = pf.metadata.num_rows
        if self.num_rows == 0:
            raise DataError(f"{_show(path)} has no rows")
        self.columns = list(schema.names)
        if ROW_ERROR in self.columns:
            raise DataError(f"{_show(path)}: a column is named {ROW_ERROR}, which curate reserves")
        self.scalar = {f.name for f in schema if _arrow_scalar(f.type)}
        self.image_struct = {f.name for f in schema if _arrow_image(f.type)}
        self.image_struct |= _hf_image_features(schema)

    def _open(self):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
            raise DataError(
                f"{_show(self.path)}: not a readable parquet file ({_why(err)})"
            ) from None

    def rows(self) -> Iterator[dict]:
        pf = self._open()
        done = 0
        try:
            for batch in pf.iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    done += 1
                    yield row
        except Exception as err:  # a corrupt page deep in the file
            raise DataError(
                f"{_show(self.path)}: not a readable parquet file (after row {done}: {_why(err)})"
            ) from None
        finally:
            pf.close()


def _arrow_scalar(t) -> bool:
    import pyarrow.types as pt

    return bool(
        pt.is_integer(t) or pt.is_floating(t) or pt.is_boolean(t) or pt.is_string(t)
        or pt.is_large_string(t) or pt.is_decimal(t)
    )  # fmt: skip


def _arrow_image(t) -> bool:
    import pyarrow.types as pt

    return pt.is_struct(t) and {t.field(i).name for i in range(t.num_fields)} >= {"bytes"}


def _hf_image_features(schema) -> set[str]:
    """Columns a ``datasets`` parquet file declares as ``Image`` in its schema metadata."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return set()
    try:
        feats = json.loads(meta).get("info", {}).get("features", {})
        return {k for k, v in feats.items() if isinstance(v, dict) and v.get("_type") == "Image"}
    except (ValueError, AttributeError):
        return set()


def _reader_for(path: Path, label: str = "") -> _Reader:
    ext = path.suffix.lower()
    if ext == ".parquet":
        return _Parquet(path, label)
    if ext == ".csv":
        return _Csv(path, label)
    return _JsonLines(path, label)


# ------------------------------------------------------------------------------------ folders
@dataclass
class _Scan:
    """What a folder holds (relative POSIX paths, sorted), without following symlinks."""

    root: Path
    images: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    outside_links: list[str] = field(default_factory=list)


def _scan(root: Path) -> _Scan:
    scan = _Scan(root)
    real_root = os.path.realpath(root)
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=errors.append, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            ext = os.path.splitext(name)[1].lower()
            if ext in IMAGE_EXTENSIONS:
                scan.images.append(rel)
            elif ext in FILE_LOADERS:
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    target = os.path.realpath(full)
                    if not (target + os.sep).startswith(real_root.rstrip(os.sep) + os.sep):
                        scan.outside_links.append(rel)
                        continue
                (scan.metadata if name.lower() in METADATA_NAMES else scan.data).append(rel)
    if errors and not (scan.images or scan.data or scan.metadata):
        raise DataError(f"{_show(root)}: cannot list it ({_why(errors[0])})")
    for lst in (scan.images, scan.metadata, scan.data):
        lst.sort()
    return scan


_SPLIT_RE = re.compile(r"(?:^|[/_.\-])(" + "|".join(SPLIT_WORDS) + r")(?=[/_.\-]|$)", re.I)


def _split_of(rel: str, dirs_only: bool) -> str | None:
    text = rel.rsplit("/", 1)[0] if dirs_only else os.path.splitext(rel)[0]
    if dirs_only and "/" not in rel:
        return None
    m = _SPLIT_RE.search(text)
    return m.group(1).lower() if m else None


def _select_split(files: list[str], split: str, dirs_only: bool, where: Path) -> list[str]:
    """The files of ``split`` when the names say which split each file is; else all of them."""
    by_split: dict[str | None, list[str]] = {}
    for f in files:
        by_split.setdefault(_split_of(f, dirs_only), []).append(f)
    named = sorted(k for k in by_split if k is not None)
    if not named:
        if split != "train":
            raise UsageError(f"split: {split!r}: not in {_show(where)} (available: train)")
        return files
    if split.lower() == "train" and "train" not in by_split and None in by_split:
        return by_split[None]  # e.g. data.jsonl beside eval.jsonl: the unnamed files are train
    if split.lower() not in by_split:
        raise UsageError(f"split: {split!r}: not in {_show(where)} (available: {', '.join(named)})")
    return by_split[split.lower()]


@dataclass
class _Plan:
    """Which files make up a local source (shared by open_source and source_fingerprint)."""

    kind: str  # file | imagefolder | disk
    root: Path  # base_dir
    files: list[str]  # data files (file) or metadata files (imagefolder), relative to root
    images: list[str] = field(default_factory=list)
    outside_links: list[str] = field(default_factory=list)


def _is_disk_folder(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _plan_folder(path: Path, split: str) -> _Plan:
    scan = _scan(path)
    top_images = [i for i in scan.images if "/" not in i]
    top_data = [d for d in scan.data if "/" not in d]
    if not scan.images and (scan.data or scan.metadata):
        files = _select_split(sorted(scan.data + scan.metadata), split, False, path)
        return _Plan("file", path, files, outside_links=scan.outside_links)
    if top_data and not top_images:  # data files beside a folder of the images they name
        return _Plan(
            "file", path, _select_split(top_data, split, False, path), [], scan.outside_links
        )
    if scan.images:
        both = _select_split(sorted(scan.images + scan.metadata), split, True, path)
        keep = set(both)
        images = [i for i in scan.images if i in keep]
        meta = [m for m in scan.metadata if m in keep]
        return _Plan("imagefolder", path, meta, images, scan.outside_links)
    raise DataError(f"{_show(path)} holds no images or data files (.parquet, .jsonl, .json, .csv)")


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _plan(name: str, split: str) -> _Plan | None:
    """The local plan for ``name``, or None when it is not a local path."""
    path = Path(name).expanduser()
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # a name too long to be a path, a NUL byte
        return None
    is_dir = _is_dir(path)
    if is_file:
        if path.suffix.lower() not in FILE_LOADERS:
            raise UsageError(
                f"dataset: {_show(name)}: unsupported file type {_show(path.suffix)!r} "
                f"(use {', '.join(sorted(FILE_LOADERS))}, a folder, or a Hub name)"
            )
        if split != "train":
            raise UsageError(f"split: {split!r}: not in {_show(path)} (available: train)")
        return _Plan("file", path.parent, [path.name])
    if is_dir:
        if _is_disk_folder(path):
            return _Plan("disk", path, [])
        return _plan_folder(path, split)
    return None


# ---------------------------------------------------------------------------- local sources
class _Files:
    """The rows of several data files in order, as one reader."""

    def __init__(self, readers: list[_Reader]):
        self.readers = readers
        cols: dict[str, None] = {}
        for r in readers:
            cols.update(dict.fromkeys(r.columns))
        self.columns = list(cols)
        self.scalar = {
            c for c in self.columns if all(c in r.scalar for r in readers if c in r.columns)
        }
        self.image_struct = set().union(*(r.image_struct for r in readers))
        self.num_rows = sum(r.num_rows for r in readers)

    def rows(self) -> Iterator[dict]:
        for r in self.readers:
            yield from r.rows()


class _ImageFolder:
    def __init__(self, plan: _Plan):
        self.root = plan.root
        self.images = plan.images
        self.notes: dict = {}
        self.image_struct: set[str] = set()  # the image column holds path strings
        self.meta = [_reader_for(plan.root / m, f"{m} ") for m in plan.files]
        if not self.meta:
            self._labels = self._class_labels()
            self.columns = [IMAGE_COLUMN] + (["label"] if self._labels else [])
            self.scalar = {"label"}
            self.num_rows = len(self.images)
            return
        for m, r in zip(plan.files, self.meta, strict=True):
            if "file_name" not in r.columns:
                raise DataError(
                    f"{_show(plan.root / m)}: no file_name column to join the images on "
                    f"(columns: {_show(', '.join(r.columns))})"
                )
        cols: dict[str, None] = {IMAGE_COLUMN: None}
        for r in self.meta:
            cols.update(dict.fromkeys(c for c in r.columns if c not in ("file_name", IMAGE_COLUMN)))
        self.columns = list(cols)
        self.scalar = {
            c for c in self.columns if all(c in r.scalar for r in self.meta if c in r.columns)
        }
        self.num_rows = sum(r.num_rows for r in self.meta)
        listed: set[str] = set()
        for row in self.rows():
            name = _listed_name(row.get(IMAGE_COLUMN), self.root)
            if name is not None:
                listed.add(name)
        unlisted = [i for i in self.images if i not in listed]
        if unlisted:
            self.notes["unlisted_images"] = {
                "count": len(unlisted),
                "first": [_show(u) for u in unlisted[:MAX_NOTED]],
            }

    def _class_labels(self) -> bool:
        """As the ``datasets`` imagefolder: labels when every image sits at the same depth and
        there is more than one parent folder."""
        parents = {i.rsplit("/", 1)[0] if "/" in i else "" for i in self.images}
        depths = {i.count("/") for i in self.images}
        names = {p.rsplit("/", 1)[-1] for p in parents}
        return len(names) > 1 and len(depths) == 1 and "" not in parents

    def rows(self) -> Iterator[dict]:
        if not self.meta:
            for rel in self.images:
                row = {IMAGE_COLUMN: rel}
                if self._labels:
                    row["label"] = rel.rsplit("/", 2)[-2]
                yield row
            return
        for m in self.meta:
            prefix = os.path.dirname(os.path.relpath(m.path, self.root))
            for row in m.rows():
                if ROW_ERROR in row:
                    yield row
                    continue
                fn = row.pop("file_name", None)
                row.pop(IMAGE_COLUMN, None)
                if isinstance(fn, str) and fn and prefix and not os.path.isabs(fn):
                    fn = f"{prefix}/{fn}"  # joined as text: never resolved here
                yield {IMAGE_COLUMN: fn, **row}


def _listed_name(value: Any, root: Path) -> str | None:
    """The image a metadata ``file_name`` names, relative to ``root`` (for the unlisted count)."""
    if not isinstance(value, str) or not value or "\x00" in value:
        return None
    try:
        if os.path.isabs(value):
            rel = os.path.relpath(os.path.normpath(value), os.path.abspath(root))
        else:
            rel = os.path.normpath(value)
    except ValueError:
        return None
    return None if rel == ".." or rel.startswith("../") else rel.replace(os.sep, "/")


def _open_local(plan: _Plan, name: str):
    if plan.kind == "imagefolder":
        return _ImageFolder(plan)
    label = len(plan.files) > 1 or plan.root != Path(name).expanduser().parent
    readers = [_reader_for(plan.root / f, f"{f} " if label else "") for f in plan.files]
    return _Files(readers)


# ------------------------------------------------------------------------ datasets sources
def _pick_split(obj, split: str, where: str):
    from datasets import DatasetDict, IterableDatasetDict

    if isinstance(obj, DatasetDict | IterableDatasetDict):
        if split not in obj:
            raise UsageError(
                f"split: {split!r}: not in {_show(where)} (available: {', '.join(obj.keys())})"
            )
        return obj[split]
    return obj


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._\-]{0,95})?$")


def plausible_hub_id(name: str) -> bool:
    """``user/name`` or ``name`` as the Hub spells repository ids."""
    return (
        bool(_HUB_ID.match(name))
        and "--" not in name
        and ".." not in name
        and not (name.endswith((".", "-")))
    )


def _open_dataset(name: str, split: str, streaming: bool):
    """Return ``(dataset, kind, base_dir)`` for a builtin, disk or Hub source."""
    if name.startswith("builtin:"):
        from curate.data.builtin import BUILTINS, load_builtin

        short = name.split(":", 1)[1]
        if short not in BUILTINS:
            raise UsageError(
                f"dataset: {_show(name)}: unknown built-in set (use builtin:{', builtin:'.join(BUILTINS)})"
            )
        return load_builtin(short), "builtin", None
    path = Path(name).expanduser()
    if _is_dir(path):
        from datasets import load_from_disk

        try:
            obj = load_from_disk(str(path))
        except Exception as err:  # a torn or foreign save_to_disk folder
            raise DataError(
                f"{_show(path)}: not a readable save_to_disk folder ({_why(err)})"
            ) from None
        return _pick_split(obj, split, str(path)), "disk", path
    looks_local = (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or path.suffix.lower() in FILE_LOADERS
        or path.suffix.lower() in IMAGE_EXTENSIONS
    )
    if looks_local or not plausible_hub_id(name):
        raise DataError(
            f"dataset: {_show(name)}: no such file or folder"
            + ("" if looks_local else " (and not a Hugging Face Hub name)")
        )
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split=split, streaming=streaming)
        if ds.features is None:  # a streaming dataset whose features are not declared
            ds = ds._resolve_features()
    except Exception as err:  # the Hub client raises many types; all mean the same to a user
        raise DataError(
            f"dataset: {name}: could not load it from the Hugging Face Hub "
            f"({_why(err)}). Check the name and your network, or pass a local path"
        ) from None
    return ds, "hub", None


def _guess(columns: list[str], given: str | None, guesses, key: str) -> str | None:
    if given is not None:
        if given not in columns:
            raise UsageError(
                f"{key}: {_show(given)!r}: not a column (columns: {_show(', '.join(columns))})"
            )
        return given
    for g in guesses:
        if g in columns:
            return g
    return None


def _resolve_columns(
    name: str,
    columns: list[str],
    image_first: list[str],
    image_column: str | None,
    caption_column: str | None,
    id_column: str | None,
) -> tuple[str, str | None, str | None]:
    img_col = image_column or (image_first[0] if image_first else None)
    img_col = _guess(columns, img_col, IMAGE_COLUMN_GUESSES, "image_column")
    if img_col is None:
        raise UsageError(
            f"dataset: {_show(name)}: no image column found; pass image_column: NAME "
            f"(columns: {_show(', '.join(columns))})"
        )
    no_caption = caption_column is not None and caption_column.lower() == "none"
    cap_col = None
    if not no_caption:
        cap_col = _guess(columns, caption_column, CAPTION_COLUMN_GUESSES, "caption_column")
        if cap_col is None:
            raise UsageError(
                f"dataset: {_show(name)}: no caption column found; pass caption_column: NAME, "
                "or caption_column: none for an uncaptioned dataset "
                f"(columns: {_show(', '.join(columns))})"
            )
    id_col = _guess(columns, id_column, (), "id_column") if id_column else None
    return img_col, cap_col, id_col


def open_source(
    name: str,
    *,
    split: str = "train",
    image_column: str | None = None,
    caption_column: str | None = None,
    id_column: str | None = None,
    streaming: bool = False,
) -> Source:
    """Open ``name`` and resolve which columns hold the image, caption(s) and id.

    ``caption_column="none"`` declares a dataset without captions (unconditional training).
    Local files and folders (other than ``save_to_disk`` ones) are read by curate's readers
    (see the module docstring); ``streaming`` only matters for Hub names.
    """
    name = os.fspath(name)
    plan = None if name.startswith("builtin:") else _plan(name, split)
    if plan is not None and plan.kind != "disk":
        return _open_local_source(name, split, plan, image_column, caption_column, id_column)
    from datasets import Image

    ds, kind, base_dir = _open_dataset(name, split, streaming)
    features = ds.features
    columns = list(features.keys())
    image_features = [c for c, f in features.items() if isinstance(f, Image)]
    img_col, cap_col, id_col = _resolve_columns(
        name, columns, image_features, image_column, caption_column, id_column
    )
    image_is_path = not isinstance(features[img_col], Image)
    if not image_is_path:
        ds = ds.cast_column(img_col, Image(decode=False))
    used = {img_col, cap_col, id_col}
    extra = [
        c
        for c, f in features.items()
        if c not in used and getattr(f, "dtype", None) in _SCALAR_DTYPES
    ]
    num_rows = None
    if not _is_streaming(ds):
        num_rows = len(ds)
    return Source(
        kind=kind,
        name=name,
        split=split,
        image_column=img_col,
        caption_column=cap_col,
        id_column=id_col,
        base_dir=base_dir,
        extra_columns=extra,
        fingerprint=source_fingerprint(name, split) if kind != "hub" else None,
        num_rows=num_rows,
        dataset=ds,
        image_is_path=image_is_path,
    )


def _is_streaming(ds) -> bool:
    from datasets import IterableDataset

    return isinstance(ds, IterableDataset)


def _open_local_source(
    name: str,
    split: str,
    plan: _Plan,
    image_column: str | None,
    caption_column: str | None,
    id_column: str | None,
) -> Source:
    reader = _open_local(plan, name)
    if ROW_ERROR in reader.columns:
        raise DataError(
            f"dataset: {_show(name)}: a column is named {ROW_ERROR}, which curate reserves"
        )
    if plan.kind == "imagefolder" and image_column == "file_name":
        image_column = IMAGE_COLUMN  # the metadata's file_name is the image column
    notes = dict(getattr(reader, "notes", {}))
    if plan.outside_links:
        notes["skipped_outside_links"] = {
            "count": len(plan.outside_links),
            "first": [_show(p) for p in plan.outside_links[:MAX_NOTED]],
        }
    image_first = [IMAGE_COLUMN] if plan.kind == "imagefolder" else sorted(reader.image_struct)
    img_col, cap_col, id_col = _resolve_columns(
        name, reader.columns, image_first, image_column, caption_column, id_column
    )
    used = {img_col, cap_col, id_col}
    extra = [c for c in reader.columns if c not in used and c in reader.scalar]
    return Source(
        kind=plan.kind,
        name=name,
        split=split,
        image_column=img_col,
        caption_column=cap_col,
        id_column=id_col,
        base_dir=plan.root,
        extra_columns=extra,
        fingerprint=_plan_fingerprint(plan, split),
        num_rows=reader.num_rows,
        notes=notes,
        image_is_path=img_col not in reader.image_struct,
        _rows=reader.rows,
    )


# ------------------------------------------------------------------------------ fingerprint
def source_fingerprint(name: str, split: str = "train") -> str | None:
    """A cheap fingerprint of a source (no full read); None when it cannot be known offline.

    Local files and folders: a hash over (relative path, size, mtime_ns) of every file that
    makes up the source (the data files; an imagefolder's images and metadata files; every
    file of a ``save_to_disk`` folder but hidden ones and ``datasets``' ``cache-*`` files). ``builtin:*``: the curate version and the set name.
    A Hub name: None. Never raises.
    """
    try:
        name = os.fspath(name)
        if name.startswith("builtin:"):
            from curate._version import __version__

            return _digest(["builtin", __version__, name, split])
        plan = _plan(name, split)
        if plan is None:
            return None
        return _plan_fingerprint(plan, split)
    except Exception:  # a fingerprint is advisory: a source that cannot be read fails later
        return None


def _plan_fingerprint(plan: _Plan, split: str) -> str | None:
    if plan.kind == "disk":
        files = []
        for dirpath, dirnames, filenames in os.walk(plan.root, followlinks=False):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, plan.root)
            names = [n for n in sorted(filenames) if not n.startswith((".", "cache-"))]
            files += [n if rel_dir == "." else f"{rel_dir}/{n}" for n in names]
    else:
        files = sorted(plan.files + plan.images)
    parts: list[str] = [plan.kind, split]
    for rel in files:
        full = os.path.join(plan.root, rel)
        try:
            st = os.stat(full)
        except OSError:
            try:
                st = os.lstat(full)
            except OSError:
                parts.append(f"{_show(rel)}\0missing")
                continue
        parts.append(f"{_show(rel)}\0{st.st_size}\0{st.st_mtime_ns}")
    return _digest(parts)


def _digest(parts: list[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode("utf-8", "backslashreplace"))
        h.update(b"\n")
    return h.hexdigest()


_SCALAR_DTYPES = {
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "string",
    "large_string",
}

__all__ = [
    "CAPTION_COLUMN_GUESSES",
    "FILE_LOADERS",
    "IMAGE_COLUMN_GUESSES",
    "IMAGE_EXTENSIONS",
    "ROW_ERROR",
    "Source",
    "open_source",
    "plausible_hub_id",
    "source_fingerprint",
]
