"""Training objectives, unreduced: each returns one loss value per sample (B,).

Both objectives work through the denoiser interface ``D(x, sigma, cond) -> x0_hat`` (VE units,
x = x0 + sigma * eps) and weight the x0-space error by ``denoiser.loss_weight(sigma)``, which
makes the ``ddpm`` loss exactly the model's native DDPM loss (|eps_hat - eps|^2 for an eps model).

``ambient`` is Shah et al. 2025, "Does Generation Require Memorization?", built on Ambient Diffusion
(Daras et al.):
below a per-sample noise level sigma_n the usual loss on the clean image; at and above it the
network only sees a FIXED noisy copy x~ = x0 + sigma_n * eps_i, with input
x~ + sqrt(sigma^2 - sigma_n^2) * eta and the Tweedie-corrected target

    Y_hat = (1 - sigma_n^2 / sigma^2) * D + (sigma_n^2 / sigma^2) * x_in,   loss = w |Y_hat - x~|^2.

Since E[x~ | x_in] = (sigma_n^2/sigma^2) x_in + (1 - sigma_n^2/sigma^2) E[x0 | x_in], the minimiser
over D is still E[x0 | x_in]. The effective weight on D's error, w * (1 - sigma_n^2/sigma^2)^2,
vanishes as sigma -> sigma_n from above; this is the paper's loss (``weight="paper"``).
``eps_i`` must be fixed per sample (:func:`fixed_noise`); redrawing it lets the network average
the noise away and learn the clean images (the failure the paper warns about).

Two controls separate what the method does from how it weights the loss:

* :func:`weight_only_loss`: clean images, the standard loss, times the ambient branch's implicit
  weight on D's error above sigma_n (:func:`ambient_d_weight`), no noisy copies. What it gains
  over the baseline is the weighting's share of ambient's gain.
* ``weight="corrected"``: the ambient branch divided by that weight (floored at
  ``CORRECTION_FLOOR``), so D's error weighs as in the clean loss and only the fixed noisy copies
  differ from the baseline.

For latent models (the VP form) the implicit weight also carries the VP scaling, 1 / (1 +
sigma_n^2) on top of (1 - sigma_n^2/sigma^2)^2; :func:`ambient_d_weight` computes it from the
estimate itself, so it is the same rule for both forms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from curate.models.denoiser import broadcast_sigma, ve_to_vp, vp_std_from_sigma
from curate.seeding import sample_normal


def fixed_noise(seed: int, sample_ids: Sequence[str], shape: tuple[int, ...]) -> torch.Tensor:
    """The ambient noise eps_i (N, *shape), drawn once from ``(seed, sample_id)``; never redrawn."""
    return sample_normal(seed, list(sample_ids), shape, "ambient-noise")


def redrawn_noise(
    seed: int, sample_ids: Sequence[str], shape: tuple[int, ...], epoch: Sequence[int]
) -> torch.Tensor:
    """The broken control: a new eps_i every epoch. Only for showing that fixed noise matters."""
    out = torch.empty((len(sample_ids), *shape))
    for i, (sid, ep) in enumerate(zip(sample_ids, epoch, strict=True)):
        out[i] = sample_normal(seed, [sid], shape, "ambient-noise", int(ep))[0]
    return out


def _mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return mask.to(x.device).reshape(-1, *([1] * (x.ndim - 1)))  # (B, 1, 1, 1) bool


def _per_sample_mean(err: torch.Tensor) -> torch.Tensor:
    return err.flatten(1).mean(dim=1)  # (B,)


def ddpm_loss(
    denoiser,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    eta: torch.Tensor,
    cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """Standard denoising loss (B,): input x0 + sigma * eta, target x0, native weighting."""
    x_in = x0 + broadcast_sigma(sigma, x0) * eta  # (B, C, H, W)
    d = denoiser(x_in, sigma, cond)
    return denoiser.loss_weight(sigma) * _per_sample_mean((d - x0) ** 2)


def ambient_inputs(
    x0: torch.Tensor,
    sigma: torch.Tensor,
    sigma_n: torch.Tensor,
    eps: torch.Tensor,
    eta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network input, regression target and the ambient mask, in VE units.

    Clean branch (sigma < sigma_n): input x0 + sigma * eta, target x0. Ambient branch
    (sigma >= sigma_n): input x~ + sqrt(sigma^2 - sigma_n^2) * eta, target x~ = x0 + sigma_n * eps.
    """
    amb = sigma >= sigma_n  # (B,)
    s, sn = broadcast_sigma(sigma, x0), broadcast_sigma(sigma_n, x0)
    x_noisy = x0 + sn * eps  # x~, the fixed noisy copy
    extra = (s**2 - sn**2).clamp(min=0).sqrt()
    m = _mask(amb, x0)
    x_in = torch.where(m, x_noisy + extra * eta, x0 + s * eta)
    target = torch.where(m, x_noisy, x0)
    return x_in, target, amb


def tweedie_noisy_estimate(
    d: torch.Tensor, x_in: torch.Tensor, sigma: torch.Tensor, sigma_n: torch.Tensor
) -> torch.Tensor:
    """E[x~ | x_in] from an x0 estimate D: (1 - sigma_n^2/sigma^2) D + (sigma_n^2/sigma^2) x_in."""
    r = broadcast_sigma(sigma_n**2 / sigma**2, d)
    return (1 - r) * d + r * x_in


# the corrected variant never multiplies a branch by more than 1 / CORRECTION_FLOOR: just
# above sigma_n the implicit weight goes to 0 while the target's noise does not
CORRECTION_FLOOR = 0.05


