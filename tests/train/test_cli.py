"""`curate train` / `curate sample` in-process, and the `train` recipe step."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from curate.cli.model import sample, train


@pytest.fixture(scope="module")
def digits_run(digits_runs):
    """``builtin:digits`` (first 24 rows) ingested into a run folder."""
    return digits_runs(24)


def _invoke(cmd, args):
    return CliRunner().invoke(cmd, [str(a) for a in args], catch_exceptions=False)


def test_train_then_sample(tmp_path, digits_run):
    out = tmp_path / "model"
    args = ["--dataset", digits_run, "--out", out, "--resolution", 8, "--steps", 3]
    res = _invoke(
        train, [*args, "--objective", "ambient", "--sigma-n", 1.0, "--batch-size", 8, "--quiet"]
    )
    assert res.exit_code == 0, res.output
    info = json.loads((out / "curate_train.json").read_text())
    assert info["config"]["objective"] == "ambient" and info["data"]["num_samples"] == 24
    assert info["dataset"] == str(digits_run)
    res = _invoke(sample, [out, "--num", 3, "--out", tmp_path / "s", "--steps", 2, "--quiet"])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "s" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 3 and (tmp_path / "s" / "000002.png").exists()
    from PIL import Image

    assert Image.open(tmp_path / "s" / "000000.png").size == (8, 8)


def test_train_dry_run_prints_the_resolved_config(tmp_path):
    res = _invoke(train, ["--dataset", "builtin:digits", "--out", tmp_path / "m", "--dry-run"])
    assert res.exit_code == 0
    cfg = json.loads(res.output)
    assert cfg["model"] == "tiny" and cfg["channels"] == 1 and not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "extra,code,msg",
    [
        (["--model", "huge"], 2, "--model"),
        (["--resume"], 2, "--resume"),
        (["--sigma-n-column", "x"], 2, "--objective ambient"),
        (["--caption-transform", "rc"], 2, "--conditioning caption"),
    ],
)
def test_train_errors(tmp_path, digits_run, extra, code, msg):
    res = CliRunner().invoke(
        train,
        ["--dataset", str(digits_run), "--out", str(tmp_path / "m"), "--resolution", "8", *extra],
    )
    assert res.exit_code == code
    assert msg in res.output


def test_train_missing_dataset_is_a_data_error(tmp_path):
    res = CliRunner().invoke(
        train, ["--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "m"), "--quiet"]
    )
    assert res.exit_code in (1, 2) and "Error" in res.output


def test_sample_errors(tmp_path):
    res = CliRunner().invoke(sample, [str(tmp_path), "--out", str(tmp_path / "s")])
    assert res.exit_code == 1 and "model_index.json" in res.output


def test_sample_rejects_prompts_for_unconditional_model(tmp_path, digits_run):
    out = tmp_path / "m"
    _invoke(
        train, ["--dataset", digits_run, "--out", out, "--resolution", 8, "--steps", 1, "--quiet"]
    )
    res = CliRunner().invoke(sample, [str(out), "--out", str(tmp_path / "s"), "--prompt", "a 3"])
    assert res.exit_code == 2 and "unconditional" in res.output


def test_train_step_writes_model_and_report(tmp_path, digits_run):
    import shutil

    import polars as pl

    from curate.steps.base import RunContext
    from curate.steps.train import Train

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    step = Train(steps=2, resolution=8, batch_size=8, checkpoint_every=1, report_samples=4)
    assert step.validate() == []
    assert Train(objective="bogus").validate()  # reports the bad key
    table = pl.read_parquet(run / "table.parquet")
    ctx = RunContext(run_dir=run, quiet=True)
    out = step.compute(table, ctx)
    assert out.width == 0
    assert (run / "model" / "model_index.json").exists()
    assert ctx.stats["train_samples"] == 24
    assert "Training" in (run / "report" / "index.html").read_text()
    # a rerun with the same settings resumes from the checkpoint instead of starting over
    step.compute(table, ctx)
    info = json.loads((run / "model" / "curate_train.json").read_text())
    assert info["result"]["step"] == 2


def test_embedding_noise_on_an_unconditional_model_is_a_usage_error(tmp_path):
    res = CliRunner().invoke(
        sample,
        ["digits-tiny", "--num", "2", "--out", str(tmp_path / "s"), "--embedding-noise", "0.5"],
    )
    assert res.exit_code == 2 and "--embedding-noise needs a text model" in res.output
