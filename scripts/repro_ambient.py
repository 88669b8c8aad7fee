"""Reproduce the ambient-diffusion claim at CPU scale (Shah et al. 2025, "Does Generation Require
Memorization?"; Ambient Diffusion, Daras et al.).

A tiny UNet is trained on a small subset of ``builtin:digits`` at 16x16 with the standard DDPM
loss (baseline) and with the ambient loss over a sweep of sigma_n (fixed noisy copies), plus the
control with the noise redrawn every epoch, the weighting-only control (clean images, the ambient
branch's loss weight above sigma_n: ``ambient_noise: weight_only``) and the weight-corrected
ambient loss (``ambient_weight: corrected``), all through the product's trainer. At a few late checkpoints the EMA model draws
samples (DDIM), and each run reports

* memorized fraction: samples whose pixel-space nearest training image is < 1/3 the distance of
  the second nearest distinct one (NN1/NN2 < 1/3, Yoon et al. 2023);
* FD_randconv: a Fréchet distance against held-out digits in the features of a fixed random
  conv net (curate.audit.frechet). It is NOT FID and only compares runs of this script.

Each finished (setting, seed) is cached under ``--out/runs/`` so a sweep can be split over
several invocations. Results: ``results.json``, ``summary.md`` and ``memorization.png``.

    .venv/bin/python scripts/repro_ambient.py --quick     # 32 digits at 8x8, 2 seeds, 6 settings
    .venv/bin/python scripts/repro_ambient.py             # the full sweep (hours on 2 busy cores)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from curate.audit.frechet import frechet_distance_features, randconv_features
from curate.audit.metrics import nn_ratio, pixel_neighbours
from curate.models.sampling import sample
from curate.train.data import TrainData, from_builtin
from curate.train.loop import TrainConfig, Trainer

MEMORIZED_RATIO = 1 / 3

# --quick: 32 native 8x8 digits, where the baseline already copies ~40% of samples after 2,000
# steps (reports/ambient/onset). Distinct digits lie ~7 apart in [-1, 1] pixel units here, so a
# noisy copy stops identifying its image only for sigma_n of a few units (noise of the size of
# the gap between images): the
# sweep goes to 6. Two seeds; ~7 minutes per run on a shared 2-core machine.
QUICK = dict(
    num_train=32,
    resolution=8,
    batch_size=32,
    eval_at=[1500, 2000],
    sigma_n=[1.0, 2.0, 4.0, 6.0],
    control_sigma_n=[4.0],
    seeds=[0, 1],
    num_samples=256,
)


def settings(args) -> list[dict]:
    """The runs of the sweep: baseline, ambient per sigma_n, and the redrawn-noise control."""
    runs = []
    if not args.no_baseline:
        runs.append({"name": "baseline", "objective": "ddpm", "sigma_n": 0.0, "noise": "fixed"})
    for sn in args.sigma_n:
        runs.append(
            {"name": f"ambient-{sn:g}", "objective": "ambient", "sigma_n": sn, "noise": "fixed"}
        )
    for sn in args.control_sigma_n:
        runs.append(
            {"name": f"redraw-{sn:g}", "objective": "ambient", "sigma_n": sn, "noise": "redraw"}
        )
    for sn in args.weight_only_sigma_n:
        runs.append(
            {
                "name": f"weight-only-{sn:g}",
                "objective": "ambient",
                "sigma_n": sn,
                "noise": "weight_only",
            }  # fmt: skip
        )
    for sn in args.corrected_sigma_n:
        runs.append(
            {
                "name": f"corrected-{sn:g}",
                "objective": "ambient",
                "sigma_n": sn,
                "noise": "fixed",
                "weight": "corrected",
            }  # fmt: skip
        )
    return runs


def split_digits(num_train: int, resolution: int, num_ref: int) -> tuple[TrainData, torch.Tensor]:
    """A fixed random training subset and held-out reference digits (disjoint)."""
    full = from_builtin("digits", channels=1, resolution=resolution)
    order = np.random.default_rng(0).permutation(len(full))
    tr, ref = order[:num_train], order[num_train : num_train + num_ref]
    data = TrainData(
        sample_ids=[full.sample_ids[i] for i in tr],
        captions=[full.captions[i] for i in tr],
        images=full.images[tr],
        channels=1,
        resolution=resolution,
    )
    return data, full.images[ref]


def evaluate(den, train_x: torch.Tensor, ref_feats: np.ndarray, args, seed: int) -> dict:
    """Memorized fraction and FD_randconv of ``args.num_samples`` DDIM samples."""
    x = sample(
        den,
        args.num_samples,
        steps=args.sample_steps,
        seed=1000 + seed,
        batch_size=256,
        progress=False,
    )
    nb = pixel_neighbours(x.flatten(1).numpy(), train_x.flatten(1).numpy())
    ratio = nn_ratio(nb.d1, nb.d2)
    fd = frechet_distance_features(randconv_features(x.numpy()), ref_feats)
    return {
        "memorized": float(np.mean(ratio < MEMORIZED_RATIO)),
        "median_ratio": float(np.median(ratio)),
        "fd_randconv": fd,
        "distinct_nn1": int(len(np.unique(nb.nn1))),
    }


def run_one(setting: dict, seed: int, data: TrainData, ref_feats, args) -> dict:
    cfg = TrainConfig(
        objective=setting["objective"],
        sigma_n=setting["sigma_n"],
        ambient_noise=setting["noise"],
        ambient_weight=setting.get("weight", "paper"),
        model="tiny",
        resolution=args.resolution,
        batch_size=args.batch_size,
        lr=args.lr,
        ema_decay=args.ema_decay,
        checkpoint_every=0,
        seed=seed,
    )
    tr = Trainer(data, cfg, quiet=True)
    evals = []
    t0 = time.perf_counter()
    for step in sorted(args.eval_at):
        tr.run(step)
        den = tr.eval_denoiser()
        res = evaluate(den, data.images, ref_feats, args, seed)
        evals.append({"step": step, **res})
        print(f"  {setting['name']} seed {seed} step {step}: {res}", flush=True)
    if args.save_models:  # the final EMA model, e.g. a memorizing baseline for guided sampling
        tr.save(args.save_models / f"{setting['name']}-seed{seed}")
    return {
        **setting,
        "seed": seed,
        "evals": evals,
        "train_seconds": round(tr.seconds, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "final_loss": tr.losses[-1][1] if tr.losses else None,
    }


def aggregate(runs: list[dict]) -> list[dict]:
    """Per setting: mean and std over seeds of the per-run mean over evaluated checkpoints."""
    table = []
    for name in dict.fromkeys(r["name"] for r in runs):
        rs = [r for r in runs if r["name"] == name]
        mem = [np.mean([e["memorized"] for e in r["evals"]]) for r in rs]
        fd = [np.mean([e["fd_randconv"] for e in r["evals"]]) for r in rs]
        table.append(
            {
                "name": name,
                "objective": rs[0]["objective"],
                "sigma_n": rs[0]["sigma_n"],
                "noise": rs[0]["noise"],
                "seeds": len(rs),
                "memorized_mean": float(np.mean(mem)),
                "memorized_std": float(np.std(mem)),
                "fd_mean": float(np.mean(fd)),
                "fd_std": float(np.std(fd)),
            }
        )
    return table


def write_outputs(out: Path, runs: list[dict], args, extra: dict) -> None:
    table = aggregate(runs)
    result = {"settings": extra, "aggregate": table, "runs": runs}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Ambient diffusion at CPU scale: memorization vs sigma_n",
        "",
        f"Command: `{extra['command']}`",
        "",
        f"{args.num_train} digits at {args.resolution}x{args.resolution}, tiny UNet, batch "
        f"{args.batch_size}, lr {args.lr}, EMA {args.ema_decay}; evaluated at steps "
        f"{sorted(args.eval_at)} with {args.num_samples} DDIM-{args.sample_steps} samples each. "
        "Memorized = NN1/NN2 < 1/3 in pixel space against the training subset; FD_randconv = "
        f"Fréchet distance to {args.num_ref} held-out digits in random-conv features (not FID). "
        "Values: mean over checkpoints, then mean ± std over seeds.",
        "",
        "| setting | sigma_n | noise | seeds | memorized | FD_randconv |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in table:
        lines.append(
            f"| {row['name']} | {row['sigma_n']:g} | {row['noise']} | {row['seeds']} | "
            f"{row['memorized_mean']:.3f} ± {row['memorized_std']:.3f} | "
            f"{row['fd_mean']:.3f} ± {row['fd_std']:.3f} |"
        )
    if extra.get("not_run"):
        lines += ["", f"Not run (yet): {', '.join(extra['not_run'])}."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot(out / "memorization.png", table)


def plot(path: Path, table: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = [r for r in table if r["noise"] == "fixed" and not r["name"].startswith("corrected")]
    redraw = [r for r in table if r["noise"] == "redraw"]
    others = [
        (r, marker, color)
        for r in table
        for prefix, marker, color in (
            ("weight-only", "^", "tab:green"),
            ("corrected", "D", "tab:purple"),
        )
        if r["name"].startswith(prefix)
    ]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in (
        (axes[0], "memorized", "memorized fraction"),
        (axes[1], "fd", "FD_randconv"),
    ):
        xs = [r["sigma_n"] for r in fixed]
        ax.errorbar(xs, [r[f"{key}_mean"] for r in fixed], yerr=[r[f"{key}_std"] for r in fixed],
                    marker="o", label="fixed noise (sigma_n = 0: baseline ddpm)")  # fmt: skip
        if redraw:
            ax.errorbar([r["sigma_n"] for r in redraw], [r[f"{key}_mean"] for r in redraw],
                        yerr=[r[f"{key}_std"] for r in redraw], marker="s", linestyle="none",
                        color="tab:red", label="noise redrawn each epoch (control)")  # fmt: skip
        for r, marker, color in others:
            ax.errorbar([r["sigma_n"]], [r[f"{key}_mean"]], yerr=[r[f"{key}_std"]],
                        marker=marker, linestyle="none", color=color, label=r["name"])  # fmt: skip
        ax.set_xlabel("sigma_n")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="minutes-scale settings (see below)")
    ap.add_argument("--num-train", type=int, default=64, help="training digits")
    ap.add_argument("--num-ref", type=int, default=512, help="held-out reference digits for FD")
    ap.add_argument("--resolution", type=int, default=16, help="image size")
    ap.add_argument("--batch-size", type=int, default=64, help="batch size")
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    ap.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay")
    ap.add_argument(
        "--eval-at", type=int, nargs="+", default=[6000, 7000, 8000], help="evaluated steps"
    )
    ap.add_argument(
        "--sigma-n", type=float, nargs="*", default=[0.5, 1.0, 2.0, 3.0], help="ambient sweep"
    )
    ap.add_argument(
        "--control-sigma-n", type=float, nargs="*", default=[2.0], help="redraw control"
    )
    ap.add_argument(
        "--weight-only-sigma-n", type=float, nargs="*", default=[], help="weighting-only control"
    )
    ap.add_argument(
        "--corrected-sigma-n", type=float, nargs="*", default=[], help="weight-corrected ambient"
    )
    ap.add_argument("--only", nargs="*", default=None, help="run only these setting names")
    ap.add_argument("--no-baseline", action="store_true", help="skip the ddpm run (split a sweep)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    ap.add_argument("--num-samples", type=int, default=1000, help="samples per evaluation")
    ap.add_argument("--sample-steps", type=int, default=25, help="DDIM steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", type=Path, default=None, help="output folder")
    ap.add_argument(
        "--save-models", type=Path, default=None, help="write each run's final model here"
    )
    ap.add_argument(
        "--aggregate-only", action="store_true", help="summarise cached runs; train nothing"
    )
    if ap.parse_known_args()[0].quick:  # quick values become defaults; explicit flags still win
        ap.set_defaults(**QUICK)
    args = ap.parse_args()
    out = args.out or Path("reports/ambient") / ("quick" if args.quick else "full")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    flags = [a for a in sys.argv[1:] if a != "--aggregate-only"]
    command = " ".join(["python scripts/repro_ambient.py", *flags])
    extra = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    extra["command"] = command

    data, ref = split_digits(args.num_train, args.resolution, args.num_ref)
    ref_feats = randconv_features(ref.numpy())
    runs = []
    for setting in settings(args):
        if args.only is not None and setting["name"] not in args.only:
            continue
        for seed in args.seeds:
            key = f"{setting['name']}-seed{seed}"
            cache = out / "runs" / f"{key}.json"
            cfg_key = {
                k: extra[k]
                for k in (
                    "num_train",
                    "resolution",
                    "batch_size",
                    "lr",
                    "ema_decay",
                    "eval_at",
                    "num_samples",
                    "sample_steps",
                )
            }
            if cache.exists() and json.loads(cache.read_text()).get("cfg") == cfg_key:
                runs.append(json.loads(cache.read_text()))
                print(f"cached: {key}")
                continue
            if args.aggregate_only:
                print(f"not run: {key}")
                extra.setdefault("not_run", []).append(key)
                continue
            print(f"training {key} ...", flush=True)
            res = run_one(setting, seed, data, ref_feats, args)
            res["cfg"] = cfg_key
            cache.write_text(json.dumps(res, indent=1))
            runs.append(res)
            write_outputs(out, runs, args, extra)
    write_outputs(out, runs, args, extra)
    print((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
