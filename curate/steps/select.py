"""``select``: remove rows by a rule over columns, recording the reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import polars as pl

from curate.steps.base import RunContext, Step
from curate.table import DROP_SUFFIX, evaluate_rule


@dataclass(frozen=True)
class Select(Step):
    """Adds ``<label>_drop``: ``reason`` on rows where the SQL rule ``where`` is true.

    ``where`` is a SQL boolean expression over the table's columns, e.g.
    ``dedup_images_is_dup AND NOT dedup_images_is_kept`` or ``vgr_pct >= 0.99``. With
    ``action: keep`` the rule says which rows to keep and every other row is removed. Rows
    where the rule is null (a missing score) are kept and counted in the step's stats.
    """

    name: ClassVar[str] = "select"

    where: str
    reason: str | None = None
    action: Literal["drop", "keep"] = "drop"
    label: str = "select"

    def produced_columns(self) -> tuple[str, ...]:
        return (f"{self.label}{DROP_SUFFIX}",)

    def validate(self) -> list[str]:
        problems = []
        if not self.label.isidentifier():
            problems.append(f"label: {self.label!r} must be a plain identifier")
        try:
            pl.sql_expr(self.where)
        except Exception as err:
            problems.append(f"where: not a valid SQL expression ({str(err).splitlines()[0]})")
        return problems

    def compute(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        col = self.produced_columns()[0]
        reason = self.reason or f"{self.action} rule: {self.where}"
        hit = evaluate_rule(table, self.where, "select.where")
        remove = hit if self.action == "drop" else ~hit
        ok = table["status"] == "ok"
        ctx.stats["rule_null"] = int((hit.is_null() & ok).sum())
        drop = remove.fill_null(False) & ok
        out = pl.DataFrame({col: pl.Series(col, [None] * table.height, dtype=pl.String)})
        out = out.with_columns(
            pl.when(drop).then(pl.lit(reason)).otherwise(pl.lit(None, dtype=pl.String)).alias(col)
        )
        ctx.stats["removed"] = int(drop.sum())
        return out
