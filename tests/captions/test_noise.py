"""gn: Gaussian noise on text embeddings, seeded, maskable, and CFG-aware."""

from __future__ import annotations

import pytest
import torch

from curate.captions.transforms import (
    gaussian_noise,
    gaussian_noise_cfg,
    gaussian_noise_per_sample,
)
from curate.errors import UsageError


def _emb(b: int = 4) -> torch.Tensor:
    return torch.linspace(-1, 1, b * 6 * 8).reshape(b, 6, 8)  # (B, L, D)


def test_lam_zero_is_the_identity_and_returns_a_copy():
    emb = _emb()
    out = gaussian_noise(emb, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(out, emb) and out is not emb


def test_noise_scale_is_lam_and_input_is_untouched():
    emb = torch.zeros(64, 77, 32)
    before = emb.clone()
    out = gaussian_noise(emb, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(emb, before)
    assert out.shape == emb.shape
    assert abs(out.std().item() - 0.1) < 0.005 and abs(out.mean().item()) < 0.005


def test_same_generator_seed_gives_the_same_noise():
    a = gaussian_noise(_emb(), 0.5, torch.Generator().manual_seed(7))
    b = gaussian_noise(_emb(), 0.5, torch.Generator().manual_seed(7))
    c = gaussian_noise(_emb(), 0.5, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mask_leaves_unmasked_rows_unchanged():
    emb = _emb()
    mask = torch.tensor([True, False, True, False])
    out = gaussian_noise(emb, 1.0, torch.Generator().manual_seed(0), mask=mask)
    assert torch.equal(out[1], emb[1]) and torch.equal(out[3], emb[3])
    assert not torch.equal(out[0], emb[0])


def test_per_sample_noise_does_not_depend_on_the_batch():
    emb = torch.zeros(3, 5, 4)
    ids = ["a", "b", "c"]
    full = gaussian_noise_per_sample(emb, 0.3, seed=1, sample_ids=ids, epoch=2)
    alone = gaussian_noise_per_sample(emb[1:2], 0.3, seed=1, sample_ids=["b"], epoch=2)
    assert torch.equal(full[1], alone[0])
    next_epoch = gaussian_noise_per_sample(emb, 0.3, seed=1, sample_ids=ids, epoch=3)
    assert not torch.equal(full, next_epoch)


def test_cfg_leaves_the_unconditional_embedding_clean_by_default():
    cond, uncond = _emb(2), torch.zeros(2, 6, 8)
    new_cond, new_uncond = gaussian_noise_cfg(cond, uncond, 0.2, torch.Generator().manual_seed(0))
    assert new_uncond is uncond
    assert not torch.equal(new_cond, cond)
    _, noisy_uncond = gaussian_noise_cfg(
        cond, uncond, 0.2, torch.Generator().manual_seed(0), perturb_uncond=True
    )
    assert not torch.equal(noisy_uncond, uncond)


@pytest.mark.parametrize("lam", [-0.1, "0.1"])
def test_bad_lam_is_a_usage_error(lam):
    with pytest.raises(UsageError, match="gn lam: must be a number >= 0"):
        gaussian_noise(_emb(), lam)
