"""Shards: the per-row part of a step on 1/N of the rows, in separate processes; ``merge``
gathers them and runs the global part, giving the table one process would.

A step that declares ``shardable`` splits in two (``curate/steps/base.py``): ``shard_values``
(decode, hashes, embeddings, model scores: one row at a time, no row sees another) and
``compute``, which reads those values from ``ctx.shard_values`` instead of computing them and
then does what needs every row (duplicate grouping, threshold calibration, keep policy,
percentiles, selection).

Layout, per sharded step (``NN-name`` as the unsharded run numbers it)::

    RUN_DIR/shards.json                          the plan: what to merge (a recipe, or steps
                                                 applied by `curate dedup` / `curate rank`), N
    RUN_DIR/steps/NN-name/shards/
        part-I-of-N.parquet                      sample_id + per-row values of shard I's rows
        part-I-of-N.json                         done marker: the step's shard fingerprint,
                                                 rows, seconds (written last)
        work-I-of-N/                             shard I's resumable caches (feature chunks)

Row ``sample_id`` belongs to shard ``blake2b(sample_id) mod N``: the split does not depend on
the input order or on which process asks. The fingerprint is the step's config, the run seed
and the ingest (settings and source), not N, so a merge refuses values of another config or
dataset. Shard processes hold the run lock *shared*: any number run at once (a Slurm array,
``torchrun``, by hand), each writing only its own files through temporary names and renames;
ingest, ``clean`` and ``merge`` hold it exclusively and so never run beside them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from curate.errors import DataError, UsageError
from curate.io.folders import (
    RunInUse,
    atomic_path,
    atomic_write_json,
    clear_stale_tmp,
    read_json,
    require_run_dir,
    run_lock,
)
from curate.table import SAMPLE_ID

if TYPE_CHECKING:
    from typing import Protocol

    from curate.recipe import Recipe
    from curate.steps.base import RunContext, Step

    class Engine(Protocol):
        """Computes the per-row part of steps on its own workers (``curate.engines``) and
        writes the part files and markers ``run_shard`` writes."""

        def run(self, run_dir: Path, steps: Sequence[tuple[int, Step]], ctx: RunContext,
                plan: dict, force: bool = False) -> list[dict]: ...  # fmt: skip


log = logging.getLogger("curate")
SHARDS_DIR = "shards"
PLAN_FILE = "shards.json"
MAX_SHARDS = 1_000_000


# -- assignment -----------------------------------------------------------------------------
def parse_shard(text: str, flag: str = "--shard") -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N`` (Slurm's ``$SLURM_ARRAY_TASK_ID`` is 0-based)."""
    parts = str(text).split("/")
    try:
        i, n = (int(p) for p in parts)
    except ValueError:
        raise UsageError(
            f"{flag} {text!r}: give it as i/N, e.g. 0/4 (shard i of N, from 0)"
        ) from None
    if not 1 <= n <= MAX_SHARDS:
        raise UsageError(f"{flag} {text}: N must be in [1, {MAX_SHARDS}]")
    if not 0 <= i < n:
        raise UsageError(f"{flag} {text}: i must be in [0, {n - 1}] (shards count from 0)")
    return i, n


def shard_of(sample_ids: Sequence[str], n: int) -> np.ndarray:
    """The shard of each ``sample_id`` (int64): a hash of the id alone, mod ``n``."""
    out = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little") % n
            for s in sample_ids
        ),
        dtype=np.int64,
        count=len(sample_ids),
    )
    return out


def shard_fingerprint(step: Step, ingest_summary: dict, seed: int) -> str:
    """What a shard's values depend on: the step's config, the seed and the ingested data."""
    from curate.runner import _hash

    data = (ingest_summary.get("fingerprint"), ingest_summary.get("source_fingerprint"))
    return _hash("shard-values", data, step.name, step.cache_config(), seed)


def part_stem(i: int, n: int) -> str:
    return f"part-{i}-of-{n}"


