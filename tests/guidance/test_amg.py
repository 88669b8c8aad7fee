"""Anti-memorization guidance: the gate, the caps, the sign of nL2, the gradient's direction,
the three guidances on a conditional model, and the errors a user can hit."""

from __future__ import annotations

import pytest
import torch

from curate.audit.oracle import EmpiricalDenoiser
from curate.errors import DataError, UsageError
from curate.guidance.amg import AMG, AMGConfig, TrainingIndex, text_scales
from curate.guidance.run import build_amg
from curate.models.denoiser import DiffusersDenoiser
from curate.models.presets import build_model
from curate.models.sampling import CFGCond, predict_x0, sample


def _train_images(n=12, res=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, res, res, generator=g) * 2 - 1


class _Train:
    """The TrainingSet fields build_amg reads."""

    def __init__(self, images, captions=None):
        self.images = images
        self.captions = captions
        self.sample_ids = [f"s{i}" for i in range(len(images))]


@pytest.fixture(scope="module")
def cond_model():
    """A random caption-conditional tiny UNet at 8x8 with the tiny-clip encoder."""
    bundle = build_model("tiny", channels=1, resolution=8, text_encoder="tiny-clip", seed=1)
    den = DiffusersDenoiser(bundle.unet, bundle.scheduler_config).eval().requires_grad_(False)
    return den, bundle.text_encoder


@pytest.fixture(scope="module")
def uncond_model():
    bundle = build_model("tiny", channels=1, resolution=8, seed=2)
    return DiffusersDenoiser(bundle.unet, bundle.scheduler_config).eval().requires_grad_(False)


CAPTIONS = [f"a handwritten digit {w}" for w in ("zero", "one", "two", "three", "four", "five")] * 2


# ---------------------------------------------------------------------------- the config


def test_parabolic_threshold_rises_from_lambda_min_to_lambda_max():
    cfg = AMGConfig(features="sscd", lambdas=(0.4, 0.5))
    assert cfg.threshold_at(80.0) == pytest.approx(0.4, abs=1e-6)
    assert cfg.threshold_at(0.0) == pytest.approx(0.5)
    values = [cfg.threshold_at(s) for s in (10.0, 2.0, 1.0, 0.5, 0.1)]
    assert values == sorted(values)  # rises as the noise vanishes
    assert cfg.threshold_at(1.0) == pytest.approx(0.4 + 0.1 * 0.25)  # abar = 1/2, squared
    assert AMGConfig(threshold="constant", lambdas=(-1.9, -1.5)).threshold_at(50.0) == -1.5
    assert AMGConfig(threshold="always").threshold_at(0.1) == -float("inf")


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"lambdas": (-1.4, -1.6)}, "lambdas: MIN"),  # min above max
        ({"lambdas": (0.4, 0.5)}, "lambdas: pixel"),  # positive on the negative nL2 scale
        ({"lambdas": "sometimes"}, "lambdas: needs auto"),
        ({"scales": (1.0, -1.0, 1.0)}, "scales:"),
        ({"guidances": ("spe", "nope")}, "guidances:"),
        ({"features": "dino"}, "features:"),
        ({"k": 0}, "k:"),
        ({"calibration_samples": 1}, "calibration_samples:"),
    ],
)
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(UsageError, match=f"^{key}"):
        AMGConfig(**kwargs).validate()


# ------------------------------------------------------------------------------ the caps


@pytest.mark.parametrize("s0", [1.0, 1.5, 3.0, 7.5])
def test_text_scales_never_push_the_effective_scale_below_one(s0):
    sims = torch.linspace(-2, 2, 81)
    for c1, c2 in [(5.0, 5.0), (0.1, 10.0), (100.0, 0.0), (0.0, 100.0)]:
        s1, s2 = text_scales(sims, s0, c1, c2)
        assert torch.all(s1 >= 0) and torch.all(s2 >= 0)
        assert torch.all(s0 - s1 - s2 >= 1.0 - 1e-6)
        # below the cap the scales are proportional to the similarity (Eqs. 13, 15)
        small = (c1 * sims >= 0) & (c1 * sims <= s0 - 1)
        torch.testing.assert_close(s1[small], c1 * sims[small])


def test_negative_similarity_switches_off_the_text_guidances():
    s1, s2 = text_scales(torch.tensor([-1.3, -0.2, -1e-4]), 7.5, 5.0, 5.0)
    assert torch.all(s1 == 0) and torch.all(s2 == 0)


# ------------------------------------------------------------------------ the detection gate


def test_closed_gate_gives_byte_identical_samples(uncond_model):
    train = _Train(_train_images())
    amg = build_amg(uncond_model, train, AMGConfig(threshold="constant", lambdas=(-1e-9, -1e-9)))
    plain = sample(uncond_model, 5, steps=6, seed=3, batch_size=3, progress=False)
    guided = sample(uncond_model, 5, steps=6, seed=3, batch_size=3, progress=False, guidance=amg)
    assert torch.equal(plain, guided)
    steps = amg.steps_frame()
    assert steps.height == 5 * 6 and not steps["active"].any()
    assert sorted(steps["sample"].unique().to_list()) == list(range(5))


