"""``curate dedup RUN_DIR`` (run the dedup steps on a run folder) and ``curate dedup calibrate``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from curate.cli.common import curate_errors, device_option, quiet_option, seed_option, setup_logging
from curate.cli.engine import cli_engine, echo_markers, engine_options
from curate.cli.options import (
    LazyOptionsCommand,
    comma_list,
    config_keys,
    config_options,
    errors_as_flags,
    keys_to_flags,
    pop_config,
)

# The dedup settings are the fields of the two steps (curate.steps.dedup), declared there once
# with their help and ranges; `dedup run` builds its options from them when it is used (the
# step module loads numpy and polars, which `curate --help` must not). A field of both steps is
# one option setting both; where the two defaults differ it defaults to each step's own.


def _steps():
    from curate.steps.dedup import DedupCaptions, DedupImages

    return DedupImages, DedupCaptions


def _field(cls: type, key: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(cls)}[key]


def _shared() -> tuple[str, ...]:
    images, captions = _steps()
    return tuple(k for k in config_keys(captions) if k in config_keys(images) and k != "tiers")


def _own_defaults() -> tuple[str, ...]:
    images, captions = _steps()
    return tuple(k for k in _shared() if _field(images, k).default != _field(captions, k).default)


def _run_keys() -> tuple[str, ...]:
    """The keys `dedup run` names in errors: both steps' fields (tiers are --images and
    --captions, so they stay keys) and ``shard``."""
    images, captions = _steps()
    keys = dict.fromkeys(config_keys(images) + config_keys(captions, "shard"))
    return tuple(k for k in keys if k != "tiers")


def _own_default(key: str) -> dict:
    images, captions = _steps()
    a, b = _field(images, key).default, _field(captions, key).default
    help_text = keys_to_flags(_field(images, key).metadata["help"], config_keys(images))
    return {
        "default": None,
        "show_default": False,
        "help": f"{help_text}  [default: {a} for images, {b} for captions]",
    }


def _tiers_option(flag_name: str, cls: type):
    f = _field(cls, "tiers")
    return click.option(
        flag_name,
        flag_name[2:],
        default=",".join(f.default),
        show_default=True,
        metavar="TIERS",
        help=f.metadata["help"],
    )


def _run_options() -> list:
    images, captions = _steps()
    over = {k: _own_default(k) for k in _own_defaults()}
    return [
        _tiers_option("--images", images),
        _tiers_option("--captions", captions),
        config_options(images, exclude=("tiers",), overrides=over),
        config_options(captions, exclude=("tiers", *_shared())),
    ]


class _DefaultRunGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to ``run``.

    So ``curate dedup RUN_DIR`` and ``curate dedup calibrate RUN_DIR`` both work.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _run_dir(path: Path) -> Path:
    from curate.errors import UsageError
    from curate.table import table_exists

    if not table_exists(path):
        raise UsageError(
            f"RUN_DIR {path} has no table.parquet: run `curate ingest --out {path}` first"
        )
    return path


@click.group(cls=_DefaultRunGroup, name="dedup")
def dedup() -> None:
    """Find duplicate images and captions in a run folder (or calibrate thresholds).

    \b
    Examples:
      curate dedup runs/photos --images exact,phash,sscd --captions exact,minhash
      curate dedup calibrate runs/photos --tiers phash,sscd --sample 40
    """


@dedup.command(name="run", cls=LazyOptionsCommand, lazy_options=_run_options)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Recompute even when the step's config is unchanged.")
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Compute only the per-row part (decode, hashes, embeddings) of shard I of N (from 0) "
    "into RUN_DIR/steps/NN-name/shards/; shards run at once, then `curate merge RUN_DIR`.",
)
@engine_options
@device_option
@seed_option
@quiet_option
@curate_errors
@errors_as_flags(_run_keys)
def run(
    run_dir: Path,
    images: str,
    captions: str,
    force: bool,
    shard: str | None,
    engine: str,
    ray_address: str | None,
    device: str,
    seed: int,
    quiet: bool,
    **settings,
) -> None:
    """Run dedup_images and dedup_captions on RUN_DIR and print what they found.

    Thresholds default to auto: calibrated on RUN_DIR's own images and captions.

    With --shard I/N only the per-row part runs, on the rows whose sample_id hashes to shard
    I; any number of shards run at once on one run folder (separate processes or machines
    sharing its disk). `curate merge RUN_DIR` then checks that every row is covered once,
    groups duplicates across shards, calibrates thresholds and writes the table one process
    would have written. Give every shard the same options.

    \b
    Examples:
      curate dedup run runs/digits
      curate dedup run runs/photos --images exact,phash,sscd --phash-radius 6
    \b
    In shards, by hand (four processes) or as a Slurm array:
      for i in 0 1 2 3; do curate dedup runs/big --shard $i/4 & done; wait
      curate merge runs/big
      sbatch --array=0-31 --wrap 'curate dedup runs/big --shard $SLURM_ARRAY_TASK_ID/32'
      sbatch --dependency=afterok:JOBID --wrap 'curate merge runs/big'
    \b
    On Ray (a local one, or a cluster that mounts the run folder):
      curate dedup runs/big --engine ray --ray-address auto && curate merge runs/big
    """
    from curate.device import resolve_device
    from curate.errors import UsageError
    from curate.runner import apply_step
    from curate.steps.base import RunContext

    setup_logging(quiet)
    run_dir = _run_dir(run_dir)
    image_tiers, caption_tiers = comma_list(images), comma_list(captions)
    if not image_tiers and not caption_tiers:
        raise UsageError("--images and --captions are both 'none': nothing to do")
    steps, own_default = [], _own_defaults()
    for cls, tiers in zip(_steps(), (image_tiers, caption_tiers), strict=True):
        if tiers:
            values = {k: settings[k] for k in config_keys(cls) if k in settings}
            values = {k: v for k, v in values.items() if not (k in own_default and v is None)}
            steps.append(cls(**{**values, "tiers": tiers}))
    for step in steps:
        problems = step.validate()
        if problems:
            raise UsageError(f"{step.name}: " + "; ".join(problems))
    ctx = RunContext(run_dir=run_dir, seed=seed, device=resolve_device(device), quiet=quiet)
    if shard is not None or engine != "process" or ray_address is not None:
        from curate.shards import cli_argv, shard_apply

        runner, i, n = cli_engine(engine, ray_address, shard, device=device)
        markers = shard_apply(run_dir, steps, i, n, ctx, argv=cli_argv(), force=force,
                              engine=runner)  # fmt: skip
        echo_markers(markers, run_dir, lambda m: f"{m['step']}:")
        return
    for step in steps:
        apply_step(run_dir, step, ctx, force=force)
        done = sorted((run_dir / "steps").glob(f"*-{step.name}/done.json"))
        stats = json.loads(done[-1].read_text())["stats"] if done else ctx.stats
        click.echo(
            f"{step.name}: {stats.get('duplicates', 0)} duplicates in {stats.get('groups', 0)} "
            f"groups, {stats.get('dropped', 0)} marked for removal; by type {stats.get('by_type', {})}"
        )
        if stats.get("thresholds"):
            click.echo(f"  thresholds: {stats['thresholds']}")
    click.echo(
        f"columns added to {run_dir / 'table.parquet'}; report: {run_dir / 'report' / 'index.html'}"
    )


# `dedup calibrate`'s settings: curate.dedup.calibrate.CalibrateConfig, and the dedup_images
# step's embedder model fields (one declaration each, shared with `dedup run` and recipes).
_EMBEDDER_KEYS = ("sscd_model", "clip_model", "clip_pretrained")


def _calibrate_config():
    from curate.dedup.calibrate import CalibrateConfig

    return CalibrateConfig


def _calibrate_options() -> list:
    images, _ = _steps()
    return [config_options(_calibrate_config()), config_options(images, only=_EMBEDDER_KEYS)]


def _calibrate_keys() -> tuple[str, ...]:
    return config_keys(_calibrate_config(), *_EMBEDDER_KEYS)


@dedup.command(name="calibrate", cls=LazyOptionsCommand, lazy_options=_calibrate_options)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the full result as JSON here.",
)
@device_option
@seed_option
@quiet_option
@curate_errors
@errors_as_flags(_calibrate_keys)
def calibrate(
    run_dir: Path, out: Path | None, device: str, seed: int, quiet: bool, **settings
) -> None:
    """Plant known copies into a sample of RUN_DIR's images; print precision/recall per tier and threshold.

    Its settings are the fields of curate.dedup.calibrate.CalibrateConfig and the embedder
    model settings of the dedup_images step (--sscd-model is sscd_model there).

    \b
    Examples:
      curate dedup calibrate runs/photos
      curate dedup calibrate runs/photos --out calibration.json
    """
    import polars as pl

    from curate.dedup.calibrate import calibrate_run, format_calibration
    from curate.device import resolve_device
    from curate.steps.base import RunContext
    from curate.table import read_table

    setup_logging(quiet)
    run_dir = _run_dir(run_dir)
    config = pop_config(_calibrate_config(), settings)
    models = {k: settings[k] for k in _EMBEDDER_KEYS}
    options = {
        "sscd": {"model": models["sscd_model"]},
        "clip": {"model": models["clip_model"], "pretrained": models["clip_pretrained"]},
    }
    dev = resolve_device(device)
    result = calibrate_run(run_dir, config, tier_options=options, seed=seed, device=dev)
    click.echo(format_calibration(result))
    # What `threshold: auto` would choose on this run, per tier and size band.
    from curate.dedup.auto import format_auto
    from curate.steps.dedup import DedupImages, _jsonable

    step = DedupImages(tiers=config.tiers, **models)
    auto_ctx = RunContext(run_dir=run_dir, seed=seed, device=dev, quiet=quiet,
                          step_dir=run_dir / "artifacts" / "dedup-calibrate")  # fmt: skip
    ok = read_table(run_dir).filter(pl.col("status") == "ok").sort("sample_id")
    feats = step._features(auto_ctx, ok["sample_id"].to_list())
    _, auto_result = step._tiers(ok, feats, auto_ctx)
    result["auto"] = _jsonable(auto_result)
    click.echo(format_auto(result["auto"], step.target_precision))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2), encoding="utf-8")
        click.echo(f"wrote {out}")


COMMANDS = [dedup]
