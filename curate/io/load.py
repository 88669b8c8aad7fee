"""Open a dataset source: a Hub name, a ``save_to_disk`` folder, an imagefolder, a
parquet/jsonl/json/csv file (or folder of them), or a built-in set (``builtin:digits``).

The result is a ``Source``: a ``datasets`` Dataset or IterableDataset plus the resolved column
mapping. Images are never decoded here (the image column is cast to ``Image(decode=False)``) so
that ingest can turn every broken image into a rejected row instead of an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.errors import DataError, UsageError

IMAGE_COLUMN_GUESSES = ("image", "img", "jpg", "png", "image_path", "file_name", "path", "url")
CAPTION_COLUMN_GUESSES = ("text", "caption", "captions", "prompt", "txt", "TEXT", "description")
FILE_LOADERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


@dataclass
class Source:
    dataset: Any  # datasets.Dataset | datasets.IterableDataset
    kind: str  # builtin | disk | imagefolder | file | hub
    name: str
    split: str
    image_column: str
    caption_column: str | None
    id_column: str | None
    base_dir: Path | None  # where relative image paths resolve
    image_is_path: bool = False  # column holds path strings rather than an Image feature
    extra_columns: list[str] = field(default_factory=list)
    fingerprint: str | None = None

    @property
    def streaming(self) -> bool:
        from datasets import IterableDataset

        return isinstance(self.dataset, IterableDataset)


def _pick_split(obj, split: str, where: str):
    from datasets import DatasetDict, IterableDatasetDict

    if isinstance(obj, DatasetDict | IterableDatasetDict):
        if split not in obj:
            raise UsageError(
                f"--split {split!r} not in {where} (available: {', '.join(obj.keys())})"
            )
        return obj[split]
    return obj


def _open_dataset(name: str, split: str, streaming: bool, data_files_ext: str | None = None):
    """Return ``(dataset, kind, base_dir)`` for a source name."""
    from datasets import load_dataset, load_from_disk

    if name.startswith("builtin:"):
        from curate.data.builtin import BUILTINS, load_builtin

        short = name.split(":", 1)[1]
        if short not in BUILTINS:
            raise UsageError(
                f"--dataset {name}: unknown built-in set (use builtin:{', builtin:'.join(BUILTINS)})"
            )
        return load_builtin(short), "builtin", None
    path = Path(name).expanduser()
    if path.is_file():
        loader = FILE_LOADERS.get(path.suffix.lower())
        if loader is None:
            raise UsageError(
                f"--dataset {name}: unsupported file type {path.suffix!r} "
                f"(use {', '.join(sorted(FILE_LOADERS))}, a folder, or a Hub name)"
            )
        ds = load_dataset(loader, data_files=str(path), split="train")
        return ds, "file", path.parent
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return _pick_split(load_from_disk(str(path)), split, str(path)), "disk", path
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".parquet", ".jsonl"))
        if files and not any(p.suffix.lower() in (".png", ".jpg", ".jpeg") for p in path.iterdir()):
            loader = FILE_LOADERS[files[0].suffix.lower()]
            same = [str(p) for p in files if FILE_LOADERS[p.suffix.lower()] == loader]
            return load_dataset(loader, data_files=same, split="train"), "file", path
        ds = load_dataset("imagefolder", data_dir=str(path), split=split)
        return ds, "imagefolder", path
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise DataError(f"--dataset {name}: no such file or folder")
    try:
        ds = load_dataset(name, split=split, streaming=streaming)
    except Exception as err:  # the Hub client raises many types; all mean the same to a user
        raise DataError(
            f"--dataset {name}: could not load it from the Hugging Face Hub "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}). "
            "Check the name and your network, or pass a local path"
        ) from None
    return ds, "hub", None


def _guess(columns: list[str], given: str | None, guesses, what: str, flag: str) -> str | None:
    if given is not None:
        if given not in columns:
            raise UsageError(f"{flag} {given!r} is not a column (columns: {', '.join(columns)})")
        return given
    for g in guesses:
        if g in columns:
            return g
    return None


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
    """
    from datasets import Image

    ds, kind, base_dir = _open_dataset(name, split, streaming)
    features = ds.features
    if features is None:  # a streaming dataset whose features are not declared
        ds = ds._resolve_features()
        features = ds.features
    columns = list(features.keys())
    image_features = [c for c, f in features.items() if isinstance(f, Image)]
    img_col = image_column or (image_features[0] if image_features else None)
    img_col = _guess(columns, img_col, IMAGE_COLUMN_GUESSES, "image", "--image-column")
    if img_col is None:
        raise UsageError(
            f"--dataset {name}: no image column found; pass --image-column (columns: {', '.join(columns)})"
        )
    no_caption = caption_column is not None and caption_column.lower() == "none"
    cap_col = None
    if not no_caption:
        cap_col = _guess(
            columns, caption_column, CAPTION_COLUMN_GUESSES, "caption", "--caption-column"
        )
        if cap_col is None:
            raise UsageError(
                f"--dataset {name}: no caption column found; pass --caption-column NAME, "
                f"or --caption-column none for an uncaptioned dataset (columns: {', '.join(columns)})"
            )
    id_col = _guess(columns, id_column, (), "id", "--id-column") if id_column else None
    image_is_path = not isinstance(features[img_col], Image)
    if not image_is_path:
        ds = ds.cast_column(img_col, Image(decode=False))
    used = {img_col, cap_col, id_col}
    extra = [
        c
        for c, f in features.items()
        if c not in used and getattr(f, "dtype", None) in _SCALAR_DTYPES
    ]
    return Source(
        dataset=ds,
        kind=kind,
        name=name,
        split=split,
        image_column=img_col,
        caption_column=cap_col,
        id_column=id_col,
        base_dir=base_dir,
        image_is_path=image_is_path,
        extra_columns=extra,
        fingerprint=getattr(ds, "_fingerprint", None),
    )


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
