"""``lambdas: auto``: AMG's thresholds measured per model from a calibration batch.

The end-to-end case is built to hold both kinds of sample: the closed-form denoiser memorizes
six training images plus three midpoints of pairs of them, and AMG (and the copy labels) see
only the six. Trajectories that land on a training image are copies (NN1/NN2 = 0); those that
land on a midpoint are not (NN1/NN2 = 1), so the copy boundary is known.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch

from curate.audit import metrics
from curate.audit.oracle import EmpiricalDenoiser
from curate.audit.settings import RATIO_THRESHOLD
from curate.guidance.calibrate import (
    COPY_RATIO,
    calibration_seed,
    choose_lambdas,
    copy_labels,
)
from curate.guidance.config import DEFAULT_LAMBDAS, AMGConfig
from curate.guidance.run import build_amg, guided_sampler, write_amg
from curate.models.sampling import sample

STEPS = 12


class _Train:
    """The TrainingSet fields build_amg and the calibration read."""

    def __init__(self, images):
        self.images = images
        self.captions = None
        self.keys = None
        self.sample_ids = [f"s{i}" for i in range(len(images))]


@pytest.fixture(scope="module")
def memorizer():
    g = torch.Generator().manual_seed(3)
    train = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    mids = torch.stack([(train[0] + train[1]) / 2, (train[2] + train[3]) / 2,
                        (train[4] + train[5]) / 2])  # fmt: skip
    return EmpiricalDenoiser(torch.cat([train, mids])), _Train(train)


def _sampler():
    return functools.partial(sample, steps=STEPS, method="euler", progress=False, batch_size=64)


def _calibrated(memorizer, **cfg):
    den, train = memorizer
    amg = build_amg(den, train, AMGConfig(k=6, calibration_samples=24, **cfg))
    out = guided_sampler(_sampler(), amg)(den, 8, seed=5)
    return amg, out


def _final_similarities(memorizer, amg, n, seed):
    """Independently of the calibration code: the plain samples of the calibration seeds, their
    similarity through the AMG index and the audit's copy labels."""
    den, train = memorizer
    x = _sampler()(den, n, seed=calibration_seed(seed))
    sim, _ = amg.index.search(x)
    nb = metrics.pixel_neighbours(x.numpy(), train.images.numpy(), k=6)
    copy = metrics.nn_ratio(nb.d1, nb.d2) < RATIO_THRESHOLD
    return sim.numpy(), copy


# ------------------------------------------------------------------------------- the rule


def test_lambda_max_sits_midway_across_the_gap_between_non_copies_and_copies():
    final = np.array([-2.0, -1.8, -1.5, -0.4, -0.2, -0.1])
    copy = np.array([False, False, False, True, True, True])
    mid = np.array([-2.5, -2.3, -2.1, -1.0, -1.0, -1.0])
    out = choose_lambdas(final, copy, mid)
    assert out["lambda_max"] == pytest.approx((-1.5 + -0.4) / 2)
    assert out["rule"] == "copy boundary" and out["wrong_side"] == 0
    assert out["lambda_min"] == pytest.approx(-2.3)  # median of the non-copies at mid noise
    assert (out["copies"], out["non_copies"]) == (3, 3)


def test_overlapping_classes_take_the_cut_with_fewest_wrong_sides():
    final = np.array([-2.0, -1.0, -0.9, -0.8, -0.3, -0.2, -0.1])
    copy = np.array([False, False, True, False, True, True, True])
    out = choose_lambdas(final, copy, np.full(7, -2.0))
    # one copy (-0.9) sits below a non-copy (-0.8): cuts below -0.9 or above -0.8 miss one
    assert out["wrong_side"] == 1 and out["rule"] == "copy boundary (overlapping)"
    assert out["lambda_max"] == pytest.approx((-1.0 + -0.9) / 2)  # the lower of the two


