"""The images a model was trained on, as tensors at the model's size: what the audit scores
generations against and what AMG searches at every sampler step.

``load_training_set(RUN_DIR)`` reads a run folder's kept rows (``curate.table.kept_rows``);
``training_set_from_table`` does the same for a table and an ``ImageStore``. Images go through
``curate.core.images.pil_to_tensor``, exactly as the trainer prepares them, so a model's copy
of a training image reads as a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from curate.core.images import pil_to_tensor
from curate.errors import DataError, UsageError
from curate.io.store import ImageStore
from curate.table import TABLE_FILE, kept_rows, ok_mask, read_table, table_exists

if TYPE_CHECKING:
    import polars as pl
    import torch

#: PIL modes read as one channel when deciding a training set's channels
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


@dataclass
class TrainingSet:
    """The images a model was trained on, as the model saw them."""

    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    sample_ids: list[str]
    keys: list[str | None] | None = None  # e.g. pixel hashes; equal keys = the same image
    captions: list[str] | None = None  # primary captions (prompts for a conditional model)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DataError(f"training images must be (N, C, H, W), got {tuple(self.images.shape)}")
        if len(self.sample_ids) != len(self.images):
            raise DataError(f"{len(self.sample_ids)} sample ids for {len(self.images)} images")

    @classmethod
    def from_tensor(cls, images: torch.Tensor, sample_ids: Sequence[str] | None = None):
        """A training set from a tensor; ids default to ``"0", "1", ...``."""
        ids = [str(i) for i in range(len(images))] if sample_ids is None else list(sample_ids)
        return cls(images=images.detach().float().cpu(), sample_ids=ids)


def load_training_set(
    run_dir: Path | str,
    resolution: int | None = None,
    channels: int | None = None,
    rows: Literal["kept", "ok"] = "kept",
    key: str = "train_dir",
) -> TrainingSet:
    """The training images of a run folder (its kept rows by default) at the model's size.
    ``key``: the setting that named the folder, as errors name it (``train_dir: RUN: ...``)."""
    run_dir = Path(run_dir)
    if not table_exists(run_dir / TABLE_FILE):
        raise DataError(f"{key}: {run_dir}: no {TABLE_FILE}; run `curate ingest` first")
    return training_set_from_table(
        read_table(run_dir),
        ImageStore(run_dir),
        resolution,
        channels,
        rows=rows,
        where=f"{key}: {run_dir}",
    )


def training_set_from_table(
    table: pl.DataFrame,
    store: ImageStore,
    resolution: int | None = None,
    channels: int | None = None,
    rows: Literal["kept", "ok"] = "kept",
    batch_size: int = 256,
    where: str = "the run",
) -> TrainingSet:
    """The images of ``table``'s kept (or ok) rows read from ``store``.

    ``resolution`` defaults to the images' common square size and ``channels`` to 1 when every
    source image is greyscale, else 3; an ambiguous set raises ``UsageError``.
    """
    import torch

    table = kept_rows(table) if rows == "kept" else table.filter(ok_mask(table))
    if table.height < 2:
        raise DataError(f"{where}: {table.height} {rows} rows; an audit needs >= 2")
    if resolution is None:
        sizes = set(zip(table["width"].to_list(), table["height"].to_list(), strict=True))
        if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
            raise UsageError(f"{where}: images are not all one square size; give resolution: SIZE")
        resolution = int(table["width"][0])
    if channels is None:
        channels = 1 if set(table["mode"].to_list()) <= GREY_MODES else 3
    ids = table["sample_id"].to_list()
    chunks = []
    for _, images in store.iter_batches(ids, batch_size=batch_size):
        if any(img is None for img in images):
            raise DataError(f"{where}: a kept row has no stored image")
        chunks.append(pil_to_tensor(images, channels=channels, resolution=resolution))
    keys = table["pixel_hash"].to_list() if "pixel_hash" in table.columns else None
    captions = table["caption"].to_list() if "caption" in table.columns else None
    return TrainingSet(images=torch.cat(chunks), sample_ids=ids, keys=keys, captions=captions)
