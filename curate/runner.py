"""Run a recipe in a run folder: ingest, then each step, with fingerprints and resume.

Each step's output columns are written to ``steps/NN-name/columns.parquet`` with a
``done.json`` marker holding its fingerprint (its config + the fingerprint of everything
before it). A re-run loads finished steps from those files instead of recomputing them, so an
interrupted run resumes where it stopped and an unchanged recipe costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from curate.errors import CurateError, DataError, UsageError
from curate.io.folders import (
    atomic_write_json,
    atomic_write_text,
    claim_run_dir,
    read_json,
    require_run_dir,
    run_lock,
)
from curate.io.ingest import ingest, ingest_state, read_ingest_summary
from curate.recipe import Recipe, dump_yaml
from curate.steps.base import RunContext, Step
from curate.table import (
    SAMPLE_ID,
    TABLE_FILE,
    read_table,
    reason_kind,
    removal_frame,
    write_table,
)

log = logging.getLogger("curate")
STEPS_DIR = "steps"
DONE_FILE = "done.json"
COLUMNS_FILE = "columns.parquet"


def _hash(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def step_fingerprint(step: Step, upstream: str, seed: int = 0) -> str:
    """A step's cache key: its config, the run seed, its id and everything upstream of it."""
    if step.step_id:
        return _hash(upstream, step.name, step.cache_config(), seed, step.step_id)
    return _hash(upstream, step.name, step.cache_config(), seed)


def base_table(run_dir: Path) -> pl.DataFrame:
    """The table as ingest wrote it (step columns of earlier runs removed)."""
    summary = read_ingest_summary(run_dir)
    table = read_table(run_dir / TABLE_FILE)
    if summary and summary.get("columns"):
        table = table.select(summary["columns"])
    return table