def test_no_copies_puts_lambda_max_above_every_non_copy_and_copies_only_below_every_copy():
    final = np.array([-2.0, -1.6, -1.2])
    out = choose_lambdas(final, np.zeros(3, bool), np.array([-3.0, -2.0, -1.0]))
    assert out["lambda_max"] == pytest.approx(-1.2 + 0.5 * (-1.2 - -1.6))
    assert out["lambda_min"] == pytest.approx(-2.0) and out["rule"].startswith("no copies")
    out = choose_lambdas(final, np.ones(3, bool), np.array([-3.0, -2.0, -1.0]))
    assert out["lambda_max"] < -2.0 and out["lambda_min"] == pytest.approx(-3.0)
    # the similarity's range is kept: -nL2 thresholds stay below 0, cosines at most 1
    assert (
        choose_lambdas(np.array([-0.01, -0.001]), np.zeros(2, bool), np.zeros(2))["lambda_max"] < 0
    )
    cos = choose_lambdas(np.array([0.5, 0.99]), np.zeros(2, bool), np.zeros(2), "pixel-cosine")
    assert cos["lambda_max"] <= 1.0


def test_copy_labels_are_the_audits():
    assert COPY_RATIO == RATIO_THRESHOLD
    g = torch.Generator().manual_seed(0)
    train = torch.rand(10, 1, 8, 8, generator=g) * 2 - 1
    train[9] = train[8]  # one image stored twice: NN2 is the next distinct image
    gen = torch.cat([train[:4] + 0.02 * torch.randn(4, 1, 8, 8, generator=g),
                     torch.rand(6, 1, 8, 8, generator=g) * 2 - 1, train[8:9]])  # fmt: skip
    labels, ratio = copy_labels(gen, train)
    nb = metrics.pixel_neighbours(gen.numpy(), train.numpy())
    np.testing.assert_allclose(ratio, metrics.nn_ratio(nb.d1, nb.d2), rtol=1e-6)
    assert labels.tolist() == [True] * 4 + [False] * 6 + [True]


# ------------------------------------------------------------------------- end to end


def test_calibration_puts_lambda_max_between_non_copies_and_copies(memorizer):
    amg, _ = _calibrated(memorizer)
    cal = amg.calibration
    sim, copy = _final_similarities(memorizer, amg, 24, seed=5)
    assert 0 < copy.sum() < len(copy)  # the case has both kinds
    assert (cal["copies"], cal["non_copies"]) == (int(copy.sum()), int((~copy).sum()))
    assert sim[~copy].max() < cal["lambda_max"] < sim[copy].min()
    midway = (sim[~copy].max() + sim[copy].min()) / 2  # not the copies' own max, nor the min
    assert cal["lambda_max"] == pytest.approx(midway, abs=1e-3)
    assert cal["rule"] == "copy boundary"
    # the thresholds AMG samples with are the calibrated ones, and lambda_min <= lambda_max
    assert amg.config.lambdas == (cal["lambda_min"], cal["lambda_max"])
    assert cal["lambda_min"] <= cal["lambda_max"]
    assert amg.config.threshold_at(1e-3) == pytest.approx(cal["lambda_max"], abs=1e-4)
    # lambda_min: the non-copies' median at the step nearest abar = 1/2
    assert abs(cal["mid_abar"] - 0.5) < 0.25 and cal["samples"] == 24


def test_calibration_is_deterministic_and_its_seeds_are_apart_from_the_samples(memorizer):
    a, out_a = _calibrated(memorizer)
    b, out_b = _calibrated(memorizer)
    drop = {"seconds"}
    assert {k: v for k, v in a.calibration.items() if k not in drop} == {
        k: v for k, v in b.calibration.items() if k not in drop
    }
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    assert a.calibration["seed"] == calibration_seed(5) != 5
    assert calibration_seed(5) != calibration_seed(6)
    # the guided run's own records are its 8 samples only, not the calibration batch's
    assert a.steps_frame()["sample"].n_unique() == 8


