"""The memorization audit: generate, find each generation's nearest training images, score, write.

``run_audit`` is the whole job (what ``curate audit`` and the ``audit`` recipe step call);
``audit_samples`` scores generations that already exist, so a notebook or a benchmark can audit
any tensor of images against any training set. Metric definitions live in ``metrics.py``.

Outputs under ``AUDIT_DIR``: ``audit.json`` (every summary metric with its definition and
settings), ``samples.parquet`` (one row per generation), ``samples/NNNNN.png`` and
``samples_grid.png``, and ``report/index.html`` (each generation beside its nearest training
image, worst copies first).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from curate.audit import frechet, metrics
from curate.audit.alignment import DEFAULT_PRETRAINED
from curate.errors import DataError, UsageError

if TYPE_CHECKING:
    import polars as pl
    import torch

FEATURES = ("pixel", "sscd", "clip")
LOO_QUERIES = 2000  # training images scored by the leave-one-out false-positive check
SAMPLERS = ("ddim", "euler", "heun")

DEFINITIONS = {
    "nn_ratio": (
        "|x - NN1| / |x - NN2| in pixel space ([-1, 1], the model's resolution), NN2 being the "
        "second DISTINCT training image (exact duplicates merged first); memorized if < threshold "
        "(Yoon et al. 2023; Gu et al. 2023)."
    ),
    "normalized_l2": (
        "|x - NN1| / (alpha * mean |x - z| over the k nearest distinct training images z, NN1 "
        "included) in pixel space; memorized if < threshold (Carlini et al. 2023, as in AMG)."
    ),
    "similarity": (
        "cosine similarity of L2-normalised features between each generation and its nearest "
        "training image (top-1); a copy if > threshold (SSCD 0.5: Somepalli et al. 2023; "
        "DINO-style cosine 0.9: Shah et al. 2025). p95 is the dataset similarity score."
    ),
    "train_leave_one_out_fraction": (
        "the same test applied to each distinct training image against the other distinct "
        "training images: how often the metric flags an image that is near, but not in, the "
        "training set (a false-positive check from the training data alone)."
    ),
    "text_alignment": (
        "CLIP score: 100 * cosine between each generation and its prompt under the named open_clip "
        "model (text-conditional models; higher = closer to the prompt; comparable only under "
        "one CLIP model)."
    ),
    "frechet": (
        "Fréchet distance between Gaussians fitted to features of the generations and of the "
        "reference images (the training set unless 'reference' says otherwise); NOT an FID (no "
        "Inception network), comparable only within one name and reference."
    ),
}


@dataclass(frozen=True)
class AuditSettings:
    """Everything that decides an audit's numbers; saved in ``audit.json``."""

    num_samples: int = 256
    features: Literal["pixel", "sscd", "clip"] = "pixel"
    steps: int = 50
    # None: ddim when the model has discrete timesteps (diffusers models), else euler (oracle)
    sampler: Literal["ddim", "euler", "heun"] | None = None
    seed: int = 0
    batch_size: int = 64
    k: int = metrics.NL2_K
    alpha: float = metrics.NL2_ALPHA
    nl2_threshold: float = metrics.NL2_THRESHOLD
    ratio_threshold: float = metrics.RATIO_THRESHOLD
    sim_threshold: float | None = None  # None: 0.5 for sscd, 0.9 otherwise
    features_model: str | None = None  # SSCD model file / open_clip checkpoint
    dup_eps: float = 0.0  # training images within this pixel L2 distance count as one image
    fd_features: Literal["pixel", "randconv"] = "pixel"
    fd_max_side: int = 16
    alignment_clip: str | None = None  # open_clip model for the CLIP score of text models
    alignment_pretrained: str | None = DEFAULT_PRETRAINED  # its tag or local checkpoint

    def validate(self) -> None:
        """Raise ``UsageError`` naming the flag for the first bad value."""
        if self.num_samples < 2:
            raise UsageError(f"--num-samples must be at least 2, got {self.num_samples}")
        if self.features not in FEATURES:
            raise UsageError(f"--features {self.features!r} is not one of {', '.join(FEATURES)}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise UsageError(f"--sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise UsageError(f"--steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.k < 2:
            raise UsageError(f"k must be at least 2, got {self.k}")
        if self.dup_eps < 0:
            raise UsageError(f"--dup-eps must be >= 0, got {self.dup_eps}")
        if self.fd_features not in frechet.FD_FEATURES:
            raise UsageError(
                f"--fd-features {self.fd_features!r} is not one of {', '.join(frechet.FD_FEATURES)}"
            )

    @property
    def similarity_threshold(self) -> float:
        if self.sim_threshold is not None:
            return self.sim_threshold
        return metrics.SSCD_THRESHOLD if self.features == "sscd" else metrics.COSINE_THRESHOLD


@dataclass
class TrainingSet:
    """The images a model was trained on, as the model saw them."""

    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    sample_ids: list[str]
    keys: list[str | None] | None = None  # e.g. pixel hashes; equal keys = the same image
    captions: list[str] | None = None  # primary captions (prompts for a conditional model)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DataError(f"training images must be (N, C, H, W), got {tuple(self.images.shape)}")
        if len(self.sample_ids) != len(self.images):
            raise DataError(f"{len(self.sample_ids)} sample ids for {len(self.images)} images")

    @classmethod
    def from_tensor(cls, images: torch.Tensor, sample_ids: Sequence[str] | None = None):
        """A training set from a tensor; ids default to ``"0", "1", ...``."""
        ids = [str(i) for i in range(len(images))] if sample_ids is None else list(sample_ids)
        return cls(images=images.detach().float().cpu(), sample_ids=ids)


@dataclass
class AuditResult:
    summary: dict[str, Any]  # what audit.json holds
    per_sample: pl.DataFrame  # one row per generation (samples.parquet)
    samples: torch.Tensor = field(repr=False)  # (num, C, H, W) in [-1, 1]
    train_groups: np.ndarray = field(repr=False, default=None)  # (N,) first row of each image

    def training_counts(self, train: TrainingSet) -> pl.DataFrame:
        """Per training row: ``nn_count`` (generations whose pixel NN1 is this image),
        ``copies`` (of those, memorized by the NN1/NN2 ratio) and ``min_ratio``. Duplicate rows
        of one image share its counts."""
        import polars as pl

        ids = np.asarray(train.sample_ids, dtype=object)
        rep_of_row = pl.DataFrame({"sample_id": train.sample_ids, "rep": ids[self.train_groups]})
        per_rep = self.per_sample.group_by("nn_sample_id").agg(
            nn_count=pl.len().cast(pl.Int64),
            copies=pl.col("memorized_ratio").sum().cast(pl.Int64),
            min_ratio=pl.col("nn_ratio").min(),
        )
        out = rep_of_row.join(
            per_rep, left_on="rep", right_on="nn_sample_id", how="left", maintain_order="left"
        )
        return out.select(
            "sample_id",
            pl.col("nn_count").fill_null(0),
            pl.col("copies").fill_null(0),
            "min_ratio",
        )


# ------------------------------------------------------------------------------------ images


def pil_to_tensor(images: Sequence, resolution: int, channels: int) -> torch.Tensor:
    """PIL images -> (N, channels, resolution, resolution) float32 in [-1, 1], exactly as the
    trainer prepares them (``curate.train.data.images_to_tensor``), so a model's copy of a
    training image reads as a copy."""
    from curate.train.data import images_to_tensor

    return images_to_tensor(images, channels, resolution)


def tensor_to_pil(x: torch.Tensor) -> list:
    """(N, C, H, W) in [-1, 1] -> PIL images ("L" for 1 channel, else "RGB")."""
    import torch
    from PIL import Image

    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in arr]
    return [Image.fromarray(a[..., :3], mode="RGB") for a in arr]


def load_training_set(
    run_dir: Path | str,
    resolution: int | None = None,
    channels: int | None = None,
    rows: Literal["kept", "ok"] = "kept",
) -> TrainingSet:
    """The training images of a run folder (its kept rows by default) at the model's size."""
    from curate.io.store import ImageStore
    from curate.table import TABLE_FILE, read_table

    run_dir = Path(run_dir)
    if not (run_dir / TABLE_FILE).exists():
        raise DataError(f"--train {run_dir}: no {TABLE_FILE}; run `curate ingest` first")
    return training_set_from_table(
        read_table(run_dir),
        ImageStore(run_dir),
        resolution,
        channels,
        rows=rows,
        where=f"--train {run_dir}",
    )


def training_set_from_table(
    table: pl.DataFrame,
    store,
    resolution: int | None = None,
    channels: int | None = None,
    rows: Literal["kept", "ok"] = "kept",
    batch_size: int = 256,
    where: str = "the run",
) -> TrainingSet:
    """The images of ``table``'s kept (or ok) rows read from ``store`` (an ``ImageStore``).

    ``resolution`` defaults to the images' common square size and ``channels`` to 1 when every
    source image is greyscale, else 3; an ambiguous set raises ``UsageError``.
    """
    import torch

    from curate.table import kept_mask, ok_mask

    table = table.filter(kept_mask(table) if rows == "kept" else ok_mask(table))
    if table.height < 2:
        raise DataError(f"{where}: {table.height} {rows} rows; an audit needs >= 2")
    if resolution is None:
        sizes = set(zip(table["width"].to_list(), table["height"].to_list(), strict=True))
        if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
            raise UsageError(f"{where}: images are not all one square size; pass --resolution")
        resolution = int(table["width"][0])
    if channels is None:
        grey = {"1", "L", "LA", "I", "I;16", "F"}
        channels = 1 if set(table["mode"].to_list()) <= grey else 3
    ids = table["sample_id"].to_list()
    chunks = []
    for _, images in store.iter_batches(ids, batch_size=batch_size):
        if any(img is None for img in images):
            raise DataError(f"{where}: a kept row has no stored image")
        chunks.append(pil_to_tensor(images, resolution, channels))
    keys = table["pixel_hash"].to_list() if "pixel_hash" in table.columns else None
    captions = table["caption"].to_list() if "caption" in table.columns else None
    return TrainingSet(images=torch.cat(chunks), sample_ids=ids, keys=keys, captions=captions)


def model_text_encoder(denoiser, kind: str | None = None, device: str = "cpu"):
    """The text encoder a conditional model was trained with (``curate.models.text``): ``kind``
    when given, else the one recorded in its ``curate_train.json`` (tiny-clip weights from the
    model folder)."""
    from curate.errors import ModelError
    from curate.models.text import get_text_encoder

    info = getattr(denoiser, "info", {}) or {}
    spec = (info.get("train") or {}).get("text_encoder")
    kind = kind or (spec.get("kind") if isinstance(spec, dict) else spec)
    if not kind:
        raise ModelError(
            "the model is text-conditional and its training config names no text encoder: "
            "pass --text-encoder"
        )
    weights = None
    if kind == "tiny-clip" and info.get("path"):
        saved = Path(info["path"]) / "text_encoder.safetensors"
        weights = saved if saved.exists() else None
    return get_text_encoder(kind, device, weights=weights)


# ---------------------------------------------------------------------------------- features


def image_embedder(
    kind: str, images_shape: Sequence[int], device: str = "cpu", model: str | None = None
):
    """The ``curate.dedup.embed`` embedder for ``--features kind`` and images (N, C, H, W).

    ``pixel`` keeps the model's resolution and channels (each image mean-centred and unit norm,
    so the cosine is a Pearson correlation and a uniform background does not make every pair
    similar). ``model`` is the SSCD model file for ``sscd`` and the open_clip checkpoint for
    ``clip``.
    """
    from curate.dedup.embed import get_image_embedder

    if kind == "pixel":
        return get_image_embedder("pixel", size=int(images_shape[-1]), grey=images_shape[1] == 1)
    if kind == "sscd":
        return get_image_embedder("sscd", device=device, **({"model": model} if model else {}))
    if kind == "clip":
        return get_image_embedder("clip", device=device, **({"pretrained": model} if model else {}))
    raise UsageError(f"--features {kind!r} is not one of {', '.join(FEATURES)}")


def embed(embedder, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """(N, D) float32 L2-normalised features of images (N, C, H, W) in [-1, 1]."""
    out = [
        embedder.embed(tensor_to_pil(images[start : start + batch_size]))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float32)


# ----------------------------------------------------------------------------------- scoring


def metrics_rng(seed: int) -> np.random.Generator:
    """The generator behind the audit's subsampling (derived from the seed, never global)."""
    from curate.seeding import rng_for

    return rng_for(seed, "audit-leave-one-out")


def audit_samples(
    samples: torch.Tensor,
    train: TrainingSet,
    settings: AuditSettings | None = None,
    device: str = "cpu",
    fd_reference: torch.Tensor | None = None,
    fd_reference_name: str = "reference set",
) -> AuditResult:
    """Score generations (num, C, H, W) in [-1, 1] against ``train``; nothing is written.

    The Fréchet distance compares the generations with ``fd_reference`` images when given
    (e.g. held-out data: a memorizer then gets no credit for reproducing the training set),
    else with the training images.
    """
    import polars as pl

    settings = settings or AuditSettings(num_samples=len(samples))
    if samples.shape[1:] != train.images.shape[1:]:
        raise DataError(
            f"generations are {tuple(samples.shape[1:])} but training images are "
            f"{tuple(train.images.shape[1:])}: pass the model's --resolution"
        )
    if len(samples) == 0:
        raise DataError("no generations to audit")
    gen = samples.detach().float().cpu().clamp(-1, 1).numpy()  # (Q, C, H, W)
    ref = train.images.numpy()  # (N, C, H, W)

    groups = metrics.distinct_groups(ref, keys=train.keys, eps=settings.dup_eps)
    nb = metrics.pixel_neighbours(gen, ref, k=settings.k, groups=groups)
    ratio = metrics.nn_ratio(nb.d1, nb.d2)
    nl2 = metrics.normalized_l2(nb.d1, nb.mean_k, alpha=settings.alpha)

    embedder = image_embedder(
        settings.features, tuple(samples.shape), device=device, model=settings.features_model
    )
    gen_feats = embed(embedder, samples, batch_size=settings.batch_size)
    ref_feats = embed(embedder, train.images, batch_size=settings.batch_size)
    sim, sim_idx = metrics.cosine_top1(gen_feats, ref_feats)
    sim_thr = settings.similarity_threshold
    # Reference: each distinct training image against the other distinct ones (what a
    # non-copy looks like in this feature space).
    # At most LOO_QUERIES training images are scored (seeded subset): the check is O(queries x N).
    reps = np.unique(groups)
    queries = reps
    if len(reps) > LOO_QUERIES:
        queries = np.sort(metrics_rng(settings.seed).choice(reps, LOO_QUERIES, replace=False))
    ref_sims, _ = metrics.search(
        ref_feats[queries], ref_feats[reps], k=min(2, len(reps)), metric="ip"
    )
    train_top1 = ref_sims[:, -1]
    loo = metrics.leave_one_out_neighbours(ref, k=settings.k, groups=groups, queries=queries)
    loo_ratio = loo_nl2 = None
    if loo is not None:
        loo_ratio = metrics.fraction_below(
            metrics.nn_ratio(loo.d1, loo.d2), settings.ratio_threshold
        )
        loo_nl2 = metrics.fraction_below(
            metrics.normalized_l2(loo.d1, loo.mean_k, alpha=settings.alpha), settings.nl2_threshold
        )
    loo_sim = float((train_top1 > sim_thr).mean())
    warnings = [
        f"{name} flags {rate:.0%} of distinct training images as copies of the others "
        "(leave-one-out): at this threshold it does not separate copies from near neighbours "
        "in this data"
        for name, rate in (
            (f"nn_ratio < {settings.ratio_threshold:.3g}", loo_ratio),
            (f"normalized_l2 < {settings.nl2_threshold:.3g}", loo_nl2),
            (f"similarity > {sim_thr:.3g}", loo_sim),
        )
        if rate is not None and rate > 0.05
    ]

    fd_name = frechet.feature_space_name(settings.fd_features, settings.fd_max_side)
    if fd_reference is not None and fd_reference.shape[1:] != samples.shape[1:]:
        raise DataError(
            f"the Fréchet reference images are {tuple(fd_reference.shape[1:])}, the generations "
            f"{tuple(samples.shape[1:])}"
        )
    fd_ref = ref if fd_reference is None else fd_reference.detach().float().cpu().numpy()
    fd_value = frechet.frechet_distance_features(
        frechet.fd_features(gen, settings.fd_features, settings.fd_max_side, seed=0),
        frechet.fd_features(fd_ref, settings.fd_features, settings.fd_max_side, seed=0),
    )

    ids = np.asarray(train.sample_ids, dtype=object)
    per_sample = pl.DataFrame(
        {
            "index": np.arange(len(gen), dtype=np.int64),
            "nn_sample_id": ids[nb.nn1].tolist(),
            "nn_copies": nb.nn1_copies.astype(np.int64),
            "nn2_sample_id": ids[nb.nn2].tolist(),
            "nn_distance": nb.d1,
            "nn2_distance": nb.d2,
            "nn_ratio": ratio,
            "normalized_l2": nl2,
            "sim_sample_id": ids[sim_idx].tolist(),
            "similarity": sim,
            "memorized_ratio": ratio < settings.ratio_threshold,
            "memorized_nl2": nl2 < settings.nl2_threshold,
            "copy_similarity": sim > sim_thr,
        }
    )

    def dist(v: np.ndarray) -> dict[str, float]:
        return {
            "mean": float(np.mean(v)),
            "p5": float(np.percentile(v, 5)),
            "p50": float(np.percentile(v, 50)),
            "min": float(np.min(v)),
        }

    summary: dict[str, Any] = {
        "num_samples": len(gen),
        "num_train": len(ref),
        "num_train_distinct": nb.num_distinct,
        "resolution": list(gen.shape[1:]),
        "memorized_fraction": metrics.fraction_below(ratio, settings.ratio_threshold),
        "memorized_fraction_metric": "nn_ratio",
        "metrics": {
            "nn_ratio": {
                "fraction_memorized": metrics.fraction_below(ratio, settings.ratio_threshold),
                "threshold": settings.ratio_threshold,
                "train_leave_one_out_fraction": loo_ratio,
                **dist(ratio),
                "definition": DEFINITIONS["nn_ratio"],
            },
            "normalized_l2": {
                "fraction_memorized": metrics.fraction_below(nl2, settings.nl2_threshold),
                "threshold": settings.nl2_threshold,
                "alpha": settings.alpha,
                "k": nb.k,
                "train_leave_one_out_fraction": loo_nl2,
                **dist(nl2),
                "definition": DEFINITIONS["normalized_l2"],
            },
            "similarity": {
                "features": embedder.name,
                **metrics.similarity_summary(sim, sim_thr),
                "train_vs_train_p95": float(np.percentile(train_top1, 95)),
                "train_vs_train_frac_above": loo_sim,
                "definition": DEFINITIONS["similarity"],
            },
            "frechet": {
                "name": fd_name,
                "value": fd_value,
                "reference": "training set" if fd_reference is None else fd_reference_name,
                "reference_size": len(fd_ref),
                "definition": DEFINITIONS["frechet"],
            },
        },
        "warnings": warnings,
        "settings": asdict(settings) | {"sim_threshold": sim_thr},
    }
    return AuditResult(
        summary=summary, per_sample=per_sample, samples=samples.detach().cpu(), train_groups=groups
    )


# -------------------------------------------------------------------------------- generation


def generate_samples(
    denoiser: Callable,
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
    if sampler is None:
        from curate.models.sampling import sample as sampler

    method = settings.sampler or ("ddim" if hasattr(denoiser, "schedule") else "euler")
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
    if getattr(denoiser, "vae", None) is None:
        return x
    import torch

    # A latent model samples latents: decode them to images in [-1, 1].
    return torch.cat(
        [denoiser.decode(x[i : i + settings.batch_size].to(device)).cpu()
         for i in range(0, len(x), settings.batch_size)]
    )  # fmt: skip


def image_shape(denoiser) -> tuple[int, int, int]:
    """(C, H, W) of the images a denoiser makes (decoded images for a latent model)."""
    vae = getattr(denoiser, "vae", None)
    res = int(getattr(denoiser, "image_resolution", denoiser.resolution))
    chans = int(vae.config.out_channels) if vae is not None else int(denoiser.channels)
    return chans, res, res


def run_audit(
    denoiser: Callable,
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
    (a ``curate.models.text.TextEncoder``). The report section goes to ``report`` (a
    ``curate.report.Report``) when given, else to ``out_dir/report``.
    """
    settings = settings or AuditSettings()
    settings.validate()
    chans, res, _ = image_shape(denoiser)
    if (chans, res, res) != tuple(train.images.shape[1:]):
        raise DataError(
            f"the model makes {chans}x{res}x{res} images but the training set is "
            f"{'x'.join(map(str, train.images.shape[1:]))}: pass --resolution {res}"
        )
    method = settings.sampler or ("ddim" if hasattr(denoiser, "schedule") else "euler")
    settings = replace(settings, sampler=method)
    cond, prompt_rows = None, None
    if settings.alignment_clip and not getattr(denoiser, "conditional", False):
        raise UsageError("--alignment-clip needs a text-conditional model (it scores prompts)")
    if getattr(denoiser, "conditional", False):
        if text_encoder is None:
            raise UsageError(
                "the model is text-conditional: pass --text-encoder (the kind it was trained with)"
            )
        if train.captions is None:
            raise DataError("the model is text-conditional but the training set has no captions")
        prompt_rows = [i % len(train.captions) for i in range(settings.num_samples)]
        cond = text_encoder.encode([train.captions[i] for i in prompt_rows]).to(device)
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
            "note": "not measured: pass --alignment-clip MODEL (and --alignment-pretrained "
            "TAG|PATH) for the CLIP score",
        }
        return
    from curate.audit.alignment import clip_scorer, clip_scores

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


# ----------------------------------------------------------------------------------- writing


def _grid(images: list, columns: int = 16, min_cell: int = 64):
    """One PNG-able grid of equally sized PIL images, upscaled (nearest) to ``min_cell`` px."""
    from PIL import Image

    w, h = images[0].size
    scale = max(1, math.ceil(min_cell / max(w, h)))
    cw, ch = w * scale, h * scale
    cols = min(columns, len(images))
    rows = math.ceil(len(images) / cols)
    grid = Image.new(images[0].mode, (cols * cw + cols - 1, rows * ch + rows - 1), color=255)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(img.resize((cw, ch), Image.Resampling.NEAREST), (c * (cw + 1), r * (ch + 1)))
    return grid


def write_audit(result: AuditResult, train: TrainingSet, out_dir: Path | str, report=None) -> Path:
    """Write audit.json, samples.parquet, sample PNGs and the report section (to ``report``,
    default ``out_dir/report``); returns ``out_dir``."""
    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(result.summary, indent=2) + "\n", encoding="utf-8")
    result.per_sample.write_parquet(out / "samples.parquet")
    pils = tensor_to_pil(result.samples)
    for i, img in enumerate(pils):
        img.save(out / "samples" / f"{i:05d}.png")
    _grid(pils[:256]).save(out / "samples_grid.png")
    if report is None:
        from curate.report import Report

        report = Report(out / "report", title="curate audit")
    report.add_section("audit", "Memorization audit", audit_section_html(result, train), order=10)
    return out


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def audit_section_html(result: AuditResult, train: TrainingSet, max_pairs: int = 48) -> str:
    """The report section: summary table, histograms, and generations beside their nearest
    training images, worst copies first."""
    import polars as pl

    from curate.report import esc, histogram_svg, html_table, thumb_grid

    s = result.summary
    m = s["metrics"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    rows = [
        [
            "generations / training (distinct)",
            f"{s['num_samples']} / {s['num_train']} ({s['num_train_distinct']})",
            "",
        ],
        [
            f"memorized, NN1/NN2 < {m['nn_ratio']['threshold']:.3g}",
            pct(m["nn_ratio"]["fraction_memorized"]),
            pct(m["nn_ratio"]["train_leave_one_out_fraction"]),
        ],
        [
            f"memorized, normalised L2 < {m['normalized_l2']['threshold']:.3g} "
            f"(alpha {m['normalized_l2']['alpha']}, k {m['normalized_l2']['k']})",
            pct(m["normalized_l2"]["fraction_memorized"]),
            pct(m["normalized_l2"]["train_leave_one_out_fraction"]),
        ],
        [
            f"top-1 similarity ({m['similarity']['features']}) > {m['similarity']['threshold']:.3g}",
            pct(m["similarity"]["frac_above"]),
            pct(m["similarity"]["train_vs_train_frac_above"]),
        ],
        [
            "top-1 similarity p95 / max",
            f"{m['similarity']['p95']:.3f} / {m['similarity']['max']:.3f}",
            f"p95 {m['similarity']['train_vs_train_p95']:.3f}",
        ],
        [
            f"{m['frechet']['name']} (vs {m['frechet']['reference']}; not FID)",
            f"{m['frechet']['value']:.4g}",
            "",
        ],
    ]
    align = m.get("text_alignment")
    if align is not None:
        rows.append(
            [align.get("name", "text alignment"), _fmt(align.get("value")), align.get("note", "")]
        )
    header = ["metric", "generations", "training, leave-one-out (false-positive check)"]
    parts = [html_table(rows, header)]
    parts += [f'<p class="muted">Warning: {esc(w)}.</p>' for w in s.get("warnings", [])]

    parts.append(histogram_svg(result.per_sample["nn_ratio"].to_list(), label="NN1/NN2 ratio"))
    parts.append(histogram_svg(result.per_sample["similarity"].to_list(), label="top-1 similarity"))
    by_id = {sid: i for i, sid in enumerate(train.sample_ids)}
    worst = result.per_sample.sort("nn_ratio").head(max_pairs)
    gen_pils = tensor_to_pil(result.samples[worst["index"].to_list()])
    nn_pils = tensor_to_pil(train.images[[by_id[s] for s in worst["nn_sample_id"].to_list()]])
    parts.append(
        f"<p>The {len(worst)} generations with the lowest NN1/NN2 ratio (most copy-like), each "
        "beside its nearest training image in pixel space.</p>"
    )
    parts.append('<div class="grid">')  # pairs flow side by side, worst first
    for row, g, t in zip(worst.iter_rows(named=True), gen_pils, nn_pils, strict=True):
        flag = "memorized" if row["memorized_ratio"] else "not memorized"
        parts.append(
            '<div class="group" style="margin:0">'
            + thumb_grid(
                [
                    (
                        g,
                        f"generation {row['index']}: ratio {row['nn_ratio']:.3f}, "
                        f"nL2 {row['normalized_l2']:.3f}, sim {row['similarity']:.3f} ({flag})",
                    ),
                    (
                        t,
                        f"nearest training image {row['nn_sample_id']} "
                        f"(x{row['nn_copies']} in training)",
                    ),
                ]
            )
            + "</div>"
        )
    parts.append("</div>")
    counts = result.training_counts(train).filter(pl.col("copies") > 0)
    counts = counts.unique("sample_id").sort(["copies", "sample_id"], descending=[True, False])
    if counts.height:
        parts.append(
            f"<p>{counts.height} training rows were copied (NN1 of a memorized generation); "
            "most copied first:</p>"
        )
        parts.append(
            html_table(
                [[r["sample_id"], r["copies"], r["nn_count"], f"{r['min_ratio']:.3f}"]
                 for r in counts.head(20).iter_rows(named=True)],
                ["training sample_id", "memorized generations", "generations with it as NN1",
                 "lowest ratio"],
            )
        )  # fmt: skip
    parts.append(html_table(sorted(DEFINITIONS.items()), ["metric", "definition"]))
    settings = ", ".join(f"{k}={v}" for k, v in s["settings"].items())
    parts.append(f'<p class="muted">Settings: {esc(settings)}</p>')
    return "".join(parts)
