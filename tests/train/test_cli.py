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


# every TrainConfig field at a value other than its default (a new field must be added here)
NON_DEFAULT = {
    "objective": "ambient",
    "sigma_n": 0.3,
    "ambient_noise": "redraw",
    "ambient_weight": "corrected",
    "ambient_form": "vp",
    "sigma_n_column": "risk_sigma",
    "noisy_only_column": "risk_only",
    "model": "unet-32",
    "resolution": 8,
    "channels": 1,
    "conditioning": "caption",
    "text_encoder": "tiny-clip",
    "caption_transform": "rc",
    "caption_p": 0.2,
    "caption_dropout": 0.1,
    "embedding_noise": 0.05,
    "prediction_type": "v_prediction",
    "steps": 3,
    "batch_size": 4,
    "grad_accum": 2,
    "lr": 1e-4,
    "warmup_steps": 2,
    "weight_decay": 0.01,
    "grad_clip": 0.5,
    "ema_decay": 0.9,
    "checkpoint_every": 7,
    "keep_checkpoints": 3,
    "mixed_precision": "no",
    "seed": 5,
    "log_every": 2,
}
RISK = [2.0, None, 1.5, None] * 6  # per-sample sigma_n of the 24 digits (null: sigma_n)


def _with_risk_columns(run):
    import polars as pl

    table = pl.read_parquet(run / "table.parquet").with_columns(
        pl.Series("risk_sigma", RISK, dtype=pl.Float64),
        pl.Series("risk_only", [v == 2.0 for v in RISK]),
    )
    table.write_parquet(run / "table.parquet")
    return table


def _capture_train(monkeypatch):
    """Replace the trainer's entry point: record what the job hands it, train nothing."""
    from curate.train import loop

    calls = []

    def fake_train(data, out_dir, config, **kw):
        calls.append((data, config))
        return out_dir

    monkeypatch.setattr(loop, "train", fake_train)
    return calls


@pytest.mark.parametrize("path", ["cli", "step"])
def test_every_setting_reaches_the_trainer(tmp_path, digits_run, monkeypatch, path):
    """`curate train` and the `train` step hand the trainer every TrainConfig setting, and the
    data the per-sample columns they name (sigma_n_column, noisy_only_column)."""
    import dataclasses
    import shutil

    from curate.cli.options import flag
    from curate.train.config import TrainConfig

    defaults = TrainConfig()
    assert sorted(NON_DEFAULT) == sorted(f.name for f in dataclasses.fields(TrainConfig))
    assert all(getattr(defaults, k) != v for k, v in NON_DEFAULT.items())
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    table = _with_risk_columns(run)
    calls = _capture_train(monkeypatch)
    if path == "cli":
        args = [a for k, v in NON_DEFAULT.items() for a in (flag(k), v)]
        res = _invoke(train, ["--dataset", run, "--out", tmp_path / "m", "-q", *args])
        assert res.exit_code == 0, res.output
    else:
        from curate.steps.base import RunContext
        from curate.steps.train import Train

        monkeypatch.setattr(Train, "_report", lambda *a: None)
        step = Train(**NON_DEFAULT, out="m")
        assert step.validate() == []
        step.compute(table, RunContext(run_dir=run, seed=0, quiet=True))
    ((data, config),) = calls
    assert config == TrainConfig(**NON_DEFAULT)
    import numpy as np

    expected = np.array([np.nan if v is None else v for v in RISK])
    np.testing.assert_array_equal(data.sigma_n, expected)
    np.testing.assert_array_equal(data.noisy_only, expected == 2.0)


def test_the_step_seed_defaults_to_the_recipes(tmp_path, digits_run, monkeypatch):
    import polars as pl

    from curate.steps.base import RunContext
    from curate.steps.train import Train

    calls = _capture_train(monkeypatch)
    monkeypatch.setattr(Train, "_report", lambda *a: None)
    table = pl.read_parquet(digits_run / "table.parquet")
    for step, seed in ((Train(resolution=8), 7), (Train(resolution=8, seed=3), 3)):
        step.compute(table, RunContext(run_dir=digits_run, seed=7, quiet=True))
        assert calls.pop()[1].seed == seed


def test_train_command_options_are_the_config_fields():
    """The command declares no setting of its own: its options are TrainConfig's fields plus
    the job's arguments, and the step's settings are the same fields plus its own four (output
    folder, report samples, which rows, per-row noise rules)."""
    import dataclasses

    from curate.steps.train import Train
    from curate.train.config import TrainConfig

    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    options = [p.name for p in train.params]
    job = ["dataset", "out_dir", "resume", "overwrite", "dry_run", "device", "quiet"]
    assert sorted(options) == sorted(fields + job)
    own = ["out", "report_samples", "rows", "sigma_n_rules"]
    assert [f.name for f in dataclasses.fields(Train)] == [*fields, *own]


def test_train_errors_name_flags_and_step_errors_name_keys(tmp_path, digits_run):
    args = ["--dataset", digits_run, "--out", tmp_path / "m", "--resolution", 8, "--steps", 1]
    res = CliRunner().invoke(train, [str(a) for a in [*args, "--sigma-n-column", "x"]])
    assert res.exit_code == 2
    assert "Error: --sigma-n-column/--noisy-only-column: need --objective ambient" in res.output
    more = ["--objective", "ambient", "--sigma-n-column", "nope", "-q"]
    res = CliRunner().invoke(train, [str(a) for a in [*args, *more]])
    assert res.exit_code == 2 and "Error: --sigma-n-column: 'nope' is not a column" in res.output
    from curate.errors import RecipeError
    from curate.recipe import parse_recipe

    settings = {"sigma_n_column": "src_label", "sigma_n": -1, "caption_dropout": 1}
    with pytest.raises(RecipeError) as err:
        parse_recipe({"dataset": "builtin:digits", "steps": [{"train": settings}]})
    assert err.value.problems == [
        "steps[1].train.sigma_n: must be >= 0, got -1.0",
        "steps[1].train.caption_dropout: must be < 1, got 1.0",
        "steps[1].train.sigma_n_column/noisy_only_column: need objective: ambient",
    ]
    assert "--" not in str(err.value)


def test_resume_with_a_changed_sigma_n_names_the_flag(tmp_path, digits_run):
    out = tmp_path / "m"
    args = ["--dataset", digits_run, "--out", out, "--resolution", 8, "--batch-size", 8, "-q"]
    amb = ["--objective", "ambient", "--checkpoint-every", 1]
    assert _invoke(train, [*args, *amb, "--steps", 1]).exit_code == 0
    res = CliRunner().invoke(
        train, [str(a) for a in [*args, *amb, "--steps", 2, "--sigma-n", 1.0, "--resume"]]
    )
    assert res.exit_code == 2
    assert "--resume: the checkpoint has --sigma-n 0.5, now 1.0" in res.output
