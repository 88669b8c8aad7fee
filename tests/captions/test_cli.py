"""``curate captions RUN_DIR``: applies the step in place, with one-line errors."""

from __future__ import annotations

import polars as pl
from click.testing import CliRunner

from curate.cli import cli
from curate.table import read_table


def test_captions_command_rewrites_flagged_rows(photos_run):
    args = ["captions", str(photos_run), "--strategy", "rt", "--p", "1", "--k", "3", "-q"]
    result = CliRunner().invoke(cli, [*args, "--only", "src_gt_caption = 'same'", "--seed", "4"])
    assert result.exit_code == 0, result.output
    table = read_table(photos_run)
    targeted = table.filter(pl.col("caption_new").is_not_null())
    assert (
        targeted.height
        == table.filter((pl.col("src_gt_caption") == "same") & (pl.col("status") == "ok")).height
    )
    new_len = targeted["caption_new"].str.split(" ").list.len()
    old_len = targeted["caption"].str.split(" ").list.len()
    assert (new_len == old_len + 3).all()
    assert set(targeted["caption_strategy"]) == {"rt(p=1, k=3, seed=4, vocab=words)"}
    assert f"{targeted.height} of {targeted.height} targeted" in result.output

    # a second run with another seed replaces the columns instead of reusing stale ones
    again = CliRunner().invoke(cli, [*args, "--seed", "5"])
    assert again.exit_code == 0, again.output
    assert set(read_table(photos_run)["caption_strategy"].drop_nulls()) == {
        "rt(p=1, k=3, seed=5, vocab=words)"
    }


def test_bad_parameters_exit_2_with_one_line_naming_the_flags(photos_run):
    result = CliRunner().invoke(
        cli, ["captions", str(photos_run), "--strategy", "rt", "--p", "1.5", "--k", "-1"]
    )
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line
    assert "--p: must be a probability" in line and "--k: must be a whole number" in line


def test_unknown_strategy_exits_2(photos_run):
    result = CliRunner().invoke(cli, ["captions", str(photos_run), "--strategy", "shuffle"])
    assert result.exit_code == 2
    assert "--strategy: unknown 'shuffle'" in result.output


def test_rule_on_a_missing_column_exits_1(photos_run):
    result = CliRunner().invoke(
        cli, ["captions", str(photos_run), "--strategy", "rt", "--only", "nope > 1", "-q"]
    )
    assert result.exit_code == 1
    assert "captions.only 'nope > 1' failed" in result.output