# -- per-row values as columns ----------------------------------------------------------------
def array_frame(
    sample_ids: Sequence[str], rows: Sequence[str], arrays: dict[str, np.ndarray]
) -> pl.DataFrame:
    """``sample_id`` for every id of ``sample_ids`` plus one column per array of ``arrays``
    (``(len(rows), ...)``, the values of ``rows``, a subset); other ids get nulls."""
    frame = pl.DataFrame({SAMPLE_ID: pl.Series(SAMPLE_ID, list(sample_ids), pl.String)})
    values = pl.DataFrame({SAMPLE_ID: pl.Series(SAMPLE_ID, list(rows), pl.String)})
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        values = values.with_columns(pl.Series(name, arr) if len(rows) else _empty(name, arr))
    return frame.join(values, on=SAMPLE_ID, how="left", maintain_order="left")


def _empty(name: str, arr: np.ndarray) -> pl.Series:
    dtype = pl.Series(name, np.zeros((1, *arr.shape[1:]), arr.dtype)).dtype
    return pl.Series(name, [], dtype=dtype)


def lookup(values: pl.DataFrame, sample_ids: Sequence[str]) -> pl.DataFrame:
    """The rows of ``values`` for ``sample_ids``, in that order (a missing id is an error)."""
    ids = pl.DataFrame({SAMPLE_ID: pl.Series(SAMPLE_ID, list(sample_ids), pl.String)})
    out = ids.join(values, on=SAMPLE_ID, how="left", maintain_order="left")
    return out


def arrays_of(values: pl.DataFrame, sample_ids: Sequence[str], names: Sequence[str]) -> dict:
    """``{name: (len(sample_ids), ...) array}`` from the shard values of those rows."""
    rows = lookup(values, sample_ids)
    out = {}
    for name in names:
        if name not in rows.columns:
            raise DataError(f"the shards hold no {name!r} values; rerun the shards")
        col = rows[name]
        if col.null_count():
            sid = rows.filter(col.is_null())[SAMPLE_ID][0]
            raise DataError(f"the shards hold no {name!r} value for sample_id {sid}; rerun them")
        out[name] = col.to_numpy()
    return out


# -- the plan ---------------------------------------------------------------------------------
def write_plan(run_dir: Path, plan: dict) -> None:
    """Record what ``curate merge`` is to do (every shard process writes the same plan)."""
    atomic_write_json(run_dir / PLAN_FILE, plan)


def read_plan(run_dir: Path) -> dict:
    plan = read_json(run_dir / PLAN_FILE)
    if plan is None or plan.get("mode") not in ("recipe", "apply") or not plan.get("of"):
        raise UsageError(
            f"{run_dir} has no shards to merge (no readable {PLAN_FILE}); run the shards first, "
            f"e.g. `curate dedup {run_dir} --shard i/N` for i = 0 .. N-1"
        )
    return plan


def cli_argv() -> list[str] | None:
    """This process's ``curate`` arguments when it is the ``curate`` command, else None."""
    import sys

    return sys.argv[1:] if Path(sys.argv[0]).name in ("curate", "__main__.py") else None


def _command_hint(argv: Sequence[str] | None) -> str:
    """The shard's own command with ``{shard}`` where its ``i/N`` goes (for error messages)."""
    if not argv:
        return "the shard's command with --shard {shard}"
    out, skip = [], False
    for a in argv:
        if skip:
            out.append("{shard}")
            skip = False
        elif a == "--shard":
            out.append(a)
            skip = True
        elif a.startswith("--shard="):
            out.append("--shard={shard}")
        else:
            out.append(a)
    return " ".join(["curate", *out])


# -- one shard --------------------------------------------------------------------------------
def run_shard(
    run_dir: Path | str,
    steps: Sequence[tuple[int, Step]],
    shard: int,
    of: int,
    ctx: RunContext,
    plan: dict,
    force: bool = False,
) -> list[dict]:
    """Compute the per-row part of each ``(index, step)`` for the rows of shard ``shard``/``of``.

    Holds the run lock shared (other shards of the run may run at the same time); a shard done
    with the same fingerprint is skipped. Returns each step's done marker.
    """
    from curate.runner import base_table, step_dir

    run_dir = require_run_dir(run_dir)
    with run_lock(run_dir, shared=True):
        from curate.io.ingest import read_ingest_summary

        summary = read_ingest_summary(run_dir)
        if summary is None:
            raise UsageError(f"{run_dir} is not ingested yet; run `curate ingest` first")
        write_plan(run_dir, {**plan, "of": of})
        table = base_table(run_dir)
        mask = shard_of(table[SAMPLE_ID].to_list(), of) == shard
        rows = table.filter(pl.Series(mask))
        markers = []
        for index, step in steps:
            sdir = step_dir(run_dir, index, step) / SHARDS_DIR
            markers.append(_one_part(step, index, rows, sdir, shard, of, ctx, summary, plan, force))
        return markers


