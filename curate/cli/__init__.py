"""The ``curate`` command line. Each command parses, builds a config, and calls the library.

Only click is imported at module level so that ``curate --help`` is instant; every command
module imports its heavy libraries inside the command body.
"""

from __future__ import annotations

import click

from curate._version import __version__
from curate.cli import audit as _audit
from curate.cli import captions as _captions
from curate.cli import data as _data
from curate.cli import dedup as _dedup
from curate.cli import model as _model
from curate.cli import rank as _rank


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="curate")
def cli() -> None:
    """Clean image-caption datasets so diffusion models create instead of copying.

    \b
    Typical use:
      curate ingest --dataset builtin:photos --out runs/photos
      curate clean --recipe recipes/demo.yaml
      curate export runs/demo --format parquet
    """


for _module in (_data, _dedup, _captions, _model, _audit, _rank):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    from curate.cli.common import run_cli

    run_cli(cli)
