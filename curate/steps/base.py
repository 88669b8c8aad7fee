"""The step contract: a step is its config.

A step is a frozen dataclass whose fields are its settings. It declares the columns it
``requires`` and ``produces``; its one method, ``compute(table, ctx)``, returns a frame with
exactly the produced columns, one row per input row, in the input's row order. The runner
checks that contract and appends the columns, so no step can drop rows, reorder them, or
overwrite another step's columns.

Removal is expressed as data: a column named ``<something>_drop`` (``curate.table.DROP_SUFFIX``)
holding a reason string marks a row for removal; null means "keep". Selection and export read
them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from curate.seeding import derive_seed, rng_for

if TYPE_CHECKING:
    import polars as pl

    from curate.report import Report

log = logging.getLogger("curate")


@dataclass
class RunContext:
    """Everything a step gets from outside: where to write, which device, which seed."""

    run_dir: Path
    seed: int = 0
    device: str = "cpu"
    quiet: bool = False
    overwrite: bool = False  # a step may replace an earlier output of another kind (export)
    step_dir: Path | None = None  # per-step artifact folder, set by the runner
    stats: dict[str, Any] = field(default_factory=dict)  # per-step counters, saved by the runner
    # The per-row values of a sharded step (``Step.shard_values`` of every row, gathered from
    # the shards by ``curate merge``): ``compute`` reads them instead of computing them.
    shard_values: pl.DataFrame | None = None
    # What earlier steps of the run hand on, by step id (a recipe's ``id:`` key): the folder a
    # step wrote (``Step.output_dir``: a train step's model) and its step folder.
    outputs: dict[str, Path] = field(default_factory=dict)
    step_dirs: dict[str, Path] = field(default_factory=dict)
    step_id: str | None = None  # the id of the step being computed, set by the runner
    # Models kept between calls (``model``): set by a worker that computes many batches of
    # rows with one model (a Ray actor of ``curate.engines.ray_data``); None loads per call.
    models: dict[Any, Any] | None = None
    _report: Report | None = None

    def model(self, key: Any, load: Callable[[], Any]) -> Any:
        """``load()``, or the model loaded under ``key`` before when ``models`` keeps them."""
        if self.models is None:
            return load()
        if key not in self.models:
            self.models[key] = load()
        return self.models[key]

    def rng(self, *key: object) -> np.random.Generator:
        """A numpy Generator derived from the run seed and ``key`` (never global state)."""
        return rng_for(self.seed, *key)

    def derive_seed(self, *key: object) -> int:
        return derive_seed(self.seed, *key)

    def artifact_dir(self, name: str | None = None) -> Path:
        """A folder for this step's large artifacts (embeddings, indexes), created on demand."""
        base = self.step_dir if self.step_dir is not None else self.run_dir / "artifacts"
        path = base / name if name else base
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def report(self) -> Report:
        if self._report is None:
            from curate.report import Report

            self._report = Report(self.run_dir / "report")
        if self.step_id:  # a step used twice: each use keeps its own report sections
            return _IdReport(self._report, self.step_id)
        return self._report

    def images(self):
        """The run's image store (``curate.io.store.ImageStore``), opened lazily."""
        from curate.io.store import ImageStore

        return ImageStore(self.run_dir)

    def progress(self, iterable=None, **kwargs):
        """A tqdm progress bar that honours ``--quiet``."""
        from tqdm.auto import tqdm

        return tqdm(iterable, disable=self.quiet, **kwargs)


