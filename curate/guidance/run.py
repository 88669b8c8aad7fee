"""Wiring AMG into the commands: build it from a training run, sample with it, report it."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import torch

from curate.errors import UsageError
from curate.guidance.amg import AMG, AMGConfig, TrainingIndex, require_differentiable_sscd


def build_amg(
    denoiser,
    train,
    config: AMGConfig,
    *,
    device: str = "cpu",
    text_encoder=None,
    train_name: str = "the training set",
) -> AMG:
    """AMG for ``denoiser`` over ``train`` (a ``curate.audit.audit.TrainingSet``)."""
    from curate.audit.audit import image_shape

    config.validate()
    if config.features == "sscd" and "sim" in config.guidances:
        require_differentiable_sscd(config.features_model)
    index = TrainingIndex(
        train.images,
        config.features,
        captions=train.captions,
        sample_ids=train.sample_ids,
        k=config.k,
        alpha=config.alpha,
        features_model=config.features_model,
        device=device,
    )
    index.check_shape(image_shape(denoiser), where=f"the model (vs {train_name})")
    return AMG(config, index, text_encoder=text_encoder)


def load_amg(
    denoiser, train_dir: str | Path | None, config: AMGConfig, *, device: str, text_encoder=None
) -> AMG:
    """AMG over the kept rows of the run folder ``train_dir`` at the model's image size."""
    from curate.audit.audit import image_shape, load_training_set

    if not train_dir:
        raise UsageError(
            "--amg needs --amg-train RUN_DIR: the run folder the model was trained on "
            "(AMG searches its images at every step)"
        )
    channels, size, _ = image_shape(denoiser)
    train = load_training_set(train_dir, resolution=size, channels=channels)
    return build_amg(
        denoiser, train, config, device=device, text_encoder=text_encoder, train_name=str(train_dir)
    )


def parse_floats(text: str | None, n: int, flag: str) -> tuple[float, ...] | None:
    """``"a,b,c"`` as ``n`` floats, with a one-line error naming ``flag``."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected {n} comma-separated numbers") from None
    if len(values) != n:
        raise UsageError(f"{flag} {text!r}: expected {n} comma-separated numbers")
    return values


def amg_config_from_options(
    features: str = "pixel",
    scales: str | None = None,
    threshold: str = "parabolic",
    lambdas: str | None = None,
    guidances: str = "spe,dup,sim",
    features_model: str | None = None,
    k: int = 50,
) -> AMGConfig:
    """The config of the ``--amg-*`` flags shared by ``curate sample`` and ``curate audit``."""
    config = AMGConfig(
        features=features,
        scales=parse_floats(scales, 3, "--amg-scales"),
        threshold=threshold,
        lambdas=parse_floats(lambdas, 2, "--amg-lambda"),
        guidances=tuple(g.strip() for g in guidances.split(",") if g.strip()),
        features_model=features_model,
        k=k,
    )
    config.validate()
    return config


# ------------------------------------------------------------------------------------ report


def trajectory_png(steps, max_lines: int = 64) -> str:
    """A data URI of the similarity-over-steps plot: each sample's trajectory (guided ones in
    red), the threshold, and the fraction of samples guided at each step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import polars as pl

    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(7.5, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    guided = set(steps.filter(pl.col("active"))["sample"].unique().to_list())
    samples = steps["sample"].unique().sort().to_list()
    chosen = [s for s in samples if s in guided][: max_lines // 2]
    chosen += [s for s in samples if s not in guided][: max_lines - len(chosen)]
    for s in chosen:
        tr = steps.filter(pl.col("sample") == s)
        red = s in guided
        ax.plot(tr["step"], tr["similarity"], color="tab:red" if red else "tab:blue",
                alpha=0.5 if red else 0.25, lw=0.8)  # fmt: skip
    thr = steps.group_by("step").agg(pl.col("threshold").first()).sort("step")
    finite = thr.filter(pl.col("threshold").is_finite())
    if finite.height:
        ax.plot(finite["step"], finite["threshold"], color="black", lw=2, label="threshold")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_ylabel("similarity to nearest training image")
    ax.set_title(f"{len(chosen)} of {len(samples)} samples; red: guided at some step", fontsize=9)
    frac = steps.group_by("step").agg(pl.col("active").mean()).sort("step")
    ax2.bar(frac["step"], frac["active"], color="tab:red")
    ax2.set_ylabel("guided")
    ax2.set_xlabel("sampler step")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def amg_section_html(amg: AMG, comparison: list[list[Any]] | None = None) -> str:
    """The report section: what the guidance did, the trajectory plot, and optionally a
    plain-vs-AMG table (rows of [metric, plain, amg])."""
    from curate.report import esc, html_table

    steps = amg.steps_frame()
    per = amg.samples_frame()
    cfg = amg.config
    parts = []
    if comparison:
        parts.append(html_table(comparison, ["metric", "plain sampling", "AMG (same seeds)"]))
    guided = int((per["amg_active_steps"] > 0).sum())
    parts.append(
        f"<p>{guided} of {per.height} samples were guided at one or more steps; on average "
        f"{float(per['amg_active_steps'].mean() or 0):.2f} guided steps per sample "
        f"({float(steps['active'].mean() or 0):.1%} of all steps). Despecification was used for "
        f"{int(per['amg_used_spe'].sum())}, caption deduplication for "
        f"{int(per['amg_used_dup'].sum())}, dissimilarity for {int(per['amg_used_sim'].sum())} "
        "samples.</p>"
    )
    if steps.height:
        parts.append(f'<img src="{trajectory_png(steps)}" alt="similarity trajectories">')
    lo, hi = cfg.lambda_range
    parts.append(
        f'<p class="muted">Similarity: {esc(cfg.features)}'
        f"{' (-nL2: negative, higher = more similar)' if cfg.features == 'pixel' else ''}; "
        f"threshold {esc(cfg.threshold)} (lambda_min {lo:g}, lambda_max {hi:g}); scales "
        f"c1,c2,c3 = {','.join(f'{c:g}' for c in cfg.c)}; guidances {','.join(cfg.guidances)}. "
        "Per-step records: amg_steps.parquet.</p>"
    )
    return "".join(parts)


def write_amg(amg: AMG, out_dir: Path | str, report=None, comparison=None) -> None:
    """amg_steps.parquet, amg.json and the report section (``report`` or ``out_dir/report``)."""
    from curate.report import Report

    amg.write(out_dir)
    report = report or Report(Path(out_dir) / "report", title="curate sample (AMG)")
    report.add_section(
        "amg", "Anti-memorization guidance", amg_section_html(amg, comparison), order=20
    )


def amg_summary(out_dir: Path | str) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "amg.json").read_text())


