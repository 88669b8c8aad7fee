"""Protects the guidance maths: classifier-free guidance, AMG's two text guidances (their
signs and caps), the ``--amg-guidances`` subsets and the per-sample detection gate, through
``curate.guidance``, ``curate.models.sampling.sample`` and ``curate sample``."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from curate.cli.model import sample as sample_cmd
from curate.guidance.amg import AMG, AMGConfig, TrainingIndex
from curate.guidance.run import build_amg
from curate.models.denoiser import DiffusersDenoiser
from curate.models.presets import build_model
from curate.models.sampling import CFGCond, cfg_branches, predict_x0, sample

CAPTIONS = [f"a handwritten digit {w}" for w in ("zero", "one", "two", "three", "four", "five")] * 2


def _images(n, res=8, seed=0, channels=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, res, res, generator=g) * 2 - 1


class _Train:
    """The TrainingSet fields build_amg reads."""

    def __init__(self, images, captions=None):
        self.images, self.captions, self.keys = images, captions, None
        self.sample_ids = [f"s{i}" for i in range(len(images))]


@pytest.fixture(scope="module")
def cond_model():
    """A random caption-conditional tiny UNet at 8x8 and its tiny-clip text encoder."""
    bundle = build_model("tiny", channels=1, resolution=8, text_encoder="tiny-clip", seed=1)
    den = DiffusersDenoiser(bundle.unet, bundle.scheduler_config).eval().requires_grad_(False)
    return den, bundle.text_encoder


# ------------------------------------------------------------ classifier-free guidance


class _ConstantDenoiser:
    """Predicts x0 = the conditioning value (B, 1) everywhere, whatever x and sigma are."""

    channels, resolution, sigma_min, sigma_max, conditional, vae = 1, 2, 0.002, 80.0, True, None

    def __call__(self, x, sigma, cond):
        return cond.reshape(-1, 1, 1, 1).expand_as(x).to(x.dtype).clone()


def test_classifier_free_guidance_is_uncond_plus_scale_times_the_difference():
    """CFG (Ho & Salimans): x0 = x0_u + s (x0_c - x0_u), which is the eps combination
    eps_u + s (eps_c - eps_u) at the same (x, sigma); a sampler ends on that x0."""
    den = _ConstantDenoiser()
    c, u, s = torch.tensor([[0.1], [-0.2]]), torch.tensor([[0.05], [0.0]]), 3.0
    x, sigma = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0)), 2.0
    x0 = predict_x0(den, x, sigma, CFGCond(c, u, s))
    expect = (u + s * (c - u)).reshape(2, 1, 1, 1).expand_as(x)
    torch.testing.assert_close(x0, expect)
    eps_u, eps_c = (x - den(x, sigma, u)) / sigma, (x - den(x, sigma, c)) / sigma
    torch.testing.assert_close((x - x0) / sigma, eps_u + s * (eps_c - eps_u))
    out = sample(den, 2, steps=3, method="euler", cond=c, uncond=u, cfg_scale=s, progress=False)
    torch.testing.assert_close(out, expect, atol=1e-4, rtol=0)


# ------------------------------------------------------------- AMG's text guidances


def _one_step(den, enc, cfg, s0=4.0, sigma=2.0, n=3):
    """One AMG step on a conditional model: (amg, x, cond, x0_u, x0_c, x0_new, records)."""
    amg = build_amg(den, _Train(_images(12), CAPTIONS), cfg, text_encoder=enc)
    g = torch.Generator().manual_seed(5)
    x = sigma * torch.randn(n, 1, 8, 8, generator=g)
    cond = CFGCond(enc.encode(CAPTIONS[:n]), enc.encode([""]).expand(n, -1, -1), s0)
    with torch.no_grad():
        x0_u, x0_c = cfg_branches(den, x, sigma, cond)
        x0_new = amg(den, x, sigma, cond, 0, list(range(n)))
    return amg, x, cond, x0_u, x0_c, x0_new, amg.steps_frame()


def _col(steps, name):
    return torch.tensor(steps[name].to_list(), dtype=torch.float32).view(-1, 1, 1, 1)


def test_despecification_lowers_the_text_scale_to_s0_minus_s1(cond_model):
    """G_spe (AMG Eq. 13): x0 = x0_u + (s0 - s1)(x0_c - x0_u), s1 = c1 * s_t > 0."""
    den, enc = cond_model
    s0 = 4.0
    cfg = AMGConfig(features="pixel-cosine", threshold="always", guidances=("spe",),
                    scales=(2.0, 0.0, 0.0))  # fmt: skip
    _, _, _, xu, xc, new, steps = _one_step(den, enc, cfg, s0=s0)
    s1 = _col(steps, "s1")
    assert (s1 > 0).all() and (s1 < s0 - 1).all()
    torch.testing.assert_close(new, xu + (s0 - s1) * (xc - xu), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(new, xu + (s0 + s1) * (xc - xu), atol=1e-5, rtol=1e-5)


def test_caption_deduplication_moves_away_from_the_neighbours_caption(cond_model):
    """G_dup (AMG Eq. 15): x0 = x0_u + s0 (x0_c - x0_u) - s2 (x0_N - x0_u), x0_N conditioned
    on the caption of the nearest training image."""
    den, enc = cond_model
    s0 = 4.0
    cfg = AMGConfig(features="pixel-cosine", threshold="always", guidances=("dup",),
                    scales=(0.0, 2.0, 0.0))  # fmt: skip
    amg, x, _, xu, xc, new, steps = _one_step(den, enc, cfg, s0=s0)
    s2 = _col(steps, "s2")
    assert (s2 > 0).all()
    neighbour = enc.encode([amg.index.caption(i) for i in steps["nn_index"].to_list()])
    with torch.no_grad():
        _, xn = cfg_branches(den, x, 2.0, CFGCond(neighbour))
    torch.testing.assert_close(new, xu + s0 * (xc - xu) - s2 * (xn - xu), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(new, xu + s0 * (xc - xu) + s2 * (xn - xu), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "guidances,used",
    [(("spe",), {"s1"}), (("dup",), {"s2"}), (("sim",), {"grad_norm"}), (("spe", "sim"),
     {"s1", "grad_norm"})],
)  # fmt: skip
def test_amg_guidances_subset_applies_only_the_guidances_named(cond_model, guidances, used):
    """--amg-guidances is a subset: a guidance left out has scale 0 at every step."""
    den, enc = cond_model
    cfg = AMGConfig(features="pixel-cosine", threshold="always", guidances=guidances,
                    scales=(2.0, 2.0, 1.0))  # fmt: skip
    *_, steps = _one_step(den, enc, cfg)
    for name in ("s1", "s2", "grad_norm"):
        if name in used:
            assert (steps[name] > 0).all(), name
        else:
            assert (steps[name] == 0).all(), name


class _Identity:
    """x0_hat = x (differentiable), so a sample's similarity is that of x itself."""

    vae = None

    def __call__(self, x, sigma, cond=None):
        return x * 1.0


