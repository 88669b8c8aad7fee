"""Calibrate the memorization metrics on real digits, where the right answer is known.

For training subsets of N sklearn digits (16x16, prepared exactly as the trainer prepares
them) this audits three kinds of "generations" whose status is known:

* samples of the closed-form empirical denoiser (a perfect memorizer): all copies;
* held-out real digits: none are copies;
* training images plus Gaussian pixel noise of std s: copies degraded by s, showing where each
  metric stops calling a near-copy a copy;

and reports, per metric, the flagged fraction, the held-out 5th percentile (the threshold that
would flag 5% of real new digits) and the AUC separating oracle samples from held-out digits.
It also times the audit (neighbour search + metrics, no sampling) against the sampler.

    .venv/bin/python scripts/audit_calibration.py            # ~2 min on 2 cores
    .venv/bin/python scripts/audit_calibration.py --quick    # ~20 s, N = 64 only

Writes reports/audit_calibration.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from curate.audit.oracle import EmpiricalDenoiser
from curate.audit.scoring import audit_samples
from curate.audit.settings import AuditSettings
from curate.core.images import pil_to_tensor
from curate.io.training import TrainingSet
from curate.models.sampling import sample

REPORTS = Path(__file__).resolve().parent.parent / "reports"


def digits_16() -> torch.Tensor:
    """All 1,797 sklearn digits as (N, 1, 16, 16) in [-1, 1], through the trainer's resize."""
    from PIL import Image
    from sklearn.datasets import load_digits

    raw = load_digits().images  # (1797, 8, 8), 0..16
    pils = [Image.fromarray(np.round(a * 255 / 16).astype(np.uint8), mode="L") for a in raw]
    return pil_to_tensor(pils, channels=1, resolution=16)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive < score of a negative): lower scores mean "more copy-like"."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((pos < neg).mean() + 0.5 * (pos == neg).mean())


def row(name: str, res) -> dict:
    m = res.summary["metrics"]
    return {
        "case": name,
        "n": res.summary["num_samples"],
        "nn_ratio<1/3": m["nn_ratio"]["fraction_memorized"],
        "nL2<1.4": m["normalized_l2"]["fraction_memorized"],
        "pixel_cos>0.9": m["similarity"]["frac_above"],
        "pixel_cos_p95": m["similarity"]["p95"],
        "train_vs_train_cos_p95": m["similarity"]["train_vs_train_p95"],
        "FD_pixel@16": m["frechet"]["value"],
    }


