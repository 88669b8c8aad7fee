"""Text encoders (offline) and model presets, including a Stable Diffusion fine-tune built in code."""

from __future__ import annotations

import json

import pytest
import torch

from curate.core.text import HashTokenizer, TinyClipEncoder, get_text_encoder
from curate.errors import UsageError
from curate.models.presets import build_model, build_pixel_unet, preset_defaults


def test_hash_tokenizer_is_stable_and_pads():
    tok = HashTokenizer(vocab_size=100, max_length=6)
    ids = tok(["A handwritten digit", "a HANDWRITTEN digit seven eight nine ten"])
    assert ids.shape == (2, 6)
    assert ids[0, 0] == tok.bos_id and ids[0, 4] == tok.eos_id and ids[0, 5] == tok.pad_id
    assert torch.equal(ids[0, 1:4], ids[1, 1:4])  # case-insensitive, same words -> same ids
    assert ids[1, -1] == tok.eos_id  # truncated, still terminated


def test_tiny_clip_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = TinyClipEncoder().encode(["a digit seven", "a digit one"])
    assert torch.equal(torch.random.get_rng_state(), state)
    b = TinyClipEncoder().encode(["a digit seven", "a digit one"])
    assert a.shape == (2, 16, 32)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[0], a[1])


def test_minilm_encoder_loads_offline():
    enc = get_text_encoder("minilm")
    emb = enc.encode(["a handwritten digit seven", "a handwritten digit seven", "a photo"])
    assert emb.shape == (3, 32, 384) and enc.dim == 384
    torch.testing.assert_close(emb[0], emb[1])
    assert not torch.allclose(emb[0], emb[2])


def test_tiny_preset_is_small_attention_free_and_seeded():
    a = build_pixel_unet("tiny", channels=1)
    b = build_pixel_unet("tiny", channels=1)
    n = sum(p.numel() for p in a.parameters())
    assert n < 300_000
    from diffusers.models.attention_processor import Attention

    assert not any(isinstance(m, Attention) for m in a.modules())
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    c = build_pixel_unet("tiny", channels=1, seed=1)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_preset_errors_name_the_flag():
    with pytest.raises(UsageError, match="--model"):
        preset_defaults("huge")
    with pytest.raises(UsageError, match="--resolution"):
        build_pixel_unet("tiny", channels=1, resolution=15)


def _write_clip_tokenizer(folder):
    """A character-level CLIP BPE tokenizer (no merges) written locally: no Hub needed."""
    folder.mkdir(parents=True)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in chars:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!", model_max_length=8
    )
    tok.save_pretrained(str(folder))
    return tok, len(vocab)


@pytest.fixture
def tiny_sd(tmp_path):
    """A Stable Diffusion pipeline folder with tiny random components (built, seeded, saved)."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tok, vocab_size = _write_clip_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=16,
            intermediate_size=20,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=8,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=2,
        )
    )
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(tmp_path / "sd"))
    return tmp_path / "sd"


def test_sd_finetune_trains_saves_and_samples(tiny_sd, tmp_path):
    """sd-finetune:PATH trains the UNet on VAE latents (VP ambient form) and writes an SD pipeline."""
    from diffusers import DiffusionPipeline

    from curate.core.text import text_encoder_for_model
    from curate.models.denoiser import load_denoiser
    from curate.models.sampling import sample
    from curate.train.data import from_tensors
    from curate.train.loop import TrainConfig, train

    bundle = build_model(f"sd-finetune:{tiny_sd}", channels=3)
    assert bundle.latent and bundle.image_resolution == 16 and bundle.text_encoder.dim == 16
    g = torch.Generator().manual_seed(0)
    data = from_tensors(torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, captions=["a b"] * 4)
    cfg = TrainConfig(
        objective="ambient",
        model=f"sd-finetune:{tiny_sd}",
        channels=3,
        conditioning="caption",
        steps=2,
        batch_size=2,
        checkpoint_every=0,
    )
    out = train(data, tmp_path / "out", cfg, quiet=True)
    info = json.loads((out / "curate_train.json").read_text())
    assert info["resolved"]["ambient_form"] == "vp"
    assert type(DiffusionPipeline.from_pretrained(str(out))).__name__ == "StableDiffusionPipeline"
    den = load_denoiser(out)
    assert den.vae is not None and den.conditional and den.image_resolution == 16
    cond = text_encoder_for_model(den).encode(["a b", "c"])
    lat = sample(den, 2, steps=2, cond=cond, progress=False)
    assert lat.shape == (2, 4, 8, 8)
    assert den.decode(lat).shape == (2, 3, 16, 16)
