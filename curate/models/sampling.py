"""Samplers over the denoiser interface ``D(x, sigma, cond) -> x0_hat``.

Every sampler is one function of one signature::

    sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None) -> x

``model(x, sigma, step=i, **extra_args)`` returns the x0 prediction at the VE point
``x = x0 + sigma * eps`` (``sigma`` a float); ``x`` enters as the state at ``sigmas[0]`` and the
function returns the state at ``sigmas[-1]``, both in VE units; ``callback`` gets a dict after
each step (``i``, ``sigma``, ``sigma_next``, ``x``, ``denoised``: the x0 the step used, and for
ddim/ddpm ``timestep`` and ``prev_sample``, the scheduler's own state); ``disable`` turns the
progress bar off. The evaluation a step is built on is called with ``step=i``; any further
evaluation of the step (Heun's correction) without it, so what acts once per step (guidance,
an x0 callback) can tell them apart. :data:`SAMPLERS` names them:

* ``ddim`` and ``ddpm`` are stepped by diffusers' own ``DDIMScheduler`` / ``DDPMScheduler``
  (``scheduler=``, from :func:`make_scheduler`), built from the model's scheduler config exactly
  as ``DDIMPipeline`` / ``DDPMPipeline`` (and the Stable Diffusion pipeline) build them. So
  everything diffusers honours in that config is honoured here: ``clip_sample`` /
  ``clip_sample_range`` and ``thresholding`` (``dynamic_thresholding_ratio``,
  ``sample_max_value``) applied to each step's x0 prediction, ``prediction_type``,
  ``timestep_spacing`` (leading, trailing, linspace), ``steps_offset``, ``set_alpha_to_one``
  (DDIM's last step) and DDPM's ``variance_type``. Inside, the state is the one a diffusers
  pipeline holds (VP units); :func:`sample` starts it from unit noise at the first timestep,
  as the pipelines do, and returns the pipeline's final state, so the result matches
  ``DDIMPipeline`` (eta 0) / ``DDPMPipeline`` for the same weights, noise and config to float
  precision (tests/models/test_parity.py). ``ddim`` is deterministic (unless ``eta`` > 0);
  ``ddpm`` draws fresh noise at every step from ``generator``.
* ``euler``: Karras noise levels (rho = 7), first order, on the probability-flow ODE
  dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, Eq. 3 with sigma(t) = t).
* ``heun``: Karras noise levels, second order (Karras et al. 2022, Algorithm 1); 2 calls per
  step.

What :func:`sample` hands a sampler is the denoiser wrapped, innermost first: classifier-free
guidance (:class:`CFGDenoiser`), a ``guidance`` such as AMG in place of the prediction of each
step (:class:`GuidedDenoiser`), the ``callback`` that may replace it (:class:`ReplacedX0`), and
for euler/heun the scheduler config's limit on x0 (:class:`LimitedDenoiser`, :func:`x0_limit`).
Euler and Heun limit every x0 prediction they step with (both evaluations of a Heun step) as
the model's scheduler config tells DDIM to: clamped to ``[-clip_sample_range,
clip_sample_range]`` when ``clip_sample`` is set (curate's pixel presets set it, range 1), or
dynamically thresholded when ``thresholding`` is (it wins, as in diffusers); missing keys take
diffusers' DDIM defaults. So a model whose x0 predictions overshoot [-1, 1] at high noise stays
in the images' range with every method. The ODE direction ``(x - x0) / sigma`` uses the limited
x0 (the step heads for the clipped image). A denoiser without a scheduler config (the oracle, a
bare ``DiscreteSchedule``) is not limited. (diffusers' own Euler and Heun schedulers ignore
these keys.) For a latent model the limit applies to latents, as in DDIM; Stable Diffusion
configs set neither key. ddim/ddpm hand the (unlimited) prediction to the scheduler as its
``"sample"``-type model output; the scheduler clips / thresholds it and steps, exactly as it
would with the network's native eps or v output (the DDIM direction uses the unclipped
prediction, as diffusers does with ``use_clipped_model_output=False``). ``on_step`` sees the x0
the step used, after clipping; a guidance is told the limit (``limit=``), so it can judge the
image the step will use.

Randomness: sample ``i`` owns a ``torch.Generator`` seeded from ``(seed, i)``; its initial
noise and (for ``ddpm``, or ``ddim`` with ``eta`` > 0) every step's noise are drawn from it in
order, through diffusers' ``randn_tensor`` with one generator per row. Results therefore do not
depend on batching, and passing the same list of generators to a diffusers pipeline
(``generator=[...]``) reproduces curate's samples; ``sample(generator=...)`` takes a diffusers
style generator (or list) instead.

Classifier-free guidance (Ho & Salimans 2022) is one affine combination in x0 space,
``x0 = x0_u + s0 * (x0_c - x0_u)``, which equals the usual combination of eps predictions at
the same ``(x, sigma)`` because eps = (x - x0) / sigma is affine in x0.

Errors name the settings by their config keys (``steps``, ``method``, ``guidance_scale``...);
the CLI shows them as flags (``curate.cli.options.errors_as_flags``).
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
    ve_to_vp,
    vp_to_ve,
)
from curate.seeding import torch_generator

Method = Literal["ddim", "ddpm", "euler", "heun"]
METHODS = ("ddim", "ddpm", "euler", "heun")
SCHEDULER_METHODS = ("ddim", "ddpm")  # stepped by diffusers' schedulers

# callback(step_index, sigma, x, x0_hat) -> None or a replacement x0_hat
Callback = Callable[[int, float, torch.Tensor, torch.Tensor], torch.Tensor | None]
Generators = torch.Generator | list[torch.Generator]
Limit = Callable[[torch.Tensor], torch.Tensor]


class Guidance(Protocol):
    """Replaces the x0 prediction of each sampler step (the first evaluation of a Heun step).

    ``limit`` is what the sampler does to the returned prediction before it steps with it
    (clipping or thresholding, as the scheduler config says; identity when nothing): the
    guidance may measure ``limit(x0)``, the image the step actually uses, but returns the
    prediction itself.
    """

    def __call__(
        self, denoiser, x: torch.Tensor, sigma: float, cond: CFGCond | None, step: int,
        rows: list[int], *, limit: Limit | None = None,
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


# --------------------------------------------------------------- the model a sampler calls


class CFGDenoiser:
    """The denoiser as a sampler's model: ``model(x, sigma, cond=CFGCond) -> x0``, with
    classifier-free guidance when ``cond`` carries an unconditional branch."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser = denoiser

    def __call__(self, x, sigma, *, cond: CFGCond | None = None, step=None, rows=None):
        return predict_x0(self.denoiser, x, sigma, cond)


