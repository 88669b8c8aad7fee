"""The denoiser adapter: schedule conversions and agreement with diffusers' own scheduler."""

from __future__ import annotations

import pytest
import torch

from curate.errors import ModelError
from curate.models.denoiser import (
    DiffusersDenoiser,
    DiscreteSchedule,
    alpha_bar_from_sigma,
    load_denoiser,
    native_loss_weight,
    output_to_x0,
    sigma_from_alpha_bar,
    sigma_from_vp_std,
    ve_to_vp,
    vp_std_from_sigma,
    vp_to_ve,
    x0_to_output,
)
from curate.models.presets import build_pixel_unet, default_scheduler_config, save_pipeline

PRED_TYPES = ["epsilon", "v_prediction", "sample"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_ve_vp_round_trip_and_marginal():
    g = _gen()
    x0 = torch.randn(6, 1, 4, 4, generator=g)
    eps = torch.randn(6, 1, 4, 4, generator=g)
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 10.0, 150.0])
    x = x0 + sigma.view(-1, 1, 1, 1) * eps
    x_vp = ve_to_vp(x, sigma)
    torch.testing.assert_close(vp_to_ve(x_vp, sigma), x)
    # the VP marginal of the same sample: sqrt(abar) x0 + sqrt(1 - abar) eps
    abar = alpha_bar_from_sigma(sigma).view(-1, 1, 1, 1)
    torch.testing.assert_close(x_vp, abar.sqrt() * x0 + (1 - abar).sqrt() * eps)
    torch.testing.assert_close(sigma_from_alpha_bar(alpha_bar_from_sigma(sigma)), sigma)
    s64 = sigma.double()  # 1 - s^2 is ill-conditioned in float32 at sigma ~ 150
    torch.testing.assert_close(sigma_from_vp_std(vp_std_from_sigma(s64)), s64)


@pytest.mark.parametrize("pred", PRED_TYPES)
def test_output_x0_round_trip(pred):
    g = _gen(1)
    x0 = torch.randn(5, 3, 4, 4, generator=g)
    sigma = torch.tensor([0.05, 0.3, 1.0, 4.0, 40.0])
    x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(5, 3, 4, 4, generator=g)
    out = x0_to_output(x0, x, sigma, pred)
    torch.testing.assert_close(output_to_x0(out, x, sigma, pred), x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pred", PRED_TYPES)
def test_native_loss_weight_reproduces_native_mse(pred):
    """w(sigma) |D - x0|^2 equals |output - target|^2 in the model's own parameterisation."""
    g = _gen(2)
    x0 = torch.randn(4, 1, 4, 4, generator=g)
    d = x0 + 0.1 * torch.randn(4, 1, 4, 4, generator=g)
    sigma = torch.tensor([0.1, 0.7, 2.0, 20.0])
    x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(4, 1, 4, 4, generator=g)
    native = (x0_to_output(d, x, sigma, pred) - x0_to_output(x0, x, sigma, pred)) ** 2
    ours = native_loss_weight(sigma, pred) * ((d - x0) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(ours, native.flatten(1).mean(1), rtol=1e-4, atol=1e-6)


def test_discrete_schedule_matches_ddpm_scheduler_and_inverts():
    from diffusers import DDPMScheduler

    cfg = default_scheduler_config()
    sched = DiscreteSchedule.from_scheduler_config(cfg)
    ref = DDPMScheduler.from_config({k: v for k, v in cfg.items() if k != "_class_name"})
    torch.testing.assert_close(sched.sigmas, sigma_from_alpha_bar(ref.alphas_cumprod).float())
    t = torch.tensor([0.0, 1.0, 10.5, 500.25, 998.0, 999.0])
    torch.testing.assert_close(sched.sigma_to_t(sched.t_to_sigma(t)), t, atol=1e-3, rtol=0)
    assert sched.sigma_min == pytest.approx(float(sched.sigmas[0]))
    assert sched.sigma_max > 100  # linear betas, T = 1000: ~157


@pytest.mark.parametrize("pred", PRED_TYPES)
def test_adapter_x0_matches_diffusers_scheduler(pred):
    """D(x, sigma_t) equals the x0 that diffusers' DDPMScheduler derives at timestep t."""
    from diffusers import DDPMScheduler

    unet = build_pixel_unet("tiny", channels=1, resolution=8)
    cfg = {**default_scheduler_config(pred), "clip_sample": False}
    den = DiffusersDenoiser(unet, cfg).eval()
    sched = DDPMScheduler.from_config({k: v for k, v in cfg.items() if k != "_class_name"})
    g = _gen(3)
    x_vp = torch.randn(2, 1, 8, 8, generator=g)
    for t in (3, 250, 900):
        sigma = den.schedule.sigmas[t].expand(2)
        with torch.no_grad():
            d = den(vp_to_ve(x_vp, sigma), sigma)
            out = unet(x_vp, torch.full((2,), t)).sample
        ref = sched.step(out, t, x_vp).pred_original_sample
        torch.testing.assert_close(d, ref, rtol=1e-3, atol=1e-3)


def test_conditional_adapter_needs_cond_and_accepts_pooled():
    unet = build_pixel_unet("tiny", channels=1, resolution=8, cross_attention_dim=12)
    den = DiffusersDenoiser(unet, default_scheduler_config()).eval()
    assert den.conditional and den.cond_dim == 12
    x, s = torch.zeros(2, 1, 8, 8), torch.ones(2)
    with pytest.raises(ModelError, match="cond"):
        den(x, s)
    with torch.no_grad():
        pooled = den(x, s, torch.ones(2, 12))
        tokens = den(x, s, torch.ones(2, 1, 12))
    torch.testing.assert_close(pooled, tokens)


def test_save_and_load_round_trip(tmp_path):
    from diffusers import DiffusionPipeline

    unet = build_pixel_unet("tiny", channels=1, resolution=8, seed=5)
    den = DiffusersDenoiser(unet, default_scheduler_config()).eval()
    save_pipeline(tmp_path / "m", unet, den.scheduler_config)
    loaded = load_denoiser(tmp_path / "m")
    x, s = torch.randn(2, 1, 8, 8, generator=_gen()), torch.tensor([0.5, 5.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, s), den(x, s))
    assert (loaded.channels, loaded.resolution, loaded.conditional) == (1, 8, False)
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "m"))
    assert type(pipe).__name__ == "DDPMPipeline"


def test_load_denoiser_rejects_non_pipeline_folder(tmp_path):
    with pytest.raises(ModelError, match="model_index.json"):
        load_denoiser(tmp_path)


def test_shipped_digits_model_loads_by_name_and_samples():
    from curate.models.denoiser import ASSET_MODELS
    from curate.models.sampling import sample

    den = load_denoiser("digits-tiny")
    assert (den.channels, den.resolution, den.conditional) == (1, 16, False)
    assert den.info["train"]["config"]["model"] == "tiny"
    assert "curate train" in (ASSET_MODELS / "digits-tiny" / "README.md").read_text()
    x = sample(den, 4, steps=10, progress=False)
    assert x.shape == (4, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert x.std() > 0.3  # a trained model makes high-contrast strokes, not grey mush


def test_a_mistyped_model_folder_is_named_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    import time

    from curate.errors import ModelError
    from curate.models.denoiser import load_denoiser

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    start = time.monotonic()
    for name in ("models/digts", "./digts", "a/b/c"):
        with pytest.raises(ModelError, match="no such model folder"):
            load_denoiser(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        load_denoiser("someone/model")
    assert time.monotonic() - start < 5  # no Hub retries