def test_amg_gate_is_decided_per_sample_not_per_batch():
    """Only the samples whose similarity exceeds lambda_t are guided; a sample below it in
    the same batch gets its prediction back untouched."""
    train = _images(10, seed=1)
    index = TrainingIndex(train, "pixel-cosine")
    cfg = AMGConfig(features="pixel-cosine", threshold="constant", lambdas=(0.95, 0.95),
                    guidances=("sim",), scales=(0.0, 0.0, 1.0))  # fmt: skip
    amg = AMG(cfg, index)
    near = train[3:4] + 0.1 * torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    x = torch.cat([near, _images(1, seed=7)])  # a near copy, then an unrelated image
    out = amg(_Identity(), x, 1.0, None, 0, [0, 1])
    assert amg.steps_frame()["active"].to_list() == [True, False]
    assert torch.equal(out[1], x[1])
    assert not torch.allclose(out[0], x[0])


def test_amg_samples_do_not_depend_on_the_batch_they_are_drawn_in():
    """Per-sample gating: sampling 6 samples in one batch or one at a time is the same."""
    from curate.audit.oracle import EmpiricalDenoiser

    train = _images(16, seed=2)
    den = EmpiricalDenoiser(train)
    probe = AMG(AMGConfig(features="pixel-cosine", threshold="always", scales=(0, 0, 0)),
                TrainingIndex(train, "pixel-cosine"))  # fmt: skip
    sample(den, 6, steps=4, method="euler", seed=1, progress=False, guidance=probe)
    first = probe.steps_frame().filter(pl.col("step") == 1)["similarity"].to_numpy()
    lam = float(np.median(first))  # half the samples above it at step 1
    cfg = AMGConfig(features="pixel-cosine", threshold="constant", lambdas=(lam, lam),
                    guidances=("sim",), scales=(0.0, 0.0, 3.0))  # fmt: skip

    def run(batch_size):
        amg = AMG(cfg, TrainingIndex(train, "pixel-cosine"))
        x = sample(den, 6, steps=4, method="euler", seed=1, batch_size=batch_size,
                   progress=False, guidance=amg)  # fmt: skip
        return x, amg.steps_frame()

    together, steps = run(6)
    alone, _ = run(1)
    at1 = steps.filter(pl.col("step") == 1)["active"]
    assert at1.any() and not at1.all()  # the gate is mixed inside the batch
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


