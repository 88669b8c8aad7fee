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


@click.command()
@click.option(
    "--dataset",
    required=True,
    metavar="RUN_DIR_OR_NAME",
    help="A curate run folder (kept rows are used) or any source `curate ingest` accepts, e.g. builtin:digits.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Model folder to write (a diffusers pipeline + curate_train.json).",
)
@click.option(
    "--objective",
    type=click.Choice(["ddpm", "ambient"]),
    default="ddpm",
    show_default=True,
    help="ddpm: standard loss; ambient: fixed noisy copies above --sigma-n (Shah et al. 2025).",
)
@click.option(
    "--sigma-n",
    type=click.FloatRange(min=0),
    default=0.5,
    show_default=True,
    help="Ambient noise level (VE units of the model input, images in [-1, 1]).",
)
@click.option(
    "--sigma-n-column",
    default=None,
    metavar="COL",
    help="Table column with a per-sample sigma_n (null rows use --sigma-n).",
)
@click.option(
    "--noisy-only-column",
    default=None,
    metavar="COL",
    help="Boolean table column: true rows are only ever seen as noisy copies.",
)
@click.option(
    "--ambient-noise",
    type=click.Choice(["fixed", "redraw"]),
    default="fixed",
    show_default=True,
    help="fixed: one noisy copy per sample (the method); redraw: new noise each epoch (a control that breaks it).",
)
@click.option(
    "--model",
    default="tiny",
    show_default=True,
    metavar="tiny|unet-32|unet-64|sd-finetune:ID",
    help="Model preset, or sd-finetune:ID to fine-tune a Stable Diffusion UNet on VAE latents.",
)
@click.option(
    "--resolution",
    type=click.IntRange(min=4),
    default=None,
    help="Training image size (default: the preset's: tiny 16, unet-32 32, unet-64 64).",
)
@click.option(
    "--channels",
    type=click.Choice(["1", "3"]),
    default=None,
    help="1 = grey, 3 = RGB (default: 1 for tiny, 3 otherwise).",
)
@click.option(
    "--conditioning",
    type=click.Choice(["none", "caption"]),
    default="none",
    show_default=True,
    help="Unconditional, or conditioned on captions through a frozen text encoder.",
)
@click.option(
    "--text-encoder",
    default="minilm",
    show_default=True,
    metavar="minilm|tiny-clip|ID",
    help="Frozen text encoder for --conditioning caption (pixel presets).",
)
@click.option(
    "--caption-transform",
    default=None,
    metavar="mc|rc|rt|cwr|rna",
    help="Rewrite captions at each use (curate.captions strategies).",
)
@click.option("--caption-p", type=float, default=None, help="Probability for --caption-transform.")
@click.option(
    "--caption-dropout",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Probability of training on the empty caption.",
)
@click.option(
    "--embedding-noise",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="gn: add lambda * N(0, I) to each caption embedding, redrawn at every use.",
)
@click.option(
    "--prediction-type",
    type=click.Choice(["epsilon", "v_prediction", "sample"]),
    default="epsilon",
    show_default=True,
    help="What the network predicts (new pixel models only).",
)
@click.option(
    "--steps", type=click.IntRange(min=0), default=2000, show_default=True, help="Optimizer steps."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Per-device batch size.",
)
@click.option(
    "--grad-accum",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Gradient accumulation steps.",
)
@click.option("--lr", type=float, default=None, help="Learning rate (default: the preset's).")
@click.option(
    "--warmup-steps",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Linear learning-rate warm-up.",
)
@click.option(
    "--ema-decay",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.999,
    show_default=True,
    help="EMA decay of the saved weights (0 disables).",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Checkpoint every K steps (0: none).",
)
@click.option(
    "--mixed-precision",
    type=click.Choice(["auto", "no", "bf16"]),
    default="auto",
    show_default=True,
    help="auto: bf16 autocast on CUDA, never on CPU.",
)
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
@seed_option
@device_option
@quiet_option
@curate_errors
def train(
    dataset, out, objective, sigma_n, sigma_n_column, noisy_only_column, ambient_noise, model,
    resolution, channels, conditioning, text_encoder, caption_transform, caption_p,
    caption_dropout, embedding_noise, prediction_type, steps, batch_size, grad_accum, lr, warmup_steps, ema_decay,
    checkpoint_every, mixed_precision, resume, overwrite, dry_run, seed, device, quiet,
):  # fmt: skip
    """Train a diffusion model on a dataset (`accelerate launch -m curate train ...` for GPUs)."""
    import dataclasses

    from curate.device import resolve_device
    from curate.models.presets import preset_defaults
    from curate.train.loop import TrainConfig

    setup_logging(quiet)
    if channels is None:
        channels = "1" if model == "tiny" else "3"
    config = TrainConfig(
        objective=objective,
        sigma_n=sigma_n,
        ambient_noise=ambient_noise,
        sigma_n_column=sigma_n_column,
        noisy_only_column=noisy_only_column,
        model=model,
        resolution=resolution,
        channels=int(channels),
        conditioning=conditioning,
        text_encoder=text_encoder,
        caption_dropout=caption_dropout,
        embedding_noise=embedding_noise,
        prediction_type=prediction_type,
        steps=steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        warmup_steps=warmup_steps,
        ema_decay=ema_decay,
        checkpoint_every=checkpoint_every,
        mixed_precision=mixed_precision,
        seed=seed,
    )
    config.validate()
    if caption_transform and conditioning != "caption":
        from curate.errors import UsageError

        raise UsageError("--caption-transform needs --conditioning caption")
    if dry_run:
        click.echo(
            json.dumps(
                {"dataset": dataset, "out": str(out), **dataclasses.asdict(config)}, indent=1
            )
        )
        return
    dev = resolve_device(device)
    transform = None
    if caption_transform:
        from curate.captions.transforms import make_transform

        transform = make_transform(caption_transform, p=caption_p, seed=seed)
    from curate.train.data import load_training_data
    from curate.train.loop import train as run_train

    res = resolution or preset_defaults(model)["resolution"]
    if res is None:  # sd-finetune: the image size follows from the checkpoint
        from curate.models.presets import build_model

        res = build_model(model, channels=config.channels, device="cpu").image_resolution
        config = dataclasses.replace(config, resolution=res)
    data = load_training_data(
        dataset,
        channels=config.channels,
        resolution=res,
        sigma_n_column=sigma_n_column,
        noisy_only_column=noisy_only_column,
        quiet=quiet,
    )
    extra = {"dataset": dataset, "caption_transform": transform.describe() if transform else None}
    path = run_train(
        data,
        out,
        config,
        device=dev,
        caption_transform=transform,
        resume=resume,
        overwrite=overwrite,
        quiet=quiet,
        extra_info=extra,
    )
    click.echo(f"model written to {path}")


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
    type=click.Choice(["ddim", "euler", "heun"]),
    default="ddim",
    show_default=True,
    help="Deterministic sampler (heun: 2 model calls per step).",
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

    With --amg, anti-memorization guidance steers each sample away from its nearest training
    image while they are too similar, and OUT gets amg_steps.parquet (one row per sample and
    step), amg.json and report/index.html with the similarity trajectories.

    \b
    Examples:
      curate sample digits-tiny --num 64 --out samples/
      curate sample models/digits --num 64 --out samples-amg/ --amg --amg-train runs/digits
    """
    from curate.device import resolve_device
    from curate.errors import UsageError
    from curate.models.denoiser import load_denoiser
    from curate.models.sampling import sample as run_sample
    from curate.models.text import text_encoder_for_model

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
            from curate.guidance.run import uncond_embedding

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
        from curate.guidance.run import write_amg

        write_amg(amg, out)
        per_amg = {r["sample"]: r for r in amg.samples_frame().iter_rows(named=True)}
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
    click.echo(f"{num} samples written to {out}")
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
    import numpy as np
    import torch
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()  # (N, C, H, W)
    paths = []
    for i, a in enumerate(arr):
        img = Image.fromarray(a[0]) if a.shape[0] == 1 else Image.fromarray(np.moveaxis(a, 0, -1))
        path = out / f"{i:06d}.png"
        img.save(path)
        paths.append(path)
    return paths


def _run_prompts(run_dir: Path) -> list[str]:
    import polars as pl

    from curate.errors import DataError
    from curate.train.data import kept_mask

    path = run_dir / "table.parquet"
    if not path.exists():
        raise DataError(f"--prompts-from {run_dir}: no table.parquet; pass a run folder")
    table = pl.read_parquet(path)
    caps = table.filter(pl.Series(kept_mask(table)))["caption"].to_list()
    caps = [c for c in caps if c]
    if not caps:
        raise DataError(f"--prompts-from {run_dir}: no kept row has a caption")
    return caps


COMMANDS = [train, sample]