def time_frechet(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Seconds for FD_pixel@16 (256 dims) by eigh vs scipy sqrtm, same data, same run."""
    from curate.audit import frechet

    fa, fb = frechet.pixel_features(a), frechet.pixel_features(b)
    out = {"dims": fa.shape[1]}
    for method in ("eigh", "sqrtm"):
        t0 = time.perf_counter()
        out[f"{method}_value"] = frechet.frechet_distance_features(fa, fb, method=method)
        out[f"{method}_s"] = time.perf_counter() - t0
    out["sqrtm_over_eigh"] = out["sqrtm_s"] / out["eigh_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 64 only, 256 samples")
    ap.add_argument("--num-samples", type=int, default=1000, help="oracle samples per N")
    ap.add_argument("--seed", type=int, default=0, help="subset and sampling seed")
    args = ap.parse_args()
    torch.set_num_threads(2)
    sizes = [64] if args.quick else [32, 64, 128, 256]
    num = 256 if args.quick else args.num_samples

    x = digits_16()
    perm = np.random.default_rng(args.seed).permutation(len(x))
    held_out = x[perm[-512:]]  # never in any training subset
    results, curves, timings, separation = [], {}, {}, {}
    for n in sizes:
        train = TrainingSet.from_tensor(x[perm[:n]], [f"d{i}" for i in perm[:n]])
        settings = AuditSettings(num_samples=num, seed=args.seed)
        t0 = time.perf_counter()
        gen = sample(
            EmpiricalDenoiser(train.images), num, steps=30, method="euler", seed=args.seed,
            batch_size=256, progress=False,
        )  # fmt: skip
        t_sample = time.perf_counter() - t0
        t0 = time.perf_counter()
        oracle = audit_samples(gen, train, settings)
        t_audit = time.perf_counter() - t0
        timings[n] = {"oracle_sampling_s": t_sample, "audit_s": t_audit, "num_samples": num}
        real = audit_samples(held_out, train, AuditSettings(num_samples=len(held_out)))
        results.append({"N": n, **row("oracle samples", oracle)})
        results.append({"N": n, **row("held-out digits", real)})
        for s in (0.05, 0.1, 0.2, 0.4, 0.8):
            g = torch.Generator().manual_seed(args.seed)
            idx = torch.arange(num) % n
            noisy = (train.images[idx] + s * torch.randn(num, 1, 16, 16, generator=g)).clamp(-1, 1)
            results.append({"N": n, **row(f"train + noise std {s}", audit_samples(noisy, train))})
        separation[n] = {}
        for col, lower_is_copy in (
            ("nn_ratio", True),
            ("normalized_l2", True),
            ("similarity", False),
        ):
            o, h = oracle.per_sample[col].to_numpy(), real.per_sample[col].to_numpy()
            sign = 1.0 if lower_is_copy else -1.0
            separation[n][col] = {
                "auc_oracle_vs_heldout": auc(sign * o, sign * h),
                # the threshold at which 5% of real new digits would be called copies
                "heldout_5pct_threshold": float(np.percentile(h, 5 if lower_is_copy else 95)),
            }
        if n == 64:
            curves = {
                "oracle_ratio": oracle.per_sample["nn_ratio"].to_list(),
                "heldout_ratio": real.per_sample["nn_ratio"].to_list(),
                "oracle_nl2": oracle.per_sample["normalized_l2"].to_list(),
                "heldout_nl2": real.per_sample["normalized_l2"].to_list(),
                "oracle_sim": oracle.per_sample["similarity"].to_list(),
                "heldout_sim": real.per_sample["similarity"].to_list(),
            }
        print(
            f"N={n}: sampling {t_sample:.2f}s, audit {t_audit:.2f}s for {num} samples", flush=True
        )

    fd_timing = time_frechet(x[perm[:256]], held_out)
    print(f"Fréchet trace-sqrt: {fd_timing}", flush=True)
    REPORTS.mkdir(exist_ok=True)
    out = {
        "command": "python scripts/audit_calibration.py" + (" --quick" if args.quick else ""),
        "data": "sklearn digits, 8x8 -> 16x16 bilinear (trainer's preprocessing), [-1, 1]",
        "held_out": len(held_out),
        "oracle_sampler": "curate.models.sampling.sample, euler, 30 Karras steps",
        "results": results,
        "separation": separation,
        "timings": timings,
        "frechet_method_timing": fd_timing,
        "torch_threads": torch.get_num_threads(),
    }
    (REPORTS / "audit_calibration.json").write_text(json.dumps(out, indent=1) + "\n")
    write_markdown(out)
    if curves:
        plot(curves)
    print("wrote reports/audit_calibration.{json,md,png}")


def write_markdown(out: dict) -> None:
    cols = ["N", "case", "nn_ratio<1/3", "nL2<1.4", "pixel_cos>0.9", "pixel_cos_p95", "FD_pixel@16"]
    lines = [
        "# Audit metric calibration on digits",
        "",
        f"Command: `{out['command']}`. Data: {out['data']}; {out['held_out']} held-out digits. "
        f"Oracle: {out['oracle_sampler']}.",
        "",
        "| " + " | ".join(cols) + " |",
        "| " + " | ".join("---" for _ in cols) + " |",
    ]
    for r in out["results"]:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Separation of oracle samples from held-out digits (AUC; 1 = perfect):", ""]
    lines += ["| N | metric | AUC | threshold that flags 5% of held-out digits |"]
    lines += ["| --- | --- | --- | --- |"]
    for n, metrics in out["separation"].items():
        for metric, v in metrics.items():
            lines.append(
                f"| {n} | {metric} | {v['auc_oracle_vs_heldout']:.3f} | "
                f"{v['heldout_5pct_threshold']:.3f} |"
            )
    lines += ["", "Timings (2 threads):", ""]
    for n, t in out["timings"].items():
        lines.append(
            f"- N={n}: oracle sampling {t['oracle_sampling_s']:.2f} s, audit (NN + metrics + FD) "
            f"{t['audit_s']:.2f} s for {t['num_samples']} samples"
        )
    f = out["frechet_method_timing"]
    lines.append(
        f"- FD_pixel@16 ({f['dims']} dims, 256 train vs 512 held-out): eigh {f['eigh_s']:.3f} s, "
        f"scipy sqrtm {f['sqrtm_s']:.3f} s (ratio {f['sqrtm_over_eigh']:.0f}x); values "
        f"{f['eigh_value']:.6f} vs {f['sqrtm_value']:.6f}"
    )
    (REPORTS / "audit_calibration.md").write_text("\n".join(lines) + "\n")


def plot(c: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, thr, label in (
        (axes[0], "ratio", 1 / 3, "NN1/NN2 ratio"),
        (axes[1], "nl2", 1.4, "normalised L2 (alpha 0.5, k 50)"),
        (axes[2], "sim", 0.9, "top-1 pixel cosine"),
    ):
        both = np.concatenate([c[f"oracle_{key}"], c[f"heldout_{key}"], [thr]])
        bins = np.linspace(both.min(), both.max(), 41)  # shared bins: both sets visible
        ax.hist(c[f"oracle_{key}"], bins=bins, alpha=0.6, label="oracle samples")
        ax.hist(c[f"heldout_{key}"], bins=bins, alpha=0.6, label="held-out digits")
        ax.axvline(thr, color="k", ls="--", lw=1, label=f"threshold {thr:.3g}")
        ax.set_xlabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle("N = 64 training digits (16x16)")
    fig.tight_layout()
    fig.savefig(REPORTS / "audit_calibration.png", dpi=110)


if __name__ == "__main__":
    main()
