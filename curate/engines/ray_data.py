"""``--engine ray``: the per-row part of sharded steps as a Ray Data ``map_batches`` pipeline.

The run's images are written once as one parquet file per shard (the run's own store is an
Arrow stream dataset, which Ray cannot read)::

    RUN_DIR/ray/images/part-I-of-N.parquet    the base table's columns of shard I's rows +
                                              ``_image`` (the stored bytes)
    RUN_DIR/ray/images/part-I-of-N.json       written last: the ingest it copies, rows

The pipeline is a Ray dataset of the shards still to compute, ``map_batches`` over an actor
pool (``ActorPoolStrategy``; ``num_gpus=1`` per actor when the cluster has GPUs). An actor
builds the steps once and keeps the models they load (``RunContext.models``) for every shard
it is given; for each shard it reads the shard's parquet file, calls each step's own
``shard_values`` on the shard's rows (the call ``curate.shards.run_shard`` makes, with the
same rows in the same order) and writes ``part-I-of-N.parquet`` and its done marker through
``curate.shards.write_part`` (the marker adds ``engine``). So the part files are the
in-process ones by construction and ``curate merge``, the report and export do not change.

A shard is one call, not a slice of Ray's batches: CPU kernels give a row results that depend
on its position in its batch (a VGR moved by 6e-8 when Ray cut the rows at other places), so
the unit of work is the unit the in-process path computes. Parallelism comes from many small
shards (``ROWS_PER_PART`` rows each when the engine chooses N).

Every worker reads and writes the run folder by path: on a cluster the run folder must be on
a file system every node mounts (as for ``--shard`` jobs), and curate installed on every node.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from curate.errors import CurateError, DataError, MissingDependencyError, UsageError
from curate.io.folders import atomic_path, atomic_write_json, read_json, require_run_dir, run_lock
from curate.shards import (
    SHARDS_DIR,
    part_done,
    part_stem,
    shard_fingerprint,
    shard_of,
    write_part,
    write_plan,
)
from curate.steps.base import RunContext, Step
from curate.table import SAMPLE_ID

log = logging.getLogger("curate")

ROWS_PER_PART = 2048  # rows per shard when the engine chooses N (a shard is one call)
INPUT_DIR = Path("ray") / "images"
IMAGE_COLUMN = "_image"
RESERVED_CPUS = 2.0  # left to Ray Data's read tasks and its own operators


def require_ray():
    """The ``ray`` module with Ray Data, or a one-line error naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "ray[data]", "--engine ray", "pip install 'curate[ray]'"
        ) from None
    return ray


# -- what an actor sees ---------------------------------------------------------------------
class ShardStore:
    """The images of one shard, read like the run's ``ImageStore`` (by ``sample_id``)."""

    def __init__(self, sample_ids: Sequence[str], blobs: Sequence[bytes | None]):
        self._blob = dict(zip(sample_ids, blobs, strict=True))

    def __len__(self) -> int:
        return len(self._blob)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._blob

    def encoded(self, sample_id: str) -> bytes | None:
        return self._blob[sample_id]

    def encoded_many(self, sample_ids: Sequence[str]) -> list[bytes | None]:
        return [self._blob[s] for s in sample_ids]

    def get(self, sample_ids: Sequence[str]) -> list:
        from curate.core.images import decode_rgb_many

        return decode_rgb_many(self.encoded_many(sample_ids))

    def iter_batches(self, sample_ids: Sequence[str], batch_size: int = 64):
        ids = list(sample_ids)
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            yield chunk, self.get(chunk)


@dataclass
class ShardContext(RunContext):
    """A ``RunContext`` whose images are the shard's (``store``), not the run folder's."""

    store: ShardStore | None = None

    def images(self):
        return self.store


class _CountingDict(dict):
    """The actor's kept models; ``loads`` counts the models this process has loaded."""

    loads = 0  # per process (a class attribute): a cache made anew would count again

    def __setitem__(self, key, value):
        _CountingDict.loads += 1
        super().__setitem__(key, value)