class GuidedDenoiser:
    """``guidance`` in place of ``model``'s prediction at the evaluation each step is built on
    (``step`` given); further evaluations (Heun's correction) are ``model``'s own. ``limit``:
    what the sampler does to the prediction before stepping with it, told to the guidance."""

    def __init__(self, model: CFGDenoiser, guidance: Guidance, limit: Limit | None = None):
        self.model, self.guidance = model, guidance
        self.limit = limit if limit is not None else _identity

    def __call__(self, x, sigma, *, cond=None, step=None, rows=None):
        if step is None:
            return self.model(x, sigma, cond=cond)
        den = self.model.denoiser
        return self.guidance(den, x, sigma, cond, step, rows, limit=self.limit)


class ReplacedX0:
    """``callback(step, sigma, x, x0)`` sees each step's prediction and may return another."""

    def __init__(self, model, callback: Callback):
        self.model, self.callback = model, callback

    def __call__(self, x, sigma, *, cond=None, step=None, rows=None):
        x0 = self.model(x, sigma, cond=cond, step=step, rows=rows)
        if step is None:
            return x0
        replaced = self.callback(step, sigma, x, x0)
        return x0 if replaced is None else replaced


class LimitedDenoiser:
    """Every prediction of ``model`` through ``limit`` (:func:`x0_limit`): euler and heun."""

    def __init__(self, model, limit: Limit):
        self.model, self.limit = model, limit

    def __call__(self, x, sigma, *, cond=None, step=None, rows=None):
        return self.limit(self.model(x, sigma, cond=cond, step=step, rows=rows))


def _identity(x0: torch.Tensor) -> torch.Tensor:
    return x0


# ------------------------------------------------------------------------ diffusers schedulers