def test_given_lambdas_win_and_no_calibration_batch_is_drawn(memorizer, tmp_path):
    den, train = memorizer
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[1])
        return _sampler()(*args, **kwargs)

    for lambdas, want in (((-1.5, -0.5), (-1.5, -0.5)), ("fixed", DEFAULT_LAMBDAS["pixel"])):
        calls.clear()
        amg = build_amg(den, train, AMGConfig(k=6, lambdas=lambdas))
        guided_sampler(counting, amg)(den, 4, seed=0)
        assert calls == [4] and amg.calibration is None
        assert amg.config.lambda_range == want
        write_amg(amg, tmp_path / str(lambdas))
        summary = json.loads((tmp_path / str(lambdas) / "amg.json").read_text())
        assert summary["calibration"] is None and tuple(summary["config"]["lambdas"]) == want
    # a threshold that never reads the lambdas needs no calibration either
    amg = build_amg(den, train, AMGConfig(k=6, threshold="always"))
    calls.clear()
    guided_sampler(counting, amg)(den, 2, seed=0)
    assert calls == [2] and amg.calibration is None


def test_amg_json_and_the_report_record_the_calibration(memorizer, tmp_path):
    amg, _ = _calibrated(memorizer)
    write_amg(amg, tmp_path)
    summary = json.loads((tmp_path / "amg.json").read_text())
    cal = summary["calibration"]
    assert cal["lambdas"] == "auto" and cal["samples"] == 24
    assert {"copies", "non_copies", "lambda_min", "lambda_max", "rule", "final_similarity",
            "mid_step", "seed", "seconds"} <= set(cal)  # fmt: skip
    assert summary["config"]["lambdas"] == [cal["lambda_min"], cal["lambda_max"]]
    html = (tmp_path / "report" / "index.html").read_text()
    assert "calibrated on this model" in html and f"{cal['lambda_max']:.4g}" in html


def test_auto_without_calibration_is_a_one_line_error(memorizer):
    from curate.errors import UsageError

    den, train = memorizer
    amg = build_amg(den, train, AMGConfig(k=6))
    with pytest.raises(UsageError, match="^lambdas: auto is measured from a calibration batch"):
        _sampler()(den, 2, guidance=amg)
    assert math.isinf(AMGConfig(threshold="off").threshold_at(1.0))


# ------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def digits_run(digits_runs):
    return digits_runs(12)


def test_audit_with_amg_calibrates_by_default_and_records_it(digits_run, tmp_path):
    from click.testing import CliRunner

    from curate.cli.audit import audit

    out = tmp_path / "audit"
    args = ["--oracle", "--train", str(digits_run), "--resolution", "8", "--out", str(out)]
    args += ["--num-samples", "6", "--steps", "6", "--device", "cpu", "--quiet", "--amg"]
    args += ["--amg-calibration-samples", "8", "--amg-k", "8"]
    result = CliRunner().invoke(audit, args)
    assert result.exit_code == 0, result.output
    cal = json.loads((out / "amg" / "amg.json").read_text())["calibration"]
    assert cal["samples"] == 8 and cal["copies"] == 8  # the oracle copies every time
    assert cal["rule"].startswith("copies only")
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["amg"]["lambdas"] == [cal["lambda_min"], cal["lambda_max"]]


def test_a_text_model_calibrates_under_its_own_prompts_and_guidance_scale(
    digits_run, tmp_path, tiny_model
):
    from click.testing import CliRunner

    from curate.cli.model import sample

    model = tiny_model(tmp_path / "model", "tiny-clip")
    out = tmp_path / "s"
    args = [str(model), "--num", "3", "--steps", "3", "--out", str(out), "--quiet"]
    args += ["--prompt", "a digit", "--guidance-scale", "3", "--amg", "--amg-train",
             str(digits_run), "--amg-calibration-samples", "5", "--amg-k", "4"]  # fmt: skip
    result = CliRunner().invoke(sample, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "amg.json").read_text())
    assert summary["calibration"]["samples"] == 5 and summary["samples"] == 3
