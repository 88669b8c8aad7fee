"""The settings of a memorization audit (``AuditSettings``, saved in ``audit.json``) and the
definitions of its metrics as the outputs state them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from curate.core.config import config_values, field_problems, setting, setting_keys
from curate.core.weights import CLIP_PRETRAINED
from curate.errors import UsageError

SSCD_THRESHOLD = 0.5  # Somepalli et al. CVPR 2023: a replication if top-1 SSCD similarity > 0.5
COSINE_THRESHOLD = 0.9  # Shah et al. 2025: DINO-style cosine > 0.9
NL2_ALPHA = 0.5
NL2_K = 50
NL2_THRESHOLD = 1.4  # AMG (Chen et al. 2024) flags memorization at l < 1.4
RATIO_THRESHOLD = 1.0 / 3.0

FEATURES = ("pixel", "sscd", "clip")
LOO_QUERIES = 2000  # training images scored by the leave-one-out false-positive check
SAMPLERS = ("ddim", "euler", "heun")  # the Literal of AuditSettings.sampler

DEFINITIONS = {
    "nn_ratio": (
        "|x - NN1| / |x - NN2| in pixel space ([-1, 1], the model's resolution), NN2 being the "
        "second DISTINCT training image (exact duplicates merged first); memorized if < threshold "
        "(Yoon et al. 2023; Gu et al. 2023)."
    ),
    "normalized_l2": (
        "|x - NN1| / (alpha * mean |x - z| over the k nearest distinct training images z, NN1 "
        "included) in pixel space; memorized if < threshold (Carlini et al. 2023, as in AMG)."
    ),
    "similarity": (
        "cosine similarity of L2-normalised features between each generation and its nearest "
        "training image (top-1); a copy if > threshold (SSCD 0.5: Somepalli et al. 2023; "
        "DINO-style cosine 0.9: Shah et al. 2025). p95 is the dataset similarity score."
    ),
    "train_leave_one_out_fraction": (
        "the same test applied to each distinct training image against the other distinct "
        "training images: how often the metric flags an image that is near, but not in, the "
        "training set (a false-positive check from the training data alone)."
    ),
    "text_alignment": (
        "CLIP score: 100 * cosine between each generation and its prompt under the named open_clip "
        "model (text-conditional models; higher = closer to the prompt; comparable only under "
        "one CLIP model)."
    ),
    "frechet": (
        "Fréchet distance between Gaussians fitted to features of the generations and of the "
        "reference images (the training set unless 'reference' says otherwise); NOT an FID (no "
        "Inception network), comparable only within one name and reference."
    ),
}


@dataclass(frozen=True)
class AuditSettings:
    """Everything that decides an audit's numbers; saved in ``audit.json``. Each setting is
    declared once here (help and range in its field metadata, ``curate.core.config``):
    :class:`AuditConfig` adds what the audit job needs to find the model and its data."""

    num_samples: int = setting(256, "Generations to audit.", min=2)
    features: Literal["pixel", "sscd", "clip"] = setting(
        "pixel",
        "Feature space of the top-1 similarity (pixel-space ratio and normalised L2 are always "
        "computed).",
    )
    steps: int = setting(50, "Sampler steps.", min=1)
    # None: ddim when the model has discrete timesteps (diffusers models), else euler (oracle)
    sampler: Literal["ddim", "euler", "heun"] | None = setting(
        None, "Deterministic sampler [default: ddim for a model, euler for oracle: true]."
    )
    seed: int = setting(0, "Random seed.")
    batch_size: int = setting(64, "Sampling batch.", min=1)
    k: int = setting(
        NL2_K, "Nearest distinct training images in normalised L2's denominator.", min=2
    )
    alpha: float = setting(
        NL2_ALPHA, "Scale of normalised L2's neighbour mean.", min=0, min_open=True
    )
    nl2_threshold: float = setting(
        NL2_THRESHOLD, "Normalised L2 below which a generation is memorized.", min=0
    )
    ratio_threshold: float = setting(
        RATIO_THRESHOLD, "NN1/NN2 ratio below which a generation is memorized.", min=0
    )
    sim_threshold: float | None = setting(
        None,
        "Top-1 similarity above which a generation is a copy [default: 0.5 for sscd, else 0.9].",
    )
    features_model: str | None = setting(
        None,
        "Weights of the features (an SSCD model file for sscd, an open_clip checkpoint for clip).",
    )
    dup_eps: float = setting(
        0.0, "Training images closer than this pixel L2 distance count as one image for NN2.", min=0
    )
    fd_features: Literal["pixel", "randconv"] = setting(
        "pixel", "Feature space of the Fréchet distance (offline; named in the output, not FID)."
    )
    fd_max_side: int = setting(
        16, "Images are resized to at most this side for the Fréchet distance.", min=1
    )
    alignment_clip: str | None = setting(
        None,
        "open_clip model (name or model-config .json) scoring text alignment of a "
        "text-conditional model's generations (CLIP score vs the prompt) [default: not measured].",
    )
    alignment_pretrained: str | None = setting(
        CLIP_PRETRAINED, "Weights of alignment_clip (an open_clip tag or a local checkpoint file)."
    )

    def problems(self) -> list[str]:
        """Every problem with these settings, as ``"key: message"`` strings (empty when valid)."""
        return field_problems(self, only=setting_keys(AuditSettings))

    def validate(self) -> None:
        """Raise ``UsageError`` naming the config key of every bad value."""
        problems = self.problems()
        if problems:
            raise UsageError("; ".join(problems))

    def settings(self) -> AuditSettings:
        """The ``AuditSettings`` part (what ``audit.json`` records)."""
        return AuditSettings(**config_values(self, AuditSettings))

    @property
    def similarity_threshold(self) -> float:
        if self.sim_threshold is not None:
            return self.sim_threshold
        return SSCD_THRESHOLD if self.features == "sscd" else COSINE_THRESHOLD


@dataclass(frozen=True)
class AuditConfig(AuditSettings):
    """Every setting of an audit job (``curate.audit.job.audit_job``): the scoring settings and
    where the model and the reference images come from. ``curate audit`` builds its options from
    these fields (the model is its MODEL_DIR argument), and the ``audit`` recipe step inherits
    them. Anti-memorization guidance is set apart (``--amg-*`` flags, the step's ``amg``)."""

    model: str | None = setting(
        None,
        "Model folder (a diffusers pipeline from curate train), or a model shipped with curate.",
        metavar="MODEL_DIR",
    )
    oracle: bool = setting(
        False,
        "Audit the closed-form empirical denoiser of the training set instead of a model (a "
        "perfect memorizer: calibrates the metrics on your data). No model.",
    )
    resolution: int | None = setting(
        None,
        "Size training images are resized to (default: the model's; with oracle: true, the "
        "images' own size).",
        min=1,
    )
    text_encoder: str | None = setting(
        None,
        "Text encoder of a text-conditional model (minilm, tiny-clip, or an id/path) [default: "
        "the one in the model's training config]. Prompts are the training captions.",
    )
    guidance_scale: float = setting(
        1.0,
        "Classifier-free guidance scale s0 of a text-conditional model (1: none; the model "
        "needs caption dropout in training).",
        min=1.0,
    )
    fd_reference: str | None = setting(
        None,
        "Run folder of reference images for the Fréchet distance, e.g. held-out data [default: "
        "the training set].",
        metavar="RUN_DIR",
        folder=True,
    )

    def problems(self) -> list[str]:
        return field_problems(self, only=setting_keys(AuditConfig))
