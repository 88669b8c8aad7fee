"""Caption rewriting: the copy mitigations of Somepalli et al., "Understanding and Mitigating
Copying in Diffusion Models" (NeurIPS 2023), as one implementation shared by the dataset step,
the trainer and the sampler.

A highly specific or duplicated caption acts as a key that retrieves one training image;
randomizing it is the cheapest mitigation. Strategies (defaults as in the paper's code):

==========  ===================================================================  =====  =====
strategy    what happens to a caption, with probability ``p``                    p      k
==========  ===================================================================  =====  =====
``mc``      multiple captions: draw one of the sample's captions uniformly        1.0    -
``rc``      random caption: replace it with ``k`` random tokens                   0.1    4
``rt``      random token addition: insert ``k`` random tokens at word boundaries  0.1    2
``cwr``     caption word repetition: insert ``k`` of its own words (drawn with    0.1    2
            replacement) at word boundaries
``rna``     random number addition: insert ``k`` integers from [0, 100000) at     1.0    2
            word boundaries (an inference-time mitigation in the paper)
``gn``      Gaussian noise ``lam * N(0, I)`` on the text embedding                 -      -
==========  ===================================================================  =====  =====

The text strategies are ``CaptionTransform`` objects, callables ``(caption, sample_id, epoch)
-> str``: every random choice comes from ``(seed, sample_id, epoch)`` through
``curate.seeding``, so a sample gets the same caption in every run, whatever its batch, and a new
one each epoch. The dataset step uses ``epoch=0``; the trainer passes its epoch; the sampler
passes the prompt's index as ``sample_id``.

``gn`` acts on embeddings, not text: ``gaussian_noise`` and ``gaussian_noise_cfg`` below. Under
classifier-free guidance the unconditional (empty-prompt) embedding is **not** perturbed (see
``gaussian_noise_cfg``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from curate.captions.vocab import (
    Vocabulary,
    default_vocabulary,
    load_vocabulary,
    vocabulary_from_list,
    vocabulary_from_tokenizer,
)
from curate.errors import UsageError
from curate.seeding import rng_for

if TYPE_CHECKING:
    import torch

Strategy = Literal["mc", "rc", "rt", "cwr", "rna"]
STRATEGIES: tuple[str, ...] = ("mc", "rc", "rt", "cwr", "rna")

#: Default ``(p, k)`` per strategy, from the paper's code (``--trainspecial_prob`` 0.1; 4 random
#: tokens for a random caption; 2 inserted tokens or words; inference-time additions always on).
DEFAULTS: dict[str, tuple[float, int]] = {
    "mc": (1.0, 0),
    "rc": (0.1, 4),
    "rt": (0.1, 2),
    "cwr": (0.1, 2),
    "rna": (1.0, 2),
}
RNA_HIGH = 100_000  # random numbers are drawn from [0, RNA_HIGH), as in the paper's code


def check_params(strategy: str, p: float | None, k: int | None) -> list[str]:
    """Problems with a strategy's parameters, as ``"key: message"`` strings (empty when valid)."""
    problems = []
    if strategy not in STRATEGIES:
        problems.append(f"strategy: unknown {strategy!r}, use one of {', '.join(STRATEGIES)}")
    if p is not None and (isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1):
        problems.append(f"p: must be a probability between 0 and 1, got {p!r}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        problems.append(f"k: must be a whole number >= 0, got {k!r}")
    return problems


def resolve_params(strategy: str, p: float | None, k: int | None) -> tuple[float, int]:
    """``(p, k)`` with the strategy's defaults filled in; raises ``UsageError`` when invalid."""
    problems = check_params(strategy, p, k)
    if problems:
        raise UsageError("; ".join(problems))
    default_p, default_k = DEFAULTS[strategy]
    return float(default_p if p is None else p), int(default_k if k is None else k)


# ------------------------------------------------------------------------ the text operations


def insert_at_boundaries(
    words: list[str], items: Sequence[str], rng: np.random.Generator
) -> list[str]:
    """``words`` with each item inserted at a uniformly drawn word boundary (start and end
    included), one after the other, as the paper's ``insert_rand_word``; returns a new list."""
    out = list(words)
    for item in items:
        out.insert(int(rng.integers(0, len(out) + 1)), item)
    return out


def random_caption(rng: np.random.Generator, k: int, vocab: Vocabulary) -> str:
    """``rc``: a caption of ``k`` random tokens."""
    return " ".join(vocab.sample(rng, k))


def add_random_tokens(caption: str, rng: np.random.Generator, k: int, vocab: Vocabulary) -> str:
    """``rt``: ``caption`` with ``k`` random tokens inserted at word boundaries."""
    return " ".join(insert_at_boundaries(caption.split(), vocab.sample(rng, k), rng))


def repeat_words(caption: str, rng: np.random.Generator, k: int) -> str:
    """``cwr``: ``caption`` with ``k`` of its own words (with replacement) inserted at word
    boundaries; an empty caption has no words to repeat and is returned as is."""
    words = caption.split()
    if not words:
        return caption
    picked = [words[i] for i in rng.integers(0, len(words), size=k)]
    return " ".join(insert_at_boundaries(words, picked, rng))


def add_random_numbers(caption: str, rng: np.random.Generator, k: int) -> str:
    """``rna``: ``caption`` with ``k`` integers from ``[0, RNA_HIGH)`` inserted at word boundaries."""
    numbers = [str(int(n)) for n in rng.integers(0, RNA_HIGH, size=k)]
    return " ".join(insert_at_boundaries(caption.split(), numbers, rng))


def pick_caption(captions: Sequence[str], rng: np.random.Generator) -> str:
    """``mc``: one of ``captions``, uniformly."""
    return captions[int(rng.integers(0, len(captions)))]


def distinct_captions(*groups: str | Sequence[str] | None) -> list[str]:
    """Non-empty captions from ``groups`` (strings or lists), first occurrence kept, in order."""
    out: dict[str, None] = {}
    for group in groups:
        if group is None:
            continue
        for text in [group] if isinstance(group, str) else group:
            if text is not None and text.strip():
                out.setdefault(text, None)
    return list(out)


# ------------------------------------------------------------------------------ the transform


def as_vocabulary(vocab: Any) -> Vocabulary:
    """A ``Vocabulary`` from ``None`` (built-in words), a spec string (see ``load_vocabulary``),
    a list of words, a tokenizer (anything with ``get_vocab``) or a ``Vocabulary``."""
    if vocab is None:
        return default_vocabulary()
    if isinstance(vocab, Vocabulary):
        return vocab
    if isinstance(vocab, str):
        return load_vocabulary(vocab)
    if isinstance(vocab, Sequence):
        return vocabulary_from_list(vocab)
    return vocabulary_from_tokenizer(vocab)


@dataclass(frozen=True)
class CaptionTransform:
    """A caption rewriting strategy with its parameters: call it as ``t(caption, sample_id, epoch)``.

    For ``mc`` the candidates are the given caption plus ``captions[sample_id]`` (or, when the
    caption passed in is already a list, that list); a sample without alternatives keeps its
    caption.
    """

    strategy: Strategy
    p: float
    k: int
    seed: int = 0
    vocab: Vocabulary = field(default_factory=default_vocabulary)
    captions: Mapping[str, Sequence[str]] | None = field(default=None, repr=False)

    def __call__(self, caption: str | Sequence[str], sample_id: str, epoch: int = 0) -> str:
        rng = rng_for(self.seed, "captions", self.strategy, sample_id, epoch)
        if self.strategy == "mc":
            extra = self.captions.get(sample_id) if self.captions is not None else None
            pool = distinct_captions(caption, extra)
            first = caption if isinstance(caption, str) else (pool[0] if pool else "")
            # The coin is drawn first whatever the outcome, so p only gates, never shifts, draws.
            if rng.random() >= self.p or len(pool) < 2:
                return first
            return pick_caption(pool, rng)
        if not isinstance(caption, str):
            raise TypeError(f"{self.strategy} rewrites one caption (str), got {type(caption)}")
        if rng.random() >= self.p:
            return caption
        if self.strategy == "rc":
            return random_caption(rng, self.k, self.vocab)
        if self.strategy == "rt":
            return add_random_tokens(caption, rng, self.k, self.vocab)
        if self.strategy == "cwr":
            return repeat_words(caption, rng, self.k)
        return add_random_numbers(caption, rng, self.k)

    def describe(self) -> str:
        """What this transform does, with its parameters, e.g. ``rt(p=0.1, k=2, seed=0, vocab=words)``."""
        if self.strategy == "mc":
            return f"mc(p={self.p:g}, seed={self.seed})"
        if self.strategy in ("rc", "rt"):
            return f"{self.strategy}(p={self.p:g}, k={self.k}, seed={self.seed}, vocab={self.vocab.name})"
        return f"{self.strategy}(p={self.p:g}, k={self.k}, seed={self.seed})"


def make_transform(
    strategy: str,
    p: float | None = None,
    k: int | None = None,
    seed: int = 0,
    vocab: Any = None,
    captions: Mapping[str, Sequence[str]] | None = None,
) -> CaptionTransform:
    """The ``CaptionTransform`` for ``strategy`` (``p``/``k`` default per ``DEFAULTS``).

    ``vocab`` is where ``rc``/``rt`` draw tokens (see ``as_vocabulary``); ``captions`` maps a
    sample id to its alternative captions for ``mc``. Raises ``UsageError`` for an unknown
    strategy, ``p`` outside [0, 1] or a negative ``k``.
    """
    p_, k_ = resolve_params(strategy, p, k)
    voc = as_vocabulary(vocab) if strategy in ("rc", "rt") else default_vocabulary()
    return CaptionTransform(strategy, p_, k_, int(seed), voc, captions)  # type: ignore[arg-type]


# ------------------------------------------------------------------ gn: noise on the embedding


def _check_lam(lam: float) -> None:
    if isinstance(lam, bool) or not isinstance(lam, int | float) or lam < 0:
        raise UsageError(f"gn lam: must be a number >= 0 (the paper suggests 0.1), got {lam!r}")


def gaussian_noise(
    emb: torch.Tensor,
    lam: float,
    generator: torch.Generator | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``gn``: ``emb + lam * N(0, I)`` on every token state, a new tensor.

    ``emb`` is (B, L, D) or (B, D). The noise is drawn on ``generator``'s device in float32 and
    then moved, so a seed gives the same noise on CPU and GPU. ``mask`` (B,) bool leaves the rows
    where it is False unchanged (the trainer passes False for dropped, empty-prompt captions,
    matching ``gaussian_noise_cfg``).
    """
    import torch

    _check_lam(lam)
    if lam == 0:
        return emb.clone()
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(emb.shape, generator=generator, device=gen_device, dtype=torch.float32)
    noise = noise.to(device=emb.device, dtype=emb.dtype)  # emb's shape
    if mask is not None:
        keep = mask.to(device=emb.device, dtype=emb.dtype).reshape(-1, *([1] * (emb.dim() - 1)))
        noise = noise * keep
    return emb + lam * noise


def gaussian_noise_per_sample(
    emb: torch.Tensor,
    lam: float,
    seed: int,
    sample_ids: Sequence[str],
    epoch: int = 0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``gn`` with one noise draw per sample from ``(seed, sample_id, epoch)``: a sample gets the
    same perturbation whatever batch it is in (the trainer's form). Returns a new tensor."""
    from curate.seeding import sample_normal

    _check_lam(lam)
    if len(sample_ids) != emb.shape[0]:
        raise ValueError(f"{len(sample_ids)} sample ids for a batch of {emb.shape[0]}")
    if lam == 0:
        return emb.clone()
    noise = sample_normal(seed, list(sample_ids), tuple(emb.shape[1:]), "gn", epoch)  # emb's shape
    noise = noise.to(device=emb.device, dtype=emb.dtype)
    if mask is not None:
        keep = mask.to(device=emb.device, dtype=emb.dtype).reshape(-1, *([1] * (emb.dim() - 1)))
        noise = noise * keep
    return emb + lam * noise


def gaussian_noise_cfg(
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    lam: float,
    generator: torch.Generator | None = None,
    perturb_uncond: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``gn`` at inference under classifier-free guidance: ``(cond', uncond')``.

    By default only the prompt embedding is perturbed. The guided prediction is
    ``D(uncond) + w * (D(cond) - D(uncond))``, so noise in the unconditional branch enters with
    weight ``1 - w`` (about -6.5 at w = 7.5): amplified and pointing away from the prompt, which is
    not the mitigation. The code of Somepalli et al. ("Understanding and Mitigating Copying in
    Diffusion Models") perturbs both halves only because diffusers' ``_encode_prompt`` returns
    them concatenated; pass ``perturb_uncond=True``
    to reproduce that.
    """
    new_cond = gaussian_noise(cond, lam, generator)
    if uncond is None or not perturb_uncond:
        return new_cond, uncond
    return new_cond, gaussian_noise(uncond, lam, generator)
