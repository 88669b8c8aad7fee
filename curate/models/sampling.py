"""Samplers over the denoiser interface ``D(x, sigma, cond) -> x0_hat``.

* ``ddim`` and ``ddpm`` are diffusers' own ``DDIMScheduler`` / ``DDPMScheduler``, built from the
  model's scheduler config exactly as ``DDIMPipeline`` / ``DDPMPipeline`` (and the Stable
  Diffusion pipeline) build them, and stepped by them. So everything diffusers honours in that
  config is honoured here: ``clip_sample`` / ``clip_sample_range`` and ``thresholding``
  (``dynamic_thresholding_ratio``, ``sample_max_value``) applied to each step's x0 prediction,
  ``prediction_type``, ``timestep_spacing`` (leading, trailing, linspace), ``steps_offset``,
  ``set_alpha_to_one`` (DDIM's last step) and DDPM's ``variance_type``. The state is the one a
  diffusers pipeline holds (VP units, starting from unit noise at the first timestep); the
  result matches ``DDIMPipeline`` (eta 0) / ``DDPMPipeline`` for the same weights, noise and
  config to float precision (tests/models/test_parity.py). ``ddim`` is deterministic (unless
  ``eta`` > 0); ``ddpm`` draws fresh noise at every step.
* ``euler``: Karras noise levels (rho = 7), first order, on the probability-flow ODE
  dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, Eq. 3 with sigma(t) = t).
* ``heun``: Karras noise levels, second order (Karras et al. 2022, Algorithm 1); 2 calls per
  step.
* ``euler`` and ``heun`` limit every x0 prediction they step with (both evaluations of a Heun
  step) as the model's scheduler config tells DDIM to: clamped to
  ``[-clip_sample_range, clip_sample_range]`` when ``clip_sample`` is set (curate's pixel
  presets set it, range 1), or dynamically thresholded when ``thresholding`` is (it wins, as in
  diffusers); missing keys take diffusers' DDIM defaults. So a model whose x0 predictions
  overshoot [-1, 1] at high noise stays in the images' range with every method. The ODE
  direction ``(x - x0) / sigma`` uses the limited x0 (the step heads for the clipped image).
  A denoiser without a scheduler config (the oracle, a bare ``DiscreteSchedule``) is not
  limited. (diffusers' own Euler and Heun schedulers ignore these keys.) For a latent model
  the limit applies to latents, as in DDIM; Stable Diffusion configs set neither key.

The curate hooks speak VE units (``x = x0 + sigma * eps``) whatever the method: at each step
the model's x0 prediction (``guidance`` replacing it, ``callback`` seeing it) is computed at the
VE point of the scheduler's state, and handed to the scheduler as its ``"sample"``-type model
output; the scheduler then clips / thresholds it and steps, exactly as it would with the
network's native eps or v output (the DDIM direction uses the unclipped prediction, as
diffusers does with ``use_clipped_model_output=False``). ``on_step`` sees the x0 the step used,
after clipping.

Randomness: sample ``i`` owns a ``torch.Generator`` seeded from ``(seed, i)``; its initial
noise and (for ``ddpm``, or ``ddim`` with ``eta`` > 0) every step's noise are drawn from it in
order, through diffusers' ``randn_tensor`` with one generator per row. Results therefore do not
depend on batching, and passing the same list of generators to a diffusers pipeline
(``generator=[...]``) reproduces curate's samples; ``sample(generator=...)`` takes a diffusers
style generator (or list) instead.

Classifier-free guidance (Ho & Salimans 2022) is one affine combination in x0 space,
``x0 = x0_u + s0 * (x0_c - x0_u)``, which equals the usual combination of eps predictions at
the same ``(x, sigma)`` because eps = (x - x0) / sigma is affine in x0. A ``guidance`` object
(e.g. ``curate.guidance.amg.AMG``) may replace the whole x0 prediction of each step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from curate.errors import ModelError, UsageError
from curate.models.denoiser import (
    SAMPLER_OVERRIDES,
    Denoiser,
    diffusers_scheduler,
    karras_sigmas,
    sigma_from_alpha_bar,
    vp_to_ve,
)
from curate.seeding import torch_generator

Method = Literal["ddim", "ddpm", "euler", "heun"]
METHODS = ("ddim", "ddpm", "euler", "heun")
SCHEDULER_METHODS = ("ddim", "ddpm")  # stepped by diffusers' schedulers

# callback(step_index, sigma, x, x0_hat) -> None or a replacement x0_hat
Callback = Callable[[int, float, torch.Tensor, torch.Tensor], torch.Tensor | None]
Generators = torch.Generator | list[torch.Generator]


class Guidance(Protocol):
    """Replaces the x0 prediction of each sampler step (the first evaluation of a Heun step)."""

    def __call__(
        self, denoiser, x: torch.Tensor, sigma: float, cond: CFGCond | None, step: int,
        rows: list[int],
    ) -> torch.Tensor: ...  # fmt: skip


@dataclass(frozen=True)
class StepRecord:
    """What one sampler step did, for ``sample(on_step=...)`` (tests, debugging, plots).

    ``x0`` is the clean-image prediction the update used: for ``ddim``/``ddpm`` the scheduler's
    ``pred_original_sample`` (clipped or thresholded as the config says). ``prev_sample`` is the
    state after the step in the sampler's own units: what a diffusers pipeline holds (VP) for
    ``ddim``/``ddpm``, VE for ``euler``/``heun``. ``timestep`` is None for euler/heun.
    """

    step: int
    timestep: int | None
    sigma: float
    rows: list[int]
    x0: torch.Tensor
    prev_sample: torch.Tensor


@dataclass(frozen=True)
class CFGCond:
    """The conditioning of one batch: embeddings, and the unconditional ones with scale ``s0``."""

    cond: torch.Tensor  # (B, L, D) or (B, D)
    uncond: torch.Tensor | None = None  # same shape; None: no classifier-free guidance
    scale: float = 1.0

    @property
    def guided(self) -> bool:
        return self.uncond is not None and self.scale != 1.0

    def rows(self, index: torch.Tensor | slice) -> CFGCond:
        u = self.uncond[index] if self.uncond is not None else None
        return CFGCond(self.cond[index], u, self.scale)


def cfg_branches(
    denoiser: Denoiser, x: torch.Tensor, sigma: float | torch.Tensor, cond: CFGCond | None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(x0_u, x0_c)``: the unconditional (None without CFG) and conditional x0 predictions."""
    sig = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sig.ndim == 0:
        sig = sig.expand(x.shape[0])
    if cond is None:
        return None, denoiser(x, sig, None)
    x0_c = denoiser(x, sig, cond.cond)
    x0_u = denoiser(x, sig, cond.uncond) if cond.guided else None
    return x0_u, x0_c


