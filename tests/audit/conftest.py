"""Shared data for the audit tests: real digits (shipped inside scikit-learn) and a tiny
deterministic Euler sampler, so the metric tests depend on nothing but the audit package."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits():
    """All 1,797 sklearn digits as (N, 1, 8, 8) float32 in [-1, 1] (values 0..16 scaled)."""
    import torch
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)  # (1797, 8, 8), 0..16
    return torch.from_numpy(images / 8.0 - 1.0)[:, None]


def _euler_sample(denoiser, num: int, steps: int = 30, seed: int = 0):
    """Deterministic probability-flow ODE (Euler, EDM/Karras sigmas, rho 7) from sigma_max to 0.

    dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 3 with sigma(t) = t).
    """
    import torch

    smin, smax, rho = denoiser.sigma_min, denoiser.sigma_max, 7.0
    i = torch.arange(steps, dtype=torch.float64)
    sigmas = (smax ** (1 / rho) + i / (steps - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    sigmas = torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])
    shape = (denoiser.channels, denoiser.resolution, denoiser.resolution)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num, *shape, generator=gen, dtype=torch.float64) * smax
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x0 = denoiser(x, s.expand(num)).double()
        x = x + (s_next - s) * (x - x0) / s
    return x.float()


@pytest.fixture(scope="session")
def euler_sample():
    """The sampler above, as a fixture (test modules import nothing from each other)."""
    return _euler_sample
