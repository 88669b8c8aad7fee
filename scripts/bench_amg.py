"""Overhead of anti-memorization guidance against plain sampling, measured in one run.

The shipped ``digits-tiny`` model (16x16, trained on all 1,797 ``builtin:digits``) samples
``--num`` images with DDIM; AMG searches the same 1,797 training digits at every step. Four
variants alternate in ``--repeats`` rounds so machine load hits them alike:

* plain sampling;
* AMG with a closed gate (threshold never crossed): the cost of detection alone (x0_hat's
  nearest-neighbour search and the per-step records) — samples are byte-identical to plain;
* AMG with the default parabolic threshold (pixel -nL2);
* AMG at every step: every step active, so the cost of an active step follows.

    .venv/bin/python scripts/bench_amg.py            # -> reports/amg/bench.json, bench.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from curate.guidance.amg import AMGConfig
from curate.guidance.run import build_amg
from curate.io.training import TrainingSet
from curate.models.denoiser import load_denoiser
from curate.models.sampling import sample
from curate.train.data import from_builtin

OUT = Path(__file__).resolve().parents[1] / "reports" / "amg"

VARIANTS = {
    "plain": None,
    "amg_gate_closed": AMGConfig(threshold="constant", lambdas=(-1e-9, -1e-9)),
    "amg_parabolic": AMGConfig(lambdas="fixed"),  # the fixed pixel thresholds
    "amg_every_step": AMGConfig(threshold="always"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=256, help="samples per variant and round")
    ap.add_argument("--steps", type=int, default=25, help="DDIM steps")
    ap.add_argument("--repeats", type=int, default=3, help="rounds")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    den = load_denoiser("digits-tiny")
    data = from_builtin("digits", channels=1, resolution=den.resolution)
    train = TrainingSet(images=data.images, sample_ids=list(data.sample_ids))
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    active: dict[str, float] = {}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for name, cfg in VARIANTS.items():
            amg = build_amg(den, train, cfg) if cfg is not None else None
            t0 = time.perf_counter()
            x = sample(den, args.num, steps=args.steps, seed=0, batch_size=args.num,
                       progress=False, guidance=amg)  # fmt: skip
            times[name].append(time.perf_counter() - t0)
            outputs[name] = x
            if amg is not None:
                active[name] = float(amg.steps_frame()["active"].mean())
    med = {k: float(np.median(v)) for k, v in times.items()}
    plain = med["plain"]
    every = med["amg_every_step"]
    steps_total = args.num * args.steps
    result = {
        "machine": f"{platform.processor() or platform.machine()}, torch threads {args.threads}",
        "num_samples": args.num,
        "steps": args.steps,
        "repeats": args.repeats,
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        "ratio_vs_plain": {k: round(v / plain, 3) for k, v in med.items()},
        "active_step_fraction": {k: round(v, 4) for k, v in active.items()},
        "gate_closed_identical_to_plain": bool(
            torch.equal(outputs["plain"], outputs["amg_gate_closed"])
        ),
        # every (sample, step) is active in amg_every_step, so its ratio is the cost of an
        # active step in plain steps (detection included)
        "active_step_cost_vs_plain": round(every / plain, 3),
        "plain_ms_per_sample_step": round(1000 * plain / steps_total, 4),
        "command": " ".join(["python scripts/bench_amg.py", *sys.argv[1:]]),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# AMG overhead (digits-tiny, 1,797 training digits searched per step)",
        "",
        f"`{result['command']}`: {args.num} samples x {args.steps} DDIM steps, median of "
        f"{args.repeats} alternating rounds, {result['machine']}.",
        "",
        "| variant | seconds | ratio vs plain | active (sample, step) fraction |",
        "| --- | --- | --- | --- |",
    ]
    for k in VARIANTS:
        lines.append(f"| {k} | {med[k]:.2f} | {med[k] / plain:.2f} | {active.get(k, 0.0):.3f} |")
    lines += [
        "",
        f"Closed gate gives byte-identical samples: {result['gate_closed_identical_to_plain']}.",
        f"An active step costs {result['active_step_cost_vs_plain']:.2f}x a plain step "
        f"(detection alone: {med['amg_gate_closed'] / plain:.2f}x).",
    ]
    (OUT / "bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
