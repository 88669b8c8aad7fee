"""``TrainConfig``: every training setting, declared once.

Each field carries its help text (and, where it has one, its range or metavar) in
``dataclasses.field(metadata=...)``. The ``curate train`` command builds its options from these
fields (``curate.cli.options``), the ``train`` recipe step inherits them, and the trainer reads
them; no other place lists them. Problems are reported by config key (``sigma_n: must be >= 0``);
the CLI turns keys into flags.

Imports nothing heavy at module level: the CLI imports it to build ``--help``.

Fields are declared with ``curate.core.config.setting`` (its docstring lists the metadata keys).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from curate.core.config import field_problems, setting, unwrap_optional
from curate.errors import UsageError

__all__ = ["RESUME_KEYS", "TrainConfig", "field_problems", "setting", "unwrap_optional"]


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (saved, resolved, as ``curate_train.json``'s ``config``)."""

    objective: Literal["ddpm", "ambient"] = setting(
        "ddpm",
        "ddpm: the standard loss; ambient: the loss on fixed noisy copies above sigma_n "
        "(Shah et al. 2025).",
    )
    sigma_n: float = setting(
        0.5, "Ambient noise level (VE units of the model input, images in [-1, 1]).", min=0
    )
    ambient_noise: Literal["fixed", "redraw", "weight_only"] = setting(
        "fixed",
        "fixed: one noisy copy per sample (the method); redraw: new noise each epoch "
        "(a control that breaks it); weight_only: clean images with the ambient branch's loss "
        "weight above sigma_n, no noisy copies (a control for the weighting alone).",
    )
    ambient_weight: Literal["paper", "corrected"] = setting(
        "paper",
        "paper: the ambient loss as published, whose weight on the denoiser's error falls to 0 "
        "as sigma nears sigma_n; corrected: that weight divided out (floored at 0.05).",
    )
    ambient_form: Literal["auto", "ve", "vp"] = setting(
        "auto", "Coordinates of the ambient loss; auto: vp for latent models, ve otherwise."
    )
    sigma_n_column: str | None = setting(
        None,
        "Table column with a per-sample noise level (null rows use sigma_n).",
        metavar="COL",
    )
    noisy_only_column: str | None = setting(
        None,
        "Boolean table column: true rows are only ever seen as noisy copies.",
        metavar="COL",
    )
    model: str = setting(
        "tiny",
        "Model preset, or sd-finetune:ID to fine-tune a Stable Diffusion UNet on VAE latents.",
        metavar="tiny|unet-32|unet-64|sd-finetune:ID",
    )
    resolution: int | None = setting(
        None, "Training image size (default: the preset's: tiny 16, unet-32 32, unet-64 64).", min=4
    )
    channels: Literal[1, 3] | None = setting(
        None, "1 = grey, 3 = RGB (default: 1 for tiny, 3 otherwise)."
    )
    conditioning: Literal["none", "caption"] = setting(
        "none", "Unconditional, or conditioned on captions through a frozen text encoder."
    )
    text_encoder: str = setting(
        "minilm",
        "Frozen text encoder for conditioning: caption (pixel presets).",
        metavar="minilm|tiny-clip|ID",
    )
    caption_transform: str | None = setting(
        None,
        "Rewrite captions at each use (a curate.captions strategy; needs conditioning: caption).",
        metavar="mc|rc|rt|cwr|rna",
    )
    caption_p: float | None = setting(
        None, "Probability for caption_transform (default: the strategy's).", min=0, max=1
    )
    caption_dropout: float = setting(
        0.0, "Probability of training on the empty caption.", min=0, max=1, max_open=True
    )
    embedding_noise: float = setting(
        0.0,
        "gn: add lambda * N(0, I) to each caption embedding, redrawn at every use (dropped "
        "captions stay clean).",
        min=0,
    )
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = setting(
        "epsilon", "What the network predicts (new pixel models only)."
    )
    steps: int = setting(2000, "Optimizer steps.", min=0)
    batch_size: int = setting(64, "Per-device batch size.", min=1)
    grad_accum: int = setting(1, "Gradient accumulation steps.", min=1)
    lr: float | None = setting(None, "Learning rate (default: the preset's).", min=0)
    warmup_steps: int = setting(0, "Linear learning-rate warm-up steps.", min=0)
    weight_decay: float = setting(0.0, "AdamW weight decay.", min=0)
    grad_clip: float = setting(1.0, "Clip the gradient norm to this (0: no clipping).", min=0)
    ema_decay: float = setting(
        0.999, "EMA decay of the saved weights (0 disables).", min=0, max=1, max_open=True
    )
    checkpoint_every: int = setting(
        1000, "Checkpoint every K steps (0: none, so no resume).", min=0
    )
    keep_checkpoints: int = setting(2, "How many of the newest checkpoints to keep.", min=1)
    mixed_precision: Literal["auto", "no", "bf16"] = setting(
        "auto", "auto: bf16 autocast on CUDA, never on CPU."
    )
    seed: int = setting(0, "Random seed.")
    log_every: int = setting(25, "Record the mean loss every K steps.", min=1)

    def problems(self) -> list[str]:
        """Every problem with these settings, as ``"key: message"`` strings (empty when valid)."""
        out = field_problems(self)
        if self.objective == "ddpm" and (self.sigma_n_column or self.noisy_only_column):
            out.append("sigma_n_column/noisy_only_column: need objective: ambient")
        if self.ambient_noise == "weight_only" and self.ambient_weight == "corrected":
            out.append(
                "ambient_weight: corrected divides out the weight that ambient_noise: "
                "weight_only applies; use one of them"
            )
        if self.caption_transform:
            if self.conditioning != "caption":
                out.append("caption_transform: needs conditioning: caption")
            from curate.captions.transforms import check_params

            for problem in check_params(self.caption_transform, self.caption_p, None):
                key, _, msg = problem.partition(": ")
                key = {"strategy": "caption_transform", "p": "caption_p"}.get(key, key)
                out.append(f"{key}: {msg}")
        if isinstance(self.model, str):
            from curate.models.presets import PIXEL_PRESETS, SD_PREFIX

            if self.model not in PIXEL_PRESETS and not self.model.startswith(SD_PREFIX):
                out.append(
                    f"model: {self.model!r} is not one of {', '.join(PIXEL_PRESETS)} or "
                    f"{SD_PREFIX}ID"
                )
        return out

    def check(self) -> None:
        """Raise ``UsageError`` with every problem (see :meth:`problems`)."""
        problems = self.problems()
        if problems:
            raise UsageError("; ".join(problems))

    def with_default_channels(self) -> TrainConfig:
        """``channels`` filled in as the CLI and the step load data: 1 for tiny, 3 otherwise."""
        if self.channels is not None:
            return self
        return dataclasses.replace(self, channels=1 if self.model == "tiny" else 3)


# config keys that must match when resuming (the others may change, e.g. steps)
RESUME_KEYS = (
    "objective",
    "sigma_n",
    "ambient_noise",
    "ambient_weight",
    "ambient_form",
    "model",
    "resolution",
    "channels",
    "conditioning",
    "text_encoder",
    "prediction_type",
    "batch_size",
    "grad_accum",
    "seed",
    "sigma_n_column",
    "noisy_only_column",
)
