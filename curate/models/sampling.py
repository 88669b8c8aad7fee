"""Deterministic samplers over the denoiser interface ``D(x, sigma, cond) -> x0_hat``.

All three integrate the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al.
2022, Eq. 3 with sigma(t) = t) and differ in the noise levels they visit and the order:

* ``ddim``: the model's own discrete timesteps, evenly spaced ("trailing"), first order. In VE
  coordinates one Euler step of this ODE is exactly the deterministic DDIM update (Song et al.
  2021, Eq. 12): x' = x0_hat + sigma' * (x - x0_hat) / sigma.
* ``euler``: Karras noise levels (rho = 7), first order.
* ``heun``: Karras noise levels, second order (Karras et al. 2022, Algorithm 1); 2 calls per step.

Sample ``i`` starts from noise derived from ``(seed, i)``, so results do not depend on batching.

Classifier-free guidance (Ho & Salimans 2022) is one affine combination in x0 space,
``x0 = x0_u + s0 * (x0_c - x0_u)``, which equals the usual combination of eps predictions at
the same ``(x, sigma)`` because eps = (x - x0) / sigma is affine in x0. A ``guidance`` object
(e.g. ``curate.guidance.amg.AMG``) may replace the whole x0 prediction of each step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from curate.errors import UsageError
from curate.models.denoiser import karras_sigmas
from curate.seeding import sample_normal

Method = Literal["ddim", "euler", "heun"]
METHODS = ("ddim", "euler", "heun")

# callback(step_index, sigma, x, x0_hat) -> None or a replacement x0_hat
Callback = Callable[[int, float, torch.Tensor, torch.Tensor], torch.Tensor | None]


class Guidance(Protocol):
    """Replaces the x0 prediction of each sampler step (the first evaluation of a Heun step)."""

    def __call__(
        self, denoiser, x: torch.Tensor, sigma: float, cond: CFGCond | None, step: int,
        rows: list[int],
    ) -> torch.Tensor: ...  # fmt: skip


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
    denoiser, x: torch.Tensor, sigma: float | torch.Tensor, cond: CFGCond | None
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


def predict_x0(denoiser, x: torch.Tensor, sigma: float, cond: CFGCond | None) -> torch.Tensor:
    """The sampler's x0 prediction: the denoiser, with classifier-free guidance when asked."""
    x0_u, x0_c = cfg_branches(denoiser, x, sigma, cond)
    return cfg_combine(x0_u, x0_c, cond.scale if cond is not None else 1.0)


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
    uncond: torch.Tensor | None = None,
    cfg_scale: float = 1.0,
    guidance: Guidance | None = None,
    autocast: bool | None = None,
) -> torch.Tensor:
    """``num`` samples (num, C, H, W) in model space: images in [-1, 1] for pixel models.

    ``cond`` holds one row per sample ((num, L, D) or (num, D)); ``uncond`` the unconditional
    embeddings (one row per sample, or one row for all) for classifier-free guidance with scale
    ``cfg_scale``. ``clip`` (default: pixel models only) clamps the result to [-1, 1]. A
    ``callback`` returning a tensor replaces x0_hat; a ``guidance`` replaces the prediction.
    ``autocast`` (default: on for CUDA) runs the network in bfloat16/float16 mixed precision;
    the sampler's state and the x0 predictions stay float32.
    """
    if num < 0:
        raise UsageError(f"--num must be >= 0, got {num}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
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
    sigmas = sampling_sigmas(denoiser, steps, method).tolist()
    shape = (denoiser.channels, denoiser.resolution, denoiser.resolution)
    clip = getattr(denoiser, "vae", None) is None if clip is None else clip
    from tqdm.auto import tqdm

    bar = tqdm(total=num * steps, disable=not progress, desc=f"sampling ({method})", unit="step")
    out = []
    with _mixed_precision(device, autocast):
        for start in range(0, num, batch_size):
            out.append(_sample_batch(
                denoiser, start, num, batch_size, seed, shape, sigmas, cond, uncond, cfg_scale,
                device, method, callback, guidance, bar, clip,
            ))  # fmt: skip
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


def _sample_batch(
    denoiser, start, num, batch_size, seed, shape, sigmas, cond, uncond, cfg_scale, device,
    method, callback, guidance, bar, clip,
):  # fmt: skip
    """One batch of samples ``start ..`` from noise to the end of the schedule."""
    steps = len(sigmas) - 1
    idx = list(range(start, min(start + batch_size, num)))
    x = initial_noise(seed, idx, shape).to(device) * sigmas[0]  # (b, C, H, W)
    c = None
    if cond is not None:
        rows = slice(idx[0], idx[-1] + 1)
        u = uncond[rows].to(device) if uncond is not None else None
        c = CFGCond(cond[rows].to(device), u, float(cfg_scale))
    for i in range(steps):
        x = _step(denoiser, x, sigmas[i], sigmas[i + 1], c, method, i, callback, guidance, idx)
        bar.update(len(idx))
    return (x.clamp(-1, 1) if clip else x).float()


def _denoise(denoiser, x, sigma, cond, i, callback, guidance, rows):
    if guidance is not None:
        x0 = guidance(denoiser, x, sigma, cond, i, rows)
    else:
        x0 = predict_x0(denoiser, x, sigma, cond)
    if callback is not None:
        replaced = callback(i, sigma, x, x0)
        if replaced is not None:
            x0 = replaced
    return x0


def _step(denoiser, x, sigma, sigma_next, cond, method, i, callback, guidance, rows):
    """One sampler step from ``sigma`` to ``sigma_next``."""
    x0 = _denoise(denoiser, x, sigma, cond, i, callback, guidance, rows)
    d = (x - x0) / sigma  # dx/dsigma of the probability-flow ODE
    x_next = x + (sigma_next - sigma) * d
    if method == "heun" and sigma_next > 0:
        # Heun's correction (Karras et al. 2022, Alg. 1, lines 9-11); guidance sees only the
        # first evaluation of each step
        x0_next = predict_x0(denoiser, x_next, sigma_next, cond)
        d_next = (x_next - x0_next) / sigma_next
        x_next = x + (sigma_next - sigma) * (d + d_next) / 2
    return x_next
