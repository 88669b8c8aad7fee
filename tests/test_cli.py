"""The CLI in-process: the data commands end to end, and one bad input per error class."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from curate.cli import cli


def _run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_ingest_clean_export_end_to_end(tmp_path):
    run = tmp_path / "run"
    res = _run(["ingest", "--dataset", "builtin:digits", "--limit", "40", "--out", str(run), "-q"])
    assert res.exit_code == 0, res.output
    assert "ingested 40 rows" in res.output and "40 ok, 0 rejected" in res.output
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "dataset: {name: builtin:digits, limit: 40}\n"
        'steps:\n  - select: {where: "src_label = 3", reason: no threes}\n'
        "export: {format: parquet}\n"
    )
    res = _run(["clean", "--recipe", str(recipe), "--out", str(run), "-q", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "40 rows = " in res.output and "report:" in res.output
    res = _run(["export", str(run), "--format", "disk", "-q"])
    assert res.exit_code == 0 and "exported" in res.output
    assert (run / "export" / "parquet" / "data").is_dir()  # the recipe's export is still there
    other = tmp_path / "elsewhere"
    res = _run(["export", str(run), "--format", "parquet", "--out", str(other), "-q"])
    res = _run(["export", str(run), "--format", "disk", "--out", str(other), "-q"])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = _run(["export", str(run), "--format", "disk", "--out", str(other), "-q", "--overwrite"])
    assert res.exit_code == 0 and (other / "state.json").exists()
    res = _run(["info", str(run)])
    assert (
        res.exit_code == 0
        and "select: no threes" in res.output
        and "src_label: Int64" in res.output
    )


def test_dry_run_prints_plan_and_does_no_work(tmp_path):
    res = _run(
        [
            "clean",
            "--recipe",
            "recipes/laion_subset.yaml",
            "--dry-run",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert res.exit_code == 0, res.output
    assert "laion" in res.output and "validate" in res.output
    assert not (tmp_path / "x").exists()


def test_recipe_error_exits_2_with_yaml_path(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("dataset: builtin:digits\nsteps:\n  - validate: {min_sid: 3}\n")
    res = CliRunner().invoke(cli, ["clean", "--recipe", str(recipe), "--dry-run"])
    assert res.exit_code == 2
    assert "steps[1].validate.min_sid: unknown key" in res.output
    assert "Traceback" not in res.output


def test_bad_override_exits_2():
    res = CliRunner().invoke(
        cli,
        ["clean", "--recipe", "recipes/demo.yaml", "--set", "steps.1.min_side=big", "--dry-run"],
    )
    assert res.exit_code == 2 and "steps[1].validate.min_side: must be an integer" in res.output


def test_data_error_exits_1_with_one_line(tmp_path):
    res = CliRunner().invoke(
        cli,
        [
            "ingest",
            "--dataset",
            str(tmp_path / "missing" / "x.parquet"),
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: --dataset")


def test_usage_error_exits_2(tmp_path):
    res = CliRunner().invoke(
        cli, ["ingest", "--dataset", "builtin:nope", "--out", str(tmp_path / "r")]
    )
    assert (
        res.exit_code == 2
        and "--dataset builtin:nope" in res.output
        and "Traceback" not in res.output
    )
    res = CliRunner().invoke(cli, ["export", str(tmp_path), "--format", "zip"])
    assert res.exit_code == 2


def test_help_is_fast_and_imports_no_heavy_library():
    code = "import sys, curate.cli; heavy = [m for m in ('torch', 'datasets', 'faiss', 'diffusers', 'open_clip') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