def test_closed_gate_is_byte_identical_with_classifier_free_guidance(cond_model):
    den, enc = cond_model
    train = _Train(_train_images(), CAPTIONS)
    cfg = AMGConfig(threshold="constant", lambdas=(-1e-9, -1e-9))
    amg = build_amg(den, train, cfg, text_encoder=enc)
    cond, uncond = enc.encode(CAPTIONS[:4]), enc.encode([""])
    kw = dict(steps=5, seed=1, progress=False, cond=cond, uncond=uncond, cfg_scale=3.0)
    assert torch.equal(sample(den, 4, **kw), sample(den, 4, guidance=amg, **kw))
    # and classifier-free guidance really changes the samples
    assert not torch.equal(sample(den, 4, **{**kw, "cfg_scale": 1.0}), sample(den, 4, **kw))


def test_guidance_at_every_step_is_active_everywhere_and_changes_samples(uncond_model):
    train = _Train(_train_images())
    amg = build_amg(uncond_model, train, AMGConfig(threshold="always", scales=(0, 0, 5.0)))
    plain = sample(uncond_model, 3, steps=4, seed=0, progress=False)
    guided = sample(uncond_model, 3, steps=4, seed=0, progress=False, guidance=amg)
    assert amg.steps_frame()["active"].all()
    assert not torch.allclose(plain, guided)


# ------------------------------------------------------------------------ the gradient


@pytest.mark.parametrize("sigma", [1.5, 3.0, 8.0])
def test_dissimilarity_step_lowers_the_similarity_to_the_held_neighbour(sigma):
    """x0 - c3 sigma^2 grad_x s(x0(x)) moves x0 away from n0 (first order: J is PSD)."""
    images = _train_images(n=10, res=4, seed=5)
    oracle = EmpiricalDenoiser(images)
    index = TrainingIndex(images, "pixel", k=5)
    amg = AMG(AMGConfig(threshold="always", scales=(0, 0, 0.02), k=5), index)
    g = torch.Generator().manual_seed(0)
    x = images[:4] + sigma * torch.randn(4, 1, 4, 4, generator=g)
    with torch.no_grad():
        x0 = predict_x0(oracle, x, sigma, None)
        before, nbrs = index.search(x0)
    x0_new = amg(oracle, x, sigma, None, 0, [0, 1, 2, 3])
    after = index.similarity(x0_new, nbrs)
    assert torch.all(after < before), (before, after)
    assert amg.steps_frame()["grad_norm"].min() > 0


def test_pixel_similarity_is_minus_normalised_l2():
    from curate.audit.metrics import normalized_l2

    images = _train_images(n=20, res=4, seed=1)
    index = TrainingIndex(images, "pixel", k=7, alpha=0.5)
    q = images[:3] + 0.1
    sim, nbrs = index.search(q)
    d = torch.cdist(q.flatten(1), images.flatten(1)).sort(dim=1).values[:, :7]
    expect = -normalized_l2(d[:, 0].numpy(), d.mean(dim=1).numpy(), 0.5)
    torch.testing.assert_close(sim, torch.as_tensor(expect, dtype=sim.dtype), rtol=1e-4, atol=1e-5)
    assert torch.all(sim < 0)


# ----------------------------------------------------------------- conditional: all three


def _toy_sscd(path):
    """A differentiable stand-in for Meta's TorchScript SSCD (same calling convention)."""

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
            self.fc = torch.nn.Linear(8 * 16, 512)

        def forward(self, x):
            h = torch.nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 4)
            return self.fc(h.flatten(1))

    torch.manual_seed(0)
    torch.jit.script(Toy()).save(str(path))
    return str(path)


def test_sscd_similarity_on_a_conditional_model_uses_all_three_guidances(cond_model, tmp_path):
    den, enc = cond_model
    train = _Train(_train_images(), CAPTIONS)
    model = _toy_sscd(tmp_path / "sscd.pt")
    cfg = AMGConfig(features="sscd", features_model=model, threshold="always", scales=(1, 1, 1))
    amg = build_amg(den, train, cfg, text_encoder=enc)
    cond, uncond = enc.encode(CAPTIONS[:3]), enc.encode([""])
    sample(den, 3, steps=3, seed=0, progress=False, cond=cond, uncond=uncond, cfg_scale=3.0,
           guidance=amg)  # fmt: skip
    steps = amg.steps_frame()
    assert (steps["similarity"] > 0).all()  # cosine scale: the text guidances are live
    assert (steps["s1"] > 0).all() and (steps["s2"] > 0).any() and (steps["grad_norm"] > 0).all()
    assert (3.0 - steps["s1"] - steps["s2"] >= 1.0 - 1e-6).all()
    per = amg.samples_frame()
    assert per["amg_used_spe"].all() and per["amg_used_sim"].all()


