"""The auto calibration's background against the truth, on a run folder with ground truth.

Runs the ``dedup_images`` step's calibration (its defaults, or ``--set key=value``) on a run
whose table has a truth column (one group key per picture: the planted sets of
``scripts/bench_dedup.py`` have ``src_gt_group``), and prints for each tier and size band:

* the distinct pairs the calibration estimates at or above each threshold against the distinct
  pairs the sample really holds there (pairs of two different truth groups), and the precision
  ``lam R / (lam R + F)`` each gives;
* the threshold the calibration chose, and the one it would choose with the true background
  (the true distinct pairs and the true copies per row): the ceiling of any background
  estimate at that target precision;
* the most similar distinct pairs of the sample (what a copy-level score on distinct pictures
  looks like in this data).

    .venv/bin/python scripts/dedup_background_truth.py RUN --truth-column src_gt_group

Reads the run folder; writes only the step's own folder inside it (``steps/99-*``) and the
feature caches the step keeps there.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="run folder (from curate ingest)")
    ap.add_argument("--truth-column", default="src_gt_group", help="group key per picture")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a dedup_images setting (repeatable)")  # fmt: skip
    ap.add_argument("--top", type=int, default=8, help="most similar distinct pairs shown")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    import yaml

    from curate.dedup import auto
    from curate.runner import compute_step
    from curate.steps.base import RunContext
    from curate.steps.dedup import DedupImages
    from curate.table import read_table

    try:
        table = read_table(args.run)
    except Exception as exc:  # a missing or unreadable run folder: one line, no traceback
        print(f"error: {args.run}: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    if args.truth_column not in table.columns:
        print(f"error: no column {args.truth_column!r} in {args.run}", file=sys.stderr)
        return 2
    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: --set {item!r}: use KEY=VALUE", file=sys.stderr)
            return 2
        settings[key] = yaml.safe_load(value)
    truth_of = dict(zip(table["sample_id"].to_list(), table[args.truth_column].to_list(),
                        strict=True))  # fmt: skip

    seen: dict = {}
    real_calibrate, real_per_band = auto.calibrate, auto._per_band

    def calibrate(*a, **k):
        seen["args"] = (a, k)
        res = real_calibrate(*a, **k)
        seen["result"] = res
        return res

    def per_band(t, pos, copy_band, copy_kind, bg, *rest):
        seen.setdefault("bands", {})[t.name] = (bg, pos, copy_band)
        return real_per_band(t, pos, copy_band, copy_kind, bg, *rest)

    auto.calibrate, auto._per_band = calibrate, per_band
    try:
        ctx = RunContext(run_dir=args.run, quiet=True,
                         step_dir=args.run / "steps" / "99-background-truth")  # fmt: skip
        compute_step(DedupImages(**settings), table, ctx)
    finally:
        auto.calibrate, auto._per_band = real_calibrate, real_per_band
    if "args" not in seen:
        print("error: the step calibrated nothing (no auto tier, or too few rows)", file=sys.stderr)
        return 2
    (tiers, ids, band, copy_src, copy_kind, identity, seed, target, *_rest), kw = seen["args"]
    background_sample = _rest[1] if len(_rest) > 1 else kw.get("background_sample", 4096)
    truth = np.array([truth_of[s] for s in ids], dtype=object)
    keys, reps = auto._identity(identity)
    is_rep = np.zeros(len(ids), bool)
    is_rep[reps] = True
    others = max(1, len(reps) - 1)
    res = seen["result"]
    print(f"{len(ids)} rows, target precision {target}; estimated copy pairs "
          f"{res['estimated_copy_pairs']:.0f}, planted coverage {res['planted_coverage']}")  # fmt: skip
    for t in tiers:
        bg, pos, copy_band = seen["bands"][t.name]
        grid = t.grid()
        for b, (name, _) in enumerate(auto.BANDS):
            rows = auto.hashed_sample(ids, seed, "background", background_sample,
                                      np.flatnonzero((band == b) & is_rep))  # fmt: skip
            if len(rows) < 2 or b not in bg:
                continue
            iu, ju = np.triu_indices(len(rows), 1)
            same = truth[rows][iu] == truth[rows][ju]
            raw, scored = auto._pair_scores(tiers, rows)
            s = scored[t.name]
            true_tail = auto.tail_counts(s[~same], grid)
            est_tail, npairs, lam = bg[b][0], bg[b][1], bg[b][3]
            true_lam = max(1.0, 2.0 * same.sum() / len(rows))
            pm = copy_band == b
            chosen = res["tiers"][t.name]["bands"][name]
            print(f"\n{t.name} / {name}: {len(rows)} rows, {len(iu)} pairs, {int(same.sum())} of "
                  f"them copies; copies per row estimated {lam:.2f}, true {true_lam:.2f}; chosen "
                  f"{chosen['threshold']} ({chosen['status']})")  # fmt: skip
            oracle = None
            print("  threshold  recall  distinct est  distinct true  P est  P true")
            for q, thr in enumerate(grid):
                r = float(np.mean(pos[pm] >= thr)) if pm.any() else 0.0
                f_est = others * est_tail[q] / max(npairs, 1)
                f_true = others * true_tail[q] / max(int((~same).sum()), 1)
                p_est = lam * r / (lam * r + f_est) if lam * r + f_est > 0 else 1.0
                p_true = true_lam * r / (true_lam * r + f_true) if true_lam * r + f_true else 1.0
                if r > 0 and p_true >= target:
                    oracle = (t.unit_threshold(thr), round(r, 3))
                if q % (1 if t.kind == "hash" else 5) == 0:
                    print(f"  {t.unit_threshold(thr):>9}  {r:6.3f}  {est_tail[q]:12.0f}  "
                          f"{true_tail[q]:13d}  {p_est:5.3f}  {p_true:6.3f}")  # fmt: skip
            print(f"  with the true background: {oracle} (threshold, recall)")
            order = np.argsort(-np.where(same, -np.inf, s), kind="stable")[: args.top]
            for k in order:
                i, j = rows[iu[k]], rows[ju[k]]
                print(f"    distinct pair {ids[i]} ({truth[i]}) ~ {ids[j]} ({truth[j]}): "
                      f"{float(s[k]):.3f} as applied, {float(raw[t.name][k]):.3f} raw")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
