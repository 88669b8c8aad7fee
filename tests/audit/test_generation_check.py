"""The audit warns when the generations do not look like the training data (noise, or far from
it): then its memorization figures are meaningless. An untrained tiny model must trigger the
warning, the shipped digits model (trained by ``curate train`` on the digits) must not."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from curate.audit.sanity import FAR_FACTOR, high_frequency_share
from curate.audit.scoring import audit_samples
from curate.audit.settings import AuditSettings
from curate.cli.audit import audit
from curate.io.training import TrainingSet


@pytest.fixture(scope="module")
def digits_run(digits_runs):
    """``builtin:digits`` (first 200 rows) ingested into a run folder."""
    return digits_runs(200)


def test_high_frequency_share_is_one_for_white_noise_and_small_for_digits(digits):
    noise = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0)).numpy()
    assert np.median(high_frequency_share(noise)) == pytest.approx(1.0, abs=0.1)
    assert np.median(high_frequency_share(digits[:200].numpy())) < 0.5
    assert high_frequency_share(np.zeros((2, 1, 8, 8))).tolist() == [0.0, 0.0]  # flat: not noise


def _check(samples, train):
    res = audit_samples(samples, train, AuditSettings(num_samples=len(samples)))
    return res.summary["generation_check"], res.summary["warnings"]


def test_real_images_not_in_training_pass_and_noise_or_inverted_images_warn(digits):
    train = TrainingSet.from_tensor(digits[:400])
    check, warnings = _check(digits[1000:1064], train)  # held-out digits: like the data
    assert not check["off_data"] and check["distance_ratio"] < FAR_FACTOR
    assert not any("meaningless" in w for w in warnings)

    noise = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    check, warnings = _check(noise, train)
    assert check["off_data"] and check["noise_like"] and check["far_from_data"]
    assert "look like noise" in warnings[0] and "meaningless" in warnings[0]

    # smooth but not the data (inverted digits): far, not noise-like
    check, warnings = _check(-digits[1000:1064], train)
    assert check["far_from_data"] and not check["noise_like"]
    assert "far from the training data" in warnings[0] and "look like noise" not in warnings[0]


def _audit(args):
    result = CliRunner().invoke(audit, [*args, "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    return result


def test_an_untrained_model_triggers_the_warning_everywhere(digits_run, tmp_path, tiny_model):
    model = tiny_model(tmp_path / "random")  # random weights, 1x16x16
    out = tmp_path / "audit"
    result = _audit([str(model), "--train", str(digits_run), "--out", str(out),
                     "--num-samples", "16", "--steps", "10"])  # fmt: skip
    summary = json.loads((out / "audit.json").read_text())
    check = summary["generation_check"]
    assert check["off_data"] and check["distance_ratio"] > FAR_FACTOR
    assert summary["warnings"][0] == check["warning"] and "meaningless" in check["warning"]
    lines = [ln for ln in result.stderr.splitlines() if "meaningless" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: the generations")
    html = (out / "report" / "index.html").read_text()
    assert 'class="group audit-warning"' in html and "not evidence against memorization" in html


def test_the_trained_digits_model_does_not_trigger_it(digits_run, tmp_path):
    out = tmp_path / "audit"
    result = _audit(["digits-tiny", "--train", str(digits_run), "--out", str(out),
                     "--num-samples", "32", "--steps", "20"])  # fmt: skip
    check = json.loads((out / "audit.json").read_text())["generation_check"]
    assert not check["off_data"], check
    assert check["distance_ratio"] < FAR_FACTOR / 1.4  # a clear margin, not a near miss
    assert "meaningless" not in result.stderr
    assert "audit-warning" not in (out / "report" / "index.html").read_text()


def test_the_amg_audit_reports_the_check_for_plain_and_guided(digits_run, tmp_path, tiny_model):
    model = tiny_model(tmp_path / "random")
    out = tmp_path / "audit"
    result = _audit([str(model), "--train", str(digits_run), "--out", str(out),
                     "--num-samples", "6", "--steps", "4", "--amg"])  # fmt: skip
    comparison = json.loads((out / "comparison.json").read_text())
    row = next(r for r in comparison["table"] if r[0].startswith("generations look like"))
    assert row[1:] == ["no", "no"]
    assert comparison["generation_check"]["plain"]["off_data"] is True
    assert comparison["generation_check"]["amg"]["off_data"] is True
    assert sum("meaningless" in ln for ln in result.stderr.splitlines()) >= 1


def test_the_recipe_step_records_and_logs_the_warning(digits_run, tmp_path, tiny_model, caplog):
    import logging
    import shutil

    from curate.runner import compute_step
    from curate.steps.audit import Audit
    from curate.steps.base import RunContext
    from curate.table import read_table

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    model = tiny_model(tmp_path / "random")
    ctx = RunContext(run_dir=run, seed=0, quiet=True, step_dir=run / "steps" / "01-audit")
    with caplog.at_level(logging.WARNING, logger="curate"):
        compute_step(Audit(model=str(model), num_samples=8, steps=4), read_table(run), ctx)
    assert ctx.stats["generations_off_data"] is True
    lines = [r.getMessage() for r in caplog.records if "meaningless" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("warning: audit: the generations")
