"""Engines that compute the per-row part of sharded steps on workers other than this process.

``--engine process`` (the default) is ``curate.shards.run_shard``: this process computes the
shard ``--shard i/N`` names. ``--engine ray`` (``curate.engines.ray_data``) hands the rows to a
Ray Data pipeline and writes the same part files and done markers, so ``curate merge``, the
report and export read them as they read any shard. Ray is imported only when it is used.
"""

from __future__ import annotations

ENGINES = ("process", "ray")


def make_engine(
    name: str,
    *,
    address: str | None = None,
    shard: tuple[int, int] | None = None,
):
    """The engine ``--engine NAME`` names (None for ``process``: the shard runs here).

    ``shard`` is ``--shard i/N`` when given: the engine then computes shard i of N only;
    otherwise it computes every shard of an N it chooses from the number of rows.
    """
    from curate.errors import UsageError

    if name == "process":
        if address is not None:
            raise UsageError("--ray-address needs --engine ray")
        return None
    if name != "ray":
        raise UsageError(f"--engine {name!r} is not one of {', '.join(ENGINES)}")
    from curate.engines.ray_data import RayEngine

    return RayEngine(address=address, shards=None if shard is None else [shard[0]],
                     of=None if shard is None else shard[1])  # fmt: skip