def scheduler_config_of(denoiser: Denoiser) -> dict[str, Any]:
    """The denoiser's diffusers scheduler config; for a denoiser with only a ``schedule`` (a
    ``DiscreteSchedule``), a config with its betas and no clipping."""
    if denoiser.scheduler_config is not None:
        return dict(denoiser.scheduler_config)
    if denoiser.schedule is None:
        raise UsageError(
            "method: ddim/ddpm need a model with a discrete noise schedule; use euler or heun"
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
            f"scheduler_overrides: {', '.join(map(repr, bad))} is not one of "
            f"{', '.join(SAMPLER_OVERRIDES)}"
        )
    config = {**scheduler_config_of(denoiser), **overrides}
    if method == "ddpm" and config.get("variance_type") in ("learned", "learned_range"):
        raise ModelError(
            f"variance_type {config['variance_type']!r} needs a UNet that predicts its variance, "
            "which curate's denoiser does not read; sample with method: ddim"
        )
    sched = diffusers_scheduler(config, method, prediction_type="sample")
    trained = int(sched.config.num_train_timesteps)
    if steps > trained:
        raise UsageError(f"steps: {steps} is more than the {trained} timesteps the model has")
    try:
        sched.set_timesteps(steps)  # on the CPU, as DDIMPipeline / DDPMPipeline do
    except ValueError as err:  # e.g. more steps than training timesteps
        raise UsageError(f"steps: {steps}: {err}") from err
    return sched


def scheduler_limit(sched) -> Limit:
    """What diffusers' DDIM / DDPM ``sched.step`` does to an x0 prediction before using it:
    dynamic thresholding (Saharia et al. 2022) when ``thresholding`` is set, else clamping to
    ``[-clip_sample_range, clip_sample_range]`` when ``clip_sample`` is, else nothing.
    Differentiable as torch's clamp is."""
    if sched.config.thresholding:
        return sched._threshold_sample  # diffusers' own, as the step applies it
    if sched.config.clip_sample:
        bound = float(sched.config.clip_sample_range)
        return lambda x0: x0.clamp(-bound, bound)
    return _identity


def x0_limit(denoiser: Denoiser) -> Limit | None:
    """What euler/heun do to each x0 prediction, as the scheduler config has DDIM do it
    (:func:`scheduler_limit`); None (untouched) when the config sets neither
    ``thresholding`` nor ``clip_sample``, or when the denoiser has no scheduler config.
    Missing keys take diffusers' DDIM defaults (``clip_sample`` True, range 1), as
    ``method: ddim`` reads them."""
    # getattr: duck-typed test denoisers that only sample with euler/heun carry no config
    config = getattr(denoiser, "scheduler_config", None)
    if config is None:
        return None
    limit = scheduler_limit(diffusers_scheduler(config, "ddim"))
    return None if limit is _identity else limit


def _final_alpha_bar(sched, method: str) -> float:
    """alpha_bar of the state after the last step (1.0: clean, unless set_alpha_to_one=False)."""
    t_last = int(sched.timesteps[-1])
    if method == "ddim":
        prev = t_last - sched.config.num_train_timesteps // sched.num_inference_steps
        return float(sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod)
    prev = int(sched.previous_timestep(t_last))
    return float(sched.alphas_cumprod[prev]) if prev >= 0 else 1.0


def scheduler_sigmas(denoiser, sched, method: str) -> torch.Tensor:
    """The VE noise levels of ``sched``'s timesteps (as the denoiser's own schedule has them,
    so the denoiser maps each back to exactly that timestep) and of the state after the last."""
    sigmas = denoiser.schedule.sigmas[sched.timesteps.long().cpu()]
    final = sigma_from_alpha_bar(torch.tensor(_final_alpha_bar(sched, method)))
    return torch.cat([sigmas, final.float().reshape(1)])


def sampling_timesteps(denoiser, steps: int, method: str = "ddim") -> torch.Tensor:
    """The discrete timesteps ``ddim``/``ddpm`` visit, as the model's scheduler spaces them."""
    _check_method(steps, method)
    if method not in SCHEDULER_METHODS:
        raise UsageError(f"method: {method} uses continuous noise levels, not timesteps")
    return make_scheduler(denoiser, method, steps).timesteps.clone()


def sampling_sigmas(denoiser, steps: int, method: str = "ddim") -> torch.Tensor:
    """The ``steps + 1`` noise levels a sampler visits, decreasing, ending with the final one
    (0, or sigma of alphas_cumprod[0] for a DDIM config with ``set_alpha_to_one: false``)."""
    _check_method(steps, method)
    if method in SCHEDULER_METHODS:
        return scheduler_sigmas(denoiser, make_scheduler(denoiser, method, steps), method)
    sigmas = karras_sigmas(denoiser.sigma_min, denoiser.sigma_max, steps)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _check_method(steps: int, method: str) -> None:
    if steps < 1:
        raise UsageError(f"steps: must be >= 1, got {steps}")
    if method not in METHODS:
        raise UsageError(f"method: {method!r} is not one of {', '.join(METHODS)}")


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