def check_contract(step: Step, table: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    """Enforce the step contract: exactly the produced columns, one row per input row."""
    if not isinstance(new, pl.DataFrame):
        raise TypeError(f"step {step.name} returned {type(new).__name__}, not a polars DataFrame")
    expected = list(step.produced_columns())  # the step's own names (see compute_step)
    if not expected and new.width == 0:
        return new  # a step that only writes files (export, train) adds nothing
    if sorted(new.columns) != sorted(expected):
        raise RuntimeError(
            f"step {step.name} returned columns {new.columns}, but declares {expected}"
        )
    if new.height != table.height:
        raise RuntimeError(
            f"step {step.name} returned {new.height} rows for a table of {table.height}"
        )
    return new.select(expected)


def compute_step(step: Step, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
    """Run one step on a table and return the table with its columns appended (or replaced)."""
    missing = [c for c in step.required_columns() if c not in table.columns]
    if missing:
        raise DataError(
            f"step {step.name} needs column(s) {', '.join(missing)}; run the step that adds them first"
        )
    view = table.drop([c for c in step.output_columns() if c in table.columns])
    new = check_contract(step, view, step.compute(view, ctx))
    if step.step_id:  # a step used twice: its columns carry its id
        new = new.rename({c: step.column_name(c) for c in new.columns})
    return view.hstack(new) if new.width else view


@dataclass
class StepResult:
    index: int
    name: str
    skipped: bool
    seconds: float
    removed: int


def _step_dir(run_dir: Path, index: int, step: Step) -> Path:
    return run_dir / STEPS_DIR / f"{index:02d}-{step.run_name}"


def _register(step: Step, sdir: Path, ctx: RunContext) -> None:
    """Hand a step with an id on to later steps: its folder and its output (``ctx.outputs``)."""
    if step.step_id:
        ctx.step_dirs[step.step_id] = sdir
        out = step.output_dir(ctx)
        if out is not None:
            ctx.outputs[step.step_id] = out


# Gathers a sharded step's per-row values for ``table`` (``curate merge``): called with the
# step's index, the step, the table and its folder, only when the step has to be computed.
ShardValues = Callable[[int, Step, pl.DataFrame, Path], pl.DataFrame]


def _run_one(
    step: Step,
    index: int,
    table: pl.DataFrame,
    upstream: str,
    ctx: RunContext,
    force: bool,
    shard_values: ShardValues | None = None,
) -> tuple[pl.DataFrame, str, StepResult]:
    fp = step_fingerprint(step, upstream, ctx.seed)
    sdir = _step_dir(ctx.run_dir, index, step)
    done = sdir / DONE_FILE
    cols_file = sdir / COLUMNS_FILE
    before = int((~removal_frame(table)["keep"]).sum())
    meta = None if force else read_json(done)
    if meta is not None and meta.get("fingerprint") == fp and step.outputs_exist(ctx, meta):
        cols = _read_columns(cols_file)
        if cols is not None and cols[SAMPLE_ID].to_list() == table[SAMPLE_ID].to_list():
            view = table.drop([c for c in step.output_columns() if c in table.columns])
            extra = cols.drop(SAMPLE_ID)
            table = view.hstack(extra) if extra.width else view
            after = int((~removal_frame(table)["keep"]).sum())
            log.info("step %d %s: unchanged, skipped", index, step.run_name)
            _register(step, sdir, ctx)
            return table, fp, StepResult(index, step.run_name, True, 0.0, after - before)
    done.unlink(missing_ok=True)
    sdir.mkdir(parents=True, exist_ok=True)
    ctx.step_dir = sdir
    ctx.stats = {}
    log.info("step %d %s ...", index, step.run_name)
    start = time.perf_counter()
    ctx.shard_values = None
    if shard_values is not None and step.shardable:
        ctx.shard_values = shard_values(index, step, table, sdir)
    ctx.step_id = step.step_id
    try:
        table = compute_step(step, table, ctx)
    finally:
        ctx.shard_values = None
        ctx.step_id = None
    seconds = time.perf_counter() - start
    after = int((~removal_frame(table)["keep"]).sum())
    produced = list(step.output_columns())
    write_table(table.select([SAMPLE_ID, *produced]), cols_file)
    meta = {
        "step": step.name,
        **({"id": step.step_id} if step.step_id else {}),
        "index": index,
        "fingerprint": fp,
        "config": step.config(),
        "seconds": round(seconds, 3),
        "removed": after - before,
        "stats": ctx.stats,
    }
    atomic_write_json(done, meta)
    write_table(table, ctx.run_dir / TABLE_FILE)
    _register(step, sdir, ctx)
    return table, fp, StepResult(index, step.run_name, False, seconds, after - before)


def _read_columns(path: Path) -> pl.DataFrame | None:
    """A step's saved columns, or None when missing or unreadable (then the step reruns)."""
    try:
        return read_table(path)  # one file, or parts when the table is large
    except Exception:  # a torn or foreign file: polars raises several types; all mean "redo"
        return None


def ensure_ingested(recipe: Recipe, run_dir: Path, quiet: bool, overwrite: bool = False) -> dict:
    """Ingest unless ``run_dir`` already holds this exact dataset config and source.

    A changed source (an edited file) or an incomplete ingest is ingested again, with a line
    saying why; other dataset settings replace the run's data only with ``overwrite``.
    """
    state, why = ingest_state(run_dir, recipe.dataset)
    if state == "current":
        log.info("ingest: unchanged, skipped")
        return read_ingest_summary(run_dir)
    if state == "stale":
        log.warning("ingest: %s; ingesting again", why)
    if state == "other" and not overwrite:
        raise UsageError(
            f"{run_dir} holds this recipe's run with other dataset settings; pass --overwrite "
            "to replace its data (steps, report and export are rebuilt), or choose a new --out"
        )
    return ingest(recipe.dataset, run_dir, quiet=quiet, overwrite=True)


def run_recipe(
    recipe: Recipe,
    run_dir: Path | str,
    *,
    device: str = "cpu",
    quiet: bool = False,
    force: bool = False,
    overwrite: bool = False,
    shard_values: ShardValues | None = None,
) -> list[StepResult]:
    """Ingest (if needed) and run every step of ``recipe`` in ``run_dir``; returns per-step results.

    ``run_dir`` must be new, empty or a run folder; it is locked while the recipe runs.
    ``shard_values`` (``curate merge``) gives the sharded steps their per-row values.
    """
    run_dir = claim_run_dir(run_dir)
    with run_lock(run_dir):
        return _run_recipe_locked(recipe, run_dir, device, quiet, force, overwrite, shard_values)


def _run_recipe_locked(
    recipe: Recipe,
    run_dir: Path,
    device: str,
    quiet: bool,
    force: bool,
    overwrite: bool,
    shard_values: ShardValues | None = None,
) -> list[StepResult]:
    summary = ensure_ingested(recipe, run_dir, quiet, overwrite)
    atomic_write_text(run_dir / "recipe.resolved.yaml", dump_yaml(recipe.resolved()))
    table = base_table(run_dir)
    ctx = RunContext(
        run_dir=run_dir, seed=recipe.seed, device=device, quiet=quiet, overwrite=overwrite
    )
    upstream = summary["fingerprint"]
    results = []
    steps = recipe.all_steps()
    for index, step in enumerate(steps, start=1):
        table, upstream, result = _run_one(step, index, table, upstream, ctx, force, shard_values)
        results.append(result)
    # Folders of steps no longer in the recipe would confuse the summary: remove them.
    keep = {_step_dir(run_dir, i, s).name for i, s in enumerate(steps, start=1)}
    for d in (run_dir / STEPS_DIR).glob("*") if (run_dir / STEPS_DIR).exists() else []:
        if d.name not in keep:
            shutil.rmtree(d)
    write_table(table, run_dir / TABLE_FILE)
    write_summary(run_dir, table)
    return results


def apply_step(
    run_dir: Path | str,
    step: Step,
    ctx: RunContext,
    force: bool = False,
    shard_values: ShardValues | None = None,
) -> pl.DataFrame:
    """Run one step on an existing run folder, outside a recipe (``curate dedup RUN_DIR``).

    The step is appended after the run's existing steps (or replaces an earlier run of the same
    step name), so the run folder stays one linear history.
    """
    run_dir = require_run_dir(run_dir)
    with run_lock(run_dir):
        return _apply_step_locked(run_dir, step, ctx, force, shard_values)


def applied_step_index(run_dir: Path, name: str) -> int:
    """The index ``apply_step`` gives step ``name``: its earlier folder's, else one past the last."""
    steps_dir = run_dir / STEPS_DIR
    existing = sorted(steps_dir.glob("*")) if steps_dir.exists() else []
    index = None
    for d in existing:
        if d.name.split("-", 1)[-1] == name:
            index = int(d.name.split("-", 1)[0])
    if index is None:
        index = max((int(d.name.split("-", 1)[0]) for d in existing), default=0) + 1
    return index


def step_dir(run_dir: Path, index: int, step: Step) -> Path:
    """``RUN_DIR/steps/NN-name``: where step number ``index`` keeps its files."""
    return _step_dir(run_dir, index, step)


def _apply_step_locked(
    run_dir: Path,
    step: Step,
    ctx: RunContext,
    force: bool,
    shard_values: ShardValues | None = None,
) -> pl.DataFrame:
    table = read_table(run_dir / TABLE_FILE)
    index = applied_step_index(run_dir, step.name)
    upstream = _hash(read_ingest_summary(run_dir) or {}, sorted(c for c in table.columns))
    ctx.run_dir = run_dir
    table, _, _ = _run_one(step, index, table, upstream, ctx, force, shard_values)
    write_table(table, run_dir / TABLE_FILE)
    write_summary(run_dir, table)
    return table


def write_summary(run_dir: Path, table: pl.DataFrame, max_thumbs: int = 24) -> dict:
    """Write ``stats.json`` and the report's summary section (counts per step and reason)."""
    from curate.report import Report, esc, html_table, thumb_grid

    rem = removal_frame(table).with_columns(reason_kind=reason_kind(pl.col("removed_reason")))
    counts = (
        rem.filter(~pl.col("keep"))
        .group_by(["removed_by", "reason_kind"])
        .len()
        .sort(["removed_by", "reason_kind"])
    )
    stats = {
        "rows": table.height,
        "kept": int(rem["keep"].sum()),
        "removed": int((~rem["keep"]).sum()),
        "removed_by_reason": [
            {"step": r[0], "reason": r[1], "count": r[2]} for r in counts.iter_rows()
        ],
        "steps": [],
    }
    for done in (
        sorted((run_dir / STEPS_DIR).glob(f"*/{DONE_FILE}"))
        if (run_dir / STEPS_DIR).exists()
        else []
    ):
        meta = read_json(done)
        if meta is None:
            continue
        stats["steps"].append(
            {k: meta.get(k) for k in ("index", "step", "seconds", "removed", "stats")}
            | ({"id": meta["id"]} if meta.get("id") else {})
        )
    assert stats["kept"] + stats["removed"] == stats["rows"]
    atomic_write_json(run_dir / "stats.json", stats)

    report = Report(run_dir / "report", title=f"curate report: {run_dir.name}")
    body = [
        f"<p><b>{stats['rows']}</b> input rows = <b>{stats['kept']}</b> kept + "
        f"<b>{stats['removed']}</b> removed.</p>",
        html_table(
            [
                (
                    s["index"],
                    s["step"] + (f" ({s['id']})" if s.get("id") else ""),
                    s["seconds"],
                    s["removed"],
                )
                for s in stats["steps"]
            ],  # fmt: skip
            ["#", "step", "seconds", "removed"],
        ),
        html_table(
            [(r["step"], r["reason"], r["count"]) for r in stats["removed_by_reason"]],
            ["removed by", "reason", "rows"],
        ),
    ]
    removed = table.join(rem, on=SAMPLE_ID).filter(~pl.col("keep"))
    if removed.height:
        try:
            from curate.io.store import ImageStore

            store = ImageStore(run_dir)
        except CurateError:
            store = None
        body.append("<h3>Removed samples</h3>")
        for (by, why), group in removed.group_by(
            ["removed_by", "reason_kind"], maintain_order=True
        ):
            sample = group.head(max_thumbs)
            ids = sample[SAMPLE_ID].to_list()
            images = store.get(ids) if store is not None else [None] * len(ids)
            details = sample["removed_reason"].to_list()
            captions = sample["caption"].to_list()
            items = [
                (img, f"{sid}: {cap or ''}" + (f" [{d}]" if d != why else ""))
                for img, sid, cap, d in zip(images, ids, captions, details, strict=True)
            ]
            body.append(
                f'<div class="group"><b>{esc(by)}</b>: {esc(why)} '
                f'<span class="muted">({group.height} rows)</span>{thumb_grid(items)}</div>'
            )
    report.add_section("summary", "Summary", "".join(body), order=0)
    return stats