def cfg_combine(x0_u: torch.Tensor | None, x0_c: torch.Tensor, scale: float) -> torch.Tensor:
    """``x0_u + scale * (x0_c - x0_u)`` (just ``x0_c`` without an unconditional branch)."""
    if x0_u is None:
        return x0_c
    return x0_u + scale * (x0_c - x0_u)


def predict_x0(
    denoiser: Denoiser, x: torch.Tensor, sigma: float, cond: CFGCond | None
) -> torch.Tensor:
    """The sampler's x0 prediction: the denoiser, with classifier-free guidance when asked."""
    x0_u, x0_c = cfg_branches(denoiser, x, sigma, cond)
    return cfg_combine(x0_u, x0_c, cond.scale if cond is not None else 1.0)


# ------------------------------------------------------------------------ diffusers schedulers


def scheduler_config_of(denoiser: Denoiser) -> dict[str, Any]:
    """The denoiser's diffusers scheduler config; for a denoiser with only a ``schedule`` (a
    ``DiscreteSchedule``), a config with its betas and no clipping."""
    if denoiser.scheduler_config is not None:
        return dict(denoiser.scheduler_config)
    if denoiser.schedule is None:
        raise UsageError(
            "--method ddim/ddpm needs a model with a discrete noise schedule; use euler or heun"
        )
    return denoiser.schedule.scheduler_config()


