"""Memorization metrics as pure functions on arrays, each as defined in the paper named with it.

* **Top-1 similarity** (Somepalli et al. 2023; Shah et al. 2025): the cosine similarity of each
  generation to its nearest training image in a feature space; summarised by its 95th percentile
  and the fraction above a threshold (0.5 for SSCD, 0.9 for DINO-style cosine).
* **Normalised L2** (Carlini et al. 2023, as used by AMG): ``l(x) = |x - NN1| / (alpha * mean of
  |x - z| over the k nearest distinct training images z)``, alpha 0.5, k 50; memorized if < 1.4.
* **NN1/NN2 ratio** (Yoon et al. 2023; Gu et al. 2023): ``|x - NN1| / |x - NN2|`` in pixel space;
  memorized if < 1/3. NN2 is the second *distinct* training image, so an image present twice in
  the training set cannot hide a copy of it (the ratio would be ~1 otherwise).

Neighbours are exact (``curate.core.neighbours.knn``): faiss flat indexes searched in query
batches, then the retrieved distances are recomputed in float64 so that exact copies read as 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Thresholds from the literature, with the settings (standard library only: the CLI builds its
# options from AuditSettings without numpy).
from curate.audit.settings import (  # noqa: F401 (re-exported: metrics.NL2_K, ...)
    COSINE_THRESHOLD,
    NL2_ALPHA,
    NL2_K,
    NL2_THRESHOLD,
    RATIO_THRESHOLD,
    SSCD_THRESHOLD,
)
from curate.core.neighbours import as_rows, distinct_groups, knn, l2_normalize
from curate.errors import DataError


def cosine_top1(
    sample_feats: np.ndarray, train_feats: np.ndarray, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's highest cosine similarity to the training set and that training index.

    Rows are L2-normalised here, so any features may be passed. Returns ``(sim (Q,), idx (Q,))``.
    """
    sims, idx = knn(
        l2_normalize(as_rows(sample_feats, "sample features")),
        l2_normalize(as_rows(train_feats, "training features")),
        k=1,
        metric="ip",
        batch_size=batch_size,
    )
    return np.clip(sims[:, 0], -1.0, 1.0), idx[:, 0]  # float32 rows: |cos| may exceed 1 by ulps


def similarity_summary(top1: np.ndarray, threshold: float) -> dict[str, float]:
    """Summary of a top-1 similarity distribution: mean, percentiles, max, and the fraction
    strictly above ``threshold`` (the replication rate). Percentiles interpolate linearly."""
    v = np.asarray(top1, dtype=np.float64)
    if v.size == 0:
        raise DataError("no similarities to summarise (zero samples)")
    return {
        "mean": float(v.mean()),
        "p50": float(np.percentile(v, 50)),
        "p75": float(np.percentile(v, 75)),
        "p90": float(np.percentile(v, 90)),
        "p95": float(np.percentile(v, 95)),
        "max": float(v.max()),
        "threshold": float(threshold),
        "frac_above": float((v > threshold).mean()),
    }


