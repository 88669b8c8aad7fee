"""Anti-memorization guidance (AMG) on memorizing digit models: what it buys and costs.

Two memorizing models are trained on the same 64 digits at 16x16 (the subset of
``scripts/repro_ambient.py``; about 0.6-0.7 of plain samples copy a training digit):

* ``uncond``: the unconditional ``tiny`` UNet (the ambient sweep's baseline), where only the
  dissimilarity guidance applies (pixel -nL2 similarity, as in the paper's CIFAR-10 runs);
* ``cond``: a caption-conditional ``tiny`` UNet (captions "a handwritten digit three", tiny-clip
  text encoder, 10 % caption dropout) sampled with classifier-free guidance, where all three
  guidances can act.

For each, from the same seeds: plain sampling, AMG (parabolic threshold), and the paper's two
ablations (guidance at every step; a constant threshold). Reported per setting, mean ± std over
seeds: memorized fraction (NN1/NN2 < 1/3, and nL2 < 1.4), FD_randconv against held-out digits
(not FID), the fraction of samples and steps guided, wall time against plain sampling, and for
the conditional model the prompt accuracy (a kNN digit classifier on held-out digits agrees
with the prompted digit).

    .venv/bin/python scripts/amg_science.py train      # the two models (cached under --models)
    .venv/bin/python scripts/amg_science.py sweep      # threshold / scale sweep on uncond
    .venv/bin/python scripts/amg_science.py evaluate   # the table, plots -> reports/amg/
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from repro_ambient import split_digits  # noqa: E402

from curate.audit.frechet import frechet_distance_features, randconv_features  # noqa: E402
from curate.audit.metrics import nn_ratio, normalized_l2, pixel_neighbours  # noqa: E402
from curate.core.images import tensor_to_pil  # noqa: E402
from curate.core.text import uncond_embedding  # noqa: E402
from curate.guidance.amg import AMGConfig  # noqa: E402
from curate.guidance.run import build_amg  # noqa: E402
from curate.io.training import TrainingSet  # noqa: E402
from curate.models.denoiser import load_denoiser  # noqa: E402
from curate.models.sampling import sample  # noqa: E402
from curate.train.loop import TrainConfig, Trainer  # noqa: E402

OUT = ROOT / "reports" / "amg"
NUM_TRAIN, RES, NUM_REF = 64, 16, 512
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def data():
    train, ref = split_digits(NUM_TRAIN, RES, NUM_REF)
    return train, ref


def train_models(args) -> None:
    """The conditional model (the unconditional one is the ambient sweep's saved baseline)."""
    train, _ = data()
    out = args.models / "cond"
    if (out / "model_index.json").exists():
        print(f"cached: {out}")
        return
    cfg = TrainConfig(
        objective="ddpm",
        model="tiny",
        resolution=RES,
        conditioning="caption",
        text_encoder="tiny-clip",
        caption_dropout=0.1,
        batch_size=64,
        lr=1e-3,
        ema_decay=0.999,
        checkpoint_every=0,
        seed=0,
    )
    tr = Trainer(train, cfg, quiet=True)
    t0 = time.perf_counter()
    for step in range(1000, args.cond_steps + 1, 1000):
        tr.run(step)
        print(f"cond step {step}: {time.perf_counter() - t0:.0f} s", flush=True)
    tr.save(out)


def labels_of(captions) -> np.ndarray:
    """Digit labels from captions like "a handwritten digit three"."""
    caps = [c[0] if isinstance(c, list) else c for c in captions]
    return np.array([WORDS.index(c.split()[-1]) for c in caps])


class Setup:
    """One model with its training set, reference digits and prompts."""

    def __init__(self, kind: str, models: Path):
        from curate.train.data import from_builtin

        self.kind = kind
        train, ref = data()
        self.train_x = train.images
        self.captions = [c[0] for c in train.captions]
        self.train = TrainingSet(
            images=train.images, sample_ids=list(train.sample_ids), captions=self.captions
        )
        self.ref_feats = randconv_features(ref.numpy())
        # held-out digits with labels, for the prompt-accuracy classifier
        full = from_builtin("digits", channels=1, resolution=RES)
        held = [i for i, sid in enumerate(full.sample_ids) if sid not in set(train.sample_ids)]
        from sklearn.neighbors import KNeighborsClassifier

        self.clf = KNeighborsClassifier(n_neighbors=5).fit(
            full.images[held].flatten(1).numpy(), labels_of([full.captions[i] for i in held])
        )
        path = models / ("baseline-seed0" if kind == "uncond" else "cond")
        if not (path / "model_index.json").exists():
            raise SystemExit(f"{path}: no model; run the ambient sweep / `amg_science.py train`")
        self.den = load_denoiser(path)
        self.encoder = None
        if kind == "cond":
            from curate.core.text import text_encoder_for_model

            self.encoder = text_encoder_for_model(self.den)


def run_setting(setup: Setup, amg_cfg: AMGConfig | None, seed: int, args) -> dict:
    """Sample ``args.num_samples`` from one seed, with or without AMG; score them."""
    kw = dict(steps=args.sample_steps, seed=seed, batch_size=250, progress=False)
    prompts = None
    if setup.kind == "cond":
        rows = [i % len(setup.captions) for i in range(args.num_samples)]
        prompts = labels_of([setup.captions[i] for i in rows])
        kw.update(
            cond=setup.encoder.encode([setup.captions[i] for i in rows]),
            uncond=uncond_embedding(setup.encoder, "cpu"),
            cfg_scale=args.cfg_scale,
        )
    amg = None
    if amg_cfg is not None:
        amg = build_amg(setup.den, setup.train, amg_cfg, text_encoder=setup.encoder)
    t0 = time.perf_counter()
    x = sample(setup.den, args.num_samples, guidance=amg, **kw)
    seconds = time.perf_counter() - t0
    nb = pixel_neighbours(x.flatten(1).numpy(), setup.train_x.flatten(1).numpy(), k=args.k)
    ratio = nn_ratio(nb.d1, nb.d2)
    nl2 = normalized_l2(nb.d1, nb.mean_k)
    res = {
        "seed": seed,
        "memorized": float(np.mean(ratio < 1 / 3)),
        "nl2_p5": float(np.percentile(nl2, 5)),
        "fd_randconv": frechet_distance_features(randconv_features(x.numpy()), setup.ref_feats),
        "seconds": round(seconds, 2),
    }
    if prompts is not None:
        pred = setup.clf.predict(x.flatten(1).numpy())
        res["prompt_accuracy"] = float(np.mean(pred == prompts))
    if amg is not None:
        steps = amg.steps_frame()
        per = amg.samples_frame()
        res.update(
            guided_fraction=float((per["amg_active_steps"] > 0).mean()),
            active_step_fraction=float(steps["active"].mean()),
            used_spe=float(per["amg_used_spe"].mean()),
            used_dup=float(per["amg_used_dup"].mean()),
        )
    return res


def cached(name: str, fn, fresh: bool = False) -> dict:
    path = OUT / "runs" / f"{name}.json"
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    res = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    return res


def mean_std(runs: list[dict], key: str) -> tuple[float, float]:
    vals = [r[key] for r in runs if key in r]
    return (float(np.mean(vals)), float(np.std(vals))) if vals else (float("nan"), 0.0)


def settings_for(kind: str, args) -> list[tuple[str, AMGConfig | None]]:
    """Plain, AMG, the paper's two ablations and, for the text model, single guidances."""
    feats = "pixel" if kind == "uncond" else "pixel-cosine"
    lambdas = args.lambdas if kind == "uncond" else args.cond_lambdas
    scales = args.scales if kind == "uncond" else args.cond_scales
    base = dict(features=feats, scales=scales, k=args.k, lambdas=lambdas)
    out = [
        ("plain", None),
        ("AMG (parabolic threshold)", AMGConfig(**base)),
        ("AMG at every step", AMGConfig(threshold="always", **base)),
        ("AMG, constant threshold", AMGConfig(threshold="constant", **base)),
    ]
    if kind == "cond":
        out += [
            ("AMG, spe + dup only", AMGConfig(guidances=("spe", "dup"), **base)),
            ("AMG, sim only", AMGConfig(guidances=("sim",), **base)),
        ]
    return out


def evaluate(args) -> None:
    table = {}
    for kind in args.kinds:
        setup = Setup(kind, args.models)
        for label, cfg in settings_for(kind, args):
            runs = []
            for seed in args.seeds:
                key = f"{kind}-{label}-{seed}-{args.num_samples}-{args.sample_steps}"
                key += f"-{json.dumps(cfg.to_dict(), sort_keys=True) if cfg else ''}"
                name = f"{kind}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
                res = cached(name, lambda s=setup, c=cfg, seed=seed: run_setting(s, c, seed, args))
                print(f"{kind} | {label} | seed {seed}: {res}", flush=True)
                runs.append(res)
            table[(kind, label)] = runs
        grid(setup, settings_for(kind, args)[1][1], args, OUT / f"samples_{kind}.png")
    write_report(table, args)


def grid(setup: Setup, cfg: AMGConfig, args, path: Path, n: int = 16) -> None:
    """Rows: plain samples, their nearest training digits, AMG samples from the same seeds,
    their nearest training digits."""
    from PIL import Image

    small = argparse.Namespace(**{**vars(args), "num_samples": n})
    kw = dict(steps=args.sample_steps, seed=args.seeds[0], batch_size=n, progress=False)
    if setup.kind == "cond":
        kw.update(cond=setup.encoder.encode(setup.captions[:n]),
                  uncond=uncond_embedding(setup.encoder, "cpu"), cfg_scale=small.cfg_scale)  # fmt: skip
    plain = sample(setup.den, n, **kw)
    amg = build_amg(setup.den, setup.train, cfg, text_encoder=setup.encoder)
    guided = sample(setup.den, n, guidance=amg, **kw)
    rows = []
    for x in (plain, guided):
        nb = pixel_neighbours(x.flatten(1).numpy(), setup.train_x.flatten(1).numpy(), k=2)
        rows += [x, setup.train_x[torch.as_tensor(nb.nn1)]]
    res = plain.shape[-1]
    scale = 4
    canvas = Image.new("L", (n * (res * scale + 2), 4 * (res * scale + 2) + 6), 255)
    for r, imgs in enumerate(rows):
        for c, pil in enumerate(tensor_to_pil(imgs[:n])):
            tile = pil.resize((res * scale,) * 2, Image.Resampling.NEAREST)
            canvas.paste(tile, (c * (res * scale + 2), r * (res * scale + 2) + (6 if r > 1 else 0)))
    canvas.save(path)


SWEEP_LAMBDAS = {
    "pixel": [(-1.7, -0.5), (-1.6, -0.6), (-1.5, -0.5), (-1.5, -0.8), (-1.4, -0.4)],
    "pixel-cosine": [(0.92, 0.98), (0.94, 0.985)],
}
SWEEP_C3 = {"pixel": [1.0, 3.0, 10.0], "pixel-cosine": [10.0, 30.0, 100.0, 300.0, 1000.0]}
# c1, c2: with cosine similarities near 1 and s0 = 3, c = 5 would spend the whole CFG budget on
# despecification (s1 = s0 - 1) and leave none for caption deduplication; c = 1 splits it.
SWEEP_C12 = {"pixel": (5.0, 5.0), "pixel-cosine": (1.0, 1.0)}


def sweep(args) -> None:
    """Threshold range x dissimilarity scale on one seed: memorized fraction against quality."""
    rows = []
    for kind in args.kinds:
        setup = Setup(kind, args.models)
        feats = "pixel" if kind == "uncond" else "pixel-cosine"
        plain = cached(
            f"sweep-{kind}-plain-{args.num_samples}",
            lambda s=setup: run_setting(s, None, args.seeds[0], args),
        )
        rows.append({"model": kind, "lambdas": None, "c3": None, **plain})
        print(f"{kind} plain: {plain}", flush=True)
        for lams in SWEEP_LAMBDAS[feats]:
            for c3 in SWEEP_C3[feats]:
                c1c2 = SWEEP_C12[feats]
                cfg = AMGConfig(features=feats, lambdas=lams, scales=(*c1c2, c3), k=args.k)
                key = json.dumps(cfg.to_dict(), sort_keys=True) + f"{args.num_samples}"
                name = f"sweep-{kind}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
                res = cached(name, lambda s=setup, c=cfg: run_setting(s, c, args.seeds[0], args))
                rows.append({"model": kind, "lambdas": list(lams), "c3": c3, **res})
                print(f"{kind} lambdas {lams} c3 {c3}: {res}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    stem = "sweep_" + "_".join(args.kinds)
    (OUT / f"{stem}.json").write_text(json.dumps(rows, indent=1))
    keys = ["memorized", "fd_randconv", "prompt_accuracy", "guided_fraction",
            "active_step_fraction", "seconds"]  # fmt: skip
    lines = ["| model | lambda_min, lambda_max | c3 | " + " | ".join(keys) + " |",
             "|---" * (len(keys) + 3) + "|"]  # fmt: skip
    for r in rows:
        cells = [f"{r[k]:.3f}" if k in r else "" for k in keys]
        lam = "plain" if r["lambdas"] is None else f"{r['lambdas'][0]:g}, {r['lambdas'][1]:g}"
        c3 = "" if r["c3"] is None else f"{r['c3']:g}"
        lines.append(f"| {r['model']} | {lam} | {c3} | " + " | ".join(cells) + " |")
    (OUT / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_report(table, args) -> None:
    keys = ["memorized", "nl2_p5", "fd_randconv", "prompt_accuracy",
            "guided_fraction", "active_step_fraction", "seconds"]  # fmt: skip
    lines = ["| model | setting | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    rows = []
    for (kind, label), runs in table.items():
        cells = []
        row = {"model": kind, "setting": label, "seeds": len(runs)}
        for k in keys:
            m, s = mean_std(runs, k)
            row[k] = [m, s]
            cells.append("" if np.isnan(m) else f"{m:.3f} ± {s:.3f}")
        rows.append(row)
        lines.append(f"| {kind} | {label} | " + " | ".join(cells) + " |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"args": vars(args) | {"models": str(
        args.models)}, "rows": rows}, indent=1, default=str))  # fmt: skip
    (OUT / "table.md").write_text("\n".join(lines) + "\n")
    plot(rows, OUT / "amg.png")
    print("\n".join(lines))


