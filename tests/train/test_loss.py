"""The objectives: ambient reduces to ddpm at sigma_n = 0, its target correction is Tweedie's,
it learns the clean denoiser from noisy data only, and the VP form agrees with the VE form."""

from __future__ import annotations

import pytest
import torch

from curate.models.denoiser import DiffusersDenoiser, ve_to_vp
from curate.models.presets import build_pixel_unet, default_scheduler_config
from curate.train.loss import (
    CORRECTION_FLOOR,
    ambient_d_weight,
    ambient_inputs,
    ambient_loss,
    ddpm_loss,
    fixed_noise,
    redrawn_noise,
    tweedie_noisy_estimate,
    vp_ambient_input,
    vp_noisy_estimate,
    weight_only_loss,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def denoiser():
    unet = build_pixel_unet("tiny", channels=1, resolution=8)
    return DiffusersDenoiser(unet, default_scheduler_config()).eval()


@pytest.fixture
def batch():
    g = _gen(1)
    x0 = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    sigma = torch.tensor([0.02, 0.2, 0.6, 1.0, 3.0, 40.0])
    eta = torch.randn(6, 1, 8, 8, generator=g)
    eps = torch.randn(6, 1, 8, 8, generator=g)
    return x0, sigma, eta, eps


class LinearGaussianDenoiser:
    """The optimal D for data ~ N(0, s^2 I) times a scale a: D = a * s^2 / (s^2 + sigma^2) * x."""

    def __init__(self, s=0.5, a=1.0):
        self.s, self.a = s, a

    def __call__(self, x, sigma, cond=None):
        s2 = sigma.view(-1, 1, 1, 1) ** 2
        return self.a * self.s**2 / (self.s**2 + s2) * x

    def loss_weight(self, sigma):
        return torch.ones_like(sigma)


def test_losses_are_unreduced(denoiser, batch):
    x0, sigma, eta, eps = batch
    with torch.no_grad():
        assert ddpm_loss(denoiser, x0, sigma, eta).shape == (6,)
        assert ambient_loss(denoiser, x0, sigma, eta, 0.5, eps).shape == (6,)


def test_ddpm_loss_is_the_native_epsilon_mse(denoiser, batch):
    x0, sigma, eta, _ = batch
    with torch.no_grad():
        x_in = x0 + sigma.view(-1, 1, 1, 1) * eta
        t = denoiser.schedule.sigma_to_t(sigma)
        eps_hat = denoiser.unet(ve_to_vp(x_in, sigma), t).sample
        native = ((eps_hat - eta) ** 2).flatten(1).mean(1)
        torch.testing.assert_close(
            ddpm_loss(denoiser, x0, sigma, eta), native, rtol=1e-3, atol=1e-5
        )


def test_sigma_n_zero_equals_ddpm(denoiser, batch):
    x0, sigma, eta, eps = batch
    with torch.no_grad():
        ref = ddpm_loss(denoiser, x0, sigma, eta)
        torch.testing.assert_close(ambient_loss(denoiser, x0, sigma, eta, 0.0, eps), ref)
        torch.testing.assert_close(ambient_loss(denoiser, x0, sigma, eta, 0.0, eps, form="vp"), ref)


def test_below_sigma_n_the_loss_is_ddpm_on_clean_images(denoiser, batch):
    x0, sigma, eta, eps = batch
    with torch.no_grad():
        ref = ddpm_loss(denoiser, x0, sigma, eta)
        amb = ambient_loss(denoiser, x0, sigma, eta, 1.5, eps)
    low = sigma < 1.5
    torch.testing.assert_close(amb[low], ref[low])
    assert not torch.allclose(amb[~low], ref[~low])


def test_ambient_inputs_use_the_fixed_noisy_copy(batch):
    x0, sigma, eta, eps = batch
    sn = torch.full_like(sigma, 0.5)
    x_in, target, amb = ambient_inputs(x0, sigma, sn, eps, eta)
    x_noisy = x0 + 0.5 * eps
    for i in range(6):
        if sigma[i] >= 0.5:
            assert amb[i]
            torch.testing.assert_close(target[i], x_noisy[i])
            extra = (sigma[i] ** 2 - 0.25).sqrt()
            torch.testing.assert_close(x_in[i], x_noisy[i] + extra * eta[i])
        else:
            assert not amb[i]
            torch.testing.assert_close(target[i], x0[i])
            torch.testing.assert_close(x_in[i], x0[i] + sigma[i] * eta[i])


def test_tweedie_correction_gives_the_noisy_posterior_mean():
    """For Gaussian data E[x~ | x_in] = (s^2 + sn^2)/(s^2 + sigma^2) x_in; the corrected optimal D
    must give exactly that."""
    s, sn = 0.5, 0.7
    sigma = torch.tensor([0.7, 1.0, 2.5, 30.0])
    x_in = torch.randn(4, 1, 3, 3, generator=_gen(2))
    d = LinearGaussianDenoiser(s)(x_in, sigma)
    est = tweedie_noisy_estimate(d, x_in, sigma, torch.full_like(sigma, sn))
    exact = ((s**2 + sn**2) / (s**2 + sigma**2)).view(-1, 1, 1, 1) * x_in
    torch.testing.assert_close(est, exact)


def test_ambient_loss_is_minimised_by_the_clean_denoiser():
    """Trained only on noisy copies (sigma >= sigma_n), the loss is lowest at the clean-data
    optimum D = s^2/(s^2 + sigma^2) x, not at the denoiser of the noisy data."""
    s, sn, n = 0.5, 0.8, 200_000
    g = _gen(3)
    x0 = s * torch.randn(n, 1, 1, 1, generator=g)
    eps, eta = torch.randn(n, 1, 1, 1, generator=g), torch.randn(n, 1, 1, 1, generator=g)
    sigma = torch.full((n,), 1.2)
    # the loss is quadratic in the scale a of D: fit the parabola through a = 0, 1, 2
    vals = [
        ambient_loss(LinearGaussianDenoiser(s, a), x0, sigma, eta, sn, eps).mean()
        for a in (0, 1, 2)
    ]
    a_star = 1 - (vals[2] - vals[0]) / (2 * (vals[2] - 2 * vals[1] + vals[0]))
    assert a_star.item() == pytest.approx(1.0, abs=0.03)
    # without the correction (regressing D straight onto x~) the optimum would be biased
    naive = [
        (
            (
                LinearGaussianDenoiser(s, a)(x0 + sn * eps + (1.2**2 - sn**2) ** 0.5 * eta, sigma)
                - (x0 + sn * eps)
            )
            ** 2
        ).mean()
        for a in (0, 1, 2)
    ]
    a_naive = 1 - (naive[2] - naive[0]) / (2 * (naive[2] - 2 * naive[1] + naive[0]))
    assert abs(a_naive.item() - 1) > 0.3


def test_vp_form_matches_the_ve_form(denoiser, batch):
    x0, sigma, eta, eps = batch
    sn = torch.full_like(sigma, 0.5)
    x_in, target, amb = ambient_inputs(x0, sigma, sn, eps, eta)
    s_t, s_n = sigma / (1 + sigma**2).sqrt(), sn / (1 + sn**2).sqrt()
    x_n_vp = ve_to_vp(x0 + 0.5 * eps, sn)
    # input: r x_n + k eta is the VE input in VP coordinates
    torch.testing.assert_close(
        vp_ambient_input(x_n_vp, s_t, s_n, eta)[amb], ve_to_vp(x_in, sigma)[amb]
    )
    d = torch.randn_like(x0)
    est_vp = vp_noisy_estimate(ve_to_vp(x_in, sigma), d, s_t, s_n)
    est_ve = tweedie_noisy_estimate(d, x_in, sigma, sn)
    torch.testing.assert_close(est_vp[amb], ve_to_vp(est_ve, sn)[amb], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        ve = ambient_loss(denoiser, x0, sigma, eta, sn, eps)
        vp = ambient_loss(denoiser, x0, sigma, eta, sn, eps, form="vp")
    torch.testing.assert_close(vp[amb] * (1 + 0.5**2), ve[amb], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(vp[~amb], ve[~amb])


def test_per_sample_sigma_n_equals_separate_calls(denoiser, batch):
    x0, sigma, eta, eps = batch
    sn = torch.tensor([0.0, 0.1, 0.5, 2.0, 0.3, 5.0])
    with torch.no_grad():
        together = ambient_loss(denoiser, x0, sigma, eta, sn, eps)
        for i in range(6):
            one = ambient_loss(
                denoiser,
                x0[i : i + 1],
                sigma[i : i + 1],
                eta[i : i + 1],
                sn[i : i + 1],
                eps[i : i + 1],
            )
            torch.testing.assert_close(together[i : i + 1], one, rtol=1e-4, atol=1e-6)


def test_fixed_noise_depends_only_on_seed_and_sample_id():
    a = fixed_noise(0, ["x", "y", "z"], (1, 4, 4))
    b = fixed_noise(0, ["z", "x"], (1, 4, 4))
    torch.testing.assert_close(a[0], b[1])
    torch.testing.assert_close(a[2], b[0])
    assert not torch.allclose(fixed_noise(1, ["x"], (1, 4, 4))[0], a[0])
    r0 = redrawn_noise(0, ["x", "x"], (1, 4, 4), [0, 1])
    assert not torch.allclose(r0[0], r0[1])  # the control changes every epoch


class ShiftedDenoiser(LinearGaussianDenoiser):
    """The linear-Gaussian denoiser plus t * delta: its error is t * delta."""

    def __init__(self, delta, t):
        super().__init__()
        self.delta, self.t = delta, t

    def __call__(self, x, sigma, cond=None):
        return super().__call__(x, sigma) + self.t * self.delta


def _curvature(loss_of_t):
    """Half the second difference in t: the weight on |delta|^2 of a loss quadratic in t."""
    return (loss_of_t(1.0) + loss_of_t(-1.0) - 2 * loss_of_t(0.0)) / 2


@pytest.mark.parametrize("form", ["ve", "vp"])
def test_ambient_d_weight_is_the_weight_on_the_denoisers_error(batch, form):
    """Moving D by delta moves the ambient loss by ambient_d_weight * |delta|^2 (its curvature),
    for both forms; 1 below sigma_n."""
    x0, sigma, eta, eps = batch
    delta = torch.randn(x0.shape, generator=_gen(5))

    def loss(t):
        return ambient_loss(ShiftedDenoiser(delta, t), x0, sigma, eta, 0.5, eps, form=form)

    expected = ambient_d_weight(sigma, torch.full_like(sigma, 0.5), form)
    torch.testing.assert_close(_curvature(loss), expected * (delta**2).flatten(1).mean(1))
    low = sigma < 0.5
    assert torch.all(expected[low] == 1) and torch.all(expected[~low] < 1)


def test_ambient_d_weight_closed_forms(batch):
    """(1 - sigma_n^2/sigma^2)^2 in VE; the VP form down-weights it by 1 / (1 + sigma_n^2)."""
    _, sigma, _, _ = batch
    sn = torch.full_like(sigma, 0.5)
    amb = sigma >= sn
    ve = ambient_d_weight(sigma, sn, "ve")
    torch.testing.assert_close(ve[amb], (1 - sn[amb] ** 2 / sigma[amb] ** 2) ** 2)
    vp = ambient_d_weight(sigma, sn, "vp")
    torch.testing.assert_close(vp[amb], ve[amb] / (1 + 0.5**2))


def test_weight_only_loss_is_the_clean_loss_times_the_ambient_weight(denoiser, batch):
    x0, sigma, eta, _ = batch
    sn = torch.full_like(sigma, 0.5)
    with torch.no_grad():
        got = weight_only_loss(denoiser, x0, sigma, eta, sn)
        ref = ddpm_loss(denoiser, x0, sigma, eta)
    torch.testing.assert_close(got, ambient_d_weight(sigma, sn) * ref)
    low = sigma < 0.5
    torch.testing.assert_close(got[low], ref[low])
    assert torch.all(got[~low] < ref[~low])


@pytest.mark.parametrize("form", ["ve", "vp"])
def test_corrected_ambient_weighs_the_denoisers_error_as_the_clean_loss(batch, form):
    """weight: corrected divides the implicit weight out: D's error weighs 1 wherever the weight
    is above the floor, and at most 1 / CORRECTION_FLOOR times the paper's just above sigma_n."""
    x0, sigma, eta, eps = batch
    delta = torch.randn(x0.shape, generator=_gen(6))

    def loss(t, weight="corrected"):
        d = ShiftedDenoiser(delta, t)
        return ambient_loss(d, x0, sigma, eta, 0.5, eps, form=form, weight=weight)

    w = ambient_d_weight(sigma, torch.full_like(sigma, 0.5), form)
    per = (delta**2).flatten(1).mean(1)
    curv = _curvature(loss)
    ok = w >= CORRECTION_FLOOR
    torch.testing.assert_close(curv[ok], per[ok])
    paper = _curvature(lambda t: loss(t, "paper"))
    assert torch.all(curv <= paper / CORRECTION_FLOOR + 1e-6)
