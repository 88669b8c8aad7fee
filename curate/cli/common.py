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
    sys.exit(rv if isinstance(rv, int) else 0)


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

    return wrapper


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        force=True,
    )
    for noisy in ("datasets", "httpx", "huggingface_hub", "urllib3", "filelock"):
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