def _randn(shape, gens: Generators, device) -> torch.Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(shape, generator=gens, device=torch.device(device), dtype=torch.float32)


# --------------------------------------------------------------------------------- samplers


def _steps(n: int, disable: bool | None):
    from tqdm.auto import trange

    return trange(n, disable=disable if disable is not None else False, leave=False)


def _floats(sigmas) -> list[float]:
    return sigmas.tolist() if isinstance(sigmas, torch.Tensor) else [float(v) for v in sigmas]


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None) -> torch.Tensor:
    """First-order steps of the probability-flow ODE dx/dsigma = (x - x0) / sigma."""
    extra_args = extra_args or {}
    s = _floats(sigmas)
    for i in _steps(len(s) - 1, disable):
        x0 = model(x, s[i], step=i, **extra_args)
        d = (x - x0) / s[i]
        x = x + (s[i + 1] - s[i]) * d
        if callback is not None:
            callback({"i": i, "sigma": s[i], "sigma_next": s[i + 1], "x": x, "denoised": x0})
    return x


def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None) -> torch.Tensor:
    """Heun's second-order steps of the same ODE (Karras et al. 2022, Alg. 1); the last step,
    to sigma 0, is an Euler step. The correction evaluates ``model`` without ``step``."""
    extra_args = extra_args or {}
    s = _floats(sigmas)
    for i in _steps(len(s) - 1, disable):
        sigma, sigma_next = s[i], s[i + 1]
        x0 = model(x, sigma, step=i, **extra_args)
        d = (x - x0) / sigma
        x_next = x + (sigma_next - sigma) * d
        if sigma_next > 0:  # Alg. 1, lines 9-11
            d_next = (x_next - model(x_next, sigma_next, **extra_args)) / sigma_next
            x_next = x + (sigma_next - sigma) * (d + d_next) / 2
        x = x_next
        if callback is not None:
            callback({"i": i, "sigma": sigma, "sigma_next": sigma_next, "x": x, "denoised": x0})
    return x


def sample_ddim(
    model, x, sigmas, extra_args=None, callback=None, disable=None, *, scheduler, eta=0.0,
    generator: Generators | None = None,
) -> torch.Tensor:  # fmt: skip
    """Steps of diffusers' ``DDIMScheduler`` (``scheduler``, timesteps set; ``sigmas`` its
    :func:`scheduler_sigmas`) on the VP state; ``eta`` > 0 draws noise from ``generator``."""
    return _scheduled(model, x, sigmas, extra_args, callback, disable, scheduler, generator,
                      {"eta": eta})  # fmt: skip


def sample_ddpm(
    model, x, sigmas, extra_args=None, callback=None, disable=None, *, scheduler,
    generator: Generators | None = None,
) -> torch.Tensor:  # fmt: skip
    """Steps of diffusers' ``DDPMScheduler`` (``scheduler``, timesteps set; ``sigmas`` its
    :func:`scheduler_sigmas`) on the VP state, fresh noise from ``generator`` at every step."""
    return _scheduled(model, x, sigmas, extra_args, callback, disable, scheduler, generator, {})


