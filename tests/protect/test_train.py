"""Protects what training does with its settings, by what it trains on (its losses): the per-sample
``sigma_n_column`` (command, step and job), the ambient loss's VP form for latent models, the
fixed ambient noise on the per-batch path, resuming only unchanged noise levels, caption dropout
and embedding noise that leaves dropped captions clean."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

from curate.cli.model import train as train_cmd
from curate.train import loop as loop_mod
from curate.train.config import TrainConfig
from curate.train.data import from_tensors
from curate.train.loop import Trainer, train
from curate.train.loss import ambient_loss

BASE = dict(model="tiny", resolution=8, batch_size=4, steps=2, checkpoint_every=0, lr=1e-3,
            log_every=1)  # fmt: skip


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**BASE, **kw})


@pytest.fixture(scope="module")
def digits8():
    """16 real 8x8 digits in [-1, 1] with their captions."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:16].astype(np.float32) / 8 - 1)[:, None]
    return x, [f"a handwritten digit {t}" for t in d.target[:16]]


def _losses(model_dir) -> list:
    return json.loads((model_dir / "curate_train.json").read_text())["result"]["losses"]


# ------------------------------------------------------------------ sigma_n_column

SIGMA_COL = 3.0  # every row's noise level in the column; the global sigma_n stays 0.5


@pytest.fixture(scope="module")
def risk_run(digits_runs, tmp_path_factory):
    """A digits run with a per-sample noise column, and the losses of two reference runs:
    global sigma_n = SIGMA_COL (what the column asks for) and the global 0.5 (no column)."""
    run = digits_runs(16)
    table = pl.read_parquet(run / "table.parquet")
    table.with_columns(pl.lit(SIGMA_COL).alias("risk_sigma")).write_parquet(run / "table.parquet")
    root = tmp_path_factory.mktemp("sigma-col")
    from curate.train.job import train_job

    ref = {}
    for sigma_n in (SIGMA_COL, 0.5):
        out = root / f"ref-{sigma_n}"
        train_job(run, out, _cfg(objective="ambient", sigma_n=sigma_n), quiet=True)
        ref[sigma_n] = _losses(out)
    assert ref[SIGMA_COL] != ref[0.5]
    return run, ref


