"""Wiring AMG into the commands: build it from a training run, sample with it, report it."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from curate.core.neighbours import distinct_groups
from curate.errors import UsageError
from curate.guidance.amg import AMG, AMGConfig, TrainingIndex, require_differentiable_sscd
from curate.guidance.calibrate import COPY_RATIO, calibrate_amg
from curate.io.training import TrainingSet, load_training_set
from curate.models.denoiser import Denoiser, image_shape
from curate.report import Report, esc, html_table
from curate.table import read_table


def distinct_training_rows(images, keys=None, clusters=None) -> np.ndarray:
    """The first row of each distinct training image (sorted row indices).

    Rows are one image when their pixels are identical or their ``keys`` (pixel hashes) are
    equal, as the audit counts them (``curate.core.neighbours.distinct_groups``), or when they
    share a non-null ``clusters`` entry (the dedup step's ``dedup_images_cluster``).
    """
    groups = distinct_groups(images.detach().float().cpu().numpy(), keys=keys)
    if clusters is not None:
        parent = np.arange(len(groups))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = int(parent[i])
            return int(i)

        first: dict[object, int] = {}
        for row, cluster in enumerate(clusters):
            if cluster is None:
                continue
            if cluster in first:
                a, b = find(int(groups[row])), find(int(groups[first[cluster]]))
                parent[max(a, b)] = min(a, b)
            else:
                first[cluster] = row
        groups = np.array([find(int(g)) for g in groups])
    return np.unique(groups)


def build_amg(
    denoiser: Denoiser,
    train: TrainingSet,
    config: AMGConfig,
    *,
    device: str = "cpu",
    text_encoder=None,
    train_name: str = "the training set",
    clusters=None,
) -> AMG:
    """AMG for ``denoiser`` over ``train`` (a ``curate.io.training.TrainingSet``).

    The index holds each distinct training image once (:func:`distinct_training_rows`, with
    ``train.keys`` and ``clusters``, one entry per row), so an image stored five times reads as
    one image in the nL2 neighbour mean, as in the audit; ``index.folded`` counts the rows
    folded away (``amg.json``'s ``training_index``). ``train`` stays on the AMG as its
    ``reference``: ``lambdas: auto`` labels its calibration batch's copies against it (sample
    through :func:`guided_sampler`).
    """
    config.validate()
    if config.features == "sscd" and "sim" in config.guidances:
        require_differentiable_sscd(config.features_model)
    keep = distinct_training_rows(train.images, getattr(train, "keys", None), clusters)
    rows = keep.tolist()
    captions = [train.captions[i] for i in rows] if train.captions is not None else None
    ids = [train.sample_ids[i] for i in rows] if train.sample_ids is not None else None
    index = TrainingIndex(
        train.images[keep] if len(keep) < len(train.images) else train.images,
        config.features,
        captions=captions,
        sample_ids=ids,
        k=config.k,
        alpha=config.alpha,
        features_model=config.features_model,
        device=device,
        folded=len(train.images) - len(keep),
    )
    index.check_shape(image_shape(denoiser), where=f"the model (vs {train_name})")
    return AMG(config, index, text_encoder=text_encoder, reference=train)


def load_amg(
    denoiser: Denoiser,
    train_dir: str | Path | None,
    config: AMGConfig,
    *,
    device: str,
    text_encoder=None,
) -> AMG:
    """AMG over the kept rows of the run folder ``train_dir`` at the model's image size; rows
    of one dedup cluster (``dedup_images_cluster``) are one training image."""
    if not train_dir:
        raise UsageError(
            "--amg needs --amg-train RUN_DIR: the run folder the model was trained on "
            "(AMG searches its images at every step)"
        )
    channels, size, _ = image_shape(denoiser)
    train = load_training_set(train_dir, resolution=size, channels=channels)
    table = read_table(train_dir)
    clusters = None
    if "dedup_images_cluster" in table.columns:
        pairs = zip(table["sample_id"], table["dedup_images_cluster"], strict=True)
        of = dict(pairs)
        clusters = [of.get(sid) for sid in train.sample_ids]
    return build_amg(denoiser, train, config, device=device, text_encoder=text_encoder,
                     train_name=str(train_dir), clusters=clusters)  # fmt: skip


def guided_sampler(
    sampler: Callable, amg: AMG, *, ratio: float = COPY_RATIO, dup_eps: float = 0.0
) -> Callable:
    """``sampler`` (the signature of ``curate.models.sampling.sample``) guided by ``amg``.

    With ``lambdas: auto`` the first call samples the calibration batch first, with the same
    sampler, settings and conditioning (rows cycled), from seeds apart from the call's, and
    sets the thresholds (:func:`curate.guidance.calibrate.calibrate_amg`; ``ratio`` and
    ``dup_eps``: the audit's copy criterion). So the calibration counts in the sampling time.
    """

    def guided(denoiser, num, *, seed: int = 0, cond=None, **kwargs):
        if amg.config.calibrates and amg.calibration is None:
            import torch

            def run(probe: AMG, n: int, cal_seed: int):
                rows = None if cond is None else cond[torch.arange(n) % len(cond)]
                # the whole calibration batch in every process of a many-process job
                cal_kwargs = {k: v for k, v in kwargs.items() if k not in ("generator", "part")}
                x = sampler(denoiser, n, seed=cal_seed, cond=rows, guidance=probe, **cal_kwargs)
                return _decoded(denoiser, x, int(kwargs.get("batch_size", 64)),
                                kwargs.get("device", "cpu"))  # fmt: skip

            calibrate_amg(amg, run, seed=seed, ratio=ratio, dup_eps=dup_eps)
        return sampler(denoiser, num, seed=seed, cond=cond, guidance=amg, **kwargs)

    return guided


def _decoded(denoiser: Denoiser, x, batch_size: int, device: str):
    """Samples in pixel space: a latent model's decoded in batches."""
    if denoiser.vae is None:
        return x
    import torch

    return torch.cat([denoiser.decode(x[i : i + batch_size].to(device)).cpu()
                      for i in range(0, len(x), batch_size)])  # fmt: skip


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
    if amg.calibration is not None:
        parts.append(calibration_html(amg.calibration))
    if cfg.lambdas == "auto":  # a threshold that never reads them (always, off)
        lambdas = "lambdas auto, not used"
    else:
        lo, hi = cfg.lambda_range
        lambdas = f"lambda_min {lo:.4g}, lambda_max {hi:.4g}"
    parts.append(
        f'<p class="muted">Similarity: {esc(cfg.features)}'
        f"{' (-nL2: negative, higher = more similar)' if cfg.features == 'pixel' else ''}; "
        f"threshold {esc(cfg.threshold)} ({lambdas}); scales "
        f"c1,c2,c3 = {','.join(f'{c:g}' for c in cfg.c)}; guidances {','.join(cfg.guidances)}. "
        "Per-step records: amg_steps.parquet.</p>"
    )
    return "".join(parts)


def calibration_html(cal: dict[str, Any]) -> str:
    """What ``lambdas: auto`` chose and from what (``amg.json``'s ``calibration``)."""
    fs = cal["final_similarity"]

    def num(v):
        return "-" if v is None else f"{v:.4g}"

    rows = [
        ["calibration batch", f"{cal['samples']} plain samples (seed {cal['seed']}), "
         f"{cal['seconds']:.1f} s"],
        ["copies found", f"{cal['copies']} of {cal['samples']} ({cal['copy_criterion']})"],
        ["final similarity", f"copies from {num(fs['copy_min'])}; non-copies up to "
         f"{num(fs['non_copy_max'])} (median {num(fs['non_copy_median'])})"],
        ["lambda_max", f"{cal['lambda_max']:.4g} ({cal['rule']})"],
        ["lambda_min", f"{cal['lambda_min']:.4g} (median non-copy similarity at step "
         f"{cal['mid_step']}, abar {cal['mid_abar']:.2f})"],
    ]  # fmt: skip
    return "<p><b>Thresholds calibrated on this model (lambdas: auto)</b></p>" + html_table(
        rows, ["", ""]
    )


def write_amg(amg: AMG, out_dir: Path | str, report=None, comparison=None) -> None:
    """amg_steps.parquet, amg.json and the report section (``report`` or ``out_dir/report``)."""
    amg.write(out_dir)
    report = report or Report(Path(out_dir) / "report", title="curate sample (AMG)")
    report.add_section(
        "amg", "Anti-memorization guidance", amg_section_html(amg, comparison), order=20
    )


def amg_summary(out_dir: Path | str) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "amg.json").read_text())