def _one_part(step, index, rows, sdir, shard, of, ctx, summary, plan, force) -> dict:
    fp = shard_fingerprint(step, summary, ctx.seed)
    done = part_done(sdir, shard, of, fp, rows.height, force)
    if done is not None:
        log.info("%s shard %d/%d: done, skipped", step.name, shard, of)
        return done
    sdir.mkdir(parents=True, exist_ok=True)
    (sdir / f"{part_stem(shard, of)}.json").unlink(missing_ok=True)
    ctx.step_dir = sdir / f"work-{shard}-of-{of}"
    ctx.stats = {}
    log.info("%s shard %d/%d: %d rows ...", step.name, shard, of, rows.height)
    start = time.perf_counter()
    values = step.shard_values(rows, ctx)
    seconds = time.perf_counter() - start
    meta = write_part(step, index, sdir, shard, of, fp, rows, values, seconds, ctx.stats)
    ctx.stats = {}
    return meta


def part_done(sdir: Path, shard: int, of: int, fp: str, rows: int, force: bool) -> dict | None:
    """The marker of shard ``shard``/``of`` when it is done with fingerprint ``fp`` for ``rows``
    rows (then it is skipped), else None."""
    stem = part_stem(shard, of)
    meta = read_json(sdir / f"{stem}.json")
    if (
        not force
        and meta is not None
        and meta.get("fingerprint") == fp
        and meta.get("rows") == rows
        and (sdir / f"{stem}.parquet").exists()
    ):
        return {**meta, "skipped": True}
    return None


def write_part(
    step: Step,
    index: int,
    sdir: Path,
    shard: int,
    of: int,
    fp: str,
    rows: pl.DataFrame,
    values: pl.DataFrame,
    seconds: float,
    stats: dict,
    engine: dict | None = None,
) -> dict:
    """Write shard ``shard``'s part file, then its done marker (what every engine writes)."""
    if SAMPLE_ID not in values.columns or sorted(values[SAMPLE_ID].to_list()) != sorted(
        rows[SAMPLE_ID].to_list()
    ):
        raise RuntimeError(f"step {step.name}: shard_values must give one row per input row")
    stem = part_stem(shard, of)
    sdir.mkdir(parents=True, exist_ok=True)
    with atomic_path(sdir / f"{stem}.parquet") as tmp:
        values.write_parquet(tmp, compression="zstd", statistics=False)
    meta = {
        "step": step.name,
        "index": index,
        "shard": shard,
        "of": of,
        "fingerprint": fp,
        "rows": values.height,
        "columns": [c for c in values.columns if c != SAMPLE_ID],
        "seconds": round(seconds, 3),
        "stats": stats,
    }
    if engine is not None:
        meta["engine"] = engine
    atomic_write_json(sdir / f"{stem}.json", meta)
    return meta


