"""Cost of the VGR estimators in forward-pass equivalents, measured in one run.

    .venv/bin/python scripts/bench_rank.py [--preset tiny] [--resolution 16] [--batch-size 64]

For one model and batch size: time of one plain denoiser forward on B images (the baseline),
then time per batch of each estimator (fd, jvp, frame K=4 M=2). Target from the issue: fd at
most 2.5 forward-pass equivalents. Best of N repeats each, after a warm-up. Results go to
reports/rank/bench_<preset>_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from curate.models.denoiser import DiffusersDenoiser
    from curate.models.presets import build_model
    from curate.rank.vgr import VGRConfig, volume_growth

    torch.set_num_threads(os.cpu_count() or 1)
    bundle = build_model(
        args.preset, channels=args.channels, resolution=args.resolution, device=args.device
    )
    den = DiffusersDenoiser(bundle.unet, bundle.scheduler_config).eval().requires_grad_(False)
    b = args.batch_size
    x = torch.rand(b, args.channels, args.resolution, args.resolution, device=args.device) * 2 - 1
    ids = [f"s{i}" for i in range(b)]
    sigma = torch.full((b,), 0.02, device=args.device)

    with torch.no_grad():
        forward = _best(lambda: den(x, sigma), args.repeats)
    rows = {"forward": {"seconds_per_batch": forward, "forward_equivalents": 1.0}}
    for name, cfg in [
        ("fd", VGRConfig()),
        ("jvp", VGRConfig(estimator="jvp")),
        ("frame_K4_M2", VGRConfig(estimator="frame", axes=4, ode_steps=2)),
    ]:
        t = _best(lambda cfg=cfg: volume_growth(den, x, ids, cfg), args.repeats)
        rows[name] = {
            "seconds_per_batch": t,
            "forward_equivalents": t / forward,
            "samples_per_second": b / t,
        }
        print(
            f"{name:>12}: {t * 1000:8.1f} ms/batch  {t / forward:5.2f} forward-equivalents  {b / t:8.1f} samples/s"
        )
    print(f"{'forward':>12}: {forward * 1000:8.1f} ms/batch")
    result = {
        "meta": {
            "preset": args.preset, "resolution": args.resolution, "channels": args.channels,
            "batch_size": b, "device": args.device, "repeats": args.repeats,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
            "params": sum(p.numel() for p in bundle.unet.parameters()),
        },
        "results": rows,
        "target": "fd <= 2.5 forward equivalents",
        "fd_meets_target": rows["fd"]["forward_equivalents"] <= 2.5,
    }  # fmt: skip
    out = Path(f"reports/rank/bench_{args.preset}_{args.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
