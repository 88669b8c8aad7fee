"""``audit``: generate with a trained model and mark the training rows it copies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import polars as pl

from curate.core.weights import CLIP_PRETRAINED
from curate.errors import DataError
from curate.steps.base import RunContext, Step, log
from curate.table import DROP_SUFFIX


@dataclass(frozen=True)
class Audit(Step):
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
    """

    name: ClassVar[str] = "audit"
    requires: ClassVar[tuple[str, ...]] = ("sample_id", "status", "width", "height", "mode")

    model: str | None = None
    oracle: bool = False
    num_samples: int = 256
    features: Literal["pixel", "sscd", "clip"] = "pixel"
    steps: int = 50
    sampler: Literal["ddim", "euler", "heun"] | None = None  # None: ddim (euler for oracle)
    batch_size: int = 64
    resolution: int | None = None
    text_encoder: str | None = None  # conditional models: default from the model's config
    drop_copied: int | None = None
    guidance_scale: float = 1.0
    amg: dict[str, Any] | None = None
    alignment_clip: str | None = None  # open_clip model: CLIP score of a text model's samples
    alignment_pretrained: str | None = CLIP_PRETRAINED

    def amg_config(self):
        from curate.guidance.amg import AMGConfig

        return AMGConfig(**self.amg) if self.amg is not None else None

    def produced_columns(self) -> tuple[str, ...]:
        cols = ("audit_nn_count", "audit_copies", "audit_min_ratio")
        return cols + (("audit" + DROP_SUFFIX,) if self.drop_copied is not None else ())

    def validate(self) -> list[str]:
        problems = []
        if self.oracle == (self.model is not None):
            problems.append("model: give either model (a model folder) or oracle: true")
        elif self.model is not None and not Path(self.model).exists():
            problems.append(f"model: {self.model} does not exist")
        if self.num_samples < 2:
            problems.append("num_samples: must be at least 2")
        if self.steps < 1:
            problems.append("steps: must be at least 1")
        if self.batch_size < 1:
            problems.append("batch_size: must be at least 1")
        if self.drop_copied is not None and self.drop_copied < 1:
            problems.append("drop_copied: must be at least 1 (or null to mark nothing)")
        if self.guidance_scale < 1:
            problems.append("guidance_scale: must be at least 1 (1: no classifier-free guidance)")
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
        from curate.audit.job import audit_with_amg, run_audit
        from curate.audit.settings import AuditSettings
        from curate.core.text import text_encoder_for_model, uncond_embedding
        from curate.io.training import training_set_from_table
        from curate.models.denoiser import image_shape

        if table.height == 0:
            return self._empty(0)
        settings = AuditSettings(
            num_samples=self.num_samples,
            features=self.features,
            steps=self.steps,
            sampler=self.sampler,
            seed=ctx.seed,
            batch_size=self.batch_size,
            alignment_clip=self.alignment_clip,
            alignment_pretrained=self.alignment_pretrained,
        )
        store = ctx.images()
        if self.oracle:
            from curate.audit.oracle import EmpiricalDenoiser

            train = training_set_from_table(table, store, resolution=self.resolution, where="audit")
            denoiser = EmpiricalDenoiser(train.images).to(ctx.device)
            model_name = "oracle: empirical denoiser of the kept rows"
        else:
            from curate.models.denoiser import load_denoiser

            denoiser = load_denoiser(self.model, ctx.device)
            channels, size, _ = image_shape(denoiser)
            if self.resolution is not None and self.resolution != size:
                raise DataError(
                    f"audit.resolution {self.resolution} differs from the model's {size}; remove it"
                )
            train = training_set_from_table(
                table, store, resolution=size, channels=channels, where="audit"
            )
            model_name = str(self.model)
        encoder = None
        if denoiser.conditional:
            encoder = text_encoder_for_model(denoiser, ctx.device, kind=self.text_encoder)
        common = dict(device=ctx.device, quiet=ctx.quiet, model_name=model_name,
                      report=ctx.report, text_encoder=encoder)  # fmt: skip
        if self.amg is not None:
            result, _, comparison = audit_with_amg(
                denoiser, train, ctx.artifact_dir(), settings, self.amg_config(),
                guidance_scale=self.guidance_scale, **common,
            )  # fmt: skip
            ctx.stats["amg_memorized_fraction"] = comparison["amg_metrics"]["nn_ratio"][
                "fraction_memorized"
            ]
        else:
            sampler = None
            if self.guidance_scale != 1.0:
                import functools

                from curate.models.sampling import sample

                if encoder is None:
                    raise DataError("audit.guidance_scale needs a text-conditional model")
                sampler = functools.partial(
                    sample, uncond=uncond_embedding(encoder, ctx.device),
                    cfg_scale=self.guidance_scale,
                )  # fmt: skip
            result = run_audit(denoiser, train, ctx.artifact_dir(), settings, sampler=sampler,
                               **common)  # fmt: skip
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