def _check_form(form: str) -> None:
    if form not in ("ve", "vp"):
        raise ValueError(f"form must be 've' or 'vp', got {form!r}")


def ambient_d_weight(sigma: torch.Tensor, sigma_n: torch.Tensor, form: str = "ve") -> torch.Tensor:
    """The weight (B,) the ambient loss puts on D's squared error, relative to the clean loss.

    1 below sigma_n (the clean branch); above it the square of d(estimate)/dD, read off the
    estimate itself: (1 - sigma_n^2/sigma^2)^2 in the VE form, that over (1 + sigma_n^2) in the
    VP form.
    """
    _check_form(form)
    sigma_n = torch.as_tensor(sigma_n, dtype=sigma.dtype, device=sigma.device).expand_as(sigma)
    amb = sigma >= sigma_n
    one = torch.ones((sigma.shape[0], 1), dtype=sigma.dtype, device=sigma.device)
    zero = torch.zeros_like(one)
    if form == "ve":
        slope = tweedie_noisy_estimate(one, zero, sigma, sigma_n)
    else:
        s_t, s_n = vp_std_from_sigma(sigma), vp_std_from_sigma(sigma_n)
        slope = vp_noisy_estimate(zero, one, s_t, s_n)
    w = slope.flatten() ** 2
    return torch.where(amb, w, torch.ones_like(w))


def weight_only_loss(
    denoiser,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    eta: torch.Tensor,
    sigma_n: torch.Tensor,
    cond: torch.Tensor | None = None,
    form: str = "ve",
) -> torch.Tensor:
    """The weighting-only control (B,): the clean loss times :func:`ambient_d_weight`."""
    sigma_n = torch.as_tensor(sigma_n, dtype=sigma.dtype, device=sigma.device).expand_as(sigma)
    return ambient_d_weight(sigma, sigma_n, form) * ddpm_loss(denoiser, x0, sigma, eta, cond)


def ambient_loss(
    denoiser,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    eta: torch.Tensor,
    sigma_n: torch.Tensor,
    eps: torch.Tensor,
    cond: torch.Tensor | None = None,
    form: str = "ve",
    weight: str = "paper",
) -> torch.Tensor:
    """Ambient loss (B,) with per-sample ``sigma_n`` (B,) and fixed noise ``eps`` (B, C, H, W).

    ``form="vp"`` computes the ambient branch in VP coordinates (the form used for latent
    models in Ambient Diffusion, Daras et al.): same input and minimiser, error measured on
    VP-scaled data, i.e. the VE error divided by (1 + sigma_n^2). ``weight="corrected"``
    divides the ambient branch by :func:`ambient_d_weight` (at least ``CORRECTION_FLOOR``).
    """
    _check_form(form)
    if weight not in ("paper", "corrected"):
        raise ValueError(f"weight must be 'paper' or 'corrected', got {weight!r}")
    sigma_n = torch.as_tensor(sigma_n, dtype=sigma.dtype, device=sigma.device).expand_as(sigma)
    x_in, target, amb = ambient_inputs(x0, sigma, sigma_n, eps, eta)
    d = denoiser(x_in, sigma, cond)
    if form == "vp":
        s_t, s_n = vp_std_from_sigma(sigma), vp_std_from_sigma(sigma_n)
        x_t, x_n = ve_to_vp(x_in, sigma), ve_to_vp(target, sigma_n)
        est = vp_noisy_estimate(x_t, d, s_t, s_n)
    else:
        est = tweedie_noisy_estimate(d, x_in, sigma, sigma_n)
        x_n = target
    m = _mask(amb, x0)
    pred = torch.where(m, est, d)
    tgt = torch.where(m, x_n, x0)
    loss = denoiser.loss_weight(sigma) * _per_sample_mean((pred - tgt) ** 2)
    if weight == "corrected":
        loss = loss / ambient_d_weight(sigma, sigma_n, form).clamp(min=CORRECTION_FLOOR)
    return loss


# --- the VP form (Ambient Diffusion, Daras et al.: the VP / latent version) -------------------


def vp_ambient_input(
    x_n: torch.Tensor, s_t: torch.Tensor, s_n: torch.Tensor, eta: torch.Tensor
) -> torch.Tensor:
    """x_t = r x_n + k eta with r = sqrt((1 - s_t^2)/(1 - s_n^2)), k = sqrt(s_t^2 - r^2 s_n^2)."""
    r = ((1 - s_t**2) / (1 - s_n**2)).sqrt()
    k = (s_t**2 - r**2 * s_n**2).clamp(min=0).sqrt()
    return broadcast_sigma(r, x_n) * x_n + broadcast_sigma(k, x_n) * eta


def vp_noisy_estimate(
    x_t: torch.Tensor, x0_hat: torch.Tensor, s_t: torch.Tensor, s_n: torch.Tensor
) -> torch.Tensor:
    """x_n_hat = (x_t + (k^2/s_t^2)(sqrt(1 - s_t^2) x0_hat - x_t)) / r  (VP Tweedie estimate)."""
    r = ((1 - s_t**2) / (1 - s_n**2)).sqrt()
    k2 = (s_t**2 - r**2 * s_n**2).clamp(min=0)
    a = broadcast_sigma((1 - s_t**2).sqrt(), x_t)
    return (x_t + broadcast_sigma(k2 / s_t**2, x_t) * (a * x0_hat - x_t)) / broadcast_sigma(r, x_t)