# -- merge ------------------------------------------------------------------------------------
def gather(
    sdir: Path,
    step: Step,
    table: pl.DataFrame,
    fingerprint: str,
    of: int,
    hint: str,
    run_dir: Path | None = None,
) -> pl.DataFrame:
    """The per-row values of every row of ``table``, in its order, from the ``of`` shards in
    ``sdir``; a missing, stale, duplicated or misplaced shard is a one-line ``DataError``."""
    shards = sdir / SHARDS_DIR
    where = shards.relative_to(run_dir) if run_dir is not None else shards

    def rerun(i: int) -> str:
        return "rerun it: " + hint.format(shard=f"{i}/{of}")

    parts = []
    for i in range(of):
        stem = part_stem(i, of)
        meta = read_json(shards / f"{stem}.json")
        if meta is None:
            raise DataError(
                f"{step.name}: shard {i}/{of} is missing (no {where / stem}.json); "
                + rerun(i).replace("rerun it", "run it")
            )
        if meta.get("fingerprint") != fingerprint:
            raise DataError(
                f"{step.name}: shard {i}/{of} was computed with other settings or data "
                f"(fingerprint {meta.get('fingerprint')}, this merge needs {fingerprint}); "
                + rerun(i)
            )
        try:
            part = pl.read_parquet(shards / f"{stem}.parquet")
        except Exception:  # missing or torn: polars raises several types
            raise DataError(f"{step.name}: shard {i}/{of}: cannot read {where / stem}.parquet; "
                            + rerun(i)) from None  # fmt: skip
        if part.height != meta.get("rows") or SAMPLE_ID not in part.columns:
            raise DataError(f"{step.name}: shard {i}/{of}: {where / stem}.parquet does not match "
                            "its marker; " + rerun(i))  # fmt: skip
        parts.append(part.with_columns(pl.lit(i, pl.Int64).alias("_shard")))
    values = pl.concat(parts, how="vertical") if parts else pl.DataFrame()
    ids = values[SAMPLE_ID]
    twice = values.filter(ids.is_duplicated())
    if twice.height:
        first = twice.sort([SAMPLE_ID, "_shard"]).head(2)
        sid = first[SAMPLE_ID][0]
        a, b = first["_shard"].to_list()
        n = twice[SAMPLE_ID].n_unique()
        raise DataError(
            f"{step.name}: sample_id {sid} is in shard {a}/{of} and shard {b}/{of} "
            f"({n} sample_id(s) in more than one shard); " + rerun(b)
        )
    known = set(table[SAMPLE_ID].to_list())
    foreign = values.filter(~ids.is_in(list(known)))
    if foreign.height:
        sid, i = foreign[SAMPLE_ID][0], foreign["_shard"][0]
        raise DataError(
            f"{step.name}: shard {i}/{of} holds sample_id {sid}, which is not in the run's "
            "table; " + rerun(i)
        )
    home = shard_of(ids.to_list(), of)
    wrong = np.flatnonzero(home != values["_shard"].to_numpy())
    if wrong.size:
        r = int(wrong[0])
        raise DataError(
            f"{step.name}: shard {values['_shard'][r]}/{of} holds sample_id {ids[r]}, which "
            f"belongs to shard {home[r]}/{of}; " + rerun(int(values["_shard"][r]))
        )
    missing = table.filter(~pl.col(SAMPLE_ID).is_in(ids.to_list()))
    if missing.height:
        sid = missing[SAMPLE_ID][0]
        i = int(shard_of([sid], of)[0])
        raise DataError(
            f"{step.name}: {missing.height} sample_id(s) are in no shard (first: {sid}, of "
            f"shard {i}/{of}); " + rerun(i)
        )
    return lookup(values.drop("_shard"), table[SAMPLE_ID].to_list())


def merge_run(
    run_dir: Path | str, *, device: str = "cpu", quiet: bool = False, force: bool = False
) -> dict:
    """Gather the shards of ``run_dir``'s plan and run the global parts (``curate merge``).

    Returns ``{"mode", "of", "steps"}``; the run's table is the one an unsharded run writes.
    """
    from curate.io.ingest import read_ingest_summary
    from curate.runner import apply_step, run_recipe
    from curate.steps.base import RunContext

    run_dir = require_run_dir(run_dir)
    plan = read_plan(run_dir)
    of = int(plan["of"])
    hint = plan.get("command") or "the shard's command with --shard {shard}"
    seed = int(plan.get("seed", 0))

    def values(index: int, step: Step, table: pl.DataFrame, sdir: Path) -> pl.DataFrame:
        summary = read_ingest_summary(run_dir) or {}
        clear_stale_tmp(sdir / SHARDS_DIR)  # the exclusive lock is held: no shard is writing
        fp = shard_fingerprint(step, summary, seed)
        out = gather(sdir, step, table, fp, of, hint, run_dir=run_dir)
        log.info("%s: merged %d shards (%d rows)", step.name, of, out.height)
        return out

    if plan["mode"] == "recipe":
        from curate.recipe import parse_recipe

        recipe = parse_recipe(plan["recipe"], name=plan["recipe"].get("name", "recipe"))
        results = run_recipe(recipe, run_dir, device=device, quiet=quiet, force=force,
                             shard_values=values)  # fmt: skip
        return {"mode": "recipe", "of": of, "steps": [r.name for r in results]}
    steps = plan_steps(plan)
    ctx = RunContext(run_dir=run_dir, seed=seed, device=device, quiet=quiet)
    for step in steps:
        apply_step(run_dir, step, ctx, force=force, shard_values=values)
    return {"mode": "apply", "of": of, "steps": [s.name for s in steps]}


