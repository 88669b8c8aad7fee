"""AMG with fixed thresholds vs ``lambdas: auto`` on a model they were not tuned on.

The model and run come from the product (reports/amg/calibration.md has the commands): a
``tiny`` DDPM trained 3,000 steps on the first 64 ``builtin:digits``. Three variants sample the
same seeds with DDIM, alternating in ``--repeats`` rounds so machine load hits them alike:
plain, AMG with the fixed pixel thresholds (``lambdas: fixed``, the old default) and AMG with
``lambdas: auto`` (a fresh AMG each round, so every round pays for its calibration batch); the
time ratio is each round's time over the same round's plain time, median over rounds. The
samples are deterministic, so each variant is scored once with the audit's own scoring
(memorized = NN1/NN2 < 1/3, FD_pixel against the training set, as ``curate audit`` reports).

    .venv/bin/python scripts/amg_calibration.py --model /tmp/amgcal/model \\
        --train /tmp/amgcal/run64          # -> reports/amg/calibration.json
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from curate.audit.scoring import audit_samples
from curate.audit.settings import AuditSettings
from curate.guidance.config import AMGConfig
from curate.guidance.run import build_amg, guided_sampler
from curate.io.training import load_training_set
from curate.models.denoiser import image_shape, load_denoiser
from curate.models.sampling import sample

OUT = Path(__file__).resolve().parents[1] / "reports" / "amg"
VARIANTS = {"plain": None, "fixed": AMGConfig(lambdas="fixed"), "auto": AMGConfig()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True, help="the run folder the model was trained on")
    ap.add_argument("--num", type=int, default=256, help="samples per variant (audit default)")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps (audit default)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT / "calibration.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    den = load_denoiser(args.model)
    chans, size, _ = image_shape(den)
    train = load_training_set(args.train, resolution=size, channels=chans)
    plain = functools.partial(sample, steps=args.steps, method="ddim", batch_size=64,
                              progress=False)  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    samples: dict[str, torch.Tensor] = {}
    amgs = {}
    for _ in range(args.repeats):
        for name, cfg in VARIANTS.items():
            amg = build_amg(den, train, cfg) if cfg is not None else None
            run = plain if amg is None else guided_sampler(plain, amg)
            t0 = time.perf_counter()
            samples[name] = run(den, args.num, seed=0)
            times[name].append(time.perf_counter() - t0)
            amgs[name] = amg
    settings = AuditSettings(num_samples=args.num, steps=args.steps, seed=0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    result: dict = {
        "model": args.model,
        "train": args.train,
        "machine": f"{platform.machine()}, torch threads {args.threads}, shared with other jobs",
        "num_samples": args.num,
        "steps": args.steps,
        "repeats": args.repeats,
        "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "median_seconds": {k: round(v, 2) for k, v in med.items()},
        # paired: each round's time over the same round's plain time, median over rounds
        "time_ratio_vs_plain": {
            k: round(float(np.median(np.divide(v, times["plain"]))), 3) for k, v in times.items()
        },
        "time_ratio_of_fastest_rounds": {
            k: round(min(v) / min(times["plain"]), 3) for k, v in times.items()
        },
        "variants": {},
    }
    fd_plain = None
    for name, x in samples.items():
        audited = audit_samples(x, train, settings)
        m = audited.summary["metrics"]
        fd = m["frechet"]["value"]
        fd_plain = fd if name == "plain" else fd_plain
        row = {
            "memorized_fraction": m["nn_ratio"]["fraction_memorized"],
            "fd_pixel": round(fd, 4),
            "fd_ratio_vs_plain": round(fd / fd_plain, 3),
            "fd_name": m["frechet"]["name"],
        }
        amg = amgs[name]
        if amg is not None:
            per = amg.samples_frame()
            row["guided_fraction"] = float((per["amg_active_steps"] > 0).mean())
            row["active_step_fraction"] = float(amg.steps_frame()["active"].mean())
            row["lambdas"] = list(amg.config.lambda_range)
            row["calibration"] = amg.calibration
        result["variants"][name] = row
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "calibration"}
                      for k, v in result["variants"].items()}, indent=1))  # fmt: skip
    print("time ratio vs plain (paired rounds, median):", result["time_ratio_vs_plain"])
    print("time ratio of the fastest rounds:", result["time_ratio_of_fastest_rounds"])


if __name__ == "__main__":
    main()
