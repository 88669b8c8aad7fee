"""Samplers: exact on a Gaussian whose denoiser is known, deterministic, independent of batching."""

from __future__ import annotations

import pytest
import torch

from curate.errors import UsageError
from curate.models.denoiser import DiscreteSchedule
from curate.models.presets import default_scheduler_config
from curate.models.sampling import sample, sampling_sigmas, sampling_timesteps


class GaussianDenoiser:
    """The exact D for data ~ N(mu, s^2 I): D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2)."""

    def __init__(self, mu=0.3, s=0.2, res=4):
        self.mu, self.s = mu, s
        self.schedule = DiscreteSchedule.from_scheduler_config(default_scheduler_config())
        # no scheduler_config: ddim/ddpm step a config derived from `schedule` (no clipping)
        self.scheduler_config = self.vae = None
        self.sigma_min, self.sigma_max = self.schedule.sigma_min, self.schedule.sigma_max
        self.channels, self.resolution, self.conditional = 1, res, False

    def __call__(self, x, sigma, cond=None):
        s2 = sigma.view(-1, 1, 1, 1) ** 2
        return (self.s**2 * x + s2 * self.mu) / (self.s**2 + s2)


@pytest.mark.parametrize("method,steps", [("ddim", 250), ("euler", 250), ("heun", 40)])
def test_samplers_recover_a_known_gaussian(method, steps):
    den = GaussianDenoiser()
    x = sample(den, 400, steps=steps, method=method, progress=False, clip=False)
    assert x.mean().item() == pytest.approx(0.3, abs=0.01)
    assert x.std().item() == pytest.approx(0.2, rel=0.05)


def test_ddim_with_overrides_matches_diffusers_ddim_scheduler():
    """``scheduler_overrides`` change how DDIM steps: trailing spacing here, stepped by hand with
    diffusers' DDIMScheduler from the same unit noise (full parity: tests/models/test_parity.py)."""
    from diffusers import DDIMScheduler

    from curate.models.denoiser import DiffusersDenoiser
    from curate.models.presets import build_pixel_unet
    from curate.models.sampling import initial_noise

    cfg = {**default_scheduler_config(), "clip_sample": False}
    unet = build_pixel_unet("tiny", channels=1, resolution=8).eval()
    den = DiffusersDenoiser(unet, cfg)
    trailing = {"timestep_spacing": "trailing"}
    ours = sample(
        den, 3, steps=10, seed=1, progress=False, clip=False, scheduler_overrides=trailing
    )

    keep = {k: v for k, v in cfg.items() if k != "_class_name"}
    sched = DDIMScheduler.from_config(keep, timestep_spacing="trailing")
    sched.set_timesteps(10)
    assert sched.timesteps[0] == 999
    x = initial_noise(1, [0, 1, 2], (1, 8, 8))
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_heun_beats_euler_at_equal_model_calls():
    """Second order pays off: Heun with 40 steps (79 calls) beats Euler with 80 calls."""
    den = GaussianDenoiser()
    err = {}
    for m, steps in (("euler", 80), ("heun", 40)):
        x = sample(den, 400, steps=steps, method=m, progress=False, clip=False)
        err[m] = abs(x.std().item() - 0.2)
    assert err["heun"] < err["euler"] / 2


def test_sampling_is_seeded_and_independent_of_batch_size():
    den = GaussianDenoiser()
    a = sample(den, 7, steps=5, seed=3, batch_size=7, progress=False)
    b = sample(den, 7, steps=5, seed=3, batch_size=2, progress=False)
    c = sample(den, 7, steps=5, seed=4, batch_size=7, progress=False)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    # sample i does not depend on how many samples were asked for
    torch.testing.assert_close(sample(den, 3, steps=5, seed=3, progress=False), a[:3])


def test_callback_sees_each_step_and_can_replace_x0():
    den = GaussianDenoiser()
    seen = []

    def cb(i, sigma, x, x0):
        seen.append((i, sigma))
        return torch.full_like(x0, -0.5)  # steer every prediction to a constant image

    x = sample(den, 2, steps=6, method="ddim", callback=cb, progress=False)
    assert [i for i, _ in seen] == list(range(6))
    assert all(a > b for (_, a), (_, b) in zip(seen, seen[1:], strict=False))
    torch.testing.assert_close(x, torch.full_like(x, -0.5))


def test_sigma_schedules_end_at_zero_and_decrease():
    den = GaussianDenoiser()
    for m in ("ddim", "ddpm", "euler", "heun"):
        s = sampling_sigmas(den, 10, m)
        assert len(s) == 11 and s[-1] == 0 and torch.all(s[:-1] > s[1:])
    assert sampling_sigmas(den, 10, "euler")[0] == pytest.approx(den.sigma_max, rel=1e-4)
    # ddim/ddpm visit the scheduler's timesteps: "leading" (diffusers' default) starts at
    # T - T/steps, "trailing" at T - 1
    assert sampling_timesteps(den, 10, "ddim").tolist() == list(range(900, -1, -100))
    assert sampling_sigmas(den, 10, "ddim")[0] == pytest.approx(float(den.schedule.sigmas[900]))


def test_ddpm_is_seeded_per_sample_and_independent_of_batch_size():
    den = GaussianDenoiser()
    a = sample(den, 5, steps=8, method="ddpm", seed=3, batch_size=5, progress=False)
    b = sample(den, 5, steps=8, method="ddpm", seed=3, batch_size=2, progress=False)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, sample(den, 5, steps=8, method="ddpm", seed=4, progress=False))
    ddim = sample(den, 5, steps=8, method="ddim", seed=3, progress=False)
    assert not torch.allclose(a, ddim)  # fresh noise at every step


def test_on_step_reports_every_step_with_clipped_x0():
    """The callback sees the raw prediction; the scheduler clips it (clip_sample) before use."""
    den = GaussianDenoiser()
    den.scheduler_config = {**default_scheduler_config(), "clip_sample": True}
    seen, records = [], []

    def cb(i, sigma, x, x0):
        seen.append(float(x0.abs().max()))
        return torch.full_like(x0, 5.0)  # far outside [-1, 1]

    x = sample(den, 2, steps=4, callback=cb, on_step=records.append, progress=False, clip=False)
    assert [r.step for r in records] == [0, 1, 2, 3]
    assert [r.timestep for r in records] == [750, 500, 250, 0]
    assert all(float(r.x0.max()) == 1.0 for r in records)
    torch.testing.assert_close(x, torch.ones_like(x))  # set_alpha_to_one: the last x0, clipped


def test_bad_arguments_raise_usage_errors():
    den = GaussianDenoiser()
    with pytest.raises(UsageError, match="--method"):
        sample(den, 2, method="dpm", progress=False)
    with pytest.raises(UsageError, match="--steps"):
        sample(den, 2, steps=0, progress=False)
    with pytest.raises(UsageError, match="cond"):
        sample(den, 2, cond=torch.zeros(3, 4), progress=False)
    with pytest.raises(UsageError, match="--steps 2000"):
        sample(den, 2, steps=2000, progress=False)
    with pytest.raises(UsageError, match="not one of"):
        sample(den, 2, steps=2, progress=False, scheduler_overrides={"beta_end": 0.1})
    with pytest.raises(UsageError, match="eta"):
        sample(den, 2, steps=2, method="ddpm", eta=0.5, progress=False)