def test_pixel_similarity_on_a_conditional_model_leaves_only_dissimilarity(cond_model):
    den, enc = cond_model
    train = _Train(_train_images(), CAPTIONS)
    amg = build_amg(den, train, AMGConfig(threshold="always"), text_encoder=enc)
    cond, uncond = enc.encode(CAPTIONS[:2]), enc.encode([""])
    sample(den, 2, steps=3, seed=0, progress=False, cond=cond, uncond=uncond, cfg_scale=5.0,
           guidance=amg)  # fmt: skip
    steps = amg.steps_frame()
    assert (steps["similarity"] < 0).all()
    assert (steps["s1"] == 0).all() and (steps["s2"] == 0).all()
    assert (steps["grad_norm"] > 0).all()


def test_caption_deduplication_uses_the_neighbours_caption(cond_model):
    den, enc = cond_model
    train = _Train(_train_images(), CAPTIONS)
    index = TrainingIndex(train.images, "pixel", captions=CAPTIONS, sample_ids=train.sample_ids)
    amg = AMG(AMGConfig(), index, text_encoder=enc)
    emb = amg._neighbour_cond(torch.tensor([3, 0]), enc.encode(["x"]))
    torch.testing.assert_close(emb, enc.encode([CAPTIONS[3], CAPTIONS[0]]))


# ----------------------------------------------------------------------------- errors


def test_feature_mismatch_is_a_clear_error(uncond_model):
    train = _Train(_train_images(res=16))  # the model makes 8x8 images
    with pytest.raises(DataError, match="feature mismatch"):
        build_amg(uncond_model, train, AMGConfig())


def test_non_differentiable_sscd_with_dissimilarity_is_refused(cond_model, tmp_path):
    den, enc = cond_model
    with pytest.raises(UsageError, match="^features_model: .*TorchScript"):
        build_amg(den, _Train(_train_images()), AMGConfig(features="sscd",
                  features_model=str(tmp_path / "sscd.onnx")), text_encoder=enc)  # fmt: skip


def test_cfg_without_an_unconditional_embedding_is_refused(cond_model):
    den, enc = cond_model
    with pytest.raises(UsageError, match="guidance.scale"):
        sample(den, 2, steps=2, cond=enc.encode(["a", "b"]), cfg_scale=3.0, progress=False)


def test_cfg_cond_rows_select_both_branches():
    c = CFGCond(torch.arange(6.0).view(3, 2), torch.zeros(3, 2), 2.0)
    sub = c.rows(torch.tensor([2, 0]))
    assert sub.cond.tolist() == [[4.0, 5.0], [0.0, 1.0]] and sub.uncond.shape == (2, 2)
    assert sub.guided and not CFGCond(c.cond).guided


def test_pixel_cosine_similarity_on_a_conditional_model_uses_all_three_guidances(cond_model):
    den, enc = cond_model
    train = _Train(_train_images(), CAPTIONS)
    cfg = AMGConfig(features="pixel-cosine", threshold="always", scales=(2, 2, 1))
    amg = build_amg(den, train, cfg, text_encoder=enc)
    cond, uncond = enc.encode(CAPTIONS[:4]), enc.encode([""])
    sample(den, 4, steps=3, seed=0, progress=False, cond=cond, uncond=uncond, cfg_scale=4.0,
           guidance=amg)  # fmt: skip
    steps = amg.steps_frame()
    positive = steps.filter(steps["similarity"] > 0)
    assert positive.height > 0 and (positive["s1"] > 0).all()
    assert (4.0 - steps["s1"] - steps["s2"] >= 1.0 - 1e-6).all()
    assert (steps["grad_norm"] > 0).all()


@pytest.fixture(scope="module")
def latent_model(tiny_latent_parts):
    """A tiny random latent (Stable-Diffusion-shaped) denoiser: 4x8x8 latents, 3x16x16 images."""
    from curate.models.presets import default_scheduler_config

    unet, vae = tiny_latent_parts
    return DiffusersDenoiser(unet, default_scheduler_config(), vae=vae).eval()


def test_latent_model_is_measured_on_decoded_images_and_guided_through_the_decoder(latent_model):
    g = torch.Generator().manual_seed(0)
    train = _Train(torch.rand(6, 3, 16, 16, generator=g) * 2 - 1)
    cond = torch.randn(3, 4, 16, generator=g)
    amg = build_amg(latent_model, train, AMGConfig(threshold="always", scales=(0, 0, 1)))
    assert amg.index.image_shape == (3, 16, 16)  # images, not latents
    plain = sample(latent_model, 3, steps=3, seed=0, cond=cond, progress=False)
    guided = sample(latent_model, 3, steps=3, seed=0, cond=cond, progress=False, guidance=amg)
    assert plain.shape == (3, 4, 8, 8) and not torch.allclose(plain, guided)
    assert (amg.steps_frame()["grad_norm"] > 0).all()  # the gradient crossed the VAE decoder
    closed = build_amg(latent_model, train, AMGConfig(threshold="constant", lambdas=(-1e-9,) * 2))
    assert torch.equal(
        plain, sample(latent_model, 3, steps=3, seed=0, cond=cond, progress=False, guidance=closed)
    )
