"""Deterministic samplers over the denoiser interface ``D(x, sigma, cond) -> x0_hat``.

All three integrate the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al.
2022, Eq. 3 with sigma(t) = t) and differ in the noise levels they visit and the order:

* ``ddim``: the model's own discrete timesteps, evenly spaced ("trailing"), first order. In VE
  coordinates one Euler step of this ODE is exactly the deterministic DDIM update (Song et al.
  2021, Eq. 12): x' = x0_hat + sigma' * (x - x0_hat) / sigma.
* ``euler``: Karras noise levels (rho = 7), first order.
* ``heun``: Karras noise levels, second order (Karras et al. 2022, Algorithm 1); 2 calls per step.

Sample ``i`` starts from noise derived from ``(seed, i)``, so results do not depend on batching.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from curate.errors import UsageError
from curate.models.denoiser import karras_sigmas
from curate.seeding import sample_normal

Method = Literal["ddim", "euler", "heun"]
METHODS = ("ddim", "euler", "heun")

# callback(step_index, sigma, x, x0_hat) -> None or a replacement x0_hat (used by guidance)
Callback = Callable[[int, float, torch.Tensor, torch.Tensor], torch.Tensor | None]


def sampling_sigmas(denoiser, steps: int, method: str = "ddim") -> torch.Tensor:
    """The ``steps + 1`` noise levels a sampler visits, decreasing, ending with 0."""
    if steps < 1:
        raise UsageError(f"--steps must be >= 1, got {steps}")
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if method == "ddim":
        # diffusers' DDIMScheduler "trailing" spacing: T-1, ..., T/steps - 1, then sigma 0
        num_t = denoiser.schedule.num_timesteps
        ts = (torch.arange(num_t, 0, -num_t / steps).round() - 1).clamp(min=0)
        sigmas = denoiser.schedule.t_to_sigma(ts)
    else:
        sigmas = karras_sigmas(denoiser.sigma_min, denoiser.sigma_max, steps)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def initial_noise(seed: int, indices: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Unit Gaussian noise for sample indices, each from ``(seed, index)`` alone."""
    return sample_normal(seed, indices, shape, "sample-init")


@torch.no_grad()
def sample(
    denoiser,
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
) -> torch.Tensor:
    """``num`` samples (num, C, H, W) in model space: images in [-1, 1] for pixel models.

    ``cond`` holds one row per sample ((num, L, D) or (num, D)). ``clip`` (default: pixel
    models only) clamps the result to [-1, 1]. A ``callback`` returning a tensor replaces x0_hat.
    """
    if num < 0:
        raise UsageError(f"--num must be >= 0, got {num}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if cond is not None and cond.shape[0] != num:
        raise UsageError(f"cond has {cond.shape[0]} rows for {num} samples; pass one per sample")
    sigmas = sampling_sigmas(denoiser, steps, method).tolist()
    shape = (denoiser.channels, denoiser.resolution, denoiser.resolution)
    clip = getattr(denoiser, "vae", None) is None if clip is None else clip
    from tqdm.auto import tqdm

    bar = tqdm(total=num * steps, disable=not progress, desc=f"sampling ({method})", unit="step")
    out = []
    for start in range(0, num, batch_size):
        idx = list(range(start, min(start + batch_size, num)))
        x = initial_noise(seed, idx, shape).to(device) * sigmas[0]  # (b, C, H, W)
        c = cond[idx[0] : idx[-1] + 1].to(device) if cond is not None else None
        for i in range(steps):
            x = _step(denoiser, x, sigmas[i], sigmas[i + 1], c, method, i, callback)
            bar.update(len(idx))
        out.append(x.clamp(-1, 1) if clip else x)
    bar.close()
    if not out:
        return torch.empty((0, *shape))
    return torch.cat(out).cpu()


def _denoise(denoiser, x, sigma, cond, i, callback):
    x0 = denoiser(x, torch.full((x.shape[0],), sigma, device=x.device), cond)
    if callback is not None:
        replaced = callback(i, sigma, x, x0)
        if replaced is not None:
            x0 = replaced
    return x0


def _step(denoiser, x, sigma, sigma_next, cond, method, i, callback):
    """One sampler step from ``sigma`` to ``sigma_next``."""
    x0 = _denoise(denoiser, x, sigma, cond, i, callback)
    d = (x - x0) / sigma  # dx/dsigma of the probability-flow ODE
    x_next = x + (sigma_next - sigma) * d
    if method == "heun" and sigma_next > 0:
        # Heun's correction (Karras et al. 2022, Alg. 1, lines 9-11); guidance sees only the
        # first evaluation of each step
        x0_next = denoiser(x_next, torch.full((x.shape[0],), sigma_next, device=x.device), cond)
        d_next = (x_next - x0_next) / sigma_next
        x_next = x + (sigma_next - sigma) * (d + d_next) / 2
    return x_next
