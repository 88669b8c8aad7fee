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


AMG_PREFIX = "amg_"  # --amg-<key> for each key of curate.guidance.config.AMGConfig


def amg_options(fn):
    """The ``--amg*`` flags of anti-memorization guidance: ``--amg``, ``--amg-train`` and one
    ``--amg-<key>`` per setting of ``curate.guidance.config.AMGConfig`` (built from its fields)."""
    from curate.cli.options import config_options
    from curate.guidance.config import AMGConfig

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
        config_options(AMGConfig, prefix=AMG_PREFIX),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def amg_config(kwargs: dict):
    """Pop the ``--amg*`` values from a command's kwargs: ``(AMGConfig, amg_train)``, or
    ``(None, None)`` without ``--amg``. A bad value is a ``UsageError`` naming its flag."""
    from curate.cli.options import config_keys, keys_to_flags, pop_config
    from curate.errors import UsageError
    from curate.guidance.config import AMGConfig

    on, train = kwargs.pop("amg"), kwargs.pop("amg_train")
    config = pop_config(AMGConfig, kwargs, AMG_PREFIX)
    if not on:
        if train:
            raise UsageError("--amg-train is set but --amg is not; add --amg")
        return None, None
    problems = config.problems()
    if problems:
        raise UsageError(keys_to_flags(problems[0], config_keys(AMGConfig), AMG_PREFIX))
    return config, train
