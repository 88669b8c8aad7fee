"""The volume-growth estimators: known answers, agreement between estimators, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from curate.errors import ModelError, UsageError
from curate.rank.vgr import ODEGrid, VGRConfig, volume_growth


class LinearDenoiser(torch.nn.Module):
    """D(x, sigma) = a x: the PF-ODE step is then x -> lambda x with a closed-form lambda."""

    channels, resolution, conditional = 1, 4, False
    schedule = scheduler_config = vae = None  # walked on the default DDPM schedule

    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def forward(self, x, sigma, cond=None):
        return self.a * x


def _lambda(a: float, sigma: float, beta: float) -> float:
    # eps/std = (1 - a)(1 + sigma^2)/sigma^2 * x  =>  Phi(x) = x (1 + beta/2 (-1 + that factor))
    return 1 + 0.5 * beta * (-1 + (1 - a) * (1 + sigma**2) / sigma**2)


def _images(n=3, c=1, s=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, s, s, generator=g) * 2 - 1


IDS = ["a", "b", "c"]


@pytest.mark.parametrize("estimator", ["fd", "jvp"])
def test_linear_drift_gives_the_known_log_growth(estimator):
    den = LinearDenoiser(0.9)
    grid = ODEGrid(den, 1e-3, 1)
    want = math.log(abs(_lambda(0.9, grid.sigmas[0], grid.betas[0])))
    got = volume_growth(den, _images(), IDS, VGRConfig(estimator=estimator))
    assert torch.allclose(got, torch.full((3,), want, dtype=torch.float64), rtol=1e-4)


def test_frame_sums_log_growth_over_axes_and_steps():
    den = LinearDenoiser(0.95)
    cfg = VGRConfig(estimator="frame", axes=3, ode_steps=4)
    grid = ODEGrid(den, cfg.t_start, cfg.ode_steps)
    want = 3 * sum(
        math.log(abs(_lambda(0.95, s, b))) for s, b in zip(grid.sigmas, grid.betas, strict=True)
    )
    got = volume_growth(den, _images(), IDS, cfg)
    assert torch.allclose(got, torch.full((3,), want, dtype=torch.float64), rtol=1e-4)


@pytest.fixture(scope="module")
def tiny_unet_denoiser():
    from diffusers import UNet2DModel

    from curate.models.denoiser import DiffusersDenoiser
    from curate.models.presets import default_scheduler_config

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False,
    )  # fmt: skip
    return DiffusersDenoiser(unet, default_scheduler_config()).eval()


def test_fd_matches_jvp_as_the_radius_shrinks(tiny_unet_denoiser):
    x = _images(4, 1, 8)
    ids = ["p", "q", "r", "s"]
    exact = volume_growth(tiny_unet_denoiser, x, ids, VGRConfig(estimator="jvp"))
    errs = [
        (volume_growth(tiny_unet_denoiser, x, ids, VGRConfig(estimator="fd", radius=r)) - exact)
        .abs()
        .max()
        .item()
        for r in (0.05, 0.01)
    ]
    # float32 round-off limits how small r can usefully go; both radii agree with the exact value
    assert max(errs) < 1e-3, errs


def test_scores_do_not_depend_on_batch_order(tiny_unet_denoiser):
    x = _images(4, 1, 8)
    ids = ["p", "q", "r", "s"]
    cfg = VGRConfig(flip=True)
    full = volume_growth(tiny_unet_denoiser, x, ids, cfg)
    perm = [2, 0, 3, 1]
    shuffled = volume_growth(tiny_unet_denoiser, x[perm], [ids[i] for i in perm], cfg)
    single = volume_growth(tiny_unet_denoiser, x[1:2], ids[1:2], cfg)
    assert torch.allclose(full[perm], shuffled, atol=1e-6)
    assert torch.allclose(full[1:2], single, atol=1e-6)
    other_seed = volume_growth(tiny_unet_denoiser, x, ids, VGRConfig(flip=True, seed=1))
    assert not torch.allclose(full, other_seed)


def test_wrong_image_size_and_bad_settings_are_clear_errors(tiny_unet_denoiser):
    with pytest.raises(ModelError, match=r"do not fit the model, which takes \(1, 8, 8\)"):
        volume_growth(tiny_unet_denoiser, _images(2, 1, 16), ["a", "b"])
    with pytest.raises(UsageError, match="fd and jvp are one-axis"):
        volume_growth(tiny_unet_denoiser, _images(2, 1, 8), ["a", "b"], VGRConfig(axes=3))
    with pytest.raises(UsageError, match="radius"):
        volume_growth(tiny_unet_denoiser, _images(2, 1, 8), ["a", "b"], VGRConfig(radius=0))


def test_flip_averages_the_score_of_the_mirrored_image(tiny_unet_denoiser):
    """``flip`` is the mean of the image's score and its mirror's (each with its own direction)."""
    from curate.rank.vgr import _score

    x = _images(3, 1, 8)
    ids = ["a", "b", "c"]
    plain_cfg, flip_cfg = VGRConfig(), VGRConfig(flip=True)
    plain = _score(tiny_unet_denoiser, x.float(), ids, plain_cfg, None, "")
    mirrored = _score(tiny_unet_denoiser, x.float().flip(-1), ids, plain_cfg, None, "flip")
    flipped = volume_growth(tiny_unet_denoiser, x, ids, flip_cfg)
    assert torch.allclose(flipped, (0.5 * (plain + mirrored)).cpu(), atol=1e-6)
    assert not torch.allclose(
        mirrored, _score(tiny_unet_denoiser, x.float(), ids, plain_cfg, None, "flip")
    )
