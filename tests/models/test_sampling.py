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
    with pytest.raises(UsageError, match="^method: 'dpm' is not one of"):
        sample(den, 2, method="dpm", progress=False)
    with pytest.raises(UsageError, match="^steps: must be >= 1"):
        sample(den, 2, steps=0, progress=False)
    with pytest.raises(UsageError, match="cond"):
        sample(den, 2, cond=torch.zeros(3, 4), progress=False)
    with pytest.raises(UsageError, match="^steps: 2000 is more than the 1000 timesteps"):
        sample(den, 2, steps=2000, progress=False)
    with pytest.raises(UsageError, match="not one of"):
        sample(den, 2, steps=2, progress=False, scheduler_overrides={"beta_end": 0.1})
    with pytest.raises(UsageError, match="eta"):
        sample(den, 2, steps=2, method="ddpm", eta=0.5, progress=False)


def test_library_errors_name_config_keys_not_flags():
    """The library speaks the keys of SampleConfig / a recipe; only the CLI shows flags."""
    den = GaussianDenoiser()
    cases = [
        ({"num": -1}, "^num: must be >= 0, got -1$"),
        ({"batch_size": 0}, "^batch_size: must be >= 1, got 0$"),
        ({"cfg_scale": 3.0, "cond": torch.zeros(2, 4)}, "^guidance_scale: needs a text"),
        ({"method": "euler", "eta": 0.5}, "^eta: .*method: ddim"),
        ({"method": "euler", "scheduler_overrides": {"steps_offset": 1}}, "^scheduler_overrides"),
    ]
    for kwargs, pattern in cases:
        kwargs = {"num": 2, "steps": 2, **kwargs}
        with pytest.raises(UsageError, match=pattern) as err:
            sample(den, kwargs.pop("num"), progress=False, **kwargs)
        assert "--" not in str(err.value)
    with pytest.raises(UsageError, match="^method: euler uses continuous noise levels"):
        sampling_timesteps(den, 4, "euler")


def test_the_cli_shows_the_flags_of_the_keys(tmp_path):
    from click.testing import CliRunner

    from curate.cli.model import sample as sample_cmd

    args = ["digits-tiny", "--num", "1", "--steps", "2000", "--out", str(tmp_path / "s"), "-q"]
    result = CliRunner().invoke(sample_cmd, args)
    assert result.exit_code != 0
    assert "--steps: 2000 is more than the 1000 timesteps" in result.output, result.output
    assert "Traceback" not in result.output


class _Recording:
    """A model that records how each evaluation was called, then defers to the denoiser."""

    def __init__(self, den):
        self.den, self.calls = den, []

    def __call__(self, x, sigma, *, cond=None, step=None, rows=None):
        self.calls.append((step, sigma))
        return self.den(x, torch.full((len(x),), sigma), None)


def test_samplers_are_functions_of_one_signature_that_sample_calls():
    """sample() is these functions over the wrapped denoiser: calling them directly from the
    same noise gives the same samples; every one has k-diffusion's signature."""
    import inspect

    from curate.models.sampling import (
        SAMPLERS,
        CFGDenoiser,
        make_scheduler,
        sample_euler,
        sample_heun,
        scheduler_sigmas,
    )

    head = ["model", "x", "sigmas", "extra_args", "callback", "disable"]
    for fn in SAMPLERS.values():
        assert list(inspect.signature(fn).parameters)[:6] == head
    den = GaussianDenoiser()
    noise = initial_noise_of(3)
    for name, fn in (("euler", sample_euler), ("heun", sample_heun)):  # from noise * sigma_max
        sigmas = sampling_sigmas(den, 6, name)
        direct = fn(CFGDenoiser(den), noise * float(sigmas[0]), sigmas, disable=True)
        torch.testing.assert_close(direct, sample(den, 3, steps=6, method=name, seed=9,
                                                  progress=False, clip=False))  # fmt: skip
    from curate.models.denoiser import vp_to_ve

    # ddpm: unit noise at the first timestep in VP units, per-step noise from each generator
    sched = make_scheduler(den, "ddpm", 6)
    sigmas = scheduler_sigmas(den, sched, "ddpm")
    x = SAMPLERS["ddpm"](CFGDenoiser(den), vp_to_ve(noise, float(sigmas[0])), sigmas,
                         disable=True, scheduler=sched, generator=_after_noise(9, 3))  # fmt: skip
    torch.testing.assert_close(x, sample(den, 3, steps=6, method="ddpm", seed=9,
                                         progress=False, clip=False))  # fmt: skip