class ShardValuesActor:
    """One actor of the pool: the steps, built once, and the models they have loaded.

    Each row it is given names one shard and its input file; for every step with that shard
    to do it calls ``shard_values`` on the shard's rows and writes the part file and marker.
    ``work``: ``(index, step, sdir, fingerprint, shards)`` per step."""

    def __init__(self, work: list, of: int, seed: int, device: str, run_dir: str, info: dict):
        self.work, self.of, self.seed, self.device = work, of, seed, device
        self.run_dir, self.info = Path(run_dir), info
        self.models = _CountingDict()
        self.pid = os.getpid()

    def __call__(self, batch):
        import pyarrow as pa

        markers = []
        for i, file in zip(batch["shard"].to_pylist(), batch["file"].to_pylist(), strict=True):
            frame = pl.read_parquet(file)
            store = ShardStore(frame[SAMPLE_ID].to_list(), frame[IMAGE_COLUMN].to_list())
            rows = frame.drop(IMAGE_COLUMN)
            for index, step, sdir, fp, shards in self.work:
                if i not in shards:
                    continue
                sdir = Path(sdir)
                (sdir / f"{part_stem(i, self.of)}.json").unlink(missing_ok=True)
                ctx = ShardContext(run_dir=self.run_dir, seed=self.seed, device=self.device,
                                   quiet=True, step_dir=sdir / f"work-{i}-of-{self.of}",
                                   models=self.models, store=store)  # fmt: skip
                start = time.perf_counter()
                try:
                    values = step.shard_values(rows, ctx)
                except CurateError as err:  # Ray keeps only the text of an exception: send it
                    failed = {"error": type(err).__name__, "message": str(err)}
                    return pa.table({"marker": pa.array([json.dumps(failed)], pa.string())})
                seconds = time.perf_counter() - start
                engine = {**self.info, "pid": self.pid, "model_loads": _CountingDict.loads,
                          "nice": os.getpriority(os.PRIO_PROCESS, 0)}  # fmt: skip
                meta = write_part(step, index, sdir, i, self.of, fp, rows, values, seconds,
                                  ctx.stats, engine=engine)  # fmt: skip
                markers.append(json.dumps(meta))
        return pa.table({"marker": pa.array(markers, pa.string())})


def start_local_ray(num_cpus: int) -> None:
    """Start a local Ray of ``num_cpus`` logical CPUs, without a dashboard.

    Ray starts its workers at nice 15; in a local Ray they are the whole job, and beside any
    other busy process on the machine they starved (a 45 s test took 18 min on 2 cores beside
    two busy loops). Here they run at normal priority."""
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False, _system_config={"worker_niceness": 0})  # fmt: skip


