"""Fréchet distance between two feature sets, in feature spaces that exist offline.

``FD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (Heusel et al. 2017, the FID formula) on
Gaussians fitted to the features. Without Inception weights the numbers are NOT FID; each
feature space carries its own name so a report never passes one off as the other:

* ``FD_pixel@S``: raw pixels, area-downsampled to at most S x S per channel.
* ``FD_randconv``: a fixed, seeded, randomly initialised conv net (no training), global-pooled.
  Random conv features see local structure (strokes, edges) that raw pixels blur over.

Both are only comparable between runs that use the same feature space, resolution and reference.
"""

from __future__ import annotations

import warnings

import numpy as np

from curate.errors import DataError, UsageError

FD_FEATURES = ("pixel", "randconv")


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of the rows of ``feats``, in float64."""
    f = np.asarray(feats, dtype=np.float64).reshape(len(feats), -1)
    if len(f) < 2:
        raise DataError(
            f"a Fréchet distance needs at least 2 feature vectors per set, got {len(f)}"
        )
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) for symmetric PSD S1, S2 via symmetric eigendecompositions.

    S1 S2 is similar to S1^(1/2) S2 S1^(1/2), which is symmetric PSD, so the trace of the square
    root is the sum of the square roots of its eigenvalues (clipped at 0 against round-off).
    Real arithmetic throughout, and O(D^3) with small constants.
    """
    w1, v1 = np.linalg.eigh(sigma1)
    root1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T  # S1^(1/2)
    m = root1 @ sigma2 @ root1
    w = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """Tr((S1 S2)^(1/2)) with ``scipy.linalg.sqrtm`` of the (non-symmetric) product.

    The product can be singular (fewer samples than dimensions); when scipy warns or the result
    is not finite, both covariances get ``eps * I`` added and it is retried. A tiny imaginary
    part from round-off is dropped; a large one means the result is not trustworthy and raises.
    """
    from scipy import linalg

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if caught or not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(covmean.imag))
        # Relative tolerance: round-off grows with the scale of the matrices.
        scale = max(1.0, float(np.max(np.abs(covmean.real))))
        if imag > 1e-3 * scale:
            raise DataError(
                f"sqrtm of the covariance product has a large imaginary part ({imag:.3g})"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
    method: str = "eigh",
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``method="eigh"`` (default) computes Tr((S1 S2)^(1/2)) from symmetric eigendecompositions;
    ``method="sqrtm"`` uses ``scipy.linalg.sqrtm`` of the product as pytorch-fid does. They
    agree to round-off; eigh is real-valued and much faster at a few hundred dimensions.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise DataError(f"feature sets differ in dimension: {mu1.shape} vs {mu2.shape}")
    if method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    elif method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    else:
        raise UsageError(f"frechet method {method!r} is not one of eigh, sqrtm")
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
    return float(max(fd, 0.0))


def frechet_distance_features(
    feats_a: np.ndarray, feats_b: np.ndarray, method: str = "eigh"
) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D)."""
    return frechet_distance(*gaussian_stats(feats_a), *gaussian_stats(feats_b), method=method)


def pixel_features(images, max_side: int = 16) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] -> (N, C*h*w) float64 pixels, area-downsampled so that
    h, w <= ``max_side`` (the sqrtm is cubic in the dimension)."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if x.ndim != 4:
        raise DataError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x, size=size, mode="area")
    return x.reshape(len(x), -1).double().numpy()


def randconv_features(images, dim: int = 128, seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] -> (N, dim) features of a fixed random conv net.

    Three 3x3 conv layers (stride 1, 2, 2) with ReLU, He-initialised from ``seed`` alone, then
    global average and max pooling. The same seed and channel count always give the same net.
    """
    import torch

    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if x.ndim != 4:
        raise DataError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
    if dim % 2:
        raise UsageError(f"randconv feature dim must be even (mean + max pooling), got {dim}")
    gen = torch.Generator().manual_seed(seed)
    widths = [x.shape[1], 32, 64, dim // 2]
    layers = []
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        weight = torch.randn(cout, cin, 3, 3, generator=gen) * (2.0 / (cin * 9)) ** 0.5
        bias = torch.randn(cout, generator=gen) * 0.1
        layers.append((weight, bias, 1 if i == 0 else 2))
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            h = x[start : start + batch_size]
            for weight, bias, stride in layers:
                h = torch.relu(torch.nn.functional.conv2d(h, weight, bias, stride, padding=1))
            out.append(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))  # (B, dim)
    return torch.cat(out).double().numpy()


def feature_space_name(kind: str, max_side: int = 16) -> str:
    """The honest name of a Fréchet distance in feature space ``kind``."""
    if kind == "pixel":
        return f"FD_pixel@{max_side}"
    if kind == "randconv":
        return "FD_randconv"
    raise UsageError(f"fd_features: {kind!r} is not one of {', '.join(FD_FEATURES)}")


def fd_features(images, kind: str = "pixel", max_side: int = 16, seed: int = 0) -> np.ndarray:
    """Features of ``images`` (N, C, H, W) in [-1, 1] for the Fréchet distance named ``kind``."""
    if kind == "pixel":
        return pixel_features(images, max_side=max_side)
    if kind == "randconv":
        return randconv_features(images, seed=seed)
    raise UsageError(f"fd_features: {kind!r} is not one of {', '.join(FD_FEATURES)}")
