"""``RankConfig``: every setting of a ranking job, declared once.

``curate rank`` builds its options from these fields (``curate.cli.options``) and the ``rank``
recipe step inherits them; the ranking itself is ``curate.rank.job.rank_job``, which the step
runs, and ``curate rank`` runs the step (``curate.steps.rank.rank_run``: one process, ``--shard``
or torchrun). Problems are named by config key
(``radius: must be > 0``); the CLI turns keys into flags. Standard library only at module level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from curate.core.config import field_problems, setting, setting_keys


@dataclass(frozen=True)
class RankConfig:
    """Volume-growth ranking settings (the estimator's, the model's and the marking's)."""

    model: str = setting(
        "digits-tiny",
        "A diffusers pipeline folder, a model shipped with curate, or a Hub id.",
        metavar="MODEL_ID_OR_DIR",
    )
    estimator: Literal["fd", "jvp", "frame"] = setting(
        "fd",
        "fd: one axis, one step, finite difference (cheap); jvp: the same, exact; frame: K axes "
        "x M steps.",
    )
    axes: int = setting(1, "K, frame estimator only.", min=1)
    ode_steps: int = setting(1, "M, frame estimator only.", min=1)
    radius: float = setting(0.05, "Offset radius r in [-1, 1] pixel units.", min=0, min_open=True)
    t_start: float = setting(
        1e-3,
        "Start of the ODE walk, as a fraction of the schedule.",
        min=0,
        max=1,
        min_open=True,
        max_open=True,
    )
    flip: bool = setting(False, "Average with the horizontally flipped image.")
    condition: Literal["none", "caption"] = setting(
        "none",
        "caption: condition on each sample's caption and report the gap to the empty prompt.",
    )
    text_encoder: str | None = setting(
        None,
        "Text encoder for condition: caption [default: the one in the model's training config].",
    )
    batch_size: int = setting(64, "Images per forward pass.", min=1)
    shard_size: int = setting(
        1024, "Rows per checkpointed chunk of scores (a rerun resumes from the last).", min=1
    )
    flag_top_fraction: float | None = setting(
        None,
        "Set rank_flag on this fraction of the samples with the highest scores.",
        min=0,
        max=1,
        min_open=True,
    )
    drop_top_fraction: float | None = setting(
        None,
        "Mark this fraction for removal (rank_drop): drops the rows the model reproduces most "
        "easily (most clearly seen in training). The score separates training images from "
        "unseen ones (AUC 0.999); it does not predict which images the model will copy "
        "(copied vs not-copied AUC 0.41, reports/rank/).",
        min=0,
        max=1,
        min_open=True,
    )

    def vgr_config(self, seed: int):
        from curate.rank.vgr import VGRConfig

        return VGRConfig(
            estimator=self.estimator, axes=self.axes, ode_steps=self.ode_steps, radius=self.radius,
            t_start=self.t_start, flip=self.flip, seed=seed,
        )  # fmt: skip

    def problems(self) -> list[str]:
        """Every problem with these settings, as ``"key: message"`` strings (empty when valid)."""
        out = field_problems(self, only=setting_keys(RankConfig))
        out += [p for p in self.vgr_config(0).validate() if p not in out and p.startswith("axes/")]
        return out