def initial_noise_of(n: int, seed: int = 9) -> torch.Tensor:
    from curate.models.sampling import initial_noise

    return initial_noise(seed, list(range(n)), (1, 4, 4))


def _after_noise(seed: int, n: int):
    """Generators of samples 0..n-1 having drawn their initial noise, as in sample()."""
    from diffusers.utils.torch_utils import randn_tensor

    from curate.models.sampling import sample_generators

    gens = sample_generators(seed, list(range(n)))
    randn_tensor((n, 1, 4, 4), generator=gens, dtype=torch.float32)
    return gens


def test_heun_evaluates_each_step_once_with_its_index_and_corrects_without():
    from curate.models.sampling import sample_heun

    den = GaussianDenoiser()
    model = _Recording(den)
    sigmas = sampling_sigmas(den, 5, "heun")
    sample_heun(model, torch.randn(2, 1, 4, 4) * float(sigmas[0]), sigmas, disable=True)
    indexed = [s for s, _ in model.calls if s is not None]
    assert indexed == [0, 1, 2, 3, 4]
    assert len(model.calls) == 5 + 4  # the last step, to sigma 0, has no correction


def test_guidance_and_callback_see_the_first_evaluation_of_each_heun_step_only():
    den = GaussianDenoiser()
    guided, seen = [], []

    def guidance(d, x, sigma, cond, step, rows, *, limit=None):
        guided.append((step, tuple(rows)))
        return d(x, torch.full((len(x),), sigma), None)

    sample(den, 3, steps=4, method="heun", batch_size=2, progress=False, guidance=guidance,
           callback=lambda i, s, x, x0: seen.append(i))  # fmt: skip
    assert guided == [(i, (0, 1)) for i in range(4)] + [(i, (2,)) for i in range(4)]
    assert seen == [0, 1, 2, 3] * 2


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_ddim_and_ddpm_start_and_end_exactly_on_the_pipelines_state(method):
    """The scheduler steps the very unit noise a pipeline starts from (not a float32 round trip
    through VE units: that rounding alone moved DDIM's samples by 1e-4), and sample() returns
    the scheduler's last state, also when it is not a clean image (DDIM with
    set_alpha_to_one false)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    from curate.models.sampling import initial_noise

    den = GaussianDenoiser()
    den.scheduler_config = {**default_scheduler_config(), "clip_sample": False,
                            "set_alpha_to_one": False}  # fmt: skip
    records = []
    out = sample(
        den,
        32,
        steps=4,
        method=method,
        seed=5,
        progress=False,
        clip=False,
        callback=lambda i, s, x, x0: torch.zeros_like(x0),
        on_step=records.append,
    )
    cls = DDIMScheduler if method == "ddim" else DDPMScheduler
    sched = cls.from_config({**den.scheduler_config, "prediction_type": "sample"})
    sched.set_timesteps(4)
    noise = initial_noise(5, list(range(32)), (1, 4, 4))
    t0 = sched.timesteps[0]
    first = sched.step(torch.zeros_like(noise), t0, noise, generator=_after_noise(5, 32))
    assert torch.equal(records[0].prev_sample, first.prev_sample)
    assert torch.equal(out, records[-1].prev_sample)


@pytest.mark.parametrize("method", ["ddim", "ddpm", "heun"])
def test_the_parts_of_a_many_process_job_are_one_processs_batches(method):
    """part=(rank, world) runs whole batches, so the rows of all parts, put in index order, are
    bitwise one process's samples (what torchrun's sample and audit gather)."""
    from curate.models.sampling import part_indices

    den = GaussianDenoiser()
    full = sample(den, 11, steps=4, method=method, seed=5, batch_size=3, progress=False)
    got = torch.empty_like(full)
    seen = []
    for rank in range(3):
        idx = part_indices(11, 3, (rank, 3))
        x = sample(den, 11, steps=4, method=method, seed=5, batch_size=3, progress=False,
                   part=(rank, 3))  # fmt: skip
        assert len(x) == len(idx)
        got[idx] = x
        seen += idx
    assert sorted(seen) == list(range(11))
    assert torch.equal(got, full)
    assert part_indices(11, 3, (1, 3)) == [3, 4, 5]  # batches 1 (and 4, past the end)
    with pytest.raises(UsageError, match="part: rank 3"):
        sample(den, 4, steps=2, progress=False, part=(3, 3))