def uncond_embedding(text_encoder, device: str) -> torch.Tensor:
    """The empty-prompt embedding (1, L, D) a model trained with caption dropout knows."""
    return text_encoder.encode([""]).to(device)


# ------------------------------------------------------------------------- plain vs AMG audit


def _comparison_rows(plain, guided, seconds: tuple[float, float], amg: AMG) -> list[list[Any]]:
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
    rows += [
        ["samples guided at >= 1 step", "", pct(float((per["amg_active_steps"] > 0).mean() or 0))],
        ["sampling wall time (s)", f"{seconds[0]:.1f}", f"{seconds[1]:.1f}"],
    ]  # fmt: skip
    return rows


def audit_with_amg(
    denoiser,
    train,
    out_dir: Path | str,
    settings,
    config: AMGConfig,
    *,
    device: str = "cpu",
    quiet: bool = False,
    model_name: str = "",
    text_encoder=None,
    guidance_scale: float = 1.0,
    report=None,
    **audit_kwargs,
):
    """Audit plain sampling and AMG sampling from the same seeds.

    Plain results go to ``out_dir`` (and its report, or ``report``), AMG results to
    ``out_dir/amg`` (with amg_steps.parquet); ``out_dir/comparison.json`` and an
    "Anti-memorization guidance" report section hold both side by side. Returns
    ``(plain, guided, comparison)``.
    """
    import functools
    import time

    from curate.audit.audit import run_audit
    from curate.models.sampling import sample
    from curate.report import Report

    out = Path(out_dir)
    uncond = None
    if getattr(denoiser, "conditional", False) and guidance_scale != 1.0:
        uncond = uncond_embedding(text_encoder, device)
    elif guidance_scale != 1.0:
        raise UsageError("--guidance-scale needs a text-conditional model")
    amg = build_amg(denoiser, train, config, device=device, text_encoder=text_encoder)
    plain_sampler = functools.partial(sample, uncond=uncond, cfg_scale=guidance_scale)
    amg_sampler = functools.partial(plain_sampler, guidance=amg)
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
        "table": rows,
    }
    (out / "comparison.json").write_text(json.dumps(comparison, indent=1, default=str))
    write_amg(amg, out / "amg", report=report or Report(out / "report", title="curate audit"),
              comparison=rows)  # fmt: skip
    return plain, guided, comparison
