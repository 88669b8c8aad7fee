"""curate.cli.options: Click options from a config dataclass, and config keys -> flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import click
import pytest
from click.testing import CliRunner

from curate.cli.options import config_options, errors_as_flags, flag, keys_to_flags, pop_config
from curate.errors import UsageError

KEYS = ("sigma_n", "sigma_n_column", "noisy_only_column", "objective", "model", "out_dir", "resume")


@pytest.mark.parametrize(
    "message,expected",
    [
        (
            "sigma_n_column/noisy_only_column: need objective: ambient",
            "--sigma-n-column/--noisy-only-column: need --objective ambient",
        ),
        ("sigma_n: must be >= 0, got -1", "--sigma-n: must be >= 0, got -1"),
        (
            "out_dir: runs/a/model is not empty; set resume: true",
            "--out: runs/a/model is not empty; set --resume",
        ),  # fmt: skip
        ("the model's size, model: tiny", "the model's size, --model tiny"),
        ("a per-sample sigma_n, unknown_key: 1", "a per-sample --sigma-n, unknown_key: 1"),
    ],
)
def test_keys_to_flags(message, expected):
    assert keys_to_flags(message, KEYS) == expected


def test_flag_table():
    assert flag("sigma_n") == "--sigma-n" and flag("out_dir") == "--out"


@dataclass(frozen=True)
class Toy:
    mode: Literal["a", "b"] = field(default="a", metadata={"help": "Mode; see level."})
    level: Literal[1, 3] | None = field(default=None, metadata={"help": "Level."})
    rate: float = field(
        default=0.5, metadata={"help": "Rate.", "min": 0, "max": 1, "max_open": True}
    )
    name: str | None = field(default=None, metadata={"help": "Name.", "metavar": "NAME"})
    fast: bool = field(default=False, metadata={"help": "Fast."})


@click.command()
@config_options(Toy)
@errors_as_flags(("mode", "level", "rate"))
def toy(**params):
    cfg = pop_config(Toy, params)
    if cfg.rate == 0.25:
        raise UsageError("rate: 0.25 is not allowed with mode: b")
    click.echo(repr(cfg))


def test_config_options_types_defaults_and_help():
    run = CliRunner().invoke
    assert run(toy, []).output.strip() == repr(Toy())
    out = run(toy, ["--mode", "b", "--level", "3", "--rate", "0.1", "--name", "x", "--fast"])
    assert out.output.strip() == repr(Toy("b", 3, 0.1, "x", True))  # level is the int 3
    assert run(toy, ["--rate", "1"]).exit_code == 2  # max_open
    assert run(toy, ["--level", "2"]).exit_code == 2
    help_text = run(toy, ["--help"]).output
    assert "NAME" in help_text and "Mode; see level." in help_text and "--no-fast" in help_text
    res = run(toy, ["--rate", "0.25"])
    assert isinstance(res.exception, UsageError)
    assert str(res.exception) == "--rate: 0.25 is not allowed with --mode b"


def test_a_field_without_help_is_refused():
    @dataclass
    class Bad:
        x: int = 1

    with pytest.raises(TypeError, match="help"):
        config_options(Bad)
