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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curate.core.embed import ClipEmbedder
from curate.core.images import embed_tensor
from curate.core.weights import CLIP_PRETRAINED
from curate.errors import ModelError

if TYPE_CHECKING:
    import torch


# (flag, recipe key) of the model and of its weights, per use, for the error text
ALIGNMENT_FLAGS = (("--alignment-clip", "alignment_clip"),
                   ("--alignment-pretrained", "alignment_pretrained"))  # fmt: skip
FEATURES_FLAGS = (("--features clip", "features: clip"), ("--features-model", "features_model"))


@lru_cache(maxsize=2)  # a plain-vs-AMG audit loads one model twice
def load_clip(
    model: str,
    pretrained: str | None = CLIP_PRETRAINED,
    device: str = "cpu",
    flags: tuple[tuple[str, str], tuple[str, str]] = ALIGNMENT_FLAGS,
) -> ClipEmbedder:
    """``curate.core.embed.ClipEmbedder(model, pretrained)``, or a one-line ``ModelError``
    naming the model, the weights and how to provide them (``flags``: the command-line flag and
    recipe key of the model and of the weights) when the weights cannot be loaded, e.g.
    offline without them in the cache. open_clip's own error log is kept off the terminal."""
    import logging

    (model_flag, _), (weights_flag, weights_key) = flags
    tag = None if pretrained in (None, "", "none") else str(pretrained)
    provide = (
        f"pass {weights_flag} PATH (recipe: {weights_key}) with a local open_clip checkpoint "
        "file (.pt/.bin/.safetensors)"
    )
    known = _pretrained_tags(model)
    if tag and not Path(tag).expanduser().exists() and known is not None and tag not in known:
        listed = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
        raise ModelError(
            f"CLIP weights {tag!r} for open_clip model {model} ({model_flag}) are neither a "
            f"pretrained tag of {model} (known: {listed or 'none'}) nor an existing file; "
            f"{provide}, or one of its tags"
        )
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)  # open_clip logs the failure itself before raising
    try:
        return ClipEmbedder(model=model, pretrained=pretrained, device=device)
    except ModelError as err:
        cause = err.__cause__
        if cause is None:  # curate's own checks (unknown model, missing file): say which flags
            raise ModelError(f"{model_flag} {model}, {weights_flag} {pretrained}: {err}") from err
        first = str(cause).splitlines()[0] if str(cause) else ""
        reason = f"{type(cause).__name__}: {first.split(': ')[0][:120]}"
        if tag and known and tag in known:
            hub = _hub_repo(model, tag)
            where = (
                f" (not in the local cache, and they cannot be downloaded offline: {reason}); "
                f"{provide}, e.g. the open_clip_pytorch_model.bin of the Hub repository {hub}, "
                "or download them once with network (open_clip caches them under HF_HOME)"
                if hub
                else f" ({reason}); {provide}, or run once with network to cache them"
            )
        else:
            where = f" ({reason}); {provide}"
        raise ModelError(
            f"CLIP weights {pretrained} for open_clip model {model} ({model_flag}) cannot be "
            f"loaded{where}"
        ) from err
    finally:
        logging.disable(previous)


def _pretrained_tags(model: str) -> list[str] | None:
    """open_clip's pretrained tags of ``model`` (None when open_clip is missing, ``model`` is
    not an open_clip model name, or a model-config .json, whose weights can only be a file)."""
    if Path(model).suffix == ".json":
        return None
    try:
        import open_clip
    except ImportError:
        return None
    if model not in open_clip.list_models():
        return None
    return list(open_clip.list_pretrained_tags_by_model(model))


def _hub_repo(model: str, tag: str) -> str | None:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag) or {}
    hub = str(cfg.get("hf_hub") or "").strip("/")
    return hub or None


def clip_scorer(model: str, pretrained: str | None = CLIP_PRETRAINED, device: str = "cpu"):
    """The open_clip model behind the score (``curate.core.embed.ClipEmbedder``): ``model`` a
    name or model-config .json, ``pretrained`` a tag or a local checkpoint; a one-line
    ``ModelError`` naming ``--alignment-clip`` / ``--alignment-pretrained`` when the weights
    are not available (:func:`load_clip`)."""
    return load_clip(model, pretrained, device, ALIGNMENT_FLAGS)


def clip_scores(
    scorer, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 64
) -> np.ndarray:
    """(N,) CLIP scores of images (N, C, H, W) in [-1, 1] against their prompts (row i with i)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    image_feats = embed_tensor(scorer, images, batch_size=batch_size)
    starts = range(0, max(len(prompts), 1), batch_size)  # one (empty) batch for no prompts
    text_feats = np.concatenate([scorer.embed_text(prompts[s : s + batch_size]) for s in starts])
    return 100.0 * np.sum(image_feats * text_feats, axis=1).astype(np.float64)
