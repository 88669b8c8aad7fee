"""``--engine`` / ``--ray-address``: who computes the per-row part of sharded steps.

Shared by ``curate dedup``, ``curate clean`` and ``curate rank`` (where ``--shard`` is). Ray
is imported only when ``--engine ray`` runs (``curate.engines.ray_data``), never at
command-line start.
"""

from __future__ import annotations

from collections.abc import Callable

import click


def engine_options(f: Callable) -> Callable:
    f = click.option(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="With --engine ray: the Ray cluster to use (e.g. ray://head:10001 or auto); "
        "default: $RAY_ADDRESS, else a local Ray started for this command.",
    )(f)
    return click.option(
        "--engine",
        type=click.Choice(["process", "ray"]),
        default="process",
        show_default=True,
        help="Who computes the per-row part of the sharded steps: this process (with --shard "
        "I/N), or a Ray Data pipeline (every shard, or the one --shard names) writing the "
        "same shard files; then `curate merge RUN_DIR` (`curate rank` merges by itself "
        "unless --shard is given). Ray: pip install 'curate[ray]'.",
    )(f)


def cli_engine(engine: str, ray_address: str | None, shard: str | None,
               device: str | None = None):  # fmt: skip
    """``(engine, i, n)`` from the flags: the engine is None for ``process``; ``i, n`` are
    ``--shard``'s (None without it: the engine computes every shard). ``device``: the
    ``--device`` as given (not resolved on this machine): Ray's actors ask for the cluster's
    GPUs unless it is ``cpu``."""
    from dataclasses import replace

    from curate.engines import make_engine
    from curate.shards import parse_shard

    parsed = parse_shard(shard) if shard is not None else None
    i, n = parsed if parsed is not None else (None, None)
    runner = make_engine(engine, address=ray_address, shard=parsed)
    if runner is not None and device is not None:
        runner = replace(runner, device=device.lower())
    return runner, i, n


def echo_markers(markers: list[dict], run_dir, label: Callable[[dict], str]) -> None:
    """One line per shard done (or skipped), then the merge to run."""
    for m in markers:
        state = "done before, skipped" if m.get("skipped") else f"{m['seconds']:.1f}s"
        how = f", ray: {m['engine']['actors']} actor(s)" if m.get("engine") else ""
        click.echo(f"{label(m)} shard {m['shard']}/{m['of']}, {m['rows']} rows ({state}{how})")
    n = markers[0]["of"] if markers else 0
    click.echo(f"when all {n} shards are done: curate merge {run_dir}")