def plot(rows: list[dict], path: Path) -> None:
    """Memorized fraction and FD_randconv per setting, one panel pair per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(len(kinds), 2, figsize=(10, 3.2 * len(kinds)), squeeze=False)
    for ax_row, kind in zip(axes, kinds, strict=True):
        rs = [r for r in rows if r["model"] == kind]
        names = [r["setting"].replace("AMG ", "AMG\n") for r in rs]
        for ax, key, label in ((ax_row[0], "memorized", "memorized (NN1/NN2 < 1/3)"),
                               (ax_row[1], "fd_randconv", "FD_randconv (not FID)")):  # fmt: skip
            ax.bar(names, [r[key][0] for r in rs], yerr=[r[key][1] for r in rs],
                   color=["grey", "tab:green", "tab:red", "tab:orange", "tab:purple",
                          "tab:blue"][: len(rs)])  # fmt: skip
            ax.set_title(f"{kind}: {label}", fontsize=9)
            ax.tick_params(axis="x", labelsize=7, labelrotation=25)
            if key == "fd_randconv":
                ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["train", "sweep", "evaluate"])
    ap.add_argument("--kinds", nargs="+", default=["uncond", "cond"], help="models to use")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampling seeds")
    ap.add_argument("--num-samples", type=int, default=1000, help="samples per seed")
    ap.add_argument("--sample-steps", type=int, default=25, help="DDIM steps")
    ap.add_argument("--cfg-scale", type=float, default=3.0, help="s0 of the conditional model")
    ap.add_argument(
        "--scales", type=float, nargs=3, default=None, help="c1 c2 c3 (default: per features)"
    )
    ap.add_argument("--models", type=Path, default=Path("/tmp/amb/models"), help="model folder")
    ap.add_argument("--cond-steps", type=int, default=6000, help="conditional training steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", type=Path, default=OUT, help="results folder")
    ap.add_argument("--cond-lambdas", type=float, nargs=2, default=[0.94, 0.985])
    ap.add_argument("--cond-scales", type=float, nargs=3, default=[1.0, 1.0, 1000.0])
    ap.add_argument("--k", type=int, default=8, help="nL2 neighbours (64 training images)")
    ap.add_argument(
        "--lambdas", type=float, nargs=2, default=None, help="threshold range (default: config)"
    )
    args = ap.parse_args()
    OUT = args.out
    torch.set_num_threads(args.threads)
    if args.stage == "train":
        train_models(args)
    elif args.stage == "sweep":
        sweep(args)
    elif args.stage == "evaluate":
        evaluate(args)


if __name__ == "__main__":
    main()
