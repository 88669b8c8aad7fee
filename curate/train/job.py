"""The train job: a dataset in, a model folder out. ``curate train`` and the ``train`` recipe
step both call :func:`train_job`; neither loads data or resolves settings itself."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from curate.models.presets import build_model, preset_defaults
from curate.train import loop
from curate.train.config import TrainConfig
from curate.train.data import from_table, load_training_data


@dataclass(frozen=True)
class RunRows:
    """A run's table as a recipe step sees it (earlier steps' columns included) and its
    ``curate.io.store.ImageStore``; the kept rows are trained on."""

    table: Any  # polars.DataFrame
    store: Any


@dataclass(frozen=True)
class TrainJobResult:
    out_dir: Path
    config: TrainConfig  # as trained: channels and resolution filled in
    num_samples: int


def resolve_config(config: TrainConfig) -> TrainConfig:
    """``config`` checked, with ``channels`` (1 for tiny, 3 otherwise) and, for
    ``sd-finetune``, ``resolution`` (the checkpoint's image size) filled in."""
    config.check()
    config = config.with_default_channels()
    if config.resolution is None and preset_defaults(config.model)["resolution"] is None:
        # sd-finetune: the checkpoint's image size
        bundle = build_model(config.model, channels=config.channels, device="cpu")
        config = dataclasses.replace(config, resolution=bundle.image_resolution)
    return config


def train_job(
    source: str | Path | RunRows,
    out_dir: Path | str,
    config: TrainConfig,
    *,
    device: str = "cpu",
    resume: bool | Literal["auto"] = False,
    overwrite: bool = False,
    quiet: bool = False,
    info: dict[str, Any] | None = None,
) -> TrainJobResult:
    """Train on ``source`` and write the model folder ``out_dir``.

    ``source``: a run folder (its kept rows), any source ``curate ingest`` accepts (ingested
    into a temporary folder first), or the :class:`RunRows` of a recipe step. The data is loaded
    at the model's size with the per-sample columns the config names; the caption transform
    is built by the trainer from the config. ``info`` is added to ``curate_train.json`` (with
    ``dataset``: the source's name). ``resume`` and ``overwrite`` are those of
    ``curate.train.loop.train``. Errors name config keys (``sigma_n_column: ...``).
    """
    config = resolve_config(config)
    resolution = config.resolution or preset_defaults(config.model)["resolution"]
    columns = {
        "channels": config.channels,
        "resolution": resolution,
        "sigma_n_column": config.sigma_n_column,
        "noisy_only_column": config.noisy_only_column,
    }
    if isinstance(source, RunRows):
        data = from_table(source.table, source.store, **columns)
        name = None
    else:
        data = load_training_data(str(source), quiet=quiet, **columns)
        name = str(source)
    path = loop.train(
        data,
        out_dir,
        config,
        device=device,
        resume=resume,
        overwrite=overwrite,
        quiet=quiet,
        extra_info={"dataset": name, **(info or {})},
    )
    return TrainJobResult(Path(path), config, len(data))