def _scheduled(model, x, sigmas, extra_args, callback, disable, sched, generator, kw):
    extra_args = extra_args or {}
    s = _floats(sigmas)
    if len(s) != len(sched.timesteps) + 1:
        raise UsageError(
            f"sigmas: {len(s)} noise levels for {len(sched.timesteps)} timesteps; pass "
            "scheduler_sigmas(denoiser, scheduler, method)"
        )
    # the state a diffusers pipeline holds, float32 (x in float64, as sample() passes it, makes
    # it exactly the pipeline's unit noise; float32 would be off by a rounding)
    x_vp = ve_to_vp(x, s[0]).float()
    for i in _steps(len(s) - 1, disable):
        t = sched.timesteps[i]
        x = vp_to_ve(x_vp, s[i])
        x0 = model(x, s[i], step=i, **extra_args)
        out = sched.step(x0.float(), t, x_vp, generator=generator, **kw)
        x_vp = out.prev_sample
        if callback is not None:
            callback({"i": i, "sigma": s[i], "sigma_next": s[i + 1], "timestep": int(t),
                      "x": vp_to_ve(x_vp, s[i + 1]), "prev_sample": x_vp,
                      "denoised": out.pred_original_sample})  # fmt: skip
    return vp_to_ve(x_vp, s[-1])


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "euler": sample_euler,
    "heun": sample_heun,
}


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
    part: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``num`` samples (num, C, H, W) in model space: images in [-1, 1] for pixel models.

    ``cond`` holds one row per sample ((num, L, D) or (num, D)); ``uncond`` the unconditional
    embeddings (one row per sample, or one row for all) for classifier-free guidance with scale
    ``cfg_scale`` (the ``guidance_scale`` setting). ``clip`` (default: pixel models only)
    clamps the result to [-1, 1]; per-step clipping of x0 is the scheduler config's
    ``clip_sample`` / ``thresholding`` (every method; euler/heun through :func:`x0_limit`).
    A ``callback`` returning a tensor replaces x0_hat; a ``guidance`` replaces the prediction;
    ``on_step`` gets a :class:`StepRecord` after each step. ``autocast`` (default: on for
    CUDA) runs the network in bfloat16/float16 mixed precision; the sampler's state and the x0
    predictions stay float32.

    ``eta`` (ddim only) is DDIM's stochasticity (0: deterministic, as ``DDIMPipeline``'s
    default). ``generator`` replaces curate's per-sample seeding by a diffusers-style
    generator: one ``torch.Generator`` (drawn batch after batch, so with ``batch_size >= num``
    the noise a diffusers pipeline given it would draw) or a list of one per sample.
    ``scheduler_overrides`` changes how ddim/ddpm step (e.g. ``{"timestep_spacing":
    "trailing"}``; keys in ``curate.models.denoiser.SAMPLER_OVERRIDES``).

    ``part=(rank, world)`` samples only this process's share of a many-process job: the
    batches ``b`` with ``b % world == rank``, each exactly the batch one process would run, so
    the rows (:func:`part_indices`, in index order) are identical to one process's.
    """
    uncond = _check_arguments(
        num, steps, method, batch_size, eta, generator, cond, uncond, cfg_scale,
        scheduler_overrides,
    )  # fmt: skip
    if part is not None and generator is not None:
        raise UsageError("generator: a diffusers-style generator cannot be split over processes")
    starts = _batch_starts(num, batch_size, part)
    sched, options = None, {}
    if method in SCHEDULER_METHODS:
        sched = make_scheduler(denoiser, method, steps, scheduler_overrides)
        sigmas = scheduler_sigmas(denoiser, sched, method)
        options = {"scheduler": sched, **({"eta": eta} if method == "ddim" else {})}
    else:
        sigmas = sampling_sigmas(denoiser, steps, method)
    model = _model(denoiser, sched, guidance, callback)
    sampler = SAMPLERS[method]
    shape = (denoiser.channels, denoiser.resolution, denoiser.resolution)
    clip = denoiser.vae is None if clip is None else clip
    from tqdm.auto import tqdm

    rows = sum(min(batch_size, num - start) for start in starts)
    bar = tqdm(total=rows * steps, disable=not progress, desc=f"sampling ({method})", unit="step")
    out = []
    with _mixed_precision(device, autocast):
        for start in starts:
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
            noise = _randn((len(idx), *shape), gens, device)
            if sched is not None:  # as the pipelines: unit noise at the first timestep (VP),
                # in float64 where the device has it, so the sampler gets it back exactly
                wide = noise if noise.device.type == "mps" else noise.double()
                x = vp_to_ve(wide * sched.init_noise_sigma, float(sigmas[0]))
                options["generator"] = gens
            else:
                x = noise * float(sigmas[0])
            x = sampler(model, x, sigmas, extra_args={"cond": c, "rows": idx},
                        callback=_step_callback(idx, bar, on_step), disable=True,
                        **options)  # fmt: skip
            if sched is not None and float(sigmas[-1]) > 0:  # the pipeline's own final state
                x = ve_to_vp(x, float(sigmas[-1]))
            out.append((x.clamp(-1, 1) if clip else x).float())
    bar.close()
    if not out:
        return torch.empty((0, *shape))
    return torch.cat(out).cpu()


def _batch_starts(num: int, batch_size: int, part: tuple[int, int] | None) -> list[int]:
    starts = list(range(0, num, batch_size))
    if part is None:
        return starts
    rank, world = part
    if not 0 <= rank < world:
        raise UsageError(f"part: rank {rank} is not in [0, {world})")
    return starts[rank::world]


def part_indices(num: int, batch_size: int, part: tuple[int, int] | None) -> list[int]:
    """The sample indices ``sample(..., part=part)`` returns rows for, in order."""
    return [
        i
        for start in _batch_starts(num, batch_size, part)
        for i in range(start, min(start + batch_size, num))
    ]


def split_sampler(sampler: Callable, launch, guidance: Guidance | None = None) -> Callable:
    """``sampler`` (the signature of :func:`sample`) run over the processes of ``launch`` (a
    ``curate.core.launch.Launch``): each process samples its batches (``part``), and every
    process gets all ``num`` rows back in index order, identical to one process's. A
    ``guidance`` that keeps per-sample ``records`` (AMG) gets every process's records."""
    if launch.world <= 1:
        return sampler

    def run(denoiser, num, *, batch_size: int = 64, **kwargs):
        x = sampler(denoiser, num, batch_size=batch_size, part=launch.part, **kwargs)
        pieces = launch.gather((part_indices(num, batch_size, launch.part), x.cpu()))
        out = torch.empty((num, *x.shape[1:]), dtype=x.dtype)
        for idx, rows in pieces:
            out[idx] = rows
        records = getattr(guidance, "records", None)
        if records is not None:
            guidance.records = [r for part in launch.gather(records) for r in part]
        return out

    return run


