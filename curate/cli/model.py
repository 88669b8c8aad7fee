"""Model commands: ``train`` a diffusion model on a dataset, ``sample`` from a trained model."""

from __future__ import annotations

import json
from pathlib import Path

import click

from curate.cli.common import (
    amg_config,
    amg_options,
    curate_errors,
    device_option,
    guidance_scale_option,
    quiet_option,
    seed_option,
    setup_logging,
)
from curate.cli.options import config_keys, config_options, errors_as_flags, pop_config
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
    click.echo(f"model written to {job.out_dir}")


@click.command()
@click.argument("model_dir", metavar="MODEL_DIR")
@click.option(
    "--num", type=click.IntRange(min=1), default=16, show_default=True, help="Number of samples."
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the PNGs and samples.jsonl.",
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=50, show_default=True, help="Sampler steps."
)
@click.option(
    "--method",
    type=click.Choice(["ddim", "ddpm", "euler", "heun"]),
    default="ddim",
    show_default=True,
    help="ddim and ddpm step with diffusers' own schedulers from the model's scheduler config "
    "(clip_sample, thresholding, spacing: the images diffusers' pipelines make); euler and heun "
    "(2 model calls per step) integrate the probability-flow ODE, limiting each x0 prediction "
    "as the config's clip_sample / thresholding say.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Samples per batch.",
)
@click.option(
    "--prompt", "prompts", multiple=True, help="Prompt (repeatable; cycled over --num samples)."
)
@click.option(
    "--prompts-from",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Use the captions of a run folder's kept rows as prompts, in order.",
)
@click.option(
    "--caption-transform",
    default=None,
    metavar="mc|rc|rt|cwr|rna",
    help="Rewrite each prompt (e.g. rna, an inference-time mitigation).",
)
@click.option(
    "--embedding-noise",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="gn at inference: lambda * N(0, I) on each prompt embedding (seeded per sample).",
)
@guidance_scale_option
@amg_options
@seed_option
@device_option
@quiet_option
@curate_errors
def sample(
    model_dir, num, out, steps, method, batch_size, prompts, prompts_from, caption_transform,
    embedding_noise, guidance_scale, seed, device, quiet, **amg_flags,
):  # fmt: skip
    """Generate images from a trained model (a folder, or `digits-tiny` shipped with curate).

    OUT gets the PNGs, samples.jsonl and report/index.html (the settings and a grid of the
    samples). With --amg, anti-memorization guidance steers each sample away from its nearest
    training image while they are too similar, and OUT also gets amg_steps.parquet (one row per
    sample and step), amg.json, and in the report which samples were guided, how often, and
    the similarity trajectories.

    \b
    Examples:
      curate sample digits-tiny --num 64 --out samples/
      curate sample models/digits --num 64 --out samples-amg/ --amg --amg-train runs/digits
    """
    from curate.core.text import text_encoder_for_model
    from curate.device import resolve_device
    from curate.errors import UsageError
    from curate.models.denoiser import load_denoiser
    from curate.models.sampling import sample as run_sample

    setup_logging(quiet)
    amg_cfg, amg_train = amg_config(amg_flags)
    if prompts and prompts_from:
        raise UsageError("pass either --prompt or --prompts-from, not both")
    from curate.io.folders import claim_folder

    claim_folder(out, "samples")
    dev = resolve_device(device)
    den = load_denoiser(model_dir, dev)
    if prompts_from:
        prompts = tuple(_run_prompts(prompts_from))
    cond, uncond, encoder = None, None, None
    texts: list[str | None] = [None] * num
    if den.conditional:
        if not prompts:
            raise UsageError(f"{model_dir} is text-conditional: pass --prompt or --prompts-from")
        texts = [prompts[i % len(prompts)] for i in range(num)]
        if caption_transform:
            from curate.captions.transforms import make_transform

            tf = make_transform(caption_transform, seed=seed)
            texts = [tf(t, str(i), 0) for i, t in enumerate(texts)]
        encoder = text_encoder_for_model(den, dev)
        cond = encoder.encode(texts)  # (num, L, D)
        if guidance_scale != 1.0:
            from curate.core.text import uncond_embedding

            uncond = uncond_embedding(encoder, dev)
        if embedding_noise > 0:
            from curate.captions.transforms import gaussian_noise_per_sample

            keys = [f"prompt{i}" for i in range(num)]
            cond = gaussian_noise_per_sample(cond, embedding_noise, seed, keys, 0)
    elif embedding_noise > 0:
        raise UsageError(f"{model_dir} is unconditional: --embedding-noise needs a text model")
    elif prompts:
        raise UsageError(f"{model_dir} is unconditional: drop --prompt/--prompts-from")
    if guidance_scale != 1.0 and not den.conditional:
        raise UsageError(f"{model_dir} is unconditional: --guidance-scale needs a text model")
    amg = None
    if amg_cfg is not None:
        from curate.guidance.run import load_amg

        amg = load_amg(den, amg_train, amg_cfg, device=dev, text_encoder=encoder)
    x = run_sample(
        den, num, steps=steps, method=method, seed=seed, cond=cond, batch_size=batch_size,
        device=dev, progress=not quiet, uncond=uncond, cfg_scale=guidance_scale, guidance=amg,
    )  # fmt: skip
    if den.vae is not None:
        x = torch_cat_decode(den, x, batch_size, dev)
    paths = save_images(x, out)
    per_amg = {}
    if amg is not None:
        per_amg = {r["sample"]: r for r in amg.samples_frame().iter_rows(named=True)}
    records = []
    with open(out / "samples.jsonl", "w", encoding="utf-8") as fh:
        for i, (p, t) in enumerate(zip(paths, texts, strict=True)):
            rec = {
                "index": i,
                "file": p.name,
                "prompt": t,
                "seed": seed,
                "method": method,
                "steps": steps,
                "guidance_scale": guidance_scale,
            }
            if amg is not None:
                rec.update({k: v for k, v in per_amg[i].items() if k != "sample"})
            fh.write(json.dumps(rec) + "\n")
            records.append(rec)
    from curate.models.sample_report import sample_settings, write_sample_report

    settings = sample_settings(
        model=model_dir, samples=num, sampler=method, steps=steps, guidance_scale=guidance_scale,
        seed=seed, caption_transform=caption_transform, embedding_noise=embedding_noise or None,
        amg=None if amg is None else amg.config.to_dict(),
    )  # fmt: skip
    report = write_sample_report(
        out, records, settings, title="curate sample (AMG)" if amg else "curate sample"
    )
    if amg is not None:
        from curate.guidance.run import write_amg

        write_amg(amg, out, report=report)
    click.echo(f"{num} samples written to {out}; report: {out}/report/index.html")
    if amg is not None:
        summary = json.loads((out / "amg.json").read_text())
        click.echo(
            f"AMG guided {summary['guided_samples']} of {num} samples "
            f"({summary['active_steps_mean']:.2f} guided steps per sample); "
            f"see {out}/report/index.html"
        )


def torch_cat_decode(den, x, batch_size: int, device: str):
    """VAE-decode latent samples batch by batch into images in [-1, 1]."""
    import torch

    return torch.cat(
        [den.decode(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    )


def save_images(x, out: Path) -> list[Path]:
    """Write (N, C, H, W) images in [-1, 1] as PNGs ``000000.png``...; returns the paths."""
    from curate.core.images import tensor_to_pil

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(tensor_to_pil(x)):
        path = out / f"{i:06d}.png"
        img.save(path)
        paths.append(path)
    return paths


def _run_prompts(run_dir: Path) -> list[str]:
    import polars as pl

    from curate.errors import DataError
    from curate.table import TABLE_FILE, kept_rows

    path = run_dir / TABLE_FILE
    if not path.exists():
        raise DataError(f"--prompts-from {run_dir}: no table.parquet; pass a run folder")
    caps = kept_rows(pl.read_parquet(path))["caption"].to_list()
    caps = [c for c in caps if c]
    if not caps:
        raise DataError(f"--prompts-from {run_dir}: no kept row has a caption")
    return caps


COMMANDS = [train, sample]
