"""Does the audit measure anything? A check that the generations look like the training data.

The memorization metrics compare each generation with its nearest training images. When the
generations are noise (an untrained or broken model, a wrong sampler or noise schedule) or far
from the data (a model of another dataset, other preprocessing), every generation is far from
every training image, the audit reads "0 % memorized", and that figure says nothing about the
model: **the memorization figures of such an audit are meaningless**. Two rules, from the
audit's own pixel-space numbers:

* **far from the data**: the median distance of the generations to their nearest training
  image (pixel L2 at the model's resolution, in [-1, 1]) is above ``FAR_FACTOR`` (2) times the
  95th percentile of the training set's own nearest-neighbour distances (each distinct
  training image to its nearest other distinct image: the audit's leave-one-out neighbours).
  A model of the data makes images about as close to the training set as the training images
  are to each other (``digits-tiny`` on the digits: 1.1x) or closer (copies); random weights
  give 2.8-4.3x.
* **noise-like**: the median high-frequency share of the generations is above
  ``NOISE_HF_SHARE`` (0.5) and closer to white noise (1) than to the training images' 95th
  percentile ``p``: above ``(1 + p) / 2``. The high-frequency share of an image is the mean
  squared difference of horizontally and vertically adjacent pixels over twice its pixel
  variance: 1 for white noise, near 0 for smooth images (digits at 16 px: p 0.13;
  ``digits-tiny``'s samples: 0.1; random weights: 0.7-0.9; the raw 8 px digits: p 0.62, so
  there only near-white noise counts). A flat image counts 0.

Either rule raises the warning; both are reported with their numbers (``generation_check`` in
``audit.json``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

FAR_FACTOR = 2.0
NOISE_HF_SHARE = 0.5

DEFINITION = (
    f"far from the data: median generation-to-nearest-training pixel L2 > {FAR_FACTOR:g} x the "
    "95th percentile of the training images' own nearest-neighbour distances (leave-one-out); "
    f"noise-like: median high-frequency share (mean squared adjacent-pixel difference / "
    f"(2 x pixel variance); white noise 1) > {NOISE_HF_SHARE:g} and > (1 + p) / 2, p the "
    "training images' 95th percentile. Either one means the generations do not look like the "
    "training data, and the memorization figures of the audit are meaningless."
)


def high_frequency_share(images: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """(N,) mean squared difference of adjacent pixels (both axes, all channels) over twice
    the pixel variance, for images (N, C, H, W): 1 for white noise, near 0 for smooth images,
    0 for a flat image."""
    out = []
    for s in range(0, len(images), batch_size):
        x = np.asarray(images[s : s + batch_size], dtype=np.float64)
        dx = np.diff(x, axis=-1) ** 2
        dy = np.diff(x, axis=-2) ** 2
        hf = (dx.mean(axis=(1, 2, 3)) + dy.mean(axis=(1, 2, 3))) / 2
        var = x.reshape(len(x), x.shape[1], -1).var(axis=2).mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(np.where(var > 1e-10, hf / (2 * var), 0.0))
    return np.concatenate(out) if out else np.zeros(0)


def generation_check(
    generations: np.ndarray,
    train_images: np.ndarray,
    nn_distance: np.ndarray,
    train_nn_distance: np.ndarray | None,
) -> dict[str, Any]:
    """Whether generations (N, C, H, W) look like ``train_images`` (M, C, H, W): the two rules
    of this module on ``nn_distance`` (each generation to its nearest training image) and
    ``train_nn_distance`` (each distinct training image to its nearest other one; None with
    fewer than 3 distinct images: the distance rule is then not applied).

    Returns the numbers, ``far_from_data`` (None when not measurable), ``noise_like``,
    ``off_data`` (either) and ``warning`` (one sentence, or None).
    """
    gen_d = float(np.median(nn_distance))
    train_p95 = None
    ratio = None
    far = None
    if train_nn_distance is not None and len(train_nn_distance):
        train_p95 = float(np.percentile(train_nn_distance, 95))
        ratio = gen_d / train_p95 if train_p95 > 0 else float("inf")
        far = bool(ratio > FAR_FACTOR)
    gen_hf = float(np.median(high_frequency_share(generations)))
    train_hf = float(np.percentile(high_frequency_share(train_images), 95))
    noise_limit = max(NOISE_HF_SHARE, (1.0 + train_hf) / 2)
    noise = bool(gen_hf > noise_limit)
    off = bool(far) or noise
    warning = None
    if off:
        what = " and ".join(
            w for w, hit in (("look like noise", noise), ("are far from the training data", far))
            if hit
        )  # fmt: skip
        numbers = []
        if far is not None:
            numbers.append(
                f"median distance to the nearest training image {gen_d:.3g}, {ratio:.2g}x the "
                f"95th percentile of the training images' own nearest-neighbour distances "
                f"({train_p95:.3g}; limit {FAR_FACTOR:g}x)"
            )
        numbers.append(
            f"high-frequency share {gen_hf:.2f} vs {train_hf:.2f} in training (p95; white "
            f"noise 1; limit {noise_limit:.2f})"
        )
        warning = (
            f"the generations {what} ({'; '.join(numbers)}): the memorization figures of this "
            "audit are meaningless; check the model (trained? on this data?), its sampler and "
            "the resolution"
        )
    return {
        "off_data": off,
        "far_from_data": far,
        "noise_like": noise,
        "nn_distance_p50": gen_d,
        "train_nn_distance_p95": train_p95,
        "distance_ratio": ratio,
        "far_factor": FAR_FACTOR,
        "hf_share_p50": gen_hf,
        "train_hf_share_p95": train_hf,
        "hf_share_limit": noise_limit,
        "warning": warning,
        "definition": DEFINITION,
    }
