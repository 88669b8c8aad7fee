"""The io layer names settings by their recipe keys (``caption_column: 'nope': ...``); the
command line shows the same message with the flag (``--caption-column 'nope': ...``), through
the one key -> flag table of ``curate.cli.options``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.errors import UsageError
from curate.io.ingest import IngestConfig, ingest
from curate.io.load import open_source


def _error_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


@pytest.fixture
def jsonl(tmp_path):
    from PIL import Image

    folder = tmp_path / "src"
    folder.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "a.png")
    path = folder / "data.jsonl"
    path.write_text(json.dumps({"image": "a.png", "caption": "a red square"}) + "\n")
    return path


def test_a_column_error_names_the_key_in_a_recipe_and_the_flag_in_the_cli(tmp_path, jsonl):
    with pytest.raises(UsageError, match=r"^caption_column: 'nope': not a column \(columns: "):
        ingest(IngestConfig(name=str(jsonl), caption_column="nope"), tmp_path / "r0", quiet=True)

    args = ["ingest", "--dataset", str(jsonl), "--caption-column", "nope", "-q"]
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "r1")])
    assert res.exit_code == 2
    line = _error_line(res)
    assert line.startswith("Error: --caption-column 'nope': not a column"), line
    assert "caption_column" not in line

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"dataset: {{name: {json.dumps(str(jsonl))}, caption_column: nope}}\n")
    res = CliRunner().invoke(
        cli, ["clean", "--recipe", str(recipe), "--out", str(tmp_path / "r2"), "-q"]
    )
    assert res.exit_code == 2
    line = _error_line(res)
    assert "caption_column: 'nope': not a column" in line and "--caption-column" not in line


def test_split_and_dataset_errors_read_as_flags_on_the_command_line(tmp_path, jsonl):
    with pytest.raises(UsageError, match=r"^split: 'test': not in .*\(available: train\)"):
        open_source(str(jsonl), split="test")
    res = CliRunner().invoke(
        cli, ["ingest", "--dataset", str(jsonl), "--split", "test", "--out", str(tmp_path / "r")]
    )
    assert res.exit_code == 2 and _error_line(res).startswith("Error: --split 'test': not in ")
    with pytest.raises(UsageError, match=r"^dataset: builtin:nope: unknown built-in set"):
        open_source("builtin:nope")
    res = CliRunner().invoke(
        cli, ["ingest", "--dataset", "builtin:nope", "--out", str(tmp_path / "r3")]
    )
    assert _error_line(res).startswith("Error: --dataset builtin:nope: unknown built-in set")


def test_a_folder_error_names_out_dir_and_overwrite_as_keys_and_as_flags(tmp_path):
    run = tmp_path / "run"
    ingest(IngestConfig(name="builtin:digits", limit=5), run, quiet=True)
    with pytest.raises(UsageError, match=r"^out_dir: .*run: already holds .*pass overwrite: true"):
        ingest(IngestConfig(name="builtin:digits", limit=4), run, quiet=True)
    args = ["ingest", "--dataset", "builtin:digits", "--limit", "4", "--out", str(run), "-q"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2
    line = _error_line(res)
    assert line.startswith(f"Error: --out {run}: already holds") and "pass --overwrite" in line
    assert "choose a new --out" in line and "out_dir" not in line