def _check_arguments(
    num, steps, method, batch_size, eta, generator, cond, uncond, cfg_scale, overrides
) -> torch.Tensor | None:
    """Raise ``UsageError`` naming the setting of the first bad argument; returns ``uncond``
    with one row per sample."""
    if num < 0:
        raise UsageError(f"num: must be >= 0, got {num}")
    if batch_size < 1:
        raise UsageError(f"batch_size: must be >= 1, got {batch_size}")
    _check_method(steps, method)
    if eta < 0:
        raise UsageError(f"eta: must be >= 0, got {eta}")
    if eta > 0 and method != "ddim":
        raise UsageError(f"eta: DDIM's noise level; use it with method: ddim, not {method}")
    if overrides and method not in SCHEDULER_METHODS:
        raise UsageError(f"scheduler_overrides: apply to ddim/ddpm, not {method}")
    if isinstance(generator, list | tuple) and len(generator) != num:
        raise UsageError(f"{len(generator)} generators for {num} samples; pass one per sample")
    if cond is not None and cond.shape[0] != num:
        raise UsageError(f"cond has {cond.shape[0]} rows for {num} samples; pass one per sample")
    if cfg_scale != 1.0 and (cond is None or uncond is None):
        raise UsageError(
            "guidance_scale: needs a text-conditional model and an unconditional (empty "
            "prompt) embedding"
        )
    if uncond is not None and cond is not None:
        uncond = uncond.expand(num, *uncond.shape[1:]) if uncond.shape[0] == 1 else uncond
        if uncond.shape != cond.shape:
            raise UsageError(
                f"uncond {tuple(uncond.shape)} does not match cond {tuple(cond.shape)}"
            )
    return uncond


def _model(denoiser, sched, guidance: Guidance | None, callback: Callback | None):
    """The model a sampler calls: the denoiser with classifier-free guidance, ``guidance`` in
    place of each step's prediction, ``callback`` after it, and for euler/heun the config's
    limit on every prediction (ddim/ddpm: their scheduler limits inside its step)."""
    limit = scheduler_limit(sched) if sched is not None else x0_limit(denoiser)
    model = CFGDenoiser(denoiser)
    if guidance is not None:
        model = GuidedDenoiser(model, guidance, limit)
    if callback is not None:
        model = ReplacedX0(model, callback)
    if sched is None and limit is not None:
        model = LimitedDenoiser(model, limit)
    return model


def _step_callback(rows: list[int], bar, on_step: Callable[[StepRecord], None] | None):
    """A sampler callback advancing the progress bar and handing ``on_step`` its records."""

    def after(info: dict[str, Any]) -> None:
        if on_step is not None:
            prev = info.get("prev_sample", info["x"])
            on_step(StepRecord(info["i"], info.get("timestep"), info["sigma"], rows,
                               info["denoised"], prev))  # fmt: skip
        bar.update(len(rows))

    return after


def _mixed_precision(device: str, autocast: bool | None):
    """An autocast context for CUDA (bfloat16 where supported), else a no-op."""
    import contextlib

    on = str(device).startswith("cuda") if autocast is None else autocast
    if not on or not str(device).startswith("cuda"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)
