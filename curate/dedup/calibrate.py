"""Calibration: plant known copies of the user's own images and measure each tier's threshold.

For a sample of images, every transform in ``curate.dedup.planting`` makes one copy. All pairs
among originals and copies are scored per tier; pairs from the same original are positives,
everything else negatives. Precision and recall per tier and threshold (and recall per
transform) tell the user which threshold fits their data instead of copying a paper's.
Duplicates already present among the sampled originals would count as false positives; pass
their group keys (``groups``) to count them as positives instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.core.config import field_problems, setting
from curate.dedup.planting import TRANSFORMS, plant_copies
from curate.dedup.tiers import NORM_MARGIN, NORM_RANK, beats_background

HASH_RADII = (0, 2, 4, 6, 8, 10, 12, 14, 16, 20)
COSINE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
CALIBRATION_TIERS = ("phash", "dhash", "sscd", "clip", "pixel")


@dataclass(frozen=True)
class CalibrateConfig:
    """What ``curate dedup calibrate`` plants and measures, declared once (the command builds
    its options from these fields; the embedders' model settings are the ``dedup_images``
    step's ``sscd_model``, ``clip_model`` and ``clip_pretrained``). Problems are named by key."""

    tiers: tuple[str, ...] = setting(
        ("phash", "dhash", "sscd"),
        "Tiers to calibrate, comma-separated: " + ", ".join(CALIBRATION_TIERS) + ".",
        comma=True,
        metavar="TIERS",
    )
    sample: int = setting(50, "How many of the run's images get planted copies.", min=2)
    transforms: tuple[str, ...] = setting(
        tuple(TRANSFORMS),
        "Planted transforms, comma-separated: " + ", ".join(TRANSFORMS) + ".",
        comma=True,
        metavar="TRANSFORMS",
    )

    def problems(self) -> list[str]:
        """Every problem with these settings, as ``"key: message"`` strings."""
        out = field_problems(self)
        for key, value, known in (
            ("tiers", self.tiers, CALIBRATION_TIERS),
            ("transforms", self.transforms, tuple(TRANSFORMS)),
        ):
            bad = [v for v in value if v not in known]
            if bad or not value:
                what = f"unknown {', '.join(map(repr, bad))}" if bad else "none given"
                out.append(f"{key}: {what}; use a comma list of {', '.join(known)}")
        return out


def calibrate_run(
    run_dir: str | Path,
    config: CalibrateConfig,
    *,
    tier_options: dict[str, dict] | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """:func:`calibrate_images` on ``config.sample`` of a run folder's usable images, chosen by
    ``seed``. Originals that are already duplicates of each other are one truth group: the
    image dedup clusters when that step has run, else the exact pixel hash."""
    import polars as pl

    from curate.errors import DataError, UsageError
    from curate.io.store import ImageStore
    from curate.seeding import rng_for
    from curate.table import read_table

    problems = config.problems()
    if problems:
        raise UsageError("; ".join(problems))
    run_dir = Path(run_dir)
    table = read_table(run_dir)
    ids = table.filter(pl.col("status") == "ok")["sample_id"].sort().to_list()
    if len(ids) < 2:
        raise DataError(f"{run_dir} has {len(ids)} usable images; calibration needs at least 2")
    rng = rng_for(seed, "calibrate")
    chosen = sorted(rng.choice(ids, size=min(config.sample, len(ids)), replace=False).tolist())
    images = ImageStore(run_dir).get(chosen)
    key_col = "dedup_images_cluster" if "dedup_images_cluster" in table.columns else "pixel_hash"
    keys = dict(zip(table["sample_id"].to_list(), table[key_col].to_list(), strict=True))
    return calibrate_images(
        images,
        chosen,
        tiers=config.tiers,
        transforms=config.transforms,
        seed=seed,
        device=device,
        tier_options=tier_options,
        groups=[keys[s] if keys[s] is not None else s for s in chosen],
    )


def tier_similarity(
    kind: str, images: Sequence, device: str = "cpu", **options
) -> tuple[np.ndarray, str]:
    """All-pairs similarity ``(N, N)`` under tier ``kind`` and the tier's threshold unit.

    Hash tiers return the Hamming distance (unit ``"radius"``; the mirrored hash counts);
    embedding tiers the cosine (unit ``"cosine"``).
    """
    if kind in ("phash", "dhash"):
        from curate.dedup.hashing import hamming, image_hashes

        codes, flipped = image_hashes(images, kind, mirrored=True)
        d = hamming(codes[:, None, :], codes[None, :, :])  # (N, N)
        d = np.minimum(d, hamming(flipped[:, None, :], codes[None, :, :]))
        d = np.minimum(d, d.T)
        return d.astype(np.float32), "radius"
    from curate.core.embed import get_image_embedder

    emb = get_image_embedder(kind, device=device, **options).embed(list(images))
    return emb @ emb.T, "cosine"


def normalised_similarity(sim: np.ndarray, rank: int, margin: float) -> np.ndarray:
    """``sim`` where a pair beats both rows' background (cosine to their ``rank``-th nearest
    other row) by ``margin``, else -inf (never above any threshold)."""
    others = sim.copy()
    np.fill_diagonal(others, -np.inf)
    background = -np.sort(-others, axis=1)[:, rank - 1]  # (N,)
    ok = beats_background(sim, background[:, None], background[None, :], margin)
    return np.where(ok, sim, -np.inf).astype(np.float32)


def calibrate_images(
    images: Sequence,
    ids: Sequence[str],
    tiers: Sequence[str] = ("phash", "dhash", "sscd"),
    transforms: Sequence[str] = tuple(TRANSFORMS),
    seed: int = 0,
    device: str = "cpu",
    tier_options: dict[str, dict] | None = None,
    radii: Sequence[int] = HASH_RADII,
    thresholds: Sequence[float] = COSINE_THRESHOLDS,
    groups: Sequence[str] | None = None,
    norm_rank: int = NORM_RANK,
    norm_margin: float = NORM_MARGIN,
) -> dict:
    """Precision/recall per tier and threshold on planted copies of ``images``.

    Returns ``{"n_originals", "n_copies", "transforms", "rows": [...], "best": {tier: row}}``;
    each row holds tier, threshold, unit, precision, recall, f1 and ``recall_<transform>``.
    ``groups`` (one key per original) marks originals that are already duplicates of each other,
    so their copies count as positives rather than false positives.

    Embedding tiers are also scored with the dedup step's score normalisation (rows named
    ``"<tier>-normalised"``): a pair counts only if its cosine beats both images' background,
    the cosine to their ``norm_rank``-th nearest neighbour in the calibration set, by
    ``norm_margin`` (the step's defaults). Skipped below ``norm_rank + 2`` images.
    """
    copies = plant_copies(images, ids, transforms, seed=seed)
    all_images = list(images) + [c[0] for c in copies]
    source = np.array(list(ids) + [c[1] for c in copies], dtype=object)
    group_of = dict(zip(ids, groups if groups is not None else ids, strict=True))
    truth = np.array([group_of[s] for s in source], dtype=object)
    kind = np.array(["original"] * len(images) + [c[2] for c in copies], dtype=object)
    n = len(all_images)
    iu = np.triu_indices(n, 1)
    positive = (truth[:, None] == truth[None, :])[iu]
    # A copy's pair with its own original tells which transform it survived.
    is_orig = kind == "original"
    rows = []
    best: dict[str, dict] = {}
    scored = []
    for tier in tiers:
        sim, unit = tier_similarity(tier, all_images, device, **(tier_options or {}).get(tier, {}))
        scored.append((tier, sim, unit))
        if unit == "cosine" and norm_rank > 0 and n > norm_rank + 1:
            scored.append((f"{tier}-normalised", normalised_similarity(sim, norm_rank, norm_margin),
                           unit))  # fmt: skip
    for tier, sim, unit in scored:
        values = sim[iu]
        grid = radii if unit == "radius" else thresholds
        for thr in grid:
            pred = values <= thr if unit == "radius" else values >= thr
            tp = int((pred & positive).sum())
            npred = int(pred.sum())
            precision = tp / npred if npred else 1.0
            recall = tp / int(positive.sum()) if positive.any() else 1.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            row = {
                "tier": tier,
                "unit": unit,
                "threshold": thr,
                "precision": round(precision, 4),
                "recall": round(recall, 4),
                "f1": round(f1, 4),
            }
            # Per transform: the fraction of copies matched to their own original.
            orig_index = {sid: i for i, sid in enumerate(source[is_orig])}
            for t in transforms:
                rows_t = np.flatnonzero(kind == t)
                s = sim[rows_t, [orig_index[sid] for sid in source[rows_t]]]
                hit = s <= thr if unit == "radius" else s >= thr
                row[f"recall_{t}"] = round(float(hit.mean()), 4) if len(hit) else None
            rows.append(row)
            if tier not in best or row["f1"] > best[tier]["f1"]:
                best[tier] = row
    return {
        "n_originals": len(images),
        "n_copies": len(copies),
        "transforms": list(transforms),
        "rows": rows,
        "best": best,
    }


def format_calibration(result: dict) -> str:
    """A plain-text table of a ``calibrate_images`` result."""
    transforms = result["transforms"]
    head = ["tier", "thr", "prec", "recall", "f1", *transforms]
    lines = [
        f"{result['n_originals']} originals, {result['n_copies']} planted copies "
        f"({', '.join(transforms)})",
        "  ".join(f"{h:>7}" for h in head),
    ]
    for r in result["rows"]:
        thr = f"d<={r['threshold']}" if r["unit"] == "radius" else f">={r['threshold']}"
        vals = [r["tier"], thr, r["precision"], r["recall"], r["f1"]]
        vals += [r[f"recall_{t}"] for t in transforms]
        lines.append("  ".join(f"{v:>7}" if isinstance(v, str) else f"{v:>7.3f}" for v in vals))
    for tier, r in result["best"].items():
        lines.append(
            f"best {tier}: threshold {r['threshold']} ({r['unit']}) f1 {r['f1']:.3f} "
            f"precision {r['precision']:.3f} recall {r['recall']:.3f}"
        )
    return "\n".join(lines)
