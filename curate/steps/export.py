"""``export``: write the kept rows and the manifests (the last step of a recipe)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import polars as pl

from curate.steps.base import RunContext, Step


@dataclass(frozen=True)
class Export(Step):
    """Writes the cleaned dataset, ``removed.parquet``, ``changes.parquet`` and a dataset card.

    Adds no columns. ``out`` defaults to ``RUN_DIR/export``; ``format: hub`` pushes to
    ``repo_id`` with the token from ``hf auth login`` / ``HF_TOKEN``.
    """

    name: ClassVar[str] = "export"

    format: Literal["disk", "parquet", "hub"] = "disk"
    out: str | None = None
    repo_id: str | None = None
    private: bool = False
    shard_rows: int = 5000

    def validate(self) -> list[str]:
        problems = []
        if self.format == "hub" and not self.repo_id:
            problems.append("repo_id: required with format: hub (user/name)")
        if self.repo_id is not None and self.repo_id.count("/") != 1:
            problems.append(f"repo_id: {self.repo_id!r} must look like user/name")
        if self.shard_rows < 1:
            problems.append("shard_rows: must be >= 1")
        return problems

    def outputs_exist(self, ctx: RunContext, meta: dict) -> bool:
        from curate.export import default_export_dir, export_is_current

        # the default folder is looked up in this run folder, wherever it has moved
        out = Path(self.out) if self.out else default_export_dir(ctx.run_dir, self.format)
        return export_is_current(out, meta.get("stats") or {})

    def compute(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        from curate.export import export_run

        if table.height == 0:  # nothing was ingested (a table whose rows were all removed is
            # an error, raised by export_run)
            return table.select([])

        summary = export_run(
            ctx.run_dir,
            self.format,
            out=self.out,
            table=table,
            repo_id=self.repo_id,
            private=self.private,
            shard_rows=self.shard_rows,
            quiet=ctx.quiet,
            overwrite=ctx.overwrite,
        )
        ctx.stats.update(summary)
        return table.select([])