# -------------------------------------------------------------------------- the CLI

PROMPT = "a handwritten digit"


@pytest.fixture(scope="module")
def amg_cli(tmp_path_factory, digits_runs):
    """A random conditional tiny model folder (1x16x16, tiny-clip) and a digits run whose
    captions are all PROMPT."""
    from curate.models.presets import save_pipeline

    root = tmp_path_factory.mktemp("amg-cli")
    model = root / "model"
    bundle = build_model("tiny", channels=1, resolution=16, text_encoder="tiny-clip", seed=3)
    save_pipeline(model, bundle.unet, bundle.scheduler_config, text_encoder=bundle.text_encoder)
    (model / "curate_train.json").write_text(
        json.dumps({"text_encoder": bundle.text_encoder.spec()})
    )
    run = digits_runs(24)
    table = pl.read_parquet(run / "table.parquet")
    table.with_columns(pl.lit(PROMPT).alias("caption")).write_parquet(run / "table.parquet")
    return model, run, root


def _sample_cli(amg_cli, name, *extra):
    model, run, root = amg_cli
    out = root / name
    args = [str(model), "--num", "3", "--steps", "4", "--seed", "2", "--out", str(out),
            "--quiet", "--prompt", PROMPT, *extra]  # fmt: skip
    if "--amg" in extra:
        args += ["--amg-train", str(run), "--amg-features", "pixel-cosine",
                 "--amg-threshold", "always"]  # fmt: skip
    res = CliRunner().invoke(sample_cmd, args)
    assert res.exit_code == 0, res.output
    pngs = sorted(out.glob("*.png"))
    return out, np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in pngs])


def test_cli_despecification_at_its_cap_is_plain_conditional_sampling(amg_cli):
    """s1 at its cap s0 - 1 leaves the text scale at 1: the conditional prediction, i.e.
    `curate sample` without --guidance-scale (a flipped sign would give 2 s0 - 1)."""
    out, amg = _sample_cli(amg_cli, "spe", "--guidance-scale", "5", "--amg",
                           "--amg-guidances", "spe", "--amg-scales", "1000,0,0")  # fmt: skip
    steps = pl.read_parquet(out / "amg_steps.parquet")
    assert (steps["s1"] == 4.0).all() and (steps["s2"] == 0).all()
    _, plain = _sample_cli(amg_cli, "plain-cond")
    _, cfg5 = _sample_cli(amg_cli, "plain-cfg5", "--guidance-scale", "5")
    assert np.abs(amg - plain).max() <= 1
    assert np.abs(cfg5 - plain).max() > 8  # CFG at 5 is far from it: the check can tell


def test_cli_caption_deduplication_alone_uses_the_whole_room(amg_cli):
    """--amg-guidances dup: s2 = min(c2 s_t, s0 - 1) whatever c1 is; the neighbour's caption
    is the prompt here, so x0 = x0_u + s0 (x0_c - x0_u) - (s0 - 1)(x0_c - x0_u) = x0_c."""
    out, amg = _sample_cli(amg_cli, "dup", "--guidance-scale", "5", "--amg",
                           "--amg-guidances", "dup", "--amg-scales", "1000,1000,0")  # fmt: skip
    steps = pl.read_parquet(out / "amg_steps.parquet")
    assert (steps["s1"] == 0).all() and (steps["s2"] == 4.0).all()
    _, plain = _sample_cli(amg_cli, "plain-cond")
    assert np.abs(amg - plain).max() <= 1


def test_cli_amg_guidances_subset_is_honoured(amg_cli):
    """--amg-guidances sim with c3 = 0 changes nothing: the samples are plain CFG's, byte for
    byte, although c1 and c2 are huge."""
    out, amg = _sample_cli(amg_cli, "sim", "--guidance-scale", "5", "--amg",
                           "--amg-guidances", "sim", "--amg-scales", "1000,1000,0")  # fmt: skip
    assert json.loads((out / "amg.json").read_text())["config"]["guidances"] == ["sim"]
    steps = pl.read_parquet(out / "amg_steps.parquet")
    assert steps["active"].all() and (steps["s1"] == 0).all() and (steps["s2"] == 0).all()
    _, cfg5 = _sample_cli(amg_cli, "plain-cfg5", "--guidance-scale", "5")
    assert np.array_equal(amg, cfg5)