class _IdReport:
    """A ``Report`` whose sections carry a step id in their key and title."""

    def __init__(self, report: Report, step_id: str):
        self._inner, self._id = report, step_id

    def add_section(self, key: str, title: str, body_html: str, order: int = 50) -> Path:
        return self._inner.add_section(
            f"{key}-{self._id}", f"{title} ({self._id})", body_html, order
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclass(frozen=True)
class Step:
    """Base class of every recipe step. Subclasses are frozen dataclasses."""

    name: ClassVar[str] = "step"
    requires: ClassVar[tuple[str, ...]] = ()
    produces: ClassVar[tuple[str, ...]] = ()
    # A sharded step splits into a per-row part (``shard_values``, run on the rows of one shard
    # by ``--shard i/N``) and a global part (``compute`` with ``ctx.shard_values`` set).
    shardable: ClassVar[bool] = False

    # Set by the recipe (``id:``) when one step is used twice: it names the step's folder
    # (``NN-name-id``), prefixes its columns (``audit_naive_copies``) and lets later steps refer
    # to its output (``audit: {model: naive}``). Not a field: the config stays the settings.
    step_id: ClassVar[str | None] = None
    # Settings that may name an earlier step's id (checked by the recipe; resolved in compute
    # through ``ctx.outputs`` / ``ctx.step_dirs``).
    references: ClassVar[tuple[str, ...]] = ()

    def with_id(self, step_id: str | None) -> Step:
        """A copy of this step carrying ``step_id`` (see ``step_id``)."""
        copy = dataclasses.replace(self)
        object.__setattr__(copy, "step_id", step_id)
        return copy

    @property
    def run_name(self) -> str:
        """``name`` or ``name-id``: how the runner, the plan and the report name this step."""
        return f"{self.name}-{self.step_id}" if self.step_id else self.name

    def output_columns(self) -> tuple[str, ...]:
        """The columns as they land in the table: ``produced_columns``, renamed for a step
        with an id (``audit_copies`` -> ``audit_naive_copies``, ``x`` -> ``naive_x``)."""
        return tuple(self.column_name(c) for c in self.produced_columns())

    def column_name(self, column: str) -> str:
        """Where produced column ``column`` lands in the table (see ``output_columns``)."""
        if not self.step_id:
            return column
        prefix = f"{self.name}_"
        if column.startswith(prefix):
            return f"{prefix}{self.step_id}_{column[len(prefix) :]}"
        return f"{self.step_id}_{column}"

    def output_dir(self, ctx: RunContext) -> Path | None:
        """The folder this step writes for later steps to read (a model), if any."""
        return None

    def required_columns(self) -> tuple[str, ...]:
        """Columns that must exist before this step runs (override for config-dependent sets)."""
        return self.requires

    def produced_columns(self) -> tuple[str, ...]:
        """Columns this step adds (override for config-dependent sets)."""
        return self.produces

    def validate(self) -> list[str]:
        """Problems with this config, as ``"key: message"`` strings; empty when valid."""
        return []

    def config(self) -> dict[str, Any]:
        """The resolved config, as recorded in the run folder."""
        return dataclasses.asdict(self)

    def cache_config(self) -> dict[str, Any]:
        """The config the step's fingerprint hashes: :meth:`config` less the settings marked
        ``operational`` (how fast, not what: thread counts), so changing one of those never
        recomputes a finished step."""
        skip = {f.name for f in dataclasses.fields(self) if f.metadata.get("operational")}
        return {k: v for k, v in self.config().items() if k not in skip}

    def outputs_exist(self, ctx: RunContext, meta: dict[str, Any]) -> bool:
        """Whether the files a finished run of this step wrote are still there (``meta`` is its
        ``done.json``); a step whose outputs are gone runs again. Column-only steps: True."""
        return True

    def compute(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        """Return the produced columns for ``table`` (same height, same row order)."""
        raise NotImplementedError

    def shard_values(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        """The per-row part of a ``shardable`` step for the rows of ``table`` (one shard):
        ``sample_id`` plus the values ``compute`` reads from ``ctx.shard_values``, one row per
        input row. It may depend only on the rows' own ingest columns and images, never on
        other rows or earlier steps, so any split of the rows gathers to the same values."""
        raise NotImplementedError(f"step {self.name} does not run in shards")
