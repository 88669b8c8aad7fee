"""Step time of the ambient objective against ddpm, measured in the same process.

The two trainers run in alternating blocks (ddpm, ambient, ddpm, ...) so that load from other
processes on a shared machine hits both alike; the ratio of the median step times is reported.

    .venv/bin/python scripts/bench_ambient_step.py            # writes reports/ambient/step_time.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from curate.train.data import from_builtin
from curate.train.loop import TrainConfig, Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="model preset")
    ap.add_argument("--resolution", type=int, default=16, help="image size")
    ap.add_argument("--num-images", type=int, default=64, help="training images (builtin digits)")
    ap.add_argument("--batch-size", type=int, default=64, help="batch size")
    ap.add_argument("--sigma-n", type=float, default=1.0, help="ambient sigma_n")
    ap.add_argument("--blocks", type=int, default=8, help="alternating blocks per objective")
    ap.add_argument("--steps-per-block", type=int, default=10, help="timed steps per block")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per trainer first")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is steadier on a busy CPU)"
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--out", type=Path, default=Path("reports/ambient/step_time.json"), help="result file"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    full = from_builtin("digits", channels=1, resolution=args.resolution)
    data = type(full)(
        sample_ids=full.sample_ids[: args.num_images],
        captions=full.captions[: args.num_images],
        images=full.images[: args.num_images],
        channels=1,
        resolution=args.resolution,
    )
    trainers = {}
    for obj in ("ddpm", "ambient"):
        cfg = TrainConfig(
            objective=obj,
            sigma_n=args.sigma_n,
            model=args.model,
            resolution=args.resolution,
            batch_size=args.batch_size,
            checkpoint_every=0,
        )
        trainers[obj] = Trainer(data, cfg, device=args.device, quiet=True)
        for _ in range(args.warmup):
            trainers[obj].train_step()

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {"ddpm": [], "ambient": []}
    for block in range(args.blocks):
        order = ("ddpm", "ambient") if block % 2 == 0 else ("ambient", "ddpm")
        for obj in order:
            for _ in range(args.steps_per_block):
                sync()
                t0 = time.perf_counter()
                trainers[obj].train_step()
                sync()
                times[obj].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "ratio_ambient_over_ddpm": med["ambient"] / med["ddpm"],
        "target": "<= 1.05",
        "median_step_s": med,
        "mean_step_s": {k: statistics.fmean(v) for k, v in times.items()},
        "steps_timed_per_objective": len(times["ddpm"]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "parameters": sum(p.numel() for p in trainers["ddpm"].bundle.unet.parameters()),
        "machine": {
            "cpu_count": __import__("os").cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "command": "python scripts/bench_ambient_step.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(
        json.dumps({k: result[k] for k in ("ratio_ambient_over_ddpm", "median_step_s")}, indent=1)
    )


if __name__ == "__main__":
    main()
