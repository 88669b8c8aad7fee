"""Caption commands: ``curate captions RUN_DIR`` rewrites captions in an existing run folder."""

from __future__ import annotations

from pathlib import Path

import click

from curate.cli.common import (
    curate_errors,
    device_option,
    quiet_option,
    seed_option,
    setup_logging,
)


@click.command("captions")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--strategy",
    required=True,
    metavar="mc|rc|rt|cwr|rna",
    help="mc: several captions per image; rc: random caption; rt: add random tokens; "
    "cwr: repeat caption words; rna: add random numbers.",
)
@click.option(
    "--p",
    "p",
    type=float,
    default=None,
    help="Probability of rewriting a targeted caption (default: 0.1 for rc/rt/cwr, 1 for mc/rna).",
)
@click.option(
    "--k",
    "k",
    type=int,
    default=None,
    help="Tokens, words or numbers to insert (default: rc 4, rt/cwr/rna 2).",
)
@click.option(
    "--only",
    default=None,
    metavar="COLUMN_OR_RULE",
    help="Rewrite only rows where this boolean column or SQL rule is true, "
    "e.g. dedup_captions_flag or 'rank_pct >= 0.9' (default: every row).",
)
@click.option(
    "--vocab",
    default=None,
    metavar="words|minilm|PATH",
    help="Where rc/rt draw tokens: the built-in word list, the MiniLM tokenizer, "
    "a word-list file or a tokenizer folder (default: words).",
)
@click.option(
    "--mc-column",
    default="captions",
    show_default=True,
    help="mc: column holding each row's alternative captions.",
)
@click.option(
    "--mc-group",
    default=None,
    metavar="COLUMN",
    help="mc: pool the captions of rows sharing this column's value (e.g. a dedup cluster id).",
)
@click.option(
    "--captioner",
    default=None,
    metavar="MODEL",
    help="mc: also caption targeted images with this image-text-to-text model (local folder).",
)
@click.option(
    "--captioner-num",
    default=2,
    show_default=True,
    type=int,
    help="mc: captions the model writes per image.",
)
@seed_option
@device_option
@quiet_option
@curate_errors
def captions(
    run_dir: Path,
    strategy: str,
    p: float | None,
    k: int | None,
    only: str | None,
    vocab: str | None,
    mc_column: str,
    mc_group: str | None,
    captioner: str | None,
    captioner_num: int,
    seed: int,
    device: str,
    quiet: bool,
) -> None:
    """Rewrite captions in RUN_DIR so they stop acting as keys to one image.

    Adds caption_new and caption_strategy to the table; the original caption is kept, and
    export writes the new captions with the old ones in changes.parquet.

    \b
    Example:
      curate captions runs/photos --strategy rt --p 0.5 --only 'width > 200'
    """
    from curate.device import resolve_device
    from curate.errors import UsageError
    from curate.runner import apply_step
    from curate.steps.base import RunContext
    from curate.steps.captions import Captions

    setup_logging(quiet)
    step = Captions(
        strategy=strategy,  # type: ignore[arg-type]
        p=p,
        k=k,
        only=only,
        vocab=vocab,
        mc_column=mc_column or None,
        mc_group=mc_group,
        captioner=captioner,
        captioner_num=captioner_num,
    )
    problems = step.validate()
    if problems:
        raise UsageError("; ".join(_as_flag(prob) for prob in problems))
    device = resolve_device(device) if captioner else "cpu"
    ctx = RunContext(run_dir=run_dir, seed=seed, device=device, quiet=quiet)
    # Always recompute: the step is cheap, and the run seed is not part of a step's cache key.
    apply_step(run_dir, step, ctx, force=True)
    stats = ctx.stats
    click.echo(
        f"captions: {stats.get('changed', 0)} of {stats.get('targeted', 0)} targeted captions "
        f"rewritten ({strategy}); see caption_new in {run_dir / 'table.parquet'}"
    )


def _as_flag(problem: str) -> str:
    """A step's ``"key: message"`` as the command line's ``"--key: message"``."""
    key, _, message = problem.partition(": ")
    return f"--{key.replace('_', '-')}: {message}"


COMMANDS = [captions]
