"""The memorization audit as a job: ``audit_job(config, train, out_dir)`` (what ``curate audit``
and the ``audit`` recipe step both call) loads the model (or builds the oracle), its training set
and text encoder from an ``AuditConfig`` and runs ``run_audit`` (generate, score against the
training set, write everything) or, with AMG, ``audit_with_amg`` (plain vs AMG from the same
seeds). Errors name config keys (``resolution: ...``); the CLI turns them into flags.

Outputs under ``AUDIT_DIR``: ``audit.json`` (every summary metric with its definition and
settings), ``samples.parquet`` (one row per generation), ``samples/NNNNN.png`` and
``samples_grid.png``, and ``report/index.html`` (each generation beside its nearest training
image, worst copies first); with AMG also ``amg/`` (the guided audit, ``amg_steps.parquet``),
``comparison.json`` and a report section with each seed's plain and guided samples side by
side (plain | AMG | nearest training image, the plain run's worst copies first).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curate.audit.alignment import clip_scorer, clip_scores
from curate.audit.report import amg_pairs_html, write_audit
from curate.audit.scoring import AuditResult, audit_samples, image_embedder
from curate.audit.settings import DEFINITIONS, AuditConfig, AuditSettings
from curate.core.text import uncond_embedding
from curate.errors import DataError, UsageError
from curate.guidance.amg import AMG, AMGConfig
from curate.guidance.run import build_amg, guided_sampler, write_amg
from curate.io.training import TrainingSet
from curate.models.denoiser import Denoiser, image_shape
from curate.models.sampling import sample, split_sampler
from curate.report import Report
from curate.train.job import RunRows

if TYPE_CHECKING:
    import torch


def default_method(denoiser: Denoiser) -> str:
    """The audit's sampler when none is set: ddim for a model with discrete timesteps
    (diffusers models), else euler (the closed-form memorizer)."""
    return "ddim" if denoiser.schedule is not None else "euler"


def generate_samples(
    denoiser: Denoiser,
    settings: AuditSettings,
    device: str = "cpu",
    cond: torch.Tensor | None = None,
    progress: bool = True,
    sampler: Callable | None = None,
) -> torch.Tensor:
    """``settings.num_samples`` generations (num, C, H, W) in [-1, 1].

    ``sampler`` has the signature of ``curate.models.sampling.sample`` (the default), so a
    guided or custom sampler can be audited the same way.
    """
    sampler = sample if sampler is None else sampler
    method = settings.sampler or default_method(denoiser)
    x = sampler(
        denoiser,
        settings.num_samples,
        steps=settings.steps,
        method=method,
        seed=settings.seed,
        cond=cond,
        batch_size=settings.batch_size,
        device=device,
        progress=progress,
    )
    if denoiser.vae is None:
        return x
    import torch

    # A latent model samples latents: decode them to images in [-1, 1].
    return torch.cat(
        [denoiser.decode(x[i : i + settings.batch_size].to(device)).cpu()
         for i in range(0, len(x), settings.batch_size)]
    )  # fmt: skip


def run_audit(
    denoiser: Denoiser,
    train: TrainingSet,
    out_dir: Path | str,
    settings: AuditSettings | None = None,
    device: str = "cpu",
    quiet: bool = False,
    model_name: str = "",
    sampler: Callable | None = None,
    report=None,
    text_encoder=None,
    fd_reference: torch.Tensor | None = None,
    fd_reference_name: str = "reference set",
) -> AuditResult:
    """Generate with ``denoiser``, audit against ``train``, write everything under ``out_dir``.

    A text-conditional model is prompted with the training captions, generation ``i`` with the
    caption of training row ``i mod N`` (the protocol of Somepalli et al. 2023: copying is
    measured under the captions the model was trained on), encoded by ``text_encoder``
    (a ``curate.core.text.TextEncoder``). The report section goes to ``report`` (a
    ``curate.report.Report``) when given, else to ``out_dir/report``.
    """
    settings = settings or AuditSettings()
    settings.validate()
    chans, res, _ = image_shape(denoiser)
    if (chans, res, res) != tuple(train.images.shape[1:]):
        raise DataError(
            f"the model makes {chans}x{res}x{res} images but the training set is "
            f"{'x'.join(map(str, train.images.shape[1:]))}: set resolution: {res}"
        )
    settings = replace(settings, sampler=settings.sampler or default_method(denoiser))
    cond, prompt_rows = None, None
    if settings.alignment_clip and not denoiser.conditional:
        raise UsageError("alignment_clip: needs a text-conditional model (it scores prompts)")
    if denoiser.conditional:
        if text_encoder is None:
            raise UsageError(
                "text_encoder: the model is text-conditional; set the kind it was trained with"
            )
        if train.captions is None:
            raise DataError("the model is text-conditional but the training set has no captions")
        prompt_rows = [i % len(train.captions) for i in range(settings.num_samples)]
        cond = text_encoder.encode([train.captions[i] for i in prompt_rows]).to(device)
    # CLIP weights are loaded (or refused, in one line) before any sampling time is spent
    if settings.alignment_clip and denoiser.conditional:
        clip_scorer(settings.alignment_clip, settings.alignment_pretrained, device=device)
    if settings.features == "clip":
        image_embedder("clip", (), device=device, model=settings.features_model)
    samples = generate_samples(
        denoiser, settings, device=device, cond=cond, progress=not quiet, sampler=sampler
    )
    result = audit_samples(
        samples,
        train,
        settings,
        device=device,
        fd_reference=fd_reference,
        fd_reference_name=fd_reference_name,
    )
    if prompt_rows is not None:
        import polars as pl

        ids = [train.sample_ids[i] for i in prompt_rows]
        result.per_sample = result.per_sample.with_columns(
            pl.Series("prompt", [train.captions[i] for i in prompt_rows], dtype=pl.String),
            pl.Series("prompt_sample_id", ids, dtype=pl.String),
        )
        result.summary["prompts"] = "training captions, generation i <- training row i mod N"
        # The prompt's own image, as the id of its duplicate group (what nn_sample_id holds).
        own = [train.sample_ids[result.train_groups[i]] for i in prompt_rows]
        nn = result.per_sample["nn_sample_id"].to_list()
        result.summary["nn_is_prompt_image_fraction"] = float(
            np.mean([a == b for a, b in zip(nn, own, strict=True)])
        )
        _add_text_alignment(result, [train.captions[i] for i in prompt_rows], settings, device)
    result.summary["model"] = model_name
    write_audit(result, train, out_dir, report=report)
    return result


def _add_text_alignment(
    result: AuditResult, prompts: list[str], settings: AuditSettings, device: str
) -> None:
    """Per-sample ``clip_score`` and ``metrics.text_alignment`` (a note when not measured)."""
    import polars as pl

    if not settings.alignment_clip:
        result.summary["metrics"]["text_alignment"] = {
            "value": None,
            "note": "not measured: set alignment_clip (--alignment-clip MODEL) and "
            "alignment_pretrained (TAG|PATH) for the CLIP score",
        }
        return
    scorer = clip_scorer(settings.alignment_clip, settings.alignment_pretrained, device=device)
    scores = clip_scores(scorer, result.samples, prompts, batch_size=settings.batch_size)
    result.per_sample = result.per_sample.with_columns(pl.Series("clip_score", scores))
    result.summary["metrics"]["text_alignment"] = {
        "name": f"CLIP score ({scorer.name})",
        "value": float(np.mean(scores)),
        "std": float(np.std(scores)),
        "p5": float(np.percentile(scores, 5)),
        "definition": DEFINITIONS["text_alignment"],
    }


# ------------------------------------------------------------------------- plain vs AMG audit


def _comparison_rows(
    plain: AuditResult, guided: AuditResult, seconds: tuple[float, float], amg: AMG
) -> list[list[Any]]:
    mp, mg = plain.summary["metrics"], guided.summary["metrics"]
    per = amg.samples_frame()

    def pct(v):
        return "n/a" if v is None else f"{v:.1%}"

    rows = [
        [f"memorized, NN1/NN2 < {mp['nn_ratio']['threshold']:.3g}",
         pct(mp["nn_ratio"]["fraction_memorized"]), pct(mg["nn_ratio"]["fraction_memorized"])],
        [f"memorized, normalised L2 < {mp['normalized_l2']['threshold']:.3g}",
         pct(mp["normalized_l2"]["fraction_memorized"]),
         pct(mg["normalized_l2"]["fraction_memorized"])],
        [f"top-1 similarity ({mp['similarity']['features']}) > {mp['similarity']['threshold']:.3g}",
         pct(mp["similarity"]["frac_above"]), pct(mg["similarity"]["frac_above"])],
        ["top-1 similarity p95", f"{mp['similarity']['p95']:.3f}", f"{mg['similarity']['p95']:.3f}"],
        [f"{mp['frechet']['name']} (not FID)", f"{mp['frechet']['value']:.4g}",
         f"{mg['frechet']['value']:.4g}"],
    ]  # fmt: skip
    ap, ag = mp.get("text_alignment") or {}, mg.get("text_alignment") or {}
    if ap.get("value") is not None and ag.get("value") is not None:
        rows.append([f"text alignment, {ap['name']}", f"{ap['value']:.2f}", f"{ag['value']:.2f}"])
    cp, cg = plain.summary["generation_check"], guided.summary["generation_check"]
    rows += [
        ["generations look like the training data (else the figures above are meaningless)",
         "no" if cp["off_data"] else "yes", "no" if cg["off_data"] else "yes"],
        ["samples guided at >= 1 step", "", pct(float((per["amg_active_steps"] > 0).mean() or 0))],
        ["sampling wall time (s)", f"{seconds[0]:.1f}", f"{seconds[1]:.1f}"],
    ]  # fmt: skip
    return rows


def audit_with_amg(
    denoiser: Denoiser,
    train: TrainingSet,
    out_dir: Path | str,
    settings: AuditSettings,
    config: AMGConfig,
    *,
    device: str = "cpu",
    quiet: bool = False,
    model_name: str = "",
    text_encoder=None,
    guidance_scale: float = 1.0,
    report=None,
    launch=None,
    **audit_kwargs,
):
    """Audit plain sampling and AMG sampling from the same seeds.

    Plain results go to ``out_dir`` (and its report, or ``report``), AMG results to
    ``out_dir/amg`` (with amg_steps.parquet); ``out_dir/comparison.json`` and an
    "Anti-memorization guidance" report section hold both side by side. Returns
    ``(plain, guided, comparison)``.
    """
    out = Path(out_dir)
    uncond = None
    if denoiser.conditional and guidance_scale != 1.0:
        uncond = uncond_embedding(text_encoder, device)
    elif guidance_scale != 1.0:
        raise UsageError("guidance_scale: needs a text-conditional model")
    amg = build_amg(denoiser, train, config, device=device, text_encoder=text_encoder)
    plain_sampler = functools.partial(sample, uncond=uncond, cfg_scale=guidance_scale)
    # lambdas: auto calibrates on the first call (counted in the AMG sampling time)
    amg_sampler = guided_sampler(plain_sampler, amg, ratio=settings.ratio_threshold,
                                 dup_eps=settings.dup_eps)  # fmt: skip
    if launch is not None:  # torchrun: each process samples its batches (``audit_job``)
        plain_sampler = split_sampler(plain_sampler, launch)
        amg_sampler = split_sampler(amg_sampler, launch, amg)
    common = dict(device=device, quiet=quiet, model_name=model_name, text_encoder=text_encoder)
    t0 = time.perf_counter()
    plain = run_audit(denoiser, train, out, settings, sampler=plain_sampler, report=report,
                      **common, **audit_kwargs)  # fmt: skip
    t1 = time.perf_counter()
    guided = run_audit(denoiser, train, out / "amg", settings, sampler=amg_sampler,
                       **common, **audit_kwargs)  # fmt: skip
    t2 = time.perf_counter()
    # The audits' own wall times include the metrics; both pay the same for those.
    rows = _comparison_rows(plain, guided, (t1 - t0, t2 - t1), amg)
    comparison = {
        "amg": amg.config.to_dict(),
        "guidance_scale": guidance_scale,
        "plain": plain.summary["metrics"],
        "amg_metrics": guided.summary["metrics"],
        "seconds": {"plain": round(t1 - t0, 2), "amg": round(t2 - t1, 2)},
        "generation_check": {
            "plain": plain.summary["generation_check"],
            "amg": guided.summary["generation_check"],
        },
        "table": rows,
    }
    (out / "comparison.json").write_text(json.dumps(comparison, indent=1, default=str))
    report = report or Report(out / "report", title="curate audit")
    write_amg(amg, out / "amg", report=report, comparison=rows)
    pairs = amg_pairs_html(plain, guided, train, amg.samples_frame())
    report.add_section("amg_pairs", "Plain vs AMG samples (same seeds)", pairs, order=21)
    return plain, guided, comparison


# ----------------------------------------------------------------------------- the audit job


@dataclass(frozen=True)
class AuditJobResult:
    """What :func:`audit_job` measured: the plain audit, and with AMG the guided one and the
    comparison (``comparison.json``)."""

    result: AuditResult
    train: TrainingSet
    guided: AuditResult | None = None
    comparison: dict[str, Any] | None = None


def audit_job(
    config: AuditConfig,
    train: str | Path | RunRows,
    out_dir: Path | str,
    *,
    amg: AMGConfig | None = None,
    device: str = "cpu",
    quiet: bool = False,
    report: Report | None = None,
) -> AuditJobResult:
    """Audit ``config.model`` (or, with ``config.oracle``, the empirical denoiser of the
    training set) against ``train`` and write the audit to ``out_dir``.

    ``train``: a run folder (its kept rows) or the ``RunRows`` of a recipe step. A model's
    training set is read at the model's size (``resolution``, when set, must match it); the
    oracle's at ``resolution`` (default: the images' own size). A text-conditional model is
    prompted with the training captions through ``text_encoder`` (default: its own), with
    classifier-free guidance at ``guidance_scale``. ``amg`` also audits anti-memorization
    guidance from the same seeds. ``report``: the report the sections go to (default:
    ``out_dir/report``). Errors name config keys.
    """
    from curate.core.launch import Launch

    config.validate()
    # torchrun: every process samples its batches and gets all rows back (so every process
    # computes the same audit); process 0 alone writes OUT, the others a private folder
    # removed at the end. The command claims OUT in process 0 before this.
    launch = Launch.from_env(device)
    device = launch.device
    scratch = None
    if not launch.main:
        import tempfile

        scratch = tempfile.TemporaryDirectory(prefix=f"curate-audit-rank{launch.rank}-")
        out_dir, report = Path(scratch.name) / "audit", None
    launch.barrier()
    try:
        result = _audit_job(config, train, out_dir, amg, device, quiet, report, launch)
        launch.barrier()  # OUT is complete when process 0 returns
        return result
    finally:
        if scratch is not None:
            scratch.cleanup()


def _audit_job(config, train, out_dir, amg, device, quiet, report, launch) -> AuditJobResult:
    from curate.io.training import load_training_set, training_set_from_table

    if config.oracle == (config.model is not None):
        raise UsageError("model: give either model (a model folder) or oracle: true")
    if isinstance(train, RunRows):
        where = "the kept rows"

        def load(**kw):
            return training_set_from_table(train.table, train.store, where="audit", **kw)
    else:
        where = str(train)

        def load(**kw):
            return load_training_set(train, **kw)

    if config.oracle:
        from curate.audit.oracle import EmpiricalDenoiser

        train_set = load(resolution=config.resolution)
        denoiser = EmpiricalDenoiser(train_set.images).to(device)
        name = f"oracle: empirical denoiser of {where}"
    else:
        from curate.models.denoiser import load_denoiser

        denoiser = load_denoiser(config.model, device)
        channels, size, _ = image_shape(denoiser)
        if config.resolution is not None and config.resolution != size:
            raise UsageError(
                f"resolution: {config.resolution} differs from the model's {size}; drop it"
            )
        train_set = load(resolution=size, channels=channels)
        name = str(config.model)
    extra: dict[str, Any] = {}
    if config.fd_reference is not None:
        chans, size = train_set.images.shape[1], train_set.images.shape[-1]
        extra["fd_reference"] = load_training_set(
            config.fd_reference, resolution=size, channels=chans
        ).images
        extra["fd_reference_name"] = f"kept rows of {config.fd_reference}"
    encoder = None
    if denoiser.conditional:
        from curate.core.text import text_encoder_for_model

        encoder = text_encoder_for_model(denoiser, device, kind=config.text_encoder)
    settings = config.settings()
    common = dict(device=device, quiet=quiet, model_name=name, text_encoder=encoder, report=report)
    if amg is not None:
        plain, guided, comparison = audit_with_amg(
            denoiser, train_set, out_dir, settings, amg, guidance_scale=config.guidance_scale,
            launch=launch, **common, **extra,
        )  # fmt: skip
        return AuditJobResult(plain, train_set, guided, comparison)
    sampler = sample
    if config.guidance_scale != 1.0:
        if encoder is None:
            raise UsageError("guidance_scale: needs a text-conditional model")
        sampler = functools.partial(
            sample, uncond=uncond_embedding(encoder, device), cfg_scale=config.guidance_scale
        )
    sampler = split_sampler(sampler, launch)
    result = run_audit(denoiser, train_set, out_dir, settings, sampler=sampler, **common, **extra)
    return AuditJobResult(result, train_set)
