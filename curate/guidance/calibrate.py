"""AMG thresholds calibrated per model and training set (``lambdas: auto``, the default).

The fixed thresholds of ``DEFAULT_LAMBDAS`` are on one model's scale: nL2 depends on the
training-set size and k, and where a model's final samples sit depends on how well it is
trained. The sweep in reports/amg found the rule that carries over: lambda_max at the copy
boundary of the model's own final samples, lambda_min near the median similarity of
non-copying trajectories at mid noise. :func:`calibrate_amg` measures both from a small batch
of the model's own plain samples:

1. sample ``calibration_samples`` trajectories with the same model, sampler and conditioning,
   from seeds apart from the real samples' (``derive_seed(seed, "amg-calibration")``), with the
   gate off (``threshold: off``: AMG records the similarity it would compare against the
   threshold at every step, and changes nothing);
2. label each final image copy / non-copy by the audit's criterion: NN1/NN2 < 1/3 in pixel
   space against the distinct training images (:func:`copy_labels`, the same neighbours and
   ratio as ``curate.audit.metrics``; tested equal to ``curate.audit.scoring``);
3. :func:`choose_lambdas`: lambda_max at the cut between the copies' and the non-copies' final
   similarities (midway across the gap; where they overlap, the cut with the fewest wrong
   sides), lambda_min the median similarity of the non-copying trajectories at the step
   nearest abar = 0.5.

A batch without copies has no boundary to measure. Then lambda_max is the highest non-copy
final similarity plus half the non-copies' spread above their median: a copy (NN1/NN2 < 1/3)
is far more similar to its training image than any non-copy, so it still crosses, and no
observed non-copy is guided at the end. The fixed default is not used there: it is on another
model's scale (on a 64-digit DDPM it sat below most non-copies and guided 94 % of samples), so
it is not the safer choice in either direction. A batch of copies only (a perfect memorizer)
puts lambda_max below the lowest copy by the same margin and lambda_min at the lowest mid-noise
similarity, so every trajectory is guided. What was chosen, from what, and which rule decided,
is the ``calibration`` record (``amg.json``, the report section).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from curate.core.neighbours import distinct_groups, knn
from curate.errors import DataError
from curate.guidance.amg import AMG
from curate.seeding import derive_seed

# The audit's memorized criterion (curate.audit.settings.RATIO_THRESHOLD; tests check they agree)
COPY_RATIO = 1.0 / 3.0
MID_ABAR = 0.5  # "mid noise": the sampler step whose abar is nearest this


def calibration_seed(seed: int) -> int:
    """The calibration batch's sampling seed: apart from ``seed``'s own samples, deterministic."""
    return derive_seed(int(seed), "amg-calibration")


def copy_labels(
    images, train_images, keys: Sequence[object] | None = None, ratio: float = COPY_RATIO,
    dup_eps: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(copy (Q,) bool, NN1/NN2 ratio (Q,))`` of images (Q, C, H, W) in [-1, 1] against the
    training images (N, C, H, W), as the audit measures it: pixel L2 to the nearest and second
    nearest distinct training image (rows equal in bytes or ``keys``, or within ``dup_eps``,
    are one image), a copy when the ratio is below ``ratio``."""
    gen = np.asarray(_numpy(images), dtype=np.float32).clip(-1, 1)
    ref = np.asarray(_numpy(train_images), dtype=np.float32)
    if gen.shape[1:] != ref.shape[1:]:
        raise DataError(
            f"calibration samples are {gen.shape[1:]} but the training images {ref.shape[1:]}"
        )
    reps = np.unique(distinct_groups(ref, keys=keys, eps=dup_eps))
    if len(reps) < 2:
        raise DataError("lambdas: auto needs at least 2 distinct training images")
    dist, _ = knn(gen, ref[reps], k=2, metric="l2")
    d1, d2 = dist[:, 0], dist[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(d2 > 0, d1 / d2, 1.0)
    return r < ratio, r


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def _cut(final: np.ndarray, copy: np.ndarray) -> tuple[float, int]:
    """The threshold between copies (above) and non-copies (at or below) with the fewest
    samples on the wrong side, midway between the neighbouring final similarities; among equal
    cuts the lowest (it guards more copies). ``(cut, wrong)``."""
    values = np.unique(final)
    cuts = (values[:-1] + values[1:]) / 2
    if len(cuts) == 0:  # every sample has the same similarity
        return float(values[0]), int(min(copy.sum(), (~copy).sum()))
    above = final[None, :] > cuts[:, None]  # (cuts, samples)
    wrong = (above & ~copy).sum(1) + (~above & copy).sum(1)
    best = int(np.argmin(wrong))  # first minimum: the lowest cut
    return float(cuts[best]), int(wrong[best])


def choose_lambdas(
    final: np.ndarray, copy: np.ndarray, mid: np.ndarray, features: str = "pixel"
) -> dict[str, Any]:
    """The calibration rule (module docstring) on per-sample arrays: ``final`` and ``mid``
    similarities (last step, step nearest abar = 0.5) and ``copy`` labels. Returns the record:
    ``lambda_min``, ``lambda_max``, ``rule`` and the figures they came from."""
    final, mid = np.asarray(final, dtype=np.float64), np.asarray(mid, dtype=np.float64)
    copy = np.asarray(copy, dtype=bool)
    if not (len(final) == len(copy) == len(mid)) or len(final) == 0:
        raise DataError("calibration: need one final, mid-noise and copy value per sample")
    fc, fn = final[copy], final[~copy]
    out: dict[str, Any] = {"copies": int(copy.sum()), "non_copies": int((~copy).sum())}
    if len(fc) and len(fn):
        hi, wrong = _cut(final, copy)
        out["rule"] = "copy boundary" if wrong == 0 else "copy boundary (overlapping)"
        out["wrong_side"] = wrong
        lo = float(np.median(mid[~copy]))
    elif len(fn):
        hi = float(fn.max() + 0.5 * (fn.max() - np.median(fn)))
        out["rule"] = "no copies: highest non-copy + half the non-copies' spread above median"
        lo = float(np.median(mid[~copy]))
    else:
        hi = float(fc.min() - 0.5 * (np.median(fc) - fc.min()))
        out["rule"] = "copies only: lowest copy - half the copies' spread below median"
        lo = float(mid.min())
    # the similarity's range: -nL2 < 0 (0 only for an exact copy), cosines <= 1
    hi = min(hi, -1e-6) if features == "pixel" else min(hi, 1.0)
    out |= {
        "lambda_min": min(lo, hi),
        "lambda_max": hi,
        "final_similarity": {
            "copy_min": float(fc.min()) if len(fc) else None,
            "non_copy_max": float(fn.max()) if len(fn) else None,
            "non_copy_median": float(np.median(fn)) if len(fn) else None,
        },
        "mid_similarity_non_copy_median": float(np.median(mid[~copy])) if len(fn) else None,
    }
    return out


def trajectory_points(steps) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """From AMG's per-step records (``AMG.steps_frame()``): each sample's final similarity (the
    last step's), its similarity at the step nearest abar = 0.5, and that step."""
    import polars as pl

    if steps.height == 0:
        raise DataError("calibration: the calibration batch recorded no steps")
    by_step = steps.group_by("step").agg(pl.col("sigma").first()).sort("step")
    sig = by_step["sigma"].to_numpy()
    abar = 1.0 / (1.0 + sig * sig)  # VE: curate.models.denoiser.alpha_bar_from_sigma
    j = int(np.argmin(np.abs(abar - MID_ABAR)))
    mid_step, last_step = int(by_step["step"][j]), int(by_step["step"].max())
    samples = steps.sort(["sample", "step"])
    final = samples.filter(pl.col("step") == last_step)["similarity"].to_numpy()
    mid = samples.filter(pl.col("step") == mid_step)["similarity"].to_numpy()
    at = {"mid_step": mid_step, "mid_sigma": float(sig[j]), "mid_abar": float(abar[j]),
          "last_step": last_step}  # fmt: skip
    return final, mid, at


def calibrate_amg(
    amg: AMG,
    run: Callable[[AMG, int, int], Any],
    *,
    seed: int = 0,
    ratio: float = COPY_RATIO,
    dup_eps: float = 0.0,
) -> dict[str, Any] | None:
    """Measure ``lambdas: auto`` for ``amg`` and set them (``amg.config``, ``amg.calibration``).

    ``run(probe, num, seed)`` samples ``num`` images with the sampler AMG will guide, with
    ``probe`` (AMG with the gate off) as its guidance, and returns the final images in pixel
    space at the model's size (decoded for a latent model). ``amg.reference`` (set by
    ``build_amg``) is the training set the copies are labelled against; ``ratio`` and
    ``dup_eps`` are the audit's ``ratio_threshold`` and ``dup_eps``. Returns the record, or
    None when the config needs no calibration (fixed lambdas, or a threshold that ignores them).
    """
    cfg = amg.config
    if not cfg.calibrates:
        return None
    if amg.reference is None:
        raise DataError("lambdas: auto needs the training set (build AMG with build_amg)")
    t0 = time.perf_counter()
    probe = AMG(replace(cfg, threshold="off"), amg.index, text_encoder=amg.text_encoder)
    cal_seed = calibration_seed(seed)
    images = run(probe, cfg.calibration_samples, cal_seed)
    ref = amg.reference
    copy, ratios = copy_labels(images, ref.images, getattr(ref, "keys", None), ratio, dup_eps)
    final, mid, at = trajectory_points(probe.steps_frame())
    record = choose_lambdas(final, copy, mid, cfg.features)
    record = {
        "lambdas": "auto",
        "samples": cfg.calibration_samples,
        "seed": cal_seed,
        "copy_criterion": f"NN1/NN2 < {ratio:.3g} (pixel, distinct training images)",
        **record,
        **at,
        "nn_ratio_median": float(np.median(ratios)),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    amg.config = replace(cfg, lambdas=(record["lambda_min"], record["lambda_max"]))
    amg.calibration = record
    return record