def make_scheduler(denoiser, method: str, steps: int, overrides: dict[str, Any] | None = None):
    """The diffusers scheduler ``ddim``/``ddpm`` sampling steps with, timesteps set.

    Built from the model's scheduler config as diffusers' pipelines build it, plus
    ``overrides`` (only the keys in ``SAMPLER_OVERRIDES``: how to step, not what the weights
    were trained on). It steps on x0 predictions (``prediction_type="sample"``); clipping,
    thresholding, spacing and variance follow the config.
    """
    overrides = dict(overrides or {})
    bad = sorted(set(overrides) - set(SAMPLER_OVERRIDES))
    if bad:
        raise UsageError(
            f"scheduler override {', '.join(map(repr, bad))} is not one of "
            f"{', '.join(SAMPLER_OVERRIDES)}"
        )
    config = {**scheduler_config_of(denoiser), **overrides}
    if method == "ddpm" and config.get("variance_type") in ("learned", "learned_range"):
        raise ModelError(
            f"variance_type {config['variance_type']!r} needs a UNet that predicts its variance, "
            "which curate's denoiser does not read; sample with --method ddim"
        )
    sched = diffusers_scheduler(config, method, prediction_type="sample")
    try:
        sched.set_timesteps(steps)  # on the CPU, as DDIMPipeline / DDPMPipeline do
    except ValueError as err:  # e.g. more steps than training timesteps
        raise UsageError(f"--steps {steps}: {err}") from err
    return sched


def _final_alpha_bar(sched, method: str) -> float:
    """alpha_bar of the state after the last step (1.0: clean, unless set_alpha_to_one=False)."""
    t_last = int(sched.timesteps[-1])
    if method == "ddim":
        prev = t_last - sched.config.num_train_timesteps // sched.num_inference_steps
        return float(sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod)
    prev = int(sched.previous_timestep(t_last))
    return float(sched.alphas_cumprod[prev]) if prev >= 0 else 1.0


def sampling_timesteps(denoiser, steps: int, method: str = "ddim") -> torch.Tensor:
    """The discrete timesteps ``ddim``/``ddpm`` visit, as the model's scheduler spaces them."""
    _check_method(steps, method)
    if method not in SCHEDULER_METHODS:
        raise UsageError(f"--method {method} uses continuous noise levels, not timesteps")
    return make_scheduler(denoiser, method, steps).timesteps.clone()


def sampling_sigmas(denoiser, steps: int, method: str = "ddim") -> torch.Tensor:
    """The ``steps + 1`` noise levels a sampler visits, decreasing, ending with the final one
    (0, or sigma of alphas_cumprod[0] for a DDIM config with ``set_alpha_to_one: false``)."""
    _check_method(steps, method)
    if method in SCHEDULER_METHODS:
        sched = make_scheduler(denoiser, method, steps)
        sigmas = denoiser.schedule.sigmas[sched.timesteps.long().cpu()]
        final = sigma_from_alpha_bar(torch.tensor(_final_alpha_bar(sched, method)))
        return torch.cat([sigmas, final.float().reshape(1)])
    sigmas = karras_sigmas(denoiser.sigma_min, denoiser.sigma_max, steps)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _check_method(steps: int, method: str) -> None:
    if steps < 1:
        raise UsageError(f"--steps must be >= 1, got {steps}")
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is not one of {', '.join(METHODS)}")


# ------------------------------------------------------------------------------------ noise


def sample_generators(seed: int, indices: list[int]) -> list[torch.Generator]:
    """One CPU generator per sample index, seeded from ``(seed, index)`` alone."""
    return [torch_generator(seed, i, "sample-init") for i in indices]


