"""Euler and Heun honour the scheduler config's ``clip_sample`` (and ``thresholding``) as DDIM
does: every x0 prediction they step with is limited before the ODE step uses it."""

from __future__ import annotations

import pytest
import torch

from curate.models.denoiser import DiffusersDenoiser, DiscreteSchedule
from curate.models.presets import build_pixel_unet, default_scheduler_config
from curate.models.sampling import sample, x0_limit


class OvershootDenoiser:
    """Predicts x0 = 5 everywhere (far outside [-1, 1]), with a diffusers scheduler config."""

    def __init__(self, **config):
        self.scheduler_config = {**default_scheduler_config(), **config}
        self.schedule = DiscreteSchedule.from_scheduler_config(self.scheduler_config)
        self.sigma_min, self.sigma_max = self.schedule.sigma_min, self.schedule.sigma_max
        self.channels, self.resolution, self.conditional, self.vae = 1, 4, False, None

    def __call__(self, x, sigma, cond=None):
        return torch.full_like(x, 5.0)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_euler_and_heun_clip_x0_to_the_configured_range(method):
    """With x0 = c constant the ODE solution is exact for both methods, x' = c + (x - c) s'/s;
    it holds only with c the clipped 0.5 (Heun's second evaluation clipped too)."""
    den = OvershootDenoiser(clip_sample=True, clip_sample_range=0.5)
    records = []
    out = sample(den, 3, steps=5, method=method, progress=False, clip=False, on_step=records.append)
    torch.testing.assert_close(out, torch.full_like(out, 0.5))
    sigmas = [r.sigma for r in records] + [0.0]
    x = None
    for i, rec in enumerate(records):
        assert float(rec.x0.max()) == 0.5 and float(rec.x0.min()) == 0.5
        if x is not None:
            expect = 0.5 + (x - 0.5) * sigmas[i + 1] / sigmas[i]
            torch.testing.assert_close(rec.prev_sample, expect, rtol=1e-5, atol=1e-5)
        x = rec.prev_sample


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_without_clip_sample_the_prediction_is_used_as_is(method):
    den = OvershootDenoiser(clip_sample=False)
    out = sample(den, 2, steps=4, method=method, progress=False, clip=False)
    torch.testing.assert_close(out, torch.full_like(out, 5.0))


def test_thresholding_wins_over_clip_sample_as_in_diffusers():
    """Dynamic thresholding (sample_max_value 2): a uniform 5 is scaled to exactly 1."""
    den = OvershootDenoiser(clip_sample=True, thresholding=True, sample_max_value=2.0)
    out = sample(den, 2, steps=3, method="euler", progress=False, clip=False)
    torch.testing.assert_close(out, torch.full_like(out, 1.0))


def test_a_denoiser_without_a_scheduler_config_is_not_limited():
    den = OvershootDenoiser()
    den.scheduler_config = None
    assert x0_limit(den) is None
    out = sample(den, 2, steps=3, method="euler", progress=False, clip=False)
    torch.testing.assert_close(out, torch.full_like(out, 5.0))


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_a_unet_whose_config_sets_clip_sample_samples_inside_its_range(method):
    """A random tiny UNet (x0 = x - sigma * eps overshoots wildly at high noise) whose
    scheduler config says ``clip_sample: true``, range 0.3: every x0 the sampler steps with and
    the final sample stay inside [-0.3, 0.3] (the final sample is the last step's x0)."""
    unet = build_pixel_unet("tiny", channels=1, resolution=8).eval()
    cfg = {**default_scheduler_config(), "clip_sample": True, "clip_sample_range": 0.3}
    den = DiffusersDenoiser(unet, cfg)
    raw, records = [], []

    def seen(i, sigma, x, x0):
        raw.append(float(x0.abs().max()))

    out = sample(den, 2, steps=4, method=method, progress=False, clip=False,
                 callback=seen, on_step=records.append)  # fmt: skip
    assert max(raw) > 1.0  # the prediction itself overshoots: clipping is doing something
    assert all(float(r.x0.abs().max()) <= 0.3 + 1e-6 for r in records)
    assert float(out.abs().max()) <= 0.3 + 1e-6
    den.scheduler_config = {**cfg, "clip_sample": False}
    free = sample(den, 2, steps=4, method=method, progress=False, clip=False)
    assert float(free.abs().max()) > 0.3 + 1e-3
