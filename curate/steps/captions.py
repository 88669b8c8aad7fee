"""``captions``: rewrite captions to break caption-as-key copying, keeping every original."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import polars as pl

from curate.captions.transforms import check_params, make_transform
from curate.steps.base import RunContext, Step
from curate.table import evaluate_rule

_EXAMPLES_IN_REPORT = 12


@dataclass(frozen=True)
class Captions(Step):
    """Adds ``caption_new`` and ``caption_strategy``; ``caption`` is never touched.

    ``caption_new`` holds the rewritten caption of each targeted row (a string; for ``mc`` the
    list of the row's distinct captions, from which the trainer draws one per use) and null for
    rows not targeted or rejected by ingest. ``caption_strategy`` says what was applied, with
    its parameters and seed. A targeted row whose coin (probability ``p``) did not fire gets its
    caption unchanged in ``caption_new``; export lists only real changes.

    ``only`` limits the rewrite to rows where a boolean column (``dedup_captions_flag``) or a
    SQL rule over columns (``rank_pct >= 0.9``) is true; null counts as false. Random choices
    derive from ``(run seed, sample_id)``. Written once here, a rewrite is a fixed augmentation;
    the trainer's ``caption_transform`` redraws it each epoch.
    """

    name: ClassVar[str] = "captions"
    requires: ClassVar[tuple[str, ...]] = ("sample_id", "caption", "status")
    produces: ClassVar[tuple[str, ...]] = ("caption_new", "caption_strategy")

    strategy: Literal["mc", "rc", "rt", "cwr", "rna"]
    p: float | None = None
    k: int | None = None
    only: str | None = None
    vocab: str | None = None
    mc_column: str | None = "captions"
    mc_group: str | None = None
    captioner: str | None = None
    captioner_num: int = 2

    def required_columns(self) -> tuple[str, ...]:
        cols = list(self.requires)
        if self.strategy == "mc":
            cols += [c for c in (self.mc_column, self.mc_group) if c is not None]
        return tuple(cols)

    def validate(self) -> list[str]:
        problems = check_params(self.strategy, self.p, self.k)
        if self.only is not None:
            try:
                pl.sql_expr(self.only)
            except Exception as err:
                problems.append(f"only: not a column name or SQL rule ({str(err).splitlines()[0]})")
        if self.strategy != "mc":
            for key in ("mc_group", "captioner"):
                if getattr(self, key) is not None:
                    problems.append(f"{key}: only used with strategy mc")
        else:
            # mc writes every caption of a row; the trainer draws one per use
            for key in ("p", "k"):
                if getattr(self, key) is not None:
                    problems.append(f"{key}: not used by mc here (the trainer draws per use)")
        if self.captioner_num < 1:
            problems.append(f"captioner_num: must be >= 1, got {self.captioner_num}")
        if self.vocab not in (None, "words", "minilm") and not Path(self.vocab).exists():
            problems.append(
                f"vocab: {self.vocab!r} is not 'words', 'minilm' or an existing word list / "
                "tokenizer folder"
            )
        return problems

    def compute(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        target = self._targets(table)
        ctx.stats["targeted"] = int(target.sum())
        if self.strategy == "mc":
            out = self._multiple_captions(table, target, ctx)
        else:
            out = self._rewrite(table, target, ctx)
        new = out["caption_new"]
        new_text = new.list.join(" | ") if new.dtype == pl.List(pl.String) else new
        changed = (new_text != table["caption"].fill_null("")).fill_null(False)
        ctx.stats["changed"] = int(changed.sum())
        if table.height:
            self._report(table, out, changed, ctx)
        return out

    # -------------------------------------------------------------------------------- helpers

    def _targets(self, table: pl.DataFrame) -> pl.Series:
        """True for rows accepted by ingest and selected by ``only``."""
        ok = table["status"] == "ok"
        if self.only is None:
            return ok
        hit = evaluate_rule(table, self.only, "captions.only")
        return ok & hit.fill_null(False)

    def _rewrite(self, table: pl.DataFrame, target: pl.Series, ctx: RunContext) -> pl.DataFrame:
        transform = make_transform(self.strategy, self.p, self.k, seed=ctx.seed, vocab=self.vocab)
        spec = transform.describe()
        new: list[str | None] = []
        for sid, caption, hit in zip(
            table["sample_id"].to_list(), table["caption"].to_list(), target.to_list(), strict=True
        ):
            new.append(transform(caption or "", sid, 0) if hit else None)
        return pl.DataFrame(
            {
                "caption_new": pl.Series(new, dtype=pl.String),
                "caption_strategy": pl.Series(
                    [spec if h else None for h in target], dtype=pl.String
                ),
            }
        )

    def _multiple_captions(
        self, table: pl.DataFrame, target: pl.Series, ctx: RunContext
    ) -> pl.DataFrame:
        from curate.captions import multi

        lists = multi.pooled_captions(table, column=self.mc_column, group=self.mc_group)
        sources = [f"column:{self.mc_column}"] if self.mc_column else []
        if self.mc_group:
            sources.append(f"group:{self.mc_group}")
        if self.captioner is not None:
            sources.append(f"model:{self.captioner}")
            rows = [i for i, hit in enumerate(target.to_list()) if hit]
            if rows:
                captioner = multi.load_captioner(self.captioner, ctx.device, self.captioner_num)
                ids = table["sample_id"].gather(rows).to_list()
                store = ctx.images()
                generated: list[list[str]] = []
                batches = store.iter_batches(ids, batch_size=16)
                for _, images in ctx.progress(batches, total=-(-len(ids) // 16), desc="captioning"):
                    generated.extend(multi.generated_captions(images, captioner))
                for i, caps in zip(rows, generated, strict=True):
                    lists[i] = lists[i] + [c for c in caps if c not in lists[i]]
        spec = f"mc(from={'+'.join(sources) or 'caption'})"
        hits = target.to_list()
        return pl.DataFrame(
            {
                "caption_new": pl.Series(
                    [caps if h else None for caps, h in zip(lists, hits, strict=True)],
                    dtype=pl.List(pl.String),
                ),
                "caption_strategy": pl.Series([spec if h else None for h in hits], dtype=pl.String),
            }
        )

    def _report(
        self, table: pl.DataFrame, out: pl.DataFrame, changed: pl.Series, ctx: RunContext
    ) -> None:
        from curate.report import esc, html_table

        new = out["caption_new"]
        if new.dtype == pl.List(pl.String):
            new = new.list.join(" | ")
        rows = (
            pl.DataFrame({"sample_id": table["sample_id"], "old": table["caption"], "new": new})
            .filter(changed)
            .head(_EXAMPLES_IN_REPORT)
        )
        spec = out["caption_strategy"].drop_nulls()
        body = (
            f"<p>Strategy <code>{esc(spec[0] if len(spec) else self.strategy)}</code>"
            f"{f' on rows where <code>{esc(self.only)}</code>' if self.only else ''}: "
            f"<b>{ctx.stats['targeted']}</b> rows targeted, <b>{ctx.stats['changed']}</b> "
            "captions changed. The originals stay in <code>caption</code>.</p>"
            + html_table(rows.rows(), ["sample_id", "caption", "new caption"])
        )
        ctx.report.add_section("captions", "Caption rewriting", body, order=60)