def initial_noise(seed: int, indices: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Unit Gaussian noise for sample indices, each from ``(seed, index)`` alone: the first
    draw of each index's generator (:func:`sample_generators`)."""
    from diffusers.utils.torch_utils import randn_tensor

    gens = sample_generators(seed, indices)
    return randn_tensor((len(indices), *shape), generator=gens, dtype=torch.float32)


# ------------------------------------------------------------------------------------ sample


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    num: int,
    *,
    steps: int = 50,
    method: Method = "ddim",
    seed: int = 0,
    cond: torch.Tensor | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = True,
    callback: Callback | None = None,
    clip: bool | None = None,
    uncond: torch.Tensor | None = None,
    cfg_scale: float = 1.0,
    guidance: Guidance | None = None,
    autocast: bool | None = None,
    eta: float = 0.0,
    generator: Generators | None = None,
    scheduler_overrides: dict[str, Any] | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
) -> torch.Tensor:
    """``num`` samples (num, C, H, W) in model space: images in [-1, 1] for pixel models.

    ``cond`` holds one row per sample ((num, L, D) or (num, D)); ``uncond`` the unconditional
    embeddings (one row per sample, or one row for all) for classifier-free guidance with scale
    ``cfg_scale``. ``clip`` (default: pixel models only) clamps the result to [-1, 1]; per-step
    clipping of x0 is the scheduler config's ``clip_sample`` / ``thresholding`` (every method;
    euler/heun through :func:`x0_limit`). A ``callback``
    returning a tensor replaces x0_hat; a ``guidance`` replaces the prediction; ``on_step``
    gets a :class:`StepRecord` after each step. ``autocast`` (default: on for CUDA) runs the
    network in bfloat16/float16 mixed precision; the sampler's state and the x0 predictions
    stay float32.

    ``eta`` (ddim only) is DDIM's stochasticity (0: deterministic, as ``DDIMPipeline``'s
    default). ``generator`` replaces curate's per-sample seeding by a diffusers-style
    generator: one ``torch.Generator`` (drawn batch after batch, so with ``batch_size >= num``
    the noise a diffusers pipeline given it would draw) or a list of one per sample.
    ``scheduler_overrides`` changes how ddim/ddpm step (e.g. ``{"timestep_spacing":
    "trailing"}``; keys in ``curate.models.denoiser.SAMPLER_OVERRIDES``).
    """
    if num < 0:
        raise UsageError(f"--num must be >= 0, got {num}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    _check_method(steps, method)
    if eta < 0:
        raise UsageError(f"eta must be >= 0, got {eta}")
    if eta > 0 and method != "ddim":
        raise UsageError("eta is DDIM's noise level: use it with --method ddim")
    if isinstance(generator, list | tuple) and len(generator) != num:
        raise UsageError(f"{len(generator)} generators for {num} samples; pass one per sample")
    if cond is not None and cond.shape[0] != num:
        raise UsageError(f"cond has {cond.shape[0]} rows for {num} samples; pass one per sample")
    if cfg_scale != 1.0 and (cond is None or uncond is None):
        raise UsageError("--guidance-scale needs a text-conditional model and an empty prompt")
    if uncond is not None and cond is not None:
        uncond = uncond.expand(num, *uncond.shape[1:]) if uncond.shape[0] == 1 else uncond
        if uncond.shape != cond.shape:
            raise UsageError(
                f"uncond {tuple(uncond.shape)} does not match cond {tuple(cond.shape)}"
            )
    if method in SCHEDULER_METHODS:
        sched = make_scheduler(denoiser, method, steps, scheduler_overrides)
        stepper = _SchedulerStepper(sched, method, denoiser, eta)
    else:
        if scheduler_overrides:
            raise UsageError(f"scheduler overrides apply to ddim/ddpm, not {method}")
        sigmas = sampling_sigmas(denoiser, steps, method).tolist()
        stepper = _ODEStepper(sigmas, method, x0_limit(denoiser))
    shape = (denoiser.channels, denoiser.resolution, denoiser.resolution)
    clip = denoiser.vae is None if clip is None else clip
    hooks = _Hooks(callback, guidance, on_step)
    from tqdm.auto import tqdm

    bar = tqdm(total=num * steps, disable=not progress, desc=f"sampling ({method})", unit="step")
    out = []
    with _mixed_precision(device, autocast):
        for start in range(0, num, batch_size):
            idx = list(range(start, min(start + batch_size, num)))
            if generator is None:
                gens: Generators = sample_generators(seed, idx)
            elif isinstance(generator, list | tuple):
                gens = list(generator[idx[0] : idx[-1] + 1])
            else:
                gens = generator
            c = None
            if cond is not None:
                rows = slice(idx[0], idx[-1] + 1)
                u = uncond[rows].to(device) if uncond is not None else None
                c = CFGCond(cond[rows].to(device), u, float(cfg_scale))
            x = stepper.run(denoiser, idx, gens, shape, c, device, hooks, bar)
            out.append((x.clamp(-1, 1) if clip else x).float())
    bar.close()
    if not out:
        return torch.empty((0, *shape))
    return torch.cat(out).cpu()


def _mixed_precision(device: str, autocast: bool | None):
    """An autocast context for CUDA (bfloat16 where supported), else a no-op."""
    import contextlib

    on = str(device).startswith("cuda") if autocast is None else autocast
    if not on or not str(device).startswith("cuda"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


@dataclass(frozen=True)
class _Hooks:
    callback: Callback | None
    guidance: Guidance | None
    on_step: Callable[[StepRecord], None] | None

    def denoise(self, denoiser, x, sigma, cond, i, rows) -> torch.Tensor:
        """The step's x0 prediction at VE point ``x``: guidance's, else the (CFG) denoiser's."""
        if self.guidance is not None:
            x0 = self.guidance(denoiser, x, sigma, cond, i, rows)
        else:
            x0 = predict_x0(denoiser, x, sigma, cond)
        if self.callback is not None:
            replaced = self.callback(i, sigma, x, x0)
            if replaced is not None:
                x0 = replaced
        return x0


def _randn(shape, gens: Generators, device) -> torch.Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(shape, generator=gens, device=torch.device(device), dtype=torch.float32)


class _SchedulerStepper:
    """ddim / ddpm: diffusers' scheduler steps the VP state a diffusers pipeline would hold."""

    def __init__(self, sched, method: str, denoiser, eta: float):
        self.sched, self.method, self.eta = sched, method, eta
        # sigma of each visited integer timestep, as the denoiser's own schedule has it (so
        # the denoiser maps it back to exactly that timestep)
        self.sigmas = denoiser.schedule.sigmas[sched.timesteps.long().cpu()].tolist()

    def run(self, denoiser, idx, gens, shape, cond, device, hooks: _Hooks, bar) -> torch.Tensor:
        sched = self.sched
        # as DDIMPipeline / DDPMPipeline: unit noise at the first timestep (init_noise_sigma 1)
        x = _randn((len(idx), *shape), gens, device) * sched.init_noise_sigma
        kw = {"eta": self.eta} if self.method == "ddim" else {}
        for i, t in enumerate(sched.timesteps):
            sigma = self.sigmas[i]
            x0 = hooks.denoise(denoiser, vp_to_ve(x, sigma), sigma, cond, i, idx)
            out = sched.step(x0.float(), t, x, generator=gens, **kw)
            x = out.prev_sample
            if hooks.on_step is not None:
                hooks.on_step(StepRecord(i, int(t), sigma, idx, out.pred_original_sample, x))
            bar.update(len(idx))
        return x


def x0_limit(denoiser: Denoiser) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What euler/heun do to each x0 prediction, as the scheduler config has DDIM do it:
    dynamic thresholding when ``thresholding`` is set, else clamping to
    ``[-clip_sample_range, clip_sample_range]`` when ``clip_sample`` is; None (untouched) when
    neither is, or when the denoiser has no scheduler config. Missing keys take diffusers'
    DDIM defaults (``clip_sample`` True, range 1), as ``--method ddim`` reads them."""
    # getattr: duck-typed test denoisers that only sample with euler/heun carry no config
    config = getattr(denoiser, "scheduler_config", None)
    if config is None:
        return None
    sched = diffusers_scheduler(config, "ddim")
    if sched.config.thresholding:
        return sched._threshold_sample  # diffusers' own (Saharia et al. 2022), as DDIM steps it
    if sched.config.clip_sample:
        bound = float(sched.config.clip_sample_range)
        return lambda x0: x0.clamp(-bound, bound)
    return None


class _ODEStepper:
    """euler / heun on the probability-flow ODE in VE units over Karras noise levels; each x0
    prediction goes through ``limit`` (:func:`x0_limit`) before the step uses it."""

    def __init__(self, sigmas: list[float], method: str, limit=None):
        self.sigmas, self.method = sigmas, method
        self.limit = limit if limit is not None else (lambda x0: x0)

    def run(self, denoiser, idx, gens, shape, cond, device, hooks: _Hooks, bar) -> torch.Tensor:
        sigmas = self.sigmas
        x = _randn((len(idx), *shape), gens, device) * sigmas[0]
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            x0 = self.limit(hooks.denoise(denoiser, x, sigma, cond, i, idx))
            d = (x - x0) / sigma  # dx/dsigma of the probability-flow ODE
            x_next = x + (sigma_next - sigma) * d
            if self.method == "heun" and sigma_next > 0:
                # Heun's correction (Karras et al. 2022, Alg. 1, lines 9-11); guidance sees
                # only the first evaluation of each step
                x0_next = self.limit(predict_x0(denoiser, x_next, sigma_next, cond))
                d_next = (x_next - x0_next) / sigma_next
                x_next = x + (sigma_next - sigma) * (d + d_next) / 2
            x = x_next
            if hooks.on_step is not None:
                hooks.on_step(StepRecord(i, None, sigma, idx, x0, x))
            bar.update(len(idx))
        return x
