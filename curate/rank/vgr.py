"""Volume-growth rate of the probability-flow ODE: how easily a model reproduces an image.

Hasegawa & Yasuda (arXiv 2503.19429). The PF-ODE maps an image to a latent; the probability of
generating a neighbourhood of the image grows with the latent volume that neighbourhood maps to.
We push a small frame around the image forward (data -> noise) and measure how much it stretches:
a high log growth rate means a sharp density peak, i.e. an image the model reproduces easily.

The ODE is walked in the model's own VP coordinates, as the paper does: with the discrete
schedule of a DDPM model, one Euler step of size one timestep is

    Phi_i(x) = x + f(x, t_i) dt,   f dt = -1/2 beta_i x + 1/2 beta_i eps_hat / sqrt(1 - abar_i)

where beta_i dt is the schedule's discrete beta (for the linear DDPM schedule this is exactly
the paper's continuous beta(t) dt with dt = 1/1000) and eps_hat comes from the denoiser adapter,
eps_hat = (x_ve - D(x_ve, sigma_i)) / sigma_i. A denoiser without a schedule of its own (e.g. the
closed-form memorizer) is walked on the default DDPM schedule.

Estimators (all return one log growth per image):
* ``fd``: one random unit direction, one step, log(|Phi(c + r u) - Phi(c)| / r): the paper's
  cheap estimator; centre and offset go through one batched forward.
* ``jvp``: the same quantity with r -> 0, exactly: log |J_Phi(c) u| by forward-mode autodiff
  (attention forced onto the math kernel, which has a forward-mode derivative on CPU).
* ``frame``: K orthonormal axes pushed through M steps, re-orthonormalised by QR after each
  step; the sum of log |R_kk| / r is the log growth of the K-volume (Benettin's method). The
  paper's code sums raw edge lengths instead, an upper bound of this by Hadamard's inequality;
  for K = 1 they coincide.
Directions derive from ``(seed, sample_id)``, so a score does not depend on the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from curate.errors import ModelError, UsageError
from curate.models.denoiser import (
    Denoiser,
    schedule_of,
    ve_scale,
    vp_std_from_alpha_bar,
    x0_to_output,
)
from curate.seeding import sample_normal

Estimator = Literal["fd", "jvp", "frame"]
ESTIMATORS = ("fd", "jvp", "frame")


@dataclass(frozen=True)
class VGRConfig:
    """Settings of the volume-growth estimate (defaults: the paper's cheap estimator)."""

    estimator: Estimator = "fd"
    axes: int = 1  # K, frame only
    ode_steps: int = 1  # M
    radius: float = 0.05  # r, in [-1, 1] pixel units (the paper's sigma = 0.05)
    t_start: float = 1e-3  # epsilon, as a fraction of the schedule (1e-3 = first timestep)
    flip: bool = False  # average with the horizontally flipped image
    seed: int = 0

    def validate(self) -> list[str]:
        problems = []
        if self.estimator not in ESTIMATORS:
            problems.append(f"estimator: {self.estimator!r} is not one of {', '.join(ESTIMATORS)}")
        if self.axes < 1:
            problems.append("axes: must be >= 1")
        if self.ode_steps < 1:
            problems.append("ode_steps: must be >= 1")
        if self.estimator in ("fd", "jvp") and (self.axes != 1 or self.ode_steps != 1):
            problems.append(
                "axes/ode_steps: fd and jvp are one-axis, one-step; use estimator: frame"
            )
        if not self.radius > 0:
            problems.append("radius: must be > 0")
        if not 0 < self.t_start < 1:
            problems.append("t_start: must be in (0, 1)")
        return problems


class ODEGrid:
    """The noise levels and discrete betas of the first M steps from ``t_start``."""

    def __init__(self, denoiser: Denoiser, t_start: float, steps: int):
        schedule = schedule_of(denoiser)  # the default DDPM schedule for one without timesteps
        sig = schedule.sigmas.double()
        abar = schedule.alpha_bars  # (T,) float64
        T = len(sig)
        first = max(int(round(t_start * T)) - 1, 0)
        if first + steps > T:
            raise UsageError(
                f"t_start: {t_start} with ode_steps: {steps} runs past the schedule's {T} steps"
            )
        idx = torch.arange(first, first + steps)
        self.sigmas = sig[idx].float().tolist()
        self.betas = schedule.betas[idx].float().tolist()  # discrete beta_i
        self.vp_std = vp_std_from_alpha_bar(abar[idx]).float().tolist()


def pf_step(
    denoiser: Denoiser, x: torch.Tensor, sigma: float, beta: float, vp_std: float, cond=None
) -> torch.Tensor:
    """One forward Euler step of the VP probability-flow ODE (data -> noise). x (B,C,H,W), VP units."""
    sig = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
    x_ve = x * ve_scale(sigma)
    eps = x0_to_output(denoiser(x_ve, sig, cond), x_ve, sigma, "epsilon")
    return x + 0.5 * beta * (-x + eps / vp_std)


def directions(
    sample_ids: Sequence[str], shape: tuple[int, ...], k: int, seed: int, tag: str = ""
) -> torch.Tensor:
    """(B, K, D) orthonormal directions per sample, from ``(seed, sample_id)`` only."""
    g = sample_normal(seed, list(sample_ids), (k, *shape), "vgr-direction", tag)  # (B, K, C, H, W)
    g = g.reshape(len(sample_ids), k, -1).double()
    q, _ = torch.linalg.qr(g.transpose(1, 2))  # (B, D, K)
    return q.transpose(1, 2).float()


def _cat_cond(cond, times: int):
    return None if cond is None else torch.cat([cond] * times)


def _fd(den, x, u, grid: ODEGrid, r: float, cond) -> torch.Tensor:
    b = x.shape[0]
    both = torch.cat([x, x + r * u.reshape_as(x)])  # (2B, C, H, W): one batched forward
    out = pf_step(den, both, grid.sigmas[0], grid.betas[0], grid.vp_std[0], _cat_cond(cond, 2))
    diff = (out[b:] - out[:b]).flatten(1).double()
    return (diff.norm(dim=1) / r).log()


def _jvp(den, x, u, grid: ODEGrid, cond) -> torch.Tensor:
    from torch.func import jvp

    def phi(z):
        return pf_step(den, z, grid.sigmas[0], grid.betas[0], grid.vp_std[0], cond)

    with _math_attention():
        _, tangent = jvp(phi, (x,), (u.reshape_as(x),))
    return tangent.flatten(1).double().norm(dim=1).log()


def _frame(den, x, frame, grid: ODEGrid, r: float, cond) -> torch.Tensor:
    b, k = frame.shape[:2]
    shape = x.shape[1:]
    total = torch.zeros(b, dtype=torch.float64, device=x.device)
    c = x
    for sigma, beta, std in zip(grid.sigmas, grid.betas, grid.vp_std, strict=True):
        pts = (c[:, None] + r * frame.reshape(b, k, *shape)).reshape(b * k, *shape)
        pts_cond = None if cond is None else _repeat_cond(cond, k)
        out = pf_step(den, torch.cat([c, pts]), sigma, beta, std, pts_cond)
        c_next, p_next = out[:b], out[b:].reshape(b, k, *shape)
        diffs = (p_next - c_next[:, None]).flatten(2).double()  # (B, K, D)
        q, rr = torch.linalg.qr(diffs.transpose(1, 2))  # Gram-Schmidt of the pushed axes
        total += (rr.diagonal(dim1=1, dim2=2).abs() / r).log().sum(dim=1)
        frame = q.transpose(1, 2).float()
        c = c_next
    return total


def _repeat_cond(cond, k: int):
    # centre rows first, then each sample's k offsets together (matches pts' layout)
    return torch.cat([cond, cond.repeat_interleave(k, dim=0)])


@contextlib.contextmanager
def _math_attention():
    """Route scaled-dot-product attention to the math kernel (forward-mode AD works there)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # older torch: nothing to route
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


def check_images(denoiser: Denoiser, x: torch.Tensor) -> None:
    """A clear error when images do not fit the model (channels, size)."""
    want = (denoiser.channels, denoiser.resolution)
    if x.ndim != 4 or x.shape[1] != want[0] or x.shape[-1] != want[1] or x.shape[-2] != want[1]:
        raise ModelError(
            f"images of shape {tuple(x.shape[1:])} do not fit the model, which takes "
            f"({want[0]}, {want[1]}, {want[1]}); resize them (the rank step does with resize: true)"
        )


@torch.no_grad()
def _score(den, x, ids, cfg: VGRConfig, cond, tag: str) -> torch.Tensor:
    grid = ODEGrid(den, cfg.t_start, cfg.ode_steps)
    shape = tuple(x.shape[1:])
    dirs = directions(ids, shape, cfg.axes, cfg.seed, tag).to(x.device)  # (B, K, D)
    if cfg.estimator == "fd":
        return _fd(den, x, dirs[:, 0], grid, cfg.radius, cond)
    if cfg.estimator == "frame":
        return _frame(den, x, dirs, grid, cfg.radius, cond)
    with torch.enable_grad():
        return _jvp(den, x, dirs[:, 0], grid, cond)


def volume_growth(
    denoiser: Denoiser,
    images: torch.Tensor,
    sample_ids: Sequence[str],
    config: VGRConfig = VGRConfig(),
    cond=None,
) -> torch.Tensor:
    """Log volume-growth rate per image (B,), float64. ``images`` (B, C, H, W) in model space.

    For pixel models model space is the image in [-1, 1]; latent models take encoded latents.
    """
    problems = config.validate()
    if problems:
        raise UsageError("; ".join(problems))
    if len(sample_ids) != images.shape[0]:
        raise UsageError(f"{len(sample_ids)} sample ids for {images.shape[0]} images")
    check_images(denoiser, images)
    x = images.float()
    score = _score(denoiser, x, sample_ids, config, cond, "")
    if config.flip:
        score = 0.5 * (score + _score(denoiser, x.flip(-1), sample_ids, config, cond, "flip"))
    return score.cpu()
