"""``audit``: generate with a trained model and mark the training rows it copies."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import polars as pl

from curate.audit.settings import AuditConfig
from curate.core.config import config_values, setting
from curate.steps.base import RunContext, Step, log
from curate.table import DROP_SUFFIX


@dataclass(frozen=True)
class Audit(AuditConfig, Step):
    """Audits ``model`` (or, with ``oracle: true``, the empirical denoiser of the kept rows)
    against the kept rows and adds, per training row:

    * ``audit_nn_count``: generations whose pixel-space nearest training image is this image;
    * ``audit_copies``: of those, how many are memorized (NN1/NN2 ratio below 1/3);
    * ``audit_min_ratio``: the lowest NN1/NN2 ratio among them (null if none);
    * ``audit_drop`` (only with ``drop_copied``): a reason on rows copied at least that often.

    Duplicate rows of one image share its counts. Rows outside the training set get nulls.
    ``audit.json``, ``samples.parquet`` and the sample PNGs go to the step's artifact folder;
    the report section goes to the run report.

    ``amg`` (keys of ``curate.guidance.amg.AMGConfig``: features, scales, threshold, lambdas,
    guidances, ...; ``{}`` for the defaults) also audits anti-memorization-guided sampling from
    the same seeds and reports both side by side; the columns still describe plain sampling.
    ``guidance_scale`` is the classifier-free guidance scale of a text-conditional model;
    ``alignment_clip`` (+ ``alignment_pretrained``) an open_clip model that scores its text
    alignment (CLIP score against the prompts).

    Its settings are every ``AuditConfig`` field (``curate audit --help`` describes them; the
    command's MODEL_DIR is ``model`` here) plus ``drop_copied`` and ``amg``; ``seed`` defaults
    to the recipe's.
    """

    name: ClassVar[str] = "audit"
    requires: ClassVar[tuple[str, ...]] = ("sample_id", "status", "width", "height", "mode")
    references: ClassVar[tuple[str, ...]] = ("model",)  # may name an earlier train step's id

    seed: int | None = setting(None, "Random seed (default: the recipe's seed).")
    drop_copied: int | None = setting(
        None,
        "Mark training rows copied in at least this many audited generations (audit_drop).",
        min=1,
    )
    amg: dict[str, Any] | None = setting(
        None,
        "Also audit AMG-guided sampling: keys of curate.guidance.amg.AMGConfig ({}: defaults).",
    )

    def audit_config(self, recipe_seed: int = 0) -> AuditConfig:
        """The ``AuditConfig`` part of this step, with the recipe's seed unless one is set."""
        values = config_values(self, AuditConfig)
        if self.seed is None:
            values["seed"] = recipe_seed
        return AuditConfig(**values)

    def amg_config(self):
        from curate.guidance.amg import AMGConfig

        return AMGConfig(**self.amg) if self.amg is not None else None

    def produced_columns(self) -> tuple[str, ...]:
        cols = ("audit_nn_count", "audit_copies", "audit_min_ratio")
        return cols + (("audit" + DROP_SUFFIX,) if self.drop_copied is not None else ())

    def validate(self) -> list[str]:
        problems = self.audit_config().problems()  # AuditConfig's checks, over this step's fields
        if self.oracle == (self.model is not None):
            problems.append("model: give either model (a model folder) or oracle: true")
        elif (
            self.model is not None
            and not self.model.isidentifier()  # a plain name may be a step id: the recipe checks
            and not Path(self.model).exists()
        ):
            problems.append(f"model: {self.model} does not exist")
        if self.drop_copied is not None and self.drop_copied < 1:
            problems.append("drop_copied: must be at least 1 (or null to mark nothing)")
        if self.amg is not None:
            import dataclasses
            import difflib

            from curate.errors import UsageError
            from curate.guidance.amg import AMGConfig

            known = [f.name for f in dataclasses.fields(AMGConfig)]
            unknown = [k for k in self.amg if k not in known]
            for key in unknown:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else f"; keys: {', '.join(known)}"
                problems.append(f"amg.{key}: unknown key{hint}")
            if not unknown:
                try:
                    self.amg_config().validate()
                except (UsageError, TypeError, ValueError) as err:
                    problems.append(f"amg: {err}")
        return problems

    def _empty(self, height: int) -> pl.DataFrame:
        cols = {
            "audit_nn_count": pl.Series([None] * height, dtype=pl.Int64),
            "audit_copies": pl.Series([None] * height, dtype=pl.Int64),
            "audit_min_ratio": pl.Series([None] * height, dtype=pl.Float64),
        }
        if self.drop_copied is not None:
            cols["audit" + DROP_SUFFIX] = pl.Series([None] * height, dtype=pl.String)
        return pl.DataFrame(cols)

    def compute(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        from curate.audit.job import audit_job
        from curate.train.job import RunRows

        if table.height == 0:
            return self._empty(0)
        config = self.audit_config(ctx.seed)
        if self.model in ctx.outputs:  # an earlier step's id (``model: naive``)
            config = dataclasses.replace(config, model=str(ctx.outputs[self.model]))
        job = audit_job(
            config,
            RunRows(table, ctx.images()),
            ctx.artifact_dir(),
            amg=self.amg_config(),
            device=ctx.device,
            quiet=ctx.quiet,
            report=ctx.report,
        )
        result, train = job.result, job.train
        if job.comparison is not None:
            ctx.stats["amg_memorized_fraction"] = job.comparison["amg_metrics"]["nn_ratio"][
                "fraction_memorized"
            ]
        m = result.summary["metrics"]
        ctx.stats.update(
            memorized_fraction=result.summary["memorized_fraction"],
            memorized_fraction_nl2=m["normalized_l2"]["fraction_memorized"],
            similarity_p95=m["similarity"]["p95"],
            frechet=m["frechet"]["value"],
            frechet_name=m["frechet"]["name"],
        )
        if (m.get("text_alignment") or {}).get("value") is not None:
            ctx.stats["clip_score"] = m["text_alignment"]["value"]
        check = result.summary["generation_check"]
        ctx.stats["generations_off_data"] = check["off_data"]
        if check["warning"]:
            log.warning("warning: audit: %s", check["warning"])

        counts = result.training_counts(train)
        out = table.select("sample_id").join(
            counts, on="sample_id", how="left", maintain_order="left"
        )
        cols = {
            "audit_nn_count": out["nn_count"].cast(pl.Int64),
            "audit_copies": out["copies"].cast(pl.Int64),
            "audit_min_ratio": out["min_ratio"].cast(pl.Float64),
        }
        if self.drop_copied is not None:
            reason = f"copied by the model in >= {self.drop_copied} audited generations"
            hit = (out["copies"] >= self.drop_copied).fill_null(False)
            cols["audit" + DROP_SUFFIX] = pl.Series(
                [reason if h else None for h in hit.to_list()], dtype=pl.String
            )
            ctx.stats["dropped"] = int(hit.sum())
        return pl.DataFrame(cols)
