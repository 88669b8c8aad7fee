"""``validate``: configurable quality rules on top of ingest's decode checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import polars as pl

from curate.steps.base import RunContext, Step


@dataclass(frozen=True)
class Validate(Step):
    """Adds ``validate_drop``: why a decodable row still fails the rules (null = passes).

    Ingest already rejected what cannot be used at all (undecodable, truncated, empty caption,
    decompression bombs, duplicate ids); these rules are the dataset owner's standards.
    """

    name: ClassVar[str] = "validate"
    produces: ClassVar[tuple[str, ...]] = ("validate_drop",)

    min_side: int = 1
    max_side: int | None = None
    max_aspect_ratio: float | None = None
    min_caption_words: int = 0
    max_caption_chars: int | None = None
    reject_caption_patterns: tuple[str, ...] = ()

    def validate(self) -> list[str]:
        problems = []
        if self.min_side < 1:
            problems.append("min_side: must be >= 1")
        if self.max_side is not None and self.max_side < self.min_side:
            problems.append("max_side: must be >= min_side")
        if self.max_aspect_ratio is not None and self.max_aspect_ratio < 1:
            problems.append("max_aspect_ratio: must be >= 1 (long side / short side)")
        if self.min_caption_words < 0:
            problems.append("min_caption_words: must be >= 0")
        for i, pat in enumerate(self.reject_caption_patterns):
            problem = regex_problem(pat)
            if problem:
                problems.append(f"reject_caption_patterns[{i}]: {problem}")
        return problems

    def compute(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        short = pl.min_horizontal("width", "height")
        long = pl.max_horizontal("width", "height")
        caption = pl.col("caption").fill_null("")
        rules: list[tuple[pl.Expr, str]] = [
            (short < self.min_side, f"smaller than {self.min_side}px"),
        ]
        if self.max_side is not None:
            rules.append((long > self.max_side, f"larger than {self.max_side}px"))
        if self.max_aspect_ratio is not None:
            rules.append(
                (
                    long > short * self.max_aspect_ratio,
                    f"aspect ratio above {self.max_aspect_ratio}",
                )
            )
        if self.min_caption_words:
            words = (
                caption.str.split(" ").list.eval(pl.element().filter(pl.element() != "")).list.len()
            )
            rules.append(
                (words < self.min_caption_words, f"caption under {self.min_caption_words} words")
            )
        if self.max_caption_chars is not None:
            rules.append(
                (
                    caption.str.len_chars() > self.max_caption_chars,
                    f"caption over {self.max_caption_chars} chars",
                )
            )
        for pat in self.reject_caption_patterns:
            rules.append((caption.str.contains(pat), f"caption matches {pat!r}"))
        expr = pl.when(pl.col("status") != "ok").then(pl.lit(None, dtype=pl.String))
        for cond, why in rules:
            expr = expr.when(cond).then(pl.lit(why))
        out = table.select(expr.otherwise(pl.lit(None, dtype=pl.String)).alias("validate_drop"))
        ctx.stats["failed"] = int(out["validate_drop"].is_not_null().sum())
        return out


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be used as a caption rule, or None.

    The rule runs in polars (Rust's regex syntax), which has no look-around or
    back-references; checking with it here means ``--dry-run`` catches what the run would hit.
    """
    if not isinstance(pattern, str):
        return f"must be a string, got {pattern!r}"
    try:
        re.compile(pattern)
        pl.Series([""], dtype=pl.String).str.contains(pattern)
    except Exception as err:  # re.error or a polars compute error: both mean "not usable"
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or ["invalid"]
        why = next((line for line in lines if line.startswith("error:")), lines[0])
        return f"invalid regex {pattern!r} ({why.removeprefix('error: ')[:200]})"
    return None
