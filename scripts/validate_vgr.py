"""Validate the volume-growth ranker on a model that is known to memorize (issue: rank).

A tiny UNet is trained on 64 digits (16x16 grey, ``builtin:digits``); 64 other digits are held
out. At several checkpoints we score both groups with the cheap ``fd`` estimator and report the
Welch t-test and ROC AUC of "trained vs held out". At the end we also compare ``fd`` with the
full ``frame`` estimator (Spearman), audit the model (which training images do its samples
copy?) and ask whether the copied images rank highest, and score the closed-form memorizing
denoiser (the empirical posterior mean of the 64 images) the same way. Controls: the untrained
network, and (``--control``) a model trained on the held-out half, which should flip the sign.

    .venv/bin/python scripts/validate_vgr.py --out reports/rank/validate_vgr           # ~15 min
    .venv/bin/python scripts/validate_vgr.py --quick --out /tmp/vgr_quick              # ~2 min

Writes OUT.json, OUT.md and OUT.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def stats(train: np.ndarray, held: np.ndarray) -> dict:
    from scipy.stats import ttest_ind
    from sklearn.metrics import roc_auc_score

    t = ttest_ind(train, held, equal_var=False)
    labels = np.r_[np.ones(len(train)), np.zeros(len(held))]
    return {
        "train_mean": float(train.mean()),
        "held_mean": float(held.mean()),
        "welch_t": float(t.statistic),
        "welch_p": float(t.pvalue),
        "auc": float(roc_auc_score(labels, np.r_[train, held])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--train-size", type=int, default=64)
    ap.add_argument(
        "--checkpoints", default="250,1000,2000", help="training steps at which to score"
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=512, help="generations for the audit")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--frame-axes", type=int, default=8)
    ap.add_argument("--frame-steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--control", action="store_true", help="also train on the held-out half")
    ap.add_argument("--quick", action="store_true", help="tiny settings to smoke-test the script")
    ap.add_argument("--out", default="reports/rank/validate_vgr")
    args = ap.parse_args()
    if args.quick:
        args.checkpoints, args.samples, args.frame_axes, args.frame_steps = "50,100", 64, 2, 2

    from scipy.stats import spearmanr

    from curate.audit.oracle import EmpiricalDenoiser
    from curate.audit.scoring import audit_samples
    from curate.audit.settings import AuditSettings
    from curate.io.training import TrainingSet
    from curate.models.sampling import sample
    from curate.rank.vgr import VGRConfig, volume_growth
    from curate.seeding import rng_for
    from curate.train.data import from_builtin, from_tensors
    from curate.train.loop import TrainConfig, Trainer

    torch.manual_seed(args.seed)
    digits = from_builtin("digits", channels=1, resolution=16)
    perm = rng_for(args.seed, "vgr-validation-split").permutation(len(digits.sample_ids))
    n = args.train_size
    tr, ho = perm[:n], perm[n : 2 * n]
    images = digits.images
    ids = np.asarray(digits.sample_ids)
    x_tr, x_ho = images[tr], images[ho]
    id_tr, id_ho = ids[tr].tolist(), ids[ho].tolist()
    fd = VGRConfig(seed=args.seed)

    def score(den, x, sids, cfg=fd):
        return volume_growth(den, x, sids, cfg).numpy()

    checkpoints = [int(c) for c in args.checkpoints.split(",")]
    cfg = TrainConfig(
        model="tiny",
        steps=checkpoints[-1],
        batch_size=args.batch_size,
        checkpoint_every=0,
        seed=args.seed,
    )
    trainer = Trainer(from_tensors(x_tr, id_tr), cfg, quiet=True)
    result: dict = {"args": vars(args), "checkpoints": {}}
    result["untrained"] = stats(
        score(trainer.eval_denoiser(), x_tr, id_tr), score(trainer.eval_denoiser(), x_ho, id_ho)
    )
    print("untrained", result["untrained"], flush=True)
    t0 = time.perf_counter()
    for c in checkpoints:
        trainer.run(c)
        den = trainer.eval_denoiser()
        s_tr, s_ho = score(den, x_tr, id_tr), score(den, x_ho, id_ho)
        result["checkpoints"][c] = stats(s_tr, s_ho) | {
            "train_seconds": round(time.perf_counter() - t0, 1)
        }
        print(c, result["checkpoints"][c], flush=True)

    # fd against the full frame estimator, on all 128 images
    x_all, id_all = torch.cat([x_tr, x_ho]), id_tr + id_ho
    frame_cfg = VGRConfig(
        estimator="frame", axes=args.frame_axes, ode_steps=args.frame_steps, seed=args.seed
    )
    s_frame = score(den, x_all, id_all, frame_cfg)
    s_fd = np.r_[s_tr, s_ho]
    s_fd4 = np.mean(
        [score(den, x_all, id_all, VGRConfig(seed=args.seed + k)) for k in range(4)], axis=0
    )
    result["fd_vs_frame"] = {
        "frame": f"K={args.frame_axes}, M={args.frame_steps}",
        "spearman_fd_1dir": float(spearmanr(s_fd, s_frame).statistic),
        "spearman_fd_4dir_mean": float(spearmanr(s_fd4, s_frame).statistic),
        "frame_train_vs_held": stats(s_frame[:n], s_frame[n:]),
    }
    print("fd vs frame", result["fd_vs_frame"], flush=True)

    # Which training images does the model copy, and do they rank highest?
    gens = sample(
        den, args.samples, steps=args.sample_steps, method="ddim", seed=args.seed, progress=False
    )
    train_set = TrainingSet(x_tr, id_tr)
    audit = audit_samples(
        gens,
        train_set,
        AuditSettings(num_samples=args.samples, features="pixel", seed=args.seed),
        fd_reference=x_ho,
    )
    counts = audit.training_counts(train_set)
    copies = counts["copies"].to_numpy()
    copied = copies > 0
    result["audit"] = {
        "memorized_fraction_nn_ratio": audit.summary.get(
            "memorized_fraction_ratio", float(audit.per_sample["memorized_ratio"].mean())
        ),
        "training_images_copied": int(copied.sum()),
        "spearman_vgr_vs_copies": float(spearmanr(s_tr, copies).statistic)
        if copies.std() > 0
        else None,
    }
    if 0 < copied.sum() < n:
        result["audit"]["copied_vs_not"] = stats(s_tr[copied], s_tr[~copied])
    print("audit", result["audit"], flush=True)

    # The closed-form memorizer: the same one-step score for every training image?
    oracle = EmpiricalDenoiser(x_tr)
    o_tr, o_ho = score(oracle, x_tr, id_tr), score(oracle, x_ho, id_ho)
    result["oracle"] = stats(o_tr, o_ho) | {
        "train_std": float(o_tr.std()),
        "train_min": float(o_tr.min()),
        "train_max": float(o_tr.max()),
    }
    print("oracle", result["oracle"], flush=True)

    if args.control:
        ctrl = Trainer(from_tensors(x_ho, id_ho), cfg, quiet=True)
        ctrl.run(checkpoints[-1])
        cden = ctrl.eval_denoiser()
        result["control_trained_on_heldout"] = stats(
            score(cden, x_tr, id_tr), score(cden, x_ho, id_ho)
        )
        print("control", result["control_trained_on_heldout"], flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    plot(out.with_suffix(".png"), s_tr, s_ho, s_fd, s_frame, copies, result)
    write_markdown(out.with_suffix(".md"), result)
    print(f"wrote {out}.json/.md/.png")


def plot(path, s_tr, s_ho, s_fd, s_frame, copies, result) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    bins = np.linspace(min(s_tr.min(), s_ho.min()), max(s_tr.max(), s_ho.max()), 30)
    ax[0].hist(s_tr, bins=bins, alpha=0.6, label="trained on")
    ax[0].hist(s_ho, bins=bins, alpha=0.6, label="held out")
    last = list(result["checkpoints"].values())[-1]
    ax[0].set_title(f"fd log growth, AUC {last['auc']:.2f}")
    ax[0].legend()
    ax[1].scatter(s_fd, s_frame, s=8)
    ax[1].set_xlabel("fd (1 axis, 1 step)")
    ax[1].set_ylabel("frame")
    ax[1].set_title(f"Spearman {result['fd_vs_frame']['spearman_fd_1dir']:.2f}")
    ax[2].scatter(s_tr, copies, s=8)
    ax[2].set_xlabel("fd log growth (training images)")
    ax[2].set_ylabel("generations copying it")
    ax[2].set_title("does high growth predict copying?")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_markdown(path, r) -> None:
    lines = [
        "# VGR validation (tiny UNet, 64 train / 64 held-out digits, 16x16)",
        "",
        "| checkpoint | train mean | held mean | Welch p | AUC |",
        "|---|---|---|---|---|",
    ]
    u = r["untrained"]
    lines.append(
        f"| untrained | {u['train_mean']:.4f} | {u['held_mean']:.4f} | {u['welch_p']:.2g} | {u['auc']:.3f} |"
    )
    for c, s in r["checkpoints"].items():
        lines.append(
            f"| {c} steps | {s['train_mean']:.4f} | {s['held_mean']:.4f} | {s['welch_p']:.2g} | {s['auc']:.3f} |"
        )
    if "control_trained_on_heldout" in r:
        s = r["control_trained_on_heldout"]
        lines.append(
            f"| control: trained on held-out | {s['train_mean']:.4f} | {s['held_mean']:.4f} | {s['welch_p']:.2g} | {s['auc']:.3f} |"
        )
    o = r["oracle"]
    lines += ["", f"fd vs frame ({r['fd_vs_frame']['frame']}): Spearman {r['fd_vs_frame']['spearman_fd_1dir']:.3f} (1 direction), "
              f"{r['fd_vs_frame']['spearman_fd_4dir_mean']:.3f} (mean of 4 directions).", "",
              f"Audit: {r['audit']}", "",
              f"Closed-form memorizer: train scores {o['train_min']:.4f}..{o['train_max']:.4f} (std {o['train_std']:.2e}), AUC {o['auc']:.3f}."]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
