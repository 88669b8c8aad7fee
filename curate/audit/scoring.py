"""Scoring generations against a training set: pixel neighbours (NN1/NN2 ratio, normalised L2),
feature similarity, the leave-one-out false-positive check and the Fréchet distance.

``audit_samples`` scores generations that already exist, so a notebook or a benchmark can audit
any tensor of images against any training set; nothing is written. Metric definitions live in
``metrics.py``, settings in ``settings.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from curate.audit import frechet, metrics
from curate.audit.alignment import FEATURES_FLAGS, load_clip
from curate.audit.sanity import generation_check
from curate.audit.settings import DEFINITIONS, FEATURES, LOO_QUERIES, AuditSettings
from curate.core.embed import get_image_embedder
from curate.core.images import embed_tensor
from curate.core.neighbours import knn
from curate.core.weights import CLIP_MODEL, CLIP_PRETRAINED
from curate.errors import DataError, UsageError
from curate.io.training import TrainingSet
from curate.seeding import rng_for

if TYPE_CHECKING:
    import polars as pl
    import torch


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


def image_embedder(
    kind: str, images_shape: Sequence[int], device: str = "cpu", model: str | None = None
):
    """The ``curate.core.embed`` embedder for ``--features kind`` and images (N, C, H, W).

    ``pixel`` keeps the model's resolution and channels (each image mean-centred and unit norm,
    so the cosine is a Pearson correlation and a uniform background does not make every pair
    similar). ``model`` is the SSCD model file for ``sscd`` and the open_clip checkpoint for
    ``clip``.
    """
    if kind == "pixel":
        return get_image_embedder("pixel", size=int(images_shape[-1]), grey=images_shape[1] == 1)
    if kind == "sscd":
        return get_image_embedder("sscd", device=device, **({"model": model} if model else {}))
    if kind == "clip":  # a one-line error naming --features-model when the weights are missing
        return load_clip(CLIP_MODEL, model or CLIP_PRETRAINED, device, FEATURES_FLAGS)
    raise UsageError(f"features: {kind!r} is not one of {', '.join(FEATURES)}")


# ----------------------------------------------------------------------------------- scoring


def metrics_rng(seed: int) -> np.random.Generator:
    """The generator behind the audit's subsampling (derived from the seed, never global)."""
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
            f"{tuple(train.images.shape[1:])}: set resolution to the model's"
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
    gen_feats = embed_tensor(embedder, samples, batch_size=settings.batch_size)
    ref_feats = embed_tensor(embedder, train.images, batch_size=settings.batch_size)
    sim, sim_idx = metrics.cosine_top1(gen_feats, ref_feats)
    sim_thr = settings.similarity_threshold
    # Reference: each distinct training image against the other distinct ones (what a
    # non-copy looks like in this feature space).
    # At most LOO_QUERIES training images are scored (seeded subset): the check is O(queries x N).
    reps = np.unique(groups)
    queries = reps
    if len(reps) > LOO_QUERIES:
        queries = np.sort(metrics_rng(settings.seed).choice(reps, LOO_QUERIES, replace=False))
    ref_sims, _ = knn(ref_feats[queries], ref_feats[reps], k=min(2, len(reps)), metric="ip")
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
    # Do the generations look like the data at all? If not, the figures above mean nothing.
    check = generation_check(gen, ref[reps], nb.d1, loo.d1 if loo is not None else None)
    if check["warning"]:
        warnings.insert(0, check["warning"])

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
        "generation_check": check,
        "settings": asdict(settings) | {"sim_threshold": sim_thr},
    }
    return AuditResult(
        summary=summary, per_sample=per_sample, samples=samples.detach().cpu(), train_groups=groups
    )
