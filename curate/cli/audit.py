"""``curate audit``: generate with a model and measure how much it copies its training set."""

from __future__ import annotations

import os

import click

from curate.audit.settings import AuditConfig
from curate.cli.common import (
    amg_config,
    amg_options,
    curate_errors,
    device_option,
    quiet_option,
)
from curate.cli.options import config_keys, config_options, errors_as_flags, pop_config

# what `audit` takes besides the AuditConfig fields, as named in the job's errors
_AUDIT_JOB_KEYS = config_keys(AuditConfig, "train_dir", "out_dir", "device")


@click.command("audit")
@click.argument("model_dir", required=False, type=click.Path(file_okay=False))
@click.option(
    "--train",
    "train_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Run folder the model was trained on (its kept rows are the training set).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for audit.json, samples.parquet, sample PNGs and report/index.html.",
)
@config_options(AuditConfig, exclude=("model",))
@amg_options
@device_option
@quiet_option
@curate_errors
@errors_as_flags(_AUDIT_JOB_KEYS)
def audit(
    model_dir: str | None, train_dir: str, out_dir: str, device: str, quiet: bool, **params
) -> None:
    """Generate from MODEL_DIR and measure memorization against the training run folder.

    Every audit setting is a field of curate.audit.settings.AuditConfig, which the `audit`
    recipe step takes under the same names (--num-samples here is num_samples there; MODEL_DIR
    is model).

    With --amg the audit runs twice from the same seeds, plain and with anti-memorization
    guidance (searching the --train run; --amg-train is not needed), and reports both side by
    side: OUT (plain), OUT/amg (guided, with amg_steps.parquet), OUT/comparison.json.

    \b
    Example:
      curate audit models/digits --train runs/digits --num-samples 512 --out audits/digits
      curate audit --oracle --train runs/digits --resolution 16 --out audits/oracle
      curate audit models/digits --train runs/digits --out audits/amg --amg
    """
    from curate.audit.job import audit_job
    from curate.cli.common import setup_logging
    from curate.device import resolve_device
    from curate.errors import UsageError
    from curate.io.folders import claim_folder

    setup_logging(quiet)
    config = pop_config(AuditConfig, {**params, "model": model_dir})
    amg_flags = {k: v for k, v in params.items() if k.startswith("amg")}
    if amg_flags.get("amg") and amg_flags.get("amg_train") and amg_flags["amg_train"] != train_dir:
        raise UsageError("--amg-train differs from --train; the audit guides against --train")
    amg_flags["amg_train"] = None
    amg_cfg, _ = amg_config(amg_flags)
    if config.oracle == (model_dir is not None):
        raise UsageError("give either MODEL_DIR or --oracle (exactly one)")
    config.validate()
    main = os.environ.get("RANK", "0") == "0"  # under torchrun, process 0 owns OUT
    if main:
        claim_folder(out_dir, "audit")
    job = audit_job(
        config, train_dir, out_dir, amg=amg_cfg, device=resolve_device(device), quiet=quiet
    )
    if not main:
        return
    result = job.result
    if job.comparison is not None:
        for metric, plain_v, amg_v in job.comparison["table"]:
            click.echo(f"{metric}: plain {plain_v or '-'} | AMG {amg_v or '-'}")
        for warning in result.summary["warnings"]:
            click.echo(f"warning: {warning}", err=True)
        for warning in job.guided.summary["warnings"]:  # the training-set ones are the same
            if warning not in result.summary["warnings"]:
                click.echo(f"warning: AMG audit: {warning}", err=True)
        click.echo(
            f"wrote {out_dir}/comparison.json, {out_dir}/amg/ and {out_dir}/report/index.html"
        )
        return
    m = result.summary["metrics"]
    click.echo(
        f"memorized (NN1/NN2 < {m['nn_ratio']['threshold']:.3g}): "
        f"{m['nn_ratio']['fraction_memorized']:.1%}; "
        f"normalised L2 < {m['normalized_l2']['threshold']:.3g}: "
        f"{m['normalized_l2']['fraction_memorized']:.1%}; "
        f"top-1 similarity ({m['similarity']['features']}) p95 {m['similarity']['p95']:.3f}, "
        f"> {m['similarity']['threshold']:.3g}: {m['similarity']['frac_above']:.1%}; "
        f"{m['frechet']['name']} {m['frechet']['value']:.4g}"
    )
    align = m.get("text_alignment") or {}
    if align.get("value") is not None:
        click.echo(f"text alignment, {align['name']}: {align['value']:.2f}")
    for warning in result.summary["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {out_dir}/audit.json and {out_dir}/report/index.html")


COMMANDS = [audit]
