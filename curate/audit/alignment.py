"""Text alignment of a text-conditional model's generations: the CLIP score.

CLIP score = 100 * cos(image embedding, prompt embedding) under an open_clip model with both
towers (Hessel et al. 2021 without the clipping at 0, so a mean over samples stays unbiased).
It is what the memorization papers report beside the copy rate to show that a mitigation keeps
the generations on the prompt. Comparable only under one CLIP model: the model is named in every
output.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

DEFAULT_PRETRAINED = "laion2b_s34b_b79k"


@lru_cache(maxsize=2)  # a plain-vs-AMG audit scores twice with one model
def clip_scorer(model: str, pretrained: str | None = DEFAULT_PRETRAINED, device: str = "cpu"):
    """The open_clip model behind the score (``curate.dedup.embed.ClipEmbedder``): ``model`` a
    name or model-config .json, ``pretrained`` a tag or a local checkpoint; a clear
    ``ModelError`` when the weights are not available."""
    from curate.dedup.embed import ClipEmbedder

    return ClipEmbedder(model=model, pretrained=pretrained, device=device)


def clip_scores(
    scorer, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 64
) -> np.ndarray:
    """(N,) CLIP scores of images (N, C, H, W) in [-1, 1] against their prompts (row i with i)."""
    from curate.audit.audit import embed

    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    image_feats = embed(scorer, images, batch_size=batch_size)
    starts = range(0, max(len(prompts), 1), batch_size)  # one (empty) batch for no prompts
    text_feats = np.concatenate([scorer.embed_text(prompts[s : s + batch_size]) for s in starts])
    return 100.0 * np.sum(image_feats * text_feats, axis=1).astype(np.float64)