# -- the engine -----------------------------------------------------------------------------
@dataclass
class RayEngine:
    """``--engine ray [--ray-address ADDR]``: see the module docstring.

    ``shards`` / ``of``: the shards to compute (None: every shard of ``of``; ``of`` None: one
    shard per ``ROWS_PER_PART`` rows). ``actors``, ``actor_cpus``: the pool (None: one actor
    per GPU when the cluster has GPUs and the device is not the CPU, else the cluster's CPUs
    less ``RESERVED_CPUS``, shared out as fractional CPUs). ``num_cpus``: the logical CPUs of
    the local Ray this engine starts when it connects to none. ``device``: the ``--device``
    asked for (``auto``, ``cpu``, ``cuda``), which decides the pool with the cluster's GPUs, not
    the driver's (a driver without a GPU resolves ``auto`` to the CPU); None: the run
    context's device.
    """

    address: str | None = None
    shards: list[int] | None = None
    of: int | None = None
    actors: int | None = None
    actor_cpus: float | None = None
    num_cpus: int | None = None
    device: str | None = None

    def run(
        self,
        run_dir: Path | str,
        steps: Sequence[tuple[int, Step]],
        ctx: RunContext,
        plan: dict,
        force: bool = False,
    ) -> list[dict]:
        from curate.io.ingest import read_ingest_summary
        from curate.runner import base_table, step_dir

        ray = require_ray()
        run_dir = require_run_dir(run_dir)
        with run_lock(run_dir, shared=True):
            summary = read_ingest_summary(run_dir)
            if summary is None:
                raise UsageError(f"{run_dir} is not ingested yet; run `curate ingest` first")
            table = base_table(run_dir)
            of = self.of or max(1, math.ceil(table.height / ROWS_PER_PART))
            shards = list(range(of)) if self.shards is None else list(self.shards)
            write_plan(run_dir, {**plan, "of": of})
            home = shard_of(table[SAMPLE_ID].to_list(), of)
            rows_of = {i: table.filter(pl.Series(home == i)) for i in shards}
            markers: dict[tuple[int, int], dict] = {}
            pending: list[tuple[int, Step, Path, str, list[int]]] = []
            for index, step in steps:
                sdir = step_dir(run_dir, index, step) / SHARDS_DIR
                fp = shard_fingerprint(step, summary, ctx.seed)
                todo = []
                for i in shards:
                    done = part_done(sdir, i, of, fp, rows_of[i].height, force)
                    if done is not None:
                        log.info("%s shard %d/%d: done, skipped", step.name, i, of)
                        markers[index, i] = done
                    else:
                        todo.append(i)
                if todo:
                    pending.append((index, step, sdir, fp, todo))
            if pending:
                need = sorted({i for *_, todo in pending for i in todo})
                files = export_images(run_dir, rows_of, need, of, summary)
                started = self._connect(ray)
                try:
                    markers.update(self._run_steps(ray, run_dir, pending, of, rows_of, files, ctx))
                finally:
                    if started:
                        ray.shutdown()
        return [markers[index, i] for index, _ in steps for i in shards]

    # -- Ray --------------------------------------------------------------------------------
    def _connect(self, ray) -> bool:
        """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local Ray with explicit
        CPU reservations; True when this engine started it (and shuts it down)."""
        if ray.is_initialized():
            return False
        address = self.address or os.environ.get("RAY_ADDRESS")
        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                start_local_ray(self.num_cpus or max(4, os.cpu_count() or 1))
        except ConnectionError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"--ray-address {address}: cannot connect to Ray ({first})") from None
        return True

    def _pool(self, ray, device: str, blocks: int) -> tuple[int, float, float, str]:
        """(actors, CPUs per actor, GPUs per actor, the actors' device)."""
        res = ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))
        use_gpu = gpus >= 1 and device != "cpu"
        if use_gpu:
            actors = self.actors or int(gpus)
            return actors, self.actor_cpus or 1.0, 1.0, "cuda"
        actors = self.actors or max(1, int(cpus - RESERVED_CPUS))
        actors = max(1, min(actors, blocks))
        share = self.actor_cpus or max(0.25, (cpus - RESERVED_CPUS) / actors)
        if actors * share > max(cpus - 1.0, 0.25):
            raise UsageError(
                f"--engine ray: {actors} actors at {share:g} CPU each leave no CPU of the "
                f"cluster's {cpus:g} for reading the rows; use fewer actors or fractional CPUs"
            )
        if device.startswith("cuda"):
            log.warning("--engine ray: the Ray cluster has no GPU; the actors run on the CPU")
        return actors, share, 0.0, "cpu"

    def _run_steps(self, ray, run_dir, pending, of, rows_of, files, ctx) -> dict:
        """One Ray pipeline for every pending step: a dataset of the shards to compute, each
        given whole to one actor (see the module docstring)."""
        from ray.data import ActorPoolStrategy, DataContext

        need = sorted({i for *_, todo in pending for i in todo})
        items = [{"shard": i, "file": files[i]} for i in need if i in files]
        markers: dict = {}
        if items:
            asked = self.device or ctx.device
            actors, cpus_each, gpus_each, device = self._pool(ray, asked, len(items))
            info = {"name": "ray", "actors": actors, "actor_cpus": cpus_each,
                    "actor_gpus": gpus_each,
                    "address": self.address or os.environ.get("RAY_ADDRESS") or "local"}  # fmt: skip
            log.info("%s: %d shards (%d rows) through %d Ray actor(s) (%g CPU, %g GPU each)",
                     ", ".join(step.name for _, step, *_ in pending), len(items),
                     sum(rows_of[i].height for i in need), actors, cpus_each,
                     gpus_each)  # fmt: skip
            work = [(index, step, str(sdir), fp, set(todo))
                    for index, step, sdir, fp, todo in pending]  # fmt: skip
            data_ctx = DataContext.get_current()
            saved = data_ctx.enable_progress_bars
            data_ctx.enable_progress_bars = not ctx.quiet
            try:
                ds = ray.data.from_items(items, override_num_blocks=len(items))
                out = ds.map_batches(
                    ShardValuesActor,
                    fn_constructor_args=(work, of, ctx.seed, device, str(run_dir), info),
                    batch_size=1,  # one shard a call: its rows are one unit, as in-process
                    batch_format="pyarrow",
                    compute=ActorPoolStrategy(size=actors),
                    num_cpus=cpus_each,
                    num_gpus=gpus_each,
                )
                try:
                    for row in out.iter_rows():
                        meta = json.loads(row["marker"])
                        if "error" in meta:  # a step's own error, raised again here
                            raise _curate_error(meta["error"], meta["message"])
                        markers[meta["index"], meta["shard"]] = meta
                except CurateError:
                    raise
                except Exception as err:  # anything else a worker raised: one line
                    raise _worker_error(err) from None
            finally:
                data_ctx.enable_progress_bars = saved
        for index, step, sdir, fp, todo in pending:  # shards without rows: nothing to hand out
            for i in todo:
                if (index, i) not in markers:
                    empty = RunContext(run_dir=run_dir, seed=ctx.seed, device=ctx.device,
                                       quiet=True, step_dir=sdir / f"work-{i}-of-{of}")  # fmt: skip
                    values = step.shard_values(rows_of[i], empty)
                    markers[index, i] = write_part(step, index, sdir, i, of, fp, rows_of[i],
                                                   values, 0.0, {})  # fmt: skip
        return markers


