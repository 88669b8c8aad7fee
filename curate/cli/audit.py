"""``curate audit``: generate with a model and measure how much it copies its training set."""

from __future__ import annotations

import click

from curate.cli.common import (
    amg_config,
    amg_options,
    curate_errors,
    device_option,
    guidance_scale_option,
    quiet_option,
    seed_option,
)
from curate.core.weights import CLIP_PRETRAINED


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
@click.option(
    "--oracle",
    is_flag=True,
    help="Audit the closed-form empirical denoiser of the training set instead of a model "
    "(a perfect memorizer: calibrates the metrics on your data). No MODEL_DIR.",
)
@click.option(
    "--num-samples", default=256, show_default=True, type=int, help="Generations to audit."
)
@click.option(
    "--features",
    type=click.Choice(["pixel", "sscd", "clip"]),
    default="pixel",
    show_default=True,
    help="Feature space of the top-1 similarity (pixel-space ratio and normalised L2 are "
    "always computed).",
)
@click.option("--steps", default=50, show_default=True, type=int, help="Sampler steps.")
@click.option(
    "--sampler",
    type=click.Choice(["ddim", "euler", "heun"]),
    default=None,
    help="Deterministic sampler [default: ddim for a model, euler for --oracle].",
)
@click.option("--batch-size", default=64, show_default=True, type=int, help="Sampling batch.")
@click.option(
    "--resolution",
    type=int,
    default=None,
    help="Size training images are resized to (default: the model's; with --oracle, the "
    "images' own size).",
)
@click.option(
    "--sim-threshold",
    type=float,
    default=None,
    help="Top-1 similarity above which a generation is a copy [default: 0.5 for sscd, else 0.9].",
)
@click.option(
    "--dup-eps",
    type=float,
    default=0.0,
    show_default=True,
    help="Training images closer than this pixel L2 distance count as one image for NN2.",
)
@click.option(
    "--fd-features",
    type=click.Choice(["pixel", "randconv"]),
    default="pixel",
    show_default=True,
    help="Feature space of the Fréchet distance (offline; named in the output, not FID).",
)
@click.option(
    "--features-model",
    default=None,
    help="Weights for --features: an SSCD model file (sscd) or an open_clip checkpoint (clip).",
)
@click.option(
    "--fd-reference",
    type=click.Path(file_okay=False),
    default=None,
    help="Run folder of reference images for the Fréchet distance, e.g. held-out data "
    "[default: the training set].",
)
@click.option(
    "--text-encoder",
    default=None,
    help="Text encoder of a text-conditional model (minilm, tiny-clip, or an id/path) "
    "[default: the one in the model's training config]. Prompts are the training captions.",
)
@click.option(
    "--alignment-clip",
    default=None,
    help="open_clip model (name or model-config .json) scoring text alignment of a "
    "text-conditional model's generations (CLIP score vs the prompt) [default: not measured].",
)
@click.option(
    "--alignment-pretrained",
    default=CLIP_PRETRAINED,
    show_default=True,
    help="Weights of --alignment-clip: an open_clip tag or a local checkpoint file.",
)
@guidance_scale_option
@amg_options
@seed_option
@device_option
@quiet_option
@curate_errors
def audit(
    model_dir: str | None,
    train_dir: str,
    out_dir: str,
    oracle: bool,
    num_samples: int,
    features: str,
    steps: int,
    sampler: str | None,
    batch_size: int,
    resolution: int | None,
    sim_threshold: float | None,
    dup_eps: float,
    fd_features: str,
    features_model: str | None,
    fd_reference: str | None,
    text_encoder: str | None,
    alignment_clip: str | None,
    alignment_pretrained: str,
    guidance_scale: float,
    seed: int,
    device: str,
    quiet: bool,
    **amg_flags,
) -> None:
    """Generate from MODEL_DIR and measure memorization against the training run folder.

    With --amg the audit runs twice from the same seeds, plain and with anti-memorization
    guidance (searching the --train run; --amg-train is not needed), and reports both side by
    side: OUT (plain), OUT/amg (guided, with amg_steps.parquet), OUT/comparison.json.

    \b
    Example:
      curate audit models/digits --train runs/digits --num-samples 512 --out audits/digits
      curate audit --oracle --train runs/digits --resolution 16 --out audits/oracle
      curate audit models/digits --train runs/digits --out audits/amg --amg
    """
    from curate.audit.job import audit_with_amg, run_audit
    from curate.audit.settings import AuditSettings
    from curate.cli.common import setup_logging
    from curate.core.text import text_encoder_for_model, uncond_embedding
    from curate.device import resolve_device
    from curate.errors import UsageError
    from curate.io.training import load_training_set
    from curate.models.denoiser import image_shape

    setup_logging(quiet)
    if amg_flags.get("amg") and amg_flags.get("amg_train") and amg_flags["amg_train"] != train_dir:
        raise UsageError("--amg-train differs from --train; the audit guides against --train")
    amg_flags["amg_train"] = None
    amg_cfg, _ = amg_config(amg_flags)
    if oracle == (model_dir is not None):
        raise UsageError("give either MODEL_DIR or --oracle (exactly one)")
    settings = AuditSettings(
        num_samples=num_samples,
        features=features,
        steps=steps,
        sampler=sampler,
        seed=seed,
        batch_size=batch_size,
        sim_threshold=sim_threshold,
        dup_eps=dup_eps,
        fd_features=fd_features,
        features_model=features_model,
        alignment_clip=alignment_clip,
        alignment_pretrained=alignment_pretrained,
    )
    settings.validate()
    from curate.io.folders import claim_folder

    claim_folder(out_dir, "audit")
    device = resolve_device(device)
    if oracle:
        from curate.audit.oracle import EmpiricalDenoiser

        train = load_training_set(train_dir, resolution=resolution)
        denoiser = EmpiricalDenoiser(train.images).to(device)
        name = f"oracle: empirical denoiser of {train_dir}"
    else:
        from curate.models.denoiser import load_denoiser

        denoiser = load_denoiser(model_dir, device)
        channels, size, _ = image_shape(denoiser)
        if resolution is not None and resolution != size:
            raise UsageError(
                f"--resolution {resolution} differs from the model's {size}; drop --resolution"
            )
        train = load_training_set(train_dir, resolution=size, channels=channels)
        name = str(model_dir)
    reference = None
    if fd_reference is not None:
        chans, size = train.images.shape[1], train.images.shape[-1]
        reference = load_training_set(fd_reference, resolution=size, channels=chans).images
    encoder = None
    if denoiser.conditional:
        encoder = text_encoder_for_model(denoiser, device, kind=text_encoder)
    extra = dict(fd_reference=reference, fd_reference_name=f"kept rows of {fd_reference}")
    if amg_cfg is not None:
        result, guided, comparison = audit_with_amg(
            denoiser, train, out_dir, settings, amg_cfg, device=device, quiet=quiet,
            model_name=name, text_encoder=encoder, guidance_scale=guidance_scale, **extra,
        )  # fmt: skip
        for metric, plain_v, amg_v in comparison["table"]:
            click.echo(f"{metric}: plain {plain_v or '-'} | AMG {amg_v or '-'}")
        for warning in result.summary["warnings"]:
            click.echo(f"warning: {warning}", err=True)
        for warning in guided.summary["warnings"]:  # the training-set ones are the same
            if warning not in result.summary["warnings"]:
                click.echo(f"warning: AMG audit: {warning}", err=True)
        click.echo(
            f"wrote {out_dir}/comparison.json, {out_dir}/amg/ and {out_dir}/report/index.html"
        )
        return
    sampler_fn = None
    if guidance_scale != 1.0:
        import functools

        from curate.models.sampling import sample

        if encoder is None:
            raise UsageError("--guidance-scale needs a text-conditional model")
        sampler_fn = functools.partial(
            sample, uncond=uncond_embedding(encoder, device), cfg_scale=guidance_scale
        )
    result = run_audit(
        denoiser,
        train,
        out_dir,
        settings,
        device=device,
        quiet=quiet,
        model_name=name,
        text_encoder=encoder,
        sampler=sampler_fn,
        **extra,
    )
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