def plan_steps(plan: dict) -> list[Step]:
    """The steps of an ``apply`` plan, rebuilt and validated from their recorded configs."""
    from curate.recipe import build_config
    from curate.registry import get_step

    steps, problems = [], []
    for k, entry in enumerate(plan.get("steps") or []):
        ((name, config),) = entry.items()
        step = build_config(get_step(name), config, f"{PLAN_FILE} steps[{k}].{name}", problems)
        if step is not None:
            steps.append(step)
    if problems or not steps:
        raise DataError(f"{PLAN_FILE}: " + ("; ".join(problems) or "no steps") +
                        "; run the shards again")  # fmt: skip
    return steps


def apply_plan(steps: Sequence[Step], seed: int, argv: Sequence[str] | None) -> dict:
    """The plan of steps applied to a run outside a recipe (``curate dedup``, ``curate rank``)."""
    return {
        "mode": "apply",
        "seed": seed,
        "steps": [{s.name: s.config()} for s in steps],
        "command": _command_hint(argv),
    }


def shard_apply(
    run_dir: Path | str,
    steps: Sequence[Step],
    shard: int,
    of: int,
    ctx: RunContext,
    *,
    argv: Sequence[str] | None = None,
    force: bool = False,
    engine: Engine | None = None,
) -> list[dict]:
    """``curate dedup RUN --shard i/N``: the per-row part of ``steps`` as ``apply_step`` would
    number them (after the run's existing steps). With ``engine`` (``--engine ray``) the engine
    computes its shards (``shard``/``of`` are then its to choose)."""
    from curate.runner import applied_step_index, step_dir

    run_dir = require_run_dir(run_dir)
    bad = [s.name for s in steps if not s.shardable]
    if bad:
        raise UsageError(f"step(s) {', '.join(bad)} do not run in shards")
    indexed = []
    for step in steps:
        # The folder is made now, so the next step's number counts it, as apply_step's would.
        index = applied_step_index(run_dir, step.name)
        (step_dir(run_dir, index, step) / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        indexed.append((index, step))
    plan = apply_plan(steps, ctx.seed, argv)
    if engine is not None:
        return engine.run(run_dir, indexed, ctx, plan, force=force)
    return run_shard(run_dir, indexed, shard, of, ctx, plan, force=force)


def shard_recipe(
    recipe: Recipe,
    run_dir: Path | str,
    shard: int,
    of: int,
    *,
    device: str = "cpu",
    quiet: bool = False,
    force: bool = False,
    argv: Sequence[str] | None = None,
    wait_s: float = 3600.0,
    engine: Engine | None = None,
) -> list[dict]:
    """``curate clean --recipe R --out RUN --shard i/N``: the per-row part of each sharded step
    of the recipe (numbered as the recipe numbers them). The first shard process to arrive
    ingests; the others wait for it."""
    from curate.io.folders import claim_run_dir
    from curate.steps.base import RunContext

    indexed = [(i, s) for i, s in enumerate(recipe.all_steps(), start=1) if s.shardable]
    if not indexed:
        raise UsageError(
            f"recipe {recipe.name!r} has no step that runs in shards (dedup_images, "
            "dedup_captions, rank); run it without --shard"
        )
    run_dir = claim_run_dir(run_dir)
    _ingest_once(recipe, run_dir, quiet, wait_s)
    plan = {
        "mode": "recipe",
        "seed": recipe.seed,
        "recipe": recipe.resolved(),
        "command": _command_hint(argv),
    }
    ctx = RunContext(run_dir=run_dir, seed=recipe.seed, device=device, quiet=quiet)
    if engine is not None:
        return engine.run(run_dir, indexed, ctx, plan, force=force)
    return run_shard(run_dir, indexed, shard, of, ctx, plan, force=force)


def _ingest_once(recipe: Recipe, run_dir: Path, quiet: bool, wait_s: float) -> None:
    """Make sure the run holds the recipe's ingest: ingest under the exclusive lock if not,
    waiting while another process (the shard that came first) holds it."""
    from curate.io.ingest import ingest_state
    from curate.runner import ensure_ingested

    deadline = time.monotonic() + wait_s
    while True:
        state, _ = ingest_state(run_dir, recipe.dataset)
        if state == "current":
            return
        try:
            with run_lock(run_dir):
                ensure_ingested(recipe, run_dir, quiet)
                return
        except RunInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(2.0)
