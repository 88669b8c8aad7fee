"""Training data: images in [-1, 1] with their sample ids, captions and per-sample sigma_n.

From a curate run folder (kept rows only: ``status == "ok"`` and every ``*_drop`` null) or
straight from tensors. Which sample a training step sees is a pure function of
``(seed, step)`` (:func:`stream_positions`), so a resumed run sees exactly the same batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from curate.core.images import pil_to_tensor
from curate.errors import DataError, UsageError
from curate.io.ingest import IngestConfig, ingest
from curate.io.store import ImageStore
from curate.seeding import rng_for
from curate.table import TABLE_FILE, caption_lists, kept_rows, read_table, table_exists

# preload decoded images when they fit in this many bytes (uint8); otherwise decode per batch
PRELOAD_BYTES = 1 << 30


@dataclass
class TrainData:
    """``N`` training samples. ``images`` (N, C, H, W) float in [-1, 1] when preloaded."""

    sample_ids: list[str]
    captions: list[list[str]]
    sigma_n: np.ndarray | None = None  # (N,) per-sample sigma_n; NaN = use the global value
    noisy_only: np.ndarray | None = None  # (N,) bool: never trained on the clean image
    images: torch.Tensor | None = None
    channels: int = 1
    resolution: int = 16
    _store: object = None  # curate.io.store.ImageStore for lazy decoding

    def __len__(self) -> int:
        return len(self.sample_ids)

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """Images (b, C, H, W) in [-1, 1] for dataset indices."""
        if self.images is not None:
            return self.images[list(indices)]
        pil = self._store.get([self.sample_ids[i] for i in indices])
        return pil_to_tensor(pil, channels=self.channels, resolution=self.resolution)


def _captions_of(table) -> list[list[str]]:
    """What each row trains with (``curate.table.caption_lists``); [""] for uncaptioned rows."""
    return [lst or [""] for lst in caption_lists(table).to_list()]


def from_table(
    table,
    store,
    *,
    channels: int = 1,
    resolution: int = 16,
    sigma_n_column: str | None = None,
    noisy_only_column: str | None = None,
) -> TrainData:
    """The kept rows of a run table, with images from ``store`` (an ``ImageStore``)."""
    for col, key in ((sigma_n_column, "sigma_n_column"), (noisy_only_column, "noisy_only_column")):
        if col and col not in table.columns:
            raise UsageError(
                f"{key}: {col!r} is not a column of the table; see `curate info RUN_DIR`"
            )
    kept = kept_rows(table)
    if kept.height == 0:
        raise DataError("no kept rows to train on (every row is rejected or marked *_drop)")
    sigma_n = noisy_only = None
    if sigma_n_column:
        sigma_n = kept[sigma_n_column].cast(float).fill_null(float("nan")).to_numpy()
    if noisy_only_column:
        noisy_only = kept[noisy_only_column].cast(bool).fill_null(False).to_numpy()
    data = TrainData(
        sample_ids=[str(s) for s in kept["sample_id"].to_list()],
        captions=_captions_of(kept),
        sigma_n=sigma_n,
        noisy_only=noisy_only,
        channels=channels,
        resolution=resolution,
        _store=store,
    )
    if len(data) * channels * resolution**2 <= PRELOAD_BYTES:
        chunks = [data.batch(range(i, min(i + 512, len(data)))) for i in range(0, len(data), 512)]
        data.images = torch.cat(chunks)
    return data


def from_run(run_dir: Path | str, **kwargs) -> TrainData:
    """Kept rows of ``RUN_DIR/table.parquet`` with their images (see :func:`from_table`)."""
    path = Path(run_dir) / TABLE_FILE
    if not table_exists(path):
        raise DataError(f"{path} does not exist: pass a run folder made by `curate ingest`")
    return from_table(read_table(path), ImageStore(run_dir), **kwargs)


def from_tensors(
    images: torch.Tensor,
    sample_ids: Sequence[str] | None = None,
    captions: Sequence[str | list[str]] | None = None,
    sigma_n: np.ndarray | None = None,
    noisy_only: np.ndarray | None = None,
) -> TrainData:
    """Training data from images (N, C, H, W) already in [-1, 1]."""
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise DataError(f"images must be (N, C, H, H), got {tuple(images.shape)}")
    n = images.shape[0]
    ids = [str(s) for s in sample_ids] if sample_ids is not None else [f"{i:06d}" for i in range(n)]
    caps = [[c] if isinstance(c, str) else list(c) for c in captions] if captions else [[""]] * n
    if len(ids) != n or len(caps) != n:
        raise DataError("sample_ids and captions must have one entry per image")
    return TrainData(
        sample_ids=ids,
        captions=caps,
        sigma_n=sigma_n,
        noisy_only=noisy_only,
        images=images.float(),
        channels=images.shape[1],
        resolution=images.shape[2],
    )


def from_builtin(name: str, channels: int = 1, resolution: int = 16) -> TrainData:
    """A builtin dataset (``digits``) loaded straight into memory (no run folder needed)."""
    try:
        from curate.data.builtin import load_builtin
    except ImportError:
        load_builtin = None
    if load_builtin is not None:
        ds = load_builtin(name)
        pil = list(ds["image"])
        text = list(ds["text"]) if "text" in ds.column_names else [""] * len(pil)
        ids = list(ds["sample_id"]) if "sample_id" in ds.column_names else None
    elif name == "digits":
        from PIL import Image
        from sklearn.datasets import load_digits

        d = load_digits()
        pil = [Image.fromarray((im * 255 / 16).astype(np.uint8)) for im in d.images]
        text = [f"a handwritten digit {t}" for t in d.target]
        ids = None
    else:
        raise UsageError(f"--dataset builtin:{name}: unknown builtin dataset")
    x = pil_to_tensor(pil, channels=channels, resolution=resolution)
    # the ids `curate ingest` gives rows without an id column, so both routes agree
    return from_tensors(x, sample_ids=ids or [f"s{i:08d}" for i in range(len(pil))], captions=text)


def load_training_data(
    dataset: str,
    *,
    channels: int = 1,
    resolution: int = 16,
    sigma_n_column: str | None = None,
    noisy_only_column: str | None = None,
    quiet: bool = False,
) -> TrainData:
    """A run folder's kept rows, or any ingestible source (``builtin:digits``, a Hub name, ...)
    ingested into a temporary run folder first (all of it is then held in memory)."""
    import tempfile

    kwargs = {
        "channels": channels,
        "resolution": resolution,
        "sigma_n_column": sigma_n_column,
        "noisy_only_column": noisy_only_column,
    }
    if table_exists(Path(dataset) / TABLE_FILE):
        return from_run(dataset, **kwargs)
    if Path(dataset).is_dir() and (Path(dataset) / "images").exists():
        raise DataError(f"--dataset {dataset}: run folder without table.parquet; re-run ingest")
    with tempfile.TemporaryDirectory(prefix="curate-train-") as tmp:
        ingest(IngestConfig(name=dataset), tmp, quiet=quiet)
        data = from_run(tmp, **kwargs)
        if data.images is None:
            data.images = torch.cat(
                [data.batch(range(i, min(i + 512, len(data)))) for i in range(0, len(data), 512)]
            )
        data._store = None
    return data


def stream_positions(
    step: int, micro: int, num_micro: int, batch_size: int, rank: int = 0, world: int = 1
) -> np.ndarray:
    """Global positions in the sample stream for one micro-batch (unique across the run)."""
    start = ((step * num_micro + micro) * world + rank) * batch_size
    return np.arange(start, start + batch_size)


def positions_to_indices(positions: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dataset indices and epochs for stream positions: epoch e is a permutation from (seed, e)."""
    epochs = positions // n
    out = np.empty_like(positions)
    for e in np.unique(epochs):
        perm = rng_for(seed, "epoch-order", int(e)).permutation(n)
        sel = epochs == e
        out[sel] = perm[positions[sel] % n]
    return out, epochs