def fraction_below(values: np.ndarray, threshold: float) -> float:
    """Fraction of ``values`` strictly below ``threshold`` (NaN counts as not below)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise DataError("no values to summarise (zero samples)")
    return float((v < threshold).mean())


@dataclass
class PixelNeighbours:
    """Pixel-space neighbours of each generation among the DISTINCT training images.

    Indices point into the original training array (the first row of each duplicate group).
    """

    nn1: np.ndarray  # (Q,) int, nearest training image
    nn2: np.ndarray  # (Q,) int, second nearest distinct training image
    d1: np.ndarray  # (Q,) float, |x - NN1|
    d2: np.ndarray  # (Q,) float, |x - NN2|
    mean_k: np.ndarray  # (Q,) float, mean distance to the k nearest distinct images (NN1 included)
    k: int  # the k actually used: min(k, number of distinct images)
    nn1_copies: np.ndarray  # (Q,) int, how many training rows are the image NN1
    num_distinct: int


def pixel_neighbours(
    samples: np.ndarray,
    train: np.ndarray,
    k: int = NL2_K,
    groups: np.ndarray | None = None,
    batch_size: int = 512,
) -> PixelNeighbours:
    """Nearest distinct training images of each sample in pixel space (images are flattened).

    ``groups`` comes from ``distinct_groups``; by default only byte-identical rows are merged.
    Duplicates are removed before the search, so NN2 and the k-neighbour mean see each image
    once (an image stored twice would otherwise be its own NN2 and hide a copy of it).
    """
    x = as_rows(train, "training images")
    groups = distinct_groups(x) if groups is None else np.asarray(groups)
    if len(groups) != len(x):
        raise DataError(f"groups has {len(groups)} entries for {len(x)} training images")
    reps, copies = np.unique(groups, return_counts=True)  # sorted first-row ids and group sizes
    if len(reps) < 2:
        raise DataError(
            "the NN1/NN2 ratio needs at least 2 distinct training images; "
            f"got {len(reps)} distinct among {len(x)}"
        )
    k_used = min(max(k, 2), len(reps))
    dist, idx = knn(samples, x[reps], k=k_used, metric="l2", batch_size=batch_size)
    return _neighbours(dist, idx, reps, copies, k_used)


def _neighbours(
    dist: np.ndarray, idx: np.ndarray, reps: np.ndarray, copies: np.ndarray, k: int
) -> PixelNeighbours:
    """``PixelNeighbours`` from sorted distances/indices over the distinct images ``reps``."""
    return PixelNeighbours(
        nn1=reps[idx[:, 0]],
        nn2=reps[idx[:, 1]],
        d1=dist[:, 0],
        d2=dist[:, 1],
        mean_k=dist.mean(axis=1),
        k=k,
        nn1_copies=copies[idx[:, 0]],
        num_distinct=len(reps),
    )


def leave_one_out_neighbours(
    train: np.ndarray,
    k: int = NL2_K,
    groups: np.ndarray | None = None,
    batch_size: int = 512,
    queries: np.ndarray | None = None,
) -> PixelNeighbours | None:
    """Each distinct training image's neighbours among the OTHER distinct training images.

    Scoring these like generations gives the rate at which each metric would flag an image that
    is close to, but not in, the training set: a false-positive check available from the
    training data alone. ``queries`` (first rows of duplicate groups) limits which images are
    scored, since the cost is O(queries x N). None with fewer than 3 distinct images.
    """
    x = as_rows(train, "training images")
    groups = distinct_groups(x) if groups is None else np.asarray(groups)
    reps, copies = np.unique(groups, return_counts=True)
    if len(reps) < 3:
        return None
    queries = reps if queries is None else np.asarray(queries)
    k_used = min(max(k, 2), len(reps) - 1)
    dist, idx = knn(x[queries], x[reps], k=k_used + 1, metric="l2", batch_size=batch_size)
    dist, idx = dist[:, 1:], idx[:, 1:]  # column 0 is the image itself (distance 0)
    return _neighbours(dist, idx, reps, copies, k_used)


def nn_ratio(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """``d1 / d2`` (Yoon et al. 2023); 0 for an exact copy, 1 when NN1 and NN2 tie."""
    d1 = np.asarray(d1, dtype=np.float64)
    d2 = np.asarray(d2, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(d2 > 0, d1 / d2, 1.0)
    return out


def normalized_l2(d1: np.ndarray, mean_k: np.ndarray, alpha: float = NL2_ALPHA) -> np.ndarray:
    """Carlini et al.'s ``d1 / (alpha * mean_k)``; small means far closer to one training image
    than to its typical neighbours."""
    d1 = np.asarray(d1, dtype=np.float64)
    denom = alpha * np.asarray(mean_k, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(denom > 0, d1 / denom, 1.0)
    return out


# a held-out feature space: whitened principal components of images no model was trained on
HELDOUT_COMPONENTS = 16


@dataclass(frozen=True)
class HeldoutSpace:
    """Whitened PCA fitted on held-out images: an independent space for the copy test.

    AMG's dissimilarity guidance lowers a pixel distance, so a guided sample can leave pixel
    NN1/NN2 < 1/3 by small stroke changes while staying its neighbour. Distances here weigh each
    direction by the held-out data's own spread (a Mahalanobis distance over its top
    components), which the guidance does not optimise; the same NN1/NN2 < 1/3 test applies.
    """

    mean: np.ndarray  # (D,)
    basis: np.ndarray  # (k, D): components divided by their standard deviations

    @classmethod
    def fit(cls, heldout: np.ndarray, k: int = HELDOUT_COMPONENTS) -> HeldoutSpace:
        x = as_rows(heldout, "held-out images").astype(np.float64)
        if len(x) < 3:
            raise DataError(f"a held-out feature space needs at least 3 images, got {len(x)}")
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        std = s / np.sqrt(len(x) - 1)
        k = int(min(k, int((std > 1e-8 * max(std[0], 1e-12)).sum())))
        return cls(mean=mean, basis=vt[:k] / std[:k, None])

    def features(self, images: np.ndarray) -> np.ndarray:
        return (as_rows(images, "images").astype(np.float64) - self.mean) @ self.basis.T

    def nn_ratio(self, samples: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """NN1/NN2 of each sample among the (distinct) ``reference`` images in this space."""
        dist, _ = knn(self.features(samples), self.features(reference), k=2, metric="l2")
        return nn_ratio(dist[:, 0], dist[:, 1])

    def reference_nn_ratio(self, reference: np.ndarray) -> np.ndarray:
        """Each reference image against the others: how often the test fires on images that
        are close to, but not, another reference image (near 0 when the space separates)."""
        f = self.features(reference)
        dist, _ = knn(f, f, k=3, metric="l2")
        return nn_ratio(dist[:, 1], dist[:, 2])
