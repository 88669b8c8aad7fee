"""The closed-form empirical denoiser: a perfect memorizer used to calibrate the audit.

For a training set {x_i}, the optimal denoiser of the empirical distribution under
``x = x0 + sigma * eps`` is the posterior mean

    D*(x, sigma) = sum_i softmax_i(-|x - x_i|^2 / (2 sigma^2)) x_i

(the posterior mean of the training set under Gaussian noise). Sampling its probability-flow ODE down to a small sigma lands on a training
image, so its generations must audit as ~100% memorized: a metric that says otherwise is broken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from curate.errors import DataError

if TYPE_CHECKING:
    import torch


class EmpiricalDenoiser:
    """``D(x, sigma, cond=None) -> x0_hat`` (VE/EDM convention) for the empirical distribution
    of ``train_images`` (N, C, H, W) in [-1, 1]. Unconditional; ``cond`` is ignored."""

    # the pixel-model part of ``curate.models.denoiser.Denoiser``: no timesteps, no VAE
    conditional = False
    schedule = None
    scheduler_config = None
    vae = None
    info: dict = {}

    def __init__(
        self,
        train_images: torch.Tensor,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        chunk_size: int = 4096,
    ):
        import torch

        x = torch.as_tensor(train_images)
        if x.ndim != 4 or x.shape[0] == 0:
            raise DataError(f"EmpiricalDenoiser needs images (N, C, H, W), got {tuple(x.shape)}")
        if x.shape[-1] != x.shape[-2]:
            raise DataError(f"EmpiricalDenoiser needs square images, got {tuple(x.shape[-2:])}")
        # float64: at sigma ~ 0.002 the logits are |d|^2 / 8e-6, so float32 round-off in the
        # distances would decide which training image wins.
        self.train = x.detach().to(torch.float64)  # (N, C, H, W)
        self._flat = self.train.reshape(len(x), -1)  # (N, D)
        self._sq = (self._flat**2).sum(dim=1)  # (N,)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.channels = int(x.shape[1])
        self.resolution = int(x.shape[-1])
        self.chunk_size = chunk_size

    def to(self, device: str) -> EmpiricalDenoiser:
        """Move the training images to ``device``; returns self."""
        self.train = self.train.to(device)
        self._flat = self._flat.to(device)
        self._sq = self._sq.to(device)
        return self

    def __call__(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        """Posterior mean of x0 given ``x`` (B, C, H, W) at noise level ``sigma`` (B,) or scalar."""
        import torch

        b = x.shape[0]
        xf = x.reshape(b, -1).to(self._flat)  # (B, D)
        sig = torch.as_tensor(sigma, dtype=torch.float64, device=xf.device).reshape(-1)
        sig = sig.expand(b) if sig.numel() == 1 else sig  # (B,)
        # |x - x_i|^2 = |x|^2 - 2 x.x_i + |x_i|^2; the |x|^2 term cancels in the softmax.
        # Online log-sum-exp over training chunks keeps memory at (B, chunk).
        run_max = torch.full((b,), -torch.inf, dtype=torch.float64, device=xf.device)
        denom = torch.zeros(b, dtype=torch.float64, device=xf.device)
        numer = torch.zeros_like(xf)  # (B, D)
        for start in range(0, len(self._flat), self.chunk_size):
            xi = self._flat[start : start + self.chunk_size]  # (n, D)
            d2 = self._sq[start : start + self.chunk_size][None, :] - 2.0 * xf @ xi.T  # (B, n)
            logits = -d2 / (2.0 * sig[:, None] ** 2)  # (B, n)
            new_max = torch.maximum(run_max, logits.max(dim=1).values)
            rescale = torch.exp(run_max - new_max)  # (B,)
            w = torch.exp(logits - new_max[:, None])  # (B, n)
            denom = denom * rescale + w.sum(dim=1)
            numer = numer * rescale[:, None] + w @ xi
            run_max = new_max
        out = numer / denom[:, None]  # (B, D)
        return out.reshape(x.shape).to(x.dtype)