def test_train_command_uses_the_sigma_n_column(risk_run, tmp_path):
    """`curate train --sigma-n-column COL` trains each row at its column's noise level."""
    run, ref = risk_run
    args = ["--dataset", run, "--out", tmp_path / "m", "--objective", "ambient", "--sigma-n", 0.5,
            "--sigma-n-column", "risk_sigma", "-q"]  # fmt: skip
    args += [a for k, v in BASE.items() for a in (f"--{k.replace('_', '-')}", v)]
    res = CliRunner().invoke(train_cmd, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    assert _losses(tmp_path / "m") == ref[SIGMA_COL]


def test_train_step_uses_the_sigma_n_column(risk_run, tmp_path):
    """The `train` recipe step with sigma_n_column trains at the column's noise levels."""
    from curate.steps.base import RunContext
    from curate.steps.train import Train

    run, ref = risk_run
    mine = tmp_path / "run"
    shutil.copytree(run, mine)
    step = Train(**BASE, objective="ambient", sigma_n=0.5, sigma_n_column="risk_sigma",
                 out="m", report_samples=2)  # fmt: skip
    assert step.validate() == []
    table = pl.read_parquet(mine / "table.parquet")
    step.compute(table, RunContext(run_dir=mine, seed=0, quiet=True))
    assert _losses(mine / "m") == ref[SIGMA_COL]


# ------------------------------------------------------------------- ambient VP form


class _Linear:
    """x0_hat = a * x_in (a fixed linear denoiser), native weight 1."""

    def __call__(self, x, sigma, cond=None):
        return 0.6 * x

    def loss_weight(self, sigma):
        return torch.ones_like(sigma)


def test_vp_ambient_loss_is_the_ve_loss_measured_on_vp_scaled_data():
    """form="vp" (latent models): the same input and minimiser, the error on VP-scaled data,
    i.e. the VE ambient error / (1 + sigma_n^2); below sigma_n both are the clean loss."""
    g = torch.Generator().manual_seed(0)
    x0, eta, eps = (torch.randn(6, 1, 4, 4, generator=g) for _ in range(3))
    sigma = torch.tensor([0.2, 0.8, 1.5, 3.0, 6.0, 0.4])
    sn = torch.full((6,), 0.7)
    ve = ambient_loss(_Linear(), x0, sigma, eta, sn, eps, form="ve")
    vp = ambient_loss(_Linear(), x0, sigma, eta, sn, eps, form="vp")
    amb = sigma >= sn
    torch.testing.assert_close(vp[amb] * (1 + 0.7**2), ve[amb], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(vp[~amb], ve[~amb])


def _tiny_sd(folder):
    """A Stable Diffusion pipeline folder with tiny random parts (local tokenizer, no Hub)."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok_dir = folder / "tok"
    tok_dir.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), pad_token="!",
                        model_max_length=8)  # fmt: skip
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        attention_head_dim=2, norm_num_groups=4,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=4,
    )  # fmt: skip
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=20, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
        pad_token_id=2,
    ))  # fmt: skip
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(str(folder / "sd"))  # fmt: skip
    return folder / "sd"


def test_a_latent_model_trains_with_the_vp_ambient_loss_by_default(tmp_path):
    """ambient_form auto is vp for a latent (sd-finetune) model: its losses are the vp form's,
    not the ve form's."""
    sd = _tiny_sd(tmp_path)
    g = torch.Generator().manual_seed(0)
    data = from_tensors(torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, captions=["a b"] * 4)

    def loss(form):
        cfg = TrainConfig(objective="ambient", sigma_n=0.5, ambient_form=form, channels=3,
                          model=f"sd-finetune:{sd}", conditioning="caption", steps=1,
                          batch_size=4, checkpoint_every=0)  # fmt: skip
        with torch.no_grad():
            return Trainer(data, cfg, quiet=True).micro_loss(0)

    auto, vp, ve = loss("auto"), loss("vp"), loss("ve")
    torch.testing.assert_close(auto, vp)
    assert not torch.allclose(auto, ve)


# ------------------------------------------------------------ fixed ambient noise


def test_fixed_ambient_noise_drawn_per_batch_is_the_same_every_epoch(monkeypatch, digits8):
    """A dataset too large to hold its ambient noise draws it per batch from (seed, sample id):
    every epoch trains on the same noisy copies as the preloaded path does."""
    x, _ = digits8
    data = from_tensors(x[:4])  # batch 4: one epoch per step
    cfg = _cfg(objective="ambient", sigma_n=0.05)  # nearly every timestep is ambient

    def epoch_losses():
        tr = Trainer(data, cfg, quiet=True)
        out = []
        with torch.no_grad():
            for epoch in range(3):
                tr.step = epoch
                out.append(tr.micro_loss(0))
        return torch.stack(out)

    preloaded = epoch_losses()
    monkeypatch.setattr(loop_mod, "PRELOAD_NOISE_NUMEL", 0)
    per_batch = epoch_losses()
    torch.testing.assert_close(per_batch, preloaded, rtol=0, atol=0)


# --------------------------------------------------------------------------- resume


def test_auto_resume_starts_over_when_sigma_n_changed(tmp_path, digits8):
    """sigma_n decides the noisy copies: the recipe step's resume="auto" continues a checkpoint
    only at the same noise level and otherwise trains from scratch."""
    x, _ = digits8
    data = from_tensors(x)
    base = dict(objective="ambient", sigma_n=0.5, checkpoint_every=1, keep_checkpoints=5)
    old = _losses(train(data, tmp_path / "m", _cfg(**base), quiet=True))

    def rerun(**kw):
        out = train(data, tmp_path / "m", _cfg(**{**base, **kw, "steps": 3}), resume="auto",
                    overwrite=True, quiet=True)  # fmt: skip
        return _losses(out)

    changed = rerun(sigma_n=1.0)
    assert len(changed) == 3 and changed[0] != old[0]  # started over
    assert rerun(sigma_n=1.0)[:3] == changed  # and the same settings continue


def test_train_command_refuses_to_resume_at_another_sigma_n(tmp_path, digits_runs):
    run = digits_runs(8)
    args = ["--dataset", run, "--out", tmp_path / "m", "--resolution", 8, "--batch-size", 4,
            "--objective", "ambient", "--checkpoint-every", 1, "-q"]  # fmt: skip
    assert CliRunner().invoke(train_cmd, [str(a) for a in [*args, "--steps", 1]]).exit_code == 0
    res = CliRunner().invoke(
        train_cmd, [str(a) for a in [*args, "--steps", 2, "--sigma-n", 1.0, "--resume"]]
    )
    assert res.exit_code == 2 and "--sigma-n" in res.output, res.output


# ------------------------------------------------------------------------ captions

DROP_ALL = 0.999999  # caption_dropout must stay below 1; this drops all of these draws


def _caption_loss(x, captions, **kw):
    cfg = _cfg(conditioning="caption", text_encoder="tiny-clip", batch_size=8, **kw)
    with torch.no_grad():
        return Trainer(from_tensors(x[:8], captions=captions[:8]), cfg, quiet=True).micro_loss(0)


def test_caption_dropout_trains_on_the_empty_caption(digits8):
    """caption_dropout -> 1 is training on the empty caption: the losses of a data set whose
    captions are all empty."""
    x, caps = digits8
    dropped = _caption_loss(x, caps, caption_dropout=DROP_ALL)
    torch.testing.assert_close(dropped, _caption_loss(x, [""] * 8), rtol=0, atol=0)
    assert not torch.allclose(_caption_loss(x, caps), dropped)


def test_embedding_noise_leaves_dropped_captions_clean(digits8):
    """gn perturbs caption embeddings but a dropped caption is the unconditional one, exact."""
    x, caps = digits8
    noisy = _caption_loss(x, caps, caption_dropout=DROP_ALL, embedding_noise=1.0)
    clean = _caption_loss(x, caps, caption_dropout=DROP_ALL)
    torch.testing.assert_close(noisy, clean, rtol=0, atol=0)
    # and on kept captions the noise does act
    assert not torch.allclose(_caption_loss(x, caps, embedding_noise=1.0), _caption_loss(x, caps))
