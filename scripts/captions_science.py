"""Science check for caption rewriting at CPU scale (Somepalli et al. 2023, "Understanding and
Mitigating Copying in Diffusion Models").

A tiny text-conditional model on ``builtin:digits`` (16x16 grey), trained under several
conditioning regimes, then audited for copying with curate's audit (pixel nearest neighbours):

  class       class-level captions ("a handwritten digit seven")
  key         a unique caption per image: 4 random words ("instance-level random" in the paper)
  key_dup     key, with 5% of the images duplicated 5 times, image and caption ("dup_both")
  key_dupimg  the same duplicates, each copy with its own key ("dup_image")
  key_mc      key with mc: 4 keys per image, one drawn per use
  key_rc      key with rc: p=0.3, the caption replaced by 4 random words
  key_gn      key with gn at training: lam * N(0, I) on the caption embedding each step

plus inference-time perturbations of the prompts of the ``key`` model (rt, cwr, rna, gn).
Prompts are the training captions (each training image's first caption), as in the paper's
evaluation. Reports the memorized fraction (NN1/NN2 pixel distance ratio < 1/3, the audit's
``memorized_ratio``), the 95th percentile of top-1 similarity and the Fréchet distance (pixel
features, against held-out digits).

Reproduce (about 40 min on 2 busy cores; every number in the closing note comes from this):

    .venv/bin/python scripts/captions_science.py --out reports/captions_science

Writes ``OUT.json``, ``OUT.md`` and ``OUT.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from curate.audit.scoring import audit_samples
from curate.audit.settings import AuditSettings
from curate.captions.transforms import gaussian_noise_per_sample, make_transform
from curate.io.training import TrainingSet
from curate.models.sampling import sample
from curate.seeding import rng_for
from curate.train.data import from_builtin, from_tensors
from curate.train.loop import TrainConfig, Trainer

TRAIN_REGIMES = ("class", "key", "key_dup", "key_dupimg", "key_mc", "key_rc", "key_gn")
INFERENCE = ("rt", "cwr", "rna", "gn")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def key_caption(seed: int, name: str) -> str:
    """A unique caption of 4 random words: the rc strategy with p=1 builds exactly that."""
    return make_transform("rc", p=1.0, k=4, seed=seed)("", name, 0)


def build_data(regime: str, images: torch.Tensor, labels: list[int], ids: list[str], seed: int):
    """Training data for one regime, plus the evaluation prompt of each training image."""
    n = len(ids)
    if regime == "class":
        caps: list[list[str]] = [[f"a handwritten digit {WORDS[y]}"] for y in labels]
    elif regime == "key_mc":
        caps = [[key_caption(seed, f"{sid}-{j}") for j in range(4)] for sid in ids]
    else:
        caps = [[key_caption(seed, sid)] for sid in ids]
    prompts = [c[0] for c in caps]
    x, row_ids, row_caps = [images], list(ids), list(caps)
    if regime in ("key_dup", "key_dupimg"):
        # 5% of the images get sampling weight 5: four extra rows each (the paper's
        # WeightedRandomSampler with weight_pc=5%, dup_weight=5)
        rng = rng_for(seed, "dup-choice")
        dup = sorted(rng.choice(n, size=max(1, round(0.05 * n)), replace=False).tolist())
        for i in dup:
            for j in range(4):
                x.append(images[i : i + 1])
                row_ids.append(f"{ids[i]}-dup{j}")
                if regime == "key_dup":
                    row_caps.append(caps[i])
                else:
                    row_caps.append([key_caption(seed, f"{ids[i]}-dup{j}")])
    data = from_tensors(torch.cat(x), row_ids, row_caps)
    return data, prompts


class NoisyText:
    """Wraps a text encoder: ``gn`` at training, per (seed, caption, call) noise on its output."""

    def __init__(self, encoder, lam: float, seed: int):
        self.encoder, self.lam, self.seed, self.calls = encoder, lam, seed, 0

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode(self, captions: list[str]) -> torch.Tensor:
        emb = self.encoder.encode(captions)  # (B, L, D)
        self.calls += 1
        keys = [f"{c}\x1f{i}" for i, c in enumerate(captions)]
        mask = torch.tensor([bool(c) for c in captions])  # empty prompts stay clean
        return gaussian_noise_per_sample(emb, self.lam, self.seed, keys, self.calls, mask=mask)


def generate(trainer: Trainer, prompts: list[str], args, seed: int, emb_noise: float = 0.0):
    den = trainer.eval_denoiser()
    enc = trainer.text_encoder
    enc = enc.encoder if isinstance(enc, NoisyText) else enc
    all_prompts = [p for _ in range(args.repeats) for p in prompts]
    cond = enc.encode(all_prompts)  # (num, L, D)
    if emb_noise:
        ids = [f"prompt{i}" for i in range(len(all_prompts))]
        cond = gaussian_noise_per_sample(cond, emb_noise, seed, ids, 0)
    return sample(
        den,
        len(all_prompts),
        steps=args.sample_steps,
        method="ddim",
        seed=seed,
        cond=cond,
        batch_size=128,
        progress=False,
    )


def score(samples, train_images, ids, heldout) -> dict:
    """Audit numbers of generations whose i-th prompt is training image ``i mod N``'s."""
    res = audit_samples(
        samples,
        TrainingSet(train_images, list(ids)),
        AuditSettings(num_samples=len(samples), features="pixel"),
        fd_reference=heldout,
    )
    ps = res.per_sample
    sim = ps["similarity"].to_numpy()
    memorized = ps["memorized_ratio"].to_numpy()
    own = np.array([ids[i % len(ids)] for i in range(len(ps))], dtype=object)
    return {
        "memorized": float(res.summary["memorized_fraction"]),
        # a memorized generation whose nearest training image is the one its prompt captions
        "copies_own_prompt": float((memorized & (ps["nn_sample_id"].to_numpy() == own)).mean()),
        "sim95": float(np.percentile(sim, 95)),
        "fd": float(res.summary["metrics"]["frechet"]["value"]),
        "distinct_copied": int(ps.filter(ps["memorized_ratio"])["nn_sample_id"].n_unique()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/captions_science")
    ap.add_argument("--n", type=int, default=32, help="training images")
    ap.add_argument("--steps", type=int, default=1500, help="training steps per regime")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=4, help="generations per training prompt")
    ap.add_argument("--sample-steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gn-lam", type=float, default=0.5, help="gn lambda, in embedding std units")
    ap.add_argument("--regimes", default=",".join(TRAIN_REGIMES))
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy box)"
    )
    ap.add_argument("--keep", action="store_true", help="reuse regimes already in OUT.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    digits = from_builtin("digits")  # (1797, 1, 16, 16) in [-1, 1]
    labels_all = [int(WORDS.index(c[0].rsplit(" ", 1)[1])) for c in digits.captions]
    order = rng_for(args.seed, "subset").permutation(len(digits))
    train_idx, held_idx = order[: args.n], order[args.n : args.n + 512]
    images = digits.images[train_idx]
    ids = [digits.sample_ids[i] for i in train_idx]
    labels = [labels_all[i] for i in train_idx]
    heldout = digits.images[held_idx]

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    emb_std = None
    if args.keep and out.with_suffix(".json").exists():
        saved = json.loads(out.with_suffix(".json").read_text())
        results, emb_std = saved["results"], saved["embedding_std"]
    for regime in args.regimes.split(","):
        if regime in results:
            continue
        t0 = time.perf_counter()
        data, prompts = build_data(regime, images, labels, ids, args.seed)
        cfg = TrainConfig(
            model="tiny",
            conditioning="caption",
            text_encoder="tiny-clip",
            steps=args.steps,
            batch_size=args.batch_size,
            checkpoint_every=0,
            seed=args.seed,
        )
        transform = make_transform("rc", p=0.3, k=4, seed=args.seed) if regime == "key_rc" else None
        trainer = Trainer(data, cfg, caption_transform=transform, quiet=True)
        # rc and gn make thousands of distinct captions; the encoder's LRU cache can evict a
        # caption of the current batch while filling it, so make it large enough to never evict
        trainer.text_encoder._cache_size = 1 << 30
        if emb_std is None:
            emb_std = float(trainer.text_encoder.encode(prompts).std())
        if regime == "key_gn":
            trainer.text_encoder = NoisyText(trainer.text_encoder, args.gn_lam * emb_std, args.seed)
        trainer.run(args.steps)
        train_s = time.perf_counter() - t0
        res = score(generate(trainer, prompts, args, args.seed), images, ids, heldout)
        res["train_seconds"] = round(train_s, 1)
        results[regime] = res
        print(regime, res, flush=True)
        if regime == "key":
            for strat in INFERENCE:
                if strat == "gn":
                    samples = generate(trainer, prompts, args, args.seed, args.gn_lam * emb_std)
                else:
                    t = make_transform(strat, p=1.0, k=2, seed=args.seed)
                    new = [t(p, f"prompt{i}", 0) for i, p in enumerate(prompts)]
                    samples = generate(trainer, new, args, args.seed)
                res_i = score(samples, images, ids, heldout)
                results[f"key+infer_{strat}"] = res_i
                print(f"key+infer_{strat}", res_i, flush=True)
        out.with_suffix(".json").write_text(
            json.dumps({"args": vars(args), "embedding_std": emb_std, "results": results}, indent=2)
        )
    write_markdown(out, args, emb_std, results)
    plot(out, results)


def write_markdown(out: Path, args, emb_std, results: dict) -> None:
    lines = [
        "# Caption rewriting: copying at CPU scale",
        "",
        f"`python scripts/captions_science.py --out {args.out} --n {args.n} --steps {args.steps} "
        f"--batch-size {args.batch_size} --repeats {args.repeats} --seed {args.seed}`",
        "",
        f"{args.n} training digits (16x16), tiny conditional UNet, tiny-clip text encoder, "
        f"{args.steps} steps of batch {args.batch_size}; {args.repeats} generations per training "
        f"prompt, {args.sample_steps} DDIM steps; gn lambda = {args.gn_lam} x embedding std "
        f"({emb_std:.3g}). One seed.",
        "",
        "| regime | memorized (NN ratio < 1/3) | copies its prompt's image | sim95 (pixel cosine) "
        "| FD vs held-out | distinct images copied |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['memorized']:.3f} | {r['copies_own_prompt']:.3f} | {r['sim95']:.4f} | "
            f"{r['fd']:.2f} | "
            f"{r['distinct_copied']} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def plot(out: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    vals = [results[n]["memorized"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(names)), vals, color="#4a78b0")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_ylabel("memorized fraction")
    ax.set_title("copying by caption regime (one seed)")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
