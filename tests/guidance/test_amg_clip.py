"""AMG judges the image the sampler's step uses: the x0 prediction clipped (``clip_sample``) or
dynamically thresholded (``thresholding``) as the model's scheduler config says, with every
method, while the prediction it returns is still the one the sampler steps with."""

from __future__ import annotations

import pytest
import torch

from curate.guidance.amg import AMG, AMGConfig, TrainingIndex
from curate.models.denoiser import DiffusersDenoiser
from curate.models.presets import build_pixel_unet, default_scheduler_config
from curate.models.sampling import predict_x0, sample

RES = 8
METHODS = ("ddim", "ddpm", "euler", "heun")
CLIP = {"clip_sample": True, "clip_sample_range": 1.0}
# thresholding wins over clip_sample: s = clamp(quantile_0.9 |x0|, 1, 1.5), x0 -> clamp / s
THRESHOLD = {"clip_sample": True, "thresholding": True, "dynamic_thresholding_ratio": 0.9,
             "sample_max_value": 1.5}  # fmt: skip


def _limited(x0: torch.Tensor, config: dict) -> torch.Tensor:
    """The x0 diffusers' DDIM step uses, written out by hand (Saharia et al. 2022)."""
    if config.get("thresholding"):
        flat = x0.reshape(len(x0), -1)
        s = torch.quantile(flat.abs(), config["dynamic_thresholding_ratio"], dim=1)
        s = s.clamp(1, config["sample_max_value"])[:, None]
        return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0.shape)
    bound = config["clip_sample_range"]
    return x0.clamp(-bound, bound)


def _col(frame, name: str) -> torch.Tensor:
    return torch.tensor(frame[name].to_list(), dtype=torch.float64)


@pytest.fixture(scope="module")
def unet():
    """A random tiny UNet: an eps model whose raw x0 = x - sigma * eps overshoots [-1, 1]."""
    torch.manual_seed(4)
    return build_pixel_unet("tiny", channels=1, resolution=RES).eval().requires_grad_(False)


def _index():
    g = torch.Generator().manual_seed(0)
    return TrainingIndex(torch.rand(12, 1, RES, RES, generator=g) * 2 - 1, "pixel", k=4)


CLOSED = AMGConfig(threshold="constant", lambdas=(-1e-9, -1e-9), k=4)  # -nL2 < 0: never open


@pytest.mark.parametrize("config", [CLIP, THRESHOLD], ids=["clip_sample", "thresholding"])
@pytest.mark.parametrize("method", METHODS)
def test_amg_measures_the_x0_the_step_uses(unet, method, config):
    den = DiffusersDenoiser(unet, {**default_scheduler_config(), **config})
    index = _index()
    amg = AMG(CLOSED, index)
    raw, used = [], []
    plain = sample(den, 3, steps=5, method=method, seed=2, progress=False, clip=False)
    guided = sample(den, 3, steps=5, method=method, seed=2, progress=False, clip=False,
                    guidance=amg, callback=lambda i, s, x, x0: raw.append(x0.clone()),
                    on_step=lambda r: used.append(r.x0))  # fmt: skip
    assert torch.equal(plain, guided)  # a closed gate hands back the prediction untouched
    recorded = amg.steps_frame()
    assert recorded.height == 3 * 5
    for step, (x0_raw, x0_used) in enumerate(zip(raw, used, strict=True)):
        torch.testing.assert_close(x0_used, _limited(x0_raw, config))  # what the step used
        sim, nbrs = index.search(x0_used)
        rows = recorded.filter(recorded["step"] == step).sort("sample")
        torch.testing.assert_close(_col(rows, "similarity"), sim.double())
        assert rows["nn_index"].to_list() == nbrs[:, 0].tolist()
    # the raw prediction leaves [-1, 1] and judges differently: the limit is doing something
    assert max(float(x.abs().max()) for x in raw) > 2.0
    raw_sims = torch.cat([index.search(x)[0] for x in raw]).double()
    frame = recorded.sort(["step", "sample"])
    assert (_col(frame, "similarity") - raw_sims).abs().max() > 1e-3


@pytest.mark.parametrize("config", [CLIP, THRESHOLD], ids=["clip_sample", "thresholding"])
def test_the_dissimilarity_gradient_flows_through_the_limit(unet, config):
    """grad_x s(limit(x0(x))): zero where the clamp cuts, as torch's clamp; a direct call
    takes the limit from the model's scheduler config."""
    den = DiffusersDenoiser(unet, {**default_scheduler_config(), **config})
    index = _index()
    amg = AMG(AMGConfig(threshold="always", guidances=("sim",), scales=(0, 0, 1.0), k=4), index)
    sigma = 3.0
    x = sigma * torch.randn(2, 1, RES, RES, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x0 = predict_x0(den, x, sigma, None)
        _, nbrs = index.search(_limited(x0, config))
    new = amg(den, x, sigma, None, 0, [0, 1])

    def grad(limit):
        xg = x.clone().requires_grad_(True)
        sim = index.similarity(limit(predict_x0(den, xg, sigma, None)), nbrs)
        return torch.autograd.grad(sim.sum(), xg)[0]

    through = grad(lambda v: _limited(v, config))
    torch.testing.assert_close(new, x0 - sigma**2 * through, rtol=1e-4, atol=1e-4)
    norms = _col(amg.steps_frame().sort("sample"), "grad_norm")
    torch.testing.assert_close(norms, through.flatten(1).norm(dim=1).double(), rtol=1e-4, atol=0)
    raw = grad(lambda v: v)
    assert (through.flatten(1).norm(dim=1) - raw.flatten(1).norm(dim=1)).abs().max() > 1e-3


def test_without_a_limit_amg_measures_the_raw_prediction(unet):
    """clip_sample false (and no thresholding): nothing limits x0, so AMG measures it raw."""
    den = DiffusersDenoiser(unet, {**default_scheduler_config(), "clip_sample": False})
    index = _index()
    amg = AMG(CLOSED, index)
    raw = []
    sample(den, 2, steps=3, method="euler", seed=0, progress=False, guidance=amg,
           callback=lambda i, s, x, x0: raw.append(x0.clone()))  # fmt: skip
    sims = torch.cat([index.search(x)[0] for x in raw]).double()
    frame = amg.steps_frame().sort(["step", "sample"])
    torch.testing.assert_close(_col(frame, "similarity"), sims)
