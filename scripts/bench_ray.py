"""Ray engine benchmark: the per-row part of dedup (and rank) on the same rows, in one process
(``--shard i/N`` for i = 0..N-1, one after another) and as one ``--engine ray`` pipeline on a
local Ray; both merged, the tables and every part file compared, the times written. Then
``curate rank`` alone (``rank_run``) in one process, as N in-process shards + merge, and with
``--engine ray`` (the engine scores the N shards, ``rank_run`` merges): the tables compared.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python scripts/bench_ray.py \
        --dataset builtin:digits --shards 8 --out reports/scale

Ray starts with ``--num-cpus`` logical CPUs (default 4) and ``--actors`` actors at
``--actor-cpus`` each (default 2 at 0.5), so Ray Data's own tasks always have a CPU. On a
machine with 2 cores both paths share the same 2 cores: the figures show Ray's overhead, not a
speed-up; a speed-up needs more cores or nodes than the in-process path uses.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _parts(run: Path) -> dict:
    import polars as pl

    return {
        f"{p.parent.parent.name}/{p.stem}": pl.read_parquet(p).sort("sample_id")
        for p in sorted((run / "steps").glob("*/shards/part-*.parquet"))
    }


def _rank_runs(base: Path, work: Path, step, n: int, engine) -> dict:
    """``rank_run`` alone: one process, N in-process shards + merge, ``--engine ray``; the
    tables compared (rows are in the same order: the run's)."""
    from polars.testing import assert_frame_equal

    from curate.shards import merge_run
    from curate.steps.rank import rank_run
    from curate.table import read_table

    runs = {name: work / f"rank-{name}" for name in ("one", "shards", "ray")}
    for run in runs.values():
        shutil.copytree(base, run)
    t = time.perf_counter()
    one = rank_run(runs["one"], step, quiet=True).table
    t_one = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(n):
        rank_run(runs["shards"], step, shard=f"{i}/{n}", quiet=True)
    t_shards = time.perf_counter() - t
    t = time.perf_counter()
    merge_run(runs["shards"], quiet=True)
    t_merge = time.perf_counter() - t
    t = time.perf_counter()
    done = rank_run(runs["ray"], step, quiet=True, engine=engine)
    t_ray = time.perf_counter() - t
    assert_frame_equal(done.table, read_table(runs["shards"]), check_exact=True)
    diff = (done.table["rank_vgr"] - one["rank_vgr"]).abs().max()
    same_drops = done.table["rank_drop"].is_not_null().equals(one["rank_drop"].is_not_null())
    pids: dict = {}
    for m in done.markers:
        pids.setdefault(str(m["engine"]["pid"]), []).append(m["engine"]["model_loads"])
    return {
        "one_process_s": round(t_one, 2),
        "in_process_shards_s": round(t_shards, 2),
        "in_process_merge_s": round(t_merge, 2),
        "ray_s": round(t_ray, 2),
        "equal_to_in_process_shards": True,
        "max_abs_vgr_diff_to_one_process": float(diff or 0.0),
        "same_drops": bool(same_drops),
        "actors": len(pids),
        "model_loads_per_actor": {k: max(v) for k, v in pids.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="builtin:digits")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--num-cpus", type=int, default=4)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--actor-cpus", type=float, default=0.5)
    ap.add_argument("--no-rank", action="store_true", help="dedup only")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "scale")
    args = ap.parse_args()

    import ray
    from polars.testing import assert_frame_equal

    from curate.engines.ray_data import RayEngine
    from curate.io.ingest import IngestConfig, ingest
    from curate.shards import merge_run, shard_apply
    from curate.steps.base import RunContext
    from curate.steps.dedup import DedupCaptions, DedupImages
    from curate.steps.rank import Rank
    from curate.table import read_table

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    base = work / "base"
    ingest(IngestConfig(name=args.dataset, limit=args.limit), base, quiet=True)
    rows = read_table(base).height
    steps = [DedupImages(tiers=("exact", "phash", "pixel")),
             DedupCaptions(tiers=("exact", "minhash"))]  # fmt: skip
    if not args.no_rank:
        from curate.models.presets import build_model, save_pipeline

        bundle = build_model("tiny", channels=1, resolution=16, seed=0)
        save_pipeline(work / "model", bundle.unet, bundle.scheduler_config)
        steps.append(Rank(model=str(work / "model"), batch_size=16))
    n = args.shards

    proc = work / "process"
    shutil.copytree(base, proc)
    t = time.perf_counter()
    for i in range(n):
        shard_apply(proc, steps, i, n, RunContext(run_dir=proc, quiet=True))
    t_proc = time.perf_counter() - t

    t = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)  # fmt: skip
    t_init = time.perf_counter() - t
    run = work / "ray"
    shutil.copytree(base, run)
    engine = RayEngine(of=n, actors=args.actors, actor_cpus=args.actor_cpus)
    t = time.perf_counter()
    markers = shard_apply(run, steps, None, None, RunContext(run_dir=run, quiet=True),
                          engine=engine)  # fmt: skip
    t_ray = time.perf_counter() - t
    # the same shards again on the running Ray: the images are exported, a new pool starts
    again = work / "ray2"
    shutil.copytree(run, again)
    for p in again.glob("steps/*/shards/part-*.json"):
        p.unlink()
    t = time.perf_counter()
    shard_apply(again, steps, None, None, RunContext(run_dir=again, quiet=True), engine=engine)
    t_warm = time.perf_counter() - t
    rank = None
    if not args.no_rank:  # rank alone, with drops to compare
        rank = _rank_runs(base, work, replace(steps[-1], drop_top_fraction=0.1), n, engine)
    ray.shutdown()

    ours, theirs = _parts(run), _parts(proc)
    assert sorted(ours) == sorted(theirs)
    for key, frame in theirs.items():
        assert_frame_equal(ours[key], frame, check_exact=True)
    t = time.perf_counter()
    merge_run(run, quiet=True)
    t_merge = time.perf_counter() - t
    merge_run(proc, quiet=True)
    assert_frame_equal(read_table(run), read_table(proc), check_exact=True)

    def compute(run: Path) -> float:
        return round(sum(json.loads(p.read_text())["seconds"]
                         for p in run.glob("steps/*/shards/part-*.json")), 2)  # fmt: skip

    def per_step(run: Path) -> dict:
        out: dict = {}
        for p in sorted(run.glob("steps/*/shards/part-*.json")):
            meta = json.loads(p.read_text())
            out.setdefault(meta["step"], []).append(round(meta["seconds"], 2))
        return out

    loads = {}
    for m in markers:
        if m["step"] == "rank":
            loads.setdefault(m["engine"]["pid"], []).append(m["engine"]["model_loads"])
    result = {
        "dataset": args.dataset,
        "rows": rows,
        "shards": n,
        "steps": [s.name for s in steps],
        "cores": os.cpu_count(),
        "ray": ray.__version__,
        "ray_num_cpus": args.num_cpus,
        "actors": args.actors,
        "actor_cpus": args.actor_cpus,
        "in_process_s": round(t_proc, 2),
        "ray_init_s": round(t_init, 2),
        "ray_pipeline_s": round(t_ray, 2),
        "ray_pipeline_warm_s": round(t_warm, 2),
        "merge_s": round(t_merge, 2),
        "in_process_compute_s": compute(proc),
        "ray_compute_s": compute(run),
        "in_process_seconds_per_shard": per_step(proc),
        "ray_seconds_per_shard": per_step(run),
        "parts_equal": True,
        "merged_tables_equal": True,
        "rank_shards_per_actor": {str(k): len(v) for k, v in loads.items()},
        "rank_model_loads_per_actor": {str(k): max(v) for k, v in loads.items()},
        "rank_run": rank,
        "python": platform.python_version(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray.json").write_text(json.dumps(result, indent=2) + "\n")
    cmd = "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python scripts/bench_ray.py " + " ".join(
        sys.argv[1:]
    )
    md = f"""# `--engine ray` vs in-process shards

Command: `{cmd}` ({result["cores"]} cores, shared; Ray {result["ray"]}, local, {args.num_cpus}
logical CPUs, {args.actors} actors at {args.actor_cpus} CPU each).

{rows} rows of `{args.dataset}`, steps {", ".join(result["steps"])}, N = {n} shards.

| path | seconds |
| --- | --- |
| in-process: `--shard i/N` for every i, one after another | {result["in_process_s"]} |
| `ray.init` (local) | {result["ray_init_s"]} |
| `--engine ray`, first pipeline (export of the images to parquet, actors start) | {result["ray_pipeline_s"]} |
| `--engine ray`, the same shards again (Ray running, images exported; new actors) | {result["ray_pipeline_warm_s"]} |
| compute inside the steps (sum of the part markers' seconds): in-process / Ray actors | {result["in_process_compute_s"]} / {result["ray_compute_s"]} |
| `curate merge` of the Ray shards | {result["merge_s"]} |

Seconds per shard (part markers, shards 0..N-1), in-process
`{result["in_process_seconds_per_shard"]}`, Ray `{result["ray_seconds_per_shard"]}`: an actor's
first shard of a step pays its imports and model load, and the two actors share the two cores.

Every part file of the Ray run equals the in-process one (`check_exact`), and the merged
tables are identical. Rank shards per actor {result["rank_shards_per_actor"]}, models loaded
per actor {result["rank_model_loads_per_actor"]} (once, however many shards it scored).

On {result["cores"]} shared cores both paths use the same cores: Ray adds its start and its
scheduling and cannot be faster here; it pays off when the cluster has more cores or GPUs than
one process uses (each actor asks for `num_gpus=1` when the cluster has GPUs).
"""
    if rank is not None:
        diff = rank["max_abs_vgr_diff_to_one_process"]
        vgr = "is identical" if diff == 0 else (
            f"differs by at most {diff:.1e} (a row's VGR can move by ~1e-7 with the rows it is "
            "batched with, in-process shards too)")  # fmt: skip
        md += f"""
## `curate rank --engine ray`

`rank_run` (what `curate rank` runs) on a fresh copy of the {rows} ingested rows, rank alone:

| path | seconds |
| --- | --- |
| one process, unsharded | {rank["one_process_s"]} |
| in-process `--shard i/{n}` one after another, then `curate merge` | {rank["in_process_shards_s"]} + {rank["in_process_merge_s"]} |
| `--engine ray` ({n} shards on the running Ray, new actors) and its merge | {rank["ray_s"]} |

The `--engine ray` table equals the in-process shards' merged table (`check_exact`:
{rank["equal_to_in_process_shards"]}); against the unsharded one, `rank_vgr` {vgr} and the
drops are {"the same" if rank["same_drops"] else "NOT the same"}. Actors {rank["actors"]},
models loaded per actor {rank["model_loads_per_actor"]}.
"""
    (args.out / "ray.md").write_text(md)
    print(md)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
