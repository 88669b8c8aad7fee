"""Model commands: ``train`` a diffusion model on a dataset, ``sample`` from a trained model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from curate.cli.common import (
    amg_config,
    amg_options,
    curate_errors,
    device_option,
    quiet_option,
    setup_logging,
)
from curate.cli.options import config_keys, config_options, errors_as_flags, pop_config
from curate.generate import SampleConfig
from curate.train.config import TrainConfig

# what `train` takes besides the TrainConfig fields, as named in the job's errors
_TRAIN_JOB_KEYS = config_keys(TrainConfig, "dataset", "out_dir", "resume", "overwrite", "device")


@click.command()
@click.option(
    "--dataset",
    required=True,
    metavar="RUN_DIR_OR_NAME",
    help="A curate run folder (kept rows are used) or any source `curate ingest` accepts, e.g. builtin:digits.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Model folder to write (a diffusers pipeline + curate_train.json).",
)
@config_options(TrainConfig)
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
@device_option
@quiet_option
@curate_errors
@errors_as_flags(_TRAIN_JOB_KEYS)
def train(dataset, out_dir, resume, overwrite, dry_run, device, quiet, **settings):
    """Train a diffusion model on a dataset (`accelerate launch -m curate train ...` for GPUs).

    Every training setting is a field of curate.train.config.TrainConfig, which the `train`
    recipe step takes under the same names (--sigma-n here is sigma_n there).

    \b
    Examples:
      curate train --dataset runs/digits --out models/digits --steps 3000
      curate train --dataset runs/digits --out models/ambient --objective ambient --sigma-n 1
      curate train --dataset runs/digits --out models/digits --resume
    """
    import dataclasses

    config = pop_config(TrainConfig, settings)
    setup_logging(quiet)
    config.check()
    if dry_run:
        resolved = dataclasses.asdict(config.with_default_channels())
        click.echo(json.dumps({"dataset": dataset, "out": str(out_dir), **resolved}, indent=1))
        return
    from curate.device import resolve_device
    from curate.train.job import train_job

    job = train_job(
        dataset,
        out_dir,
        config,
        device=resolve_device(device),
        resume=resume,
        overwrite=overwrite,
        quiet=quiet,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun, process 0 speaks for the job
        click.echo(f"model written to {job.out_dir}")


# what `sample` takes besides the SampleConfig fields, as named in the job's errors
_SAMPLE_JOB_KEYS = config_keys(SampleConfig, "out_dir", "device")


@click.command()
@click.argument("model", metavar="MODEL_DIR")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the PNGs and samples.jsonl.",
)
@config_options(SampleConfig, exclude=("model",))
@amg_options
@device_option
@quiet_option
@curate_errors
@errors_as_flags(_SAMPLE_JOB_KEYS)
def sample(model, out_dir, device, quiet, **params):
    """Generate images from a trained model (a folder, or `digits-tiny` shipped with curate).

    OUT gets the PNGs, samples.jsonl and report/index.html (the settings and a grid of the
    samples). With --amg, anti-memorization guidance steers each sample away from its nearest
    training image while they are too similar, and OUT also gets amg_steps.parquet (one row per
    sample and step), amg.json, and in the report which samples were guided, how often, and
    the similarity trajectories.

    Every sampling setting is a field of curate.generate.SampleConfig (--batch-size here is
    batch_size there, --prompt is prompts, MODEL_DIR is model).

    \b
    Examples:
      curate sample digits-tiny --num 64 --out samples/
      curate sample models/digits --num 64 --out samples-amg/ --amg --amg-train runs/digits
    """
    from curate.device import resolve_device
    from curate.generate import generate_job

    setup_logging(quiet)
    config = pop_config(SampleConfig, {**params, "model": model})
    amg_cfg, amg_train = amg_config(params)
    config.check()
    job = generate_job(
        config, out_dir, amg=amg_cfg, amg_train=amg_train, device=resolve_device(device),
        quiet=quiet,
    )  # fmt: skip
    if os.environ.get("RANK", "0") != "0":  # under torchrun, process 0 speaks for the job
        return
    num = config.num
    click.echo(f"{num} samples written to {out_dir}; report: {out_dir}/report/index.html")
    if job.amg is not None:
        summary = job.amg_summary
        click.echo(
            f"AMG guided {summary['guided_samples']} of {num} samples "
            f"({summary['active_steps_mean']:.2f} guided steps per sample); "
            f"see {out_dir}/report/index.html"
        )


COMMANDS = [train, sample]