def _curate_error(name: str, message: str) -> CurateError:
    """The error ``name`` of ``curate.errors`` with ``message`` (as a step raised it)."""
    import curate.errors

    cls = getattr(curate.errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, CurateError)):
        cls = CurateError
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


def _worker_error(err: BaseException) -> DataError:
    """One line for an exception a Ray worker raised: the last ``Name: message`` line of the
    traceback text Ray hands back."""
    import re

    found = re.findall(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", str(err), re.M)
    name, message = found[-1] if found else (type(err).__name__, str(err).strip())
    first = (message.strip().splitlines() or [""])[0]
    return DataError(f"--engine ray: a Ray worker failed: {name}: {first}")


# -- the input files ------------------------------------------------------------------------
def export_images(
    run_dir: Path,
    rows_of: dict[int, pl.DataFrame],
    shards: Sequence[int],
    of: int,
    summary: dict,
) -> dict[int, str]:
    """The parquet file holding shard ``i``'s rows (the base table's columns) and their stored
    image bytes, for each of ``shards`` with rows: written once per ingest and N, reused while
    the ingest is the same."""
    root = run_dir / INPUT_DIR
    key = {
        "fingerprint": summary.get("fingerprint"),
        "source_fingerprint": summary.get("source_fingerprint"),
    }
    store, out = None, {}
    for i in shards:
        stem, rows = part_stem(i, of), rows_of[i]
        path = root / f"{stem}.parquet"
        if not rows.height:
            continue
        meta = read_json(root / f"{stem}.json")
        if meta is None or meta.get("key") != key or meta.get("rows") != rows.height \
                or not path.exists():  # fmt: skip
            if store is None:
                from curate.io.store import ImageStore

                store = ImageStore(run_dir)
            root.mkdir(parents=True, exist_ok=True)
            blobs = store.encoded_many(rows[SAMPLE_ID].to_list())
            frame = rows.with_columns(pl.Series(IMAGE_COLUMN, blobs, pl.Binary))
            with atomic_path(path) as tmp:
                frame.write_parquet(tmp, compression="zstd", statistics=False)
            atomic_write_json(root / f"{stem}.json", {"key": key, "rows": rows.height})
        out[i] = str(path.resolve())
    return out
