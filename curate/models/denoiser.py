"""One denoiser interface over diffusers UNets: ``D(x, sigma, cond) -> x0_hat``.

Everything about noise schedules lives in this file. The rest of curate (trainer, sampler,
audit, ranker, guidance) speaks the VE/EDM parameterisation of Karras et al. 2022 through the
:class:`Denoiser` protocol (:class:`DiffusersDenoiser` is its implementation):

    x = x0 + sigma * eps,   D(x, sigma) ~ E[x0 | x],   score = (D - x) / sigma^2

while diffusers UNets are discrete-time VP models trained on x_t = sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps. The two meet through

    sigma = sqrt((1 - abar) / abar),   x_vp = x / sqrt(1 + sigma^2)

and the network output (eps, v or x0, per the scheduler's ``prediction_type``) is turned into x0.
Callers that need schedule quantities (the VP form of the ambient loss, the volume-growth
rate's VP probability-flow ODE, AMG's threshold schedule) take them from the functions here.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from curate.errors import ModelError
from curate.io.load import plausible_hub_id

PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

# ---------------------------------------------------------------------------------------------
# Conversions (pure functions on tensors; sigma broadcasts against x from the left)
# ---------------------------------------------------------------------------------------------


def broadcast_sigma(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` (B,) or scalar, reshaped to broadcast over ``x`` (B, ...)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def sigma_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """VE noise level of a VP marginal: ``sqrt((1 - abar) / abar)``."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def alpha_bar_from_sigma(sigma: torch.Tensor | float) -> torch.Tensor | float:
    """Inverse of :func:`sigma_from_alpha_bar`: ``1 / (1 + sigma^2)`` (tensor or float)."""
    return 1.0 / (1.0 + sigma * sigma)  # for tensors the same bits as sigma**2


def betas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """The discrete betas of a schedule, ``beta_i = 1 - abar_i / abar_{i-1}`` (abar_{-1} = 1)."""
    return 1 - alpha_bar / torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])


def vp_std_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """The VP noise std ``sqrt(1 - abar)``."""
    return (1 - alpha_bar).sqrt()


def vp_std_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """The VP noise std ``s = sqrt(1 - abar) = sigma / sqrt(1 + sigma^2)``."""
    return sigma / (1 + sigma**2).sqrt()


def sigma_from_vp_std(s: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`vp_std_from_sigma`: ``s / sqrt(1 - s^2)``."""
    return s / (1 - s**2).sqrt()


def ve_scale(sigma: float) -> float:
    """``sqrt(1 + sigma^2)`` for a float noise level (in float64): ``x_ve = ve_scale * x_vp``."""
    return (1 + sigma**2) ** 0.5


def ve_to_vp(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x0 + sigma eps`` -> ``sqrt(abar) x0 + sqrt(1 - abar) eps``."""
    return x / (1 + broadcast_sigma(sigma, x) ** 2).sqrt()


def vp_to_ve(x_vp: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`ve_to_vp`."""
    return x_vp * (1 + broadcast_sigma(sigma, x_vp) ** 2).sqrt()


def output_to_x0(
    output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The x0 estimate from a network ``output`` at VE input ``x`` and noise level ``sigma``."""
    s = broadcast_sigma(sigma, x)
    if prediction_type == "epsilon":
        return x - s * output  # x = x0 + sigma * eps
    if prediction_type == "v_prediction":
        # v = alpha * eps - std * x0 (Salimans & Ho 2022) => x0 = alpha * x_vp - std * v
        alpha = 1 / (1 + s**2).sqrt()
        std = s * alpha
        return alpha * (x * alpha) - std * output
    if prediction_type == "sample":
        return output
    raise ModelError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")


def x0_to_output(
    x0: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The network output that :func:`output_to_x0` maps back to ``x0`` (its inverse)."""
    s = broadcast_sigma(sigma, x)
    if prediction_type == "epsilon":
        return (x - x0) / s
    if prediction_type == "v_prediction":
        alpha = 1 / (1 + s**2).sqrt()
        std = s * alpha
        eps = (x - x0) / s
        return alpha * eps - std * x0
    if prediction_type == "sample":
        return x0
    raise ModelError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")


def native_loss_weight(sigma: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Weight w(sigma) with ``w * |D - x0|^2 == |output - target|^2`` in the native parameterisation.

    With it an x0-space loss reproduces the standard DDPM loss of each prediction type exactly:
    eps: |eps_hat - eps|^2 = |D - x0|^2 / sigma^2; v: (1 + sigma^2) / sigma^2; x0: 1.
    """
    if prediction_type == "epsilon":
        return 1 / sigma**2
    if prediction_type == "v_prediction":
        return (1 + sigma**2) / sigma**2
    if prediction_type == "sample":
        return torch.ones_like(sigma)
    raise ModelError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> torch.Tensor:
    """``n`` noise levels from ``sigma_max`` down to ``sigma_min`` (Karras et al. 2022, Eq. 5)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((hi + ramp * (lo - hi)) ** rho).float()


# ---------------------------------------------------------------------------------------------
# The discrete schedule of a DDPM-style scheduler
# ---------------------------------------------------------------------------------------------

SchedulerKind = Literal["ddim", "ddpm"]
# what a sampler may change in a model's scheduler config: how it steps, never what the weights
# were trained on (betas, timesteps, prediction type)
SAMPLER_OVERRIDES = (
    "timestep_spacing", "steps_offset", "set_alpha_to_one", "clip_sample", "clip_sample_range",
    "thresholding", "dynamic_thresholding_ratio", "sample_max_value", "variance_type",
)  # fmt: skip


def diffusers_scheduler(config: dict[str, Any], kind: SchedulerKind, **overrides: Any):
    """A diffusers ``DDIMScheduler`` / ``DDPMScheduler`` built from a model's scheduler config.

    Built as diffusers' own pipelines build it (``DDIMPipeline`` runs
    ``DDIMScheduler.from_config(scheduler.config)`` on whatever scheduler the model ships):
    every key the class accepts is honoured (``clip_sample``, ``clip_sample_range``,
    ``thresholding``, ``dynamic_thresholding_ratio``, ``sample_max_value``, ``prediction_type``,
    ``timestep_spacing``, ``steps_offset``, ``set_alpha_to_one``, ``variance_type``,
    ``rescale_betas_zero_snr``...), keys meant for other classes are dropped silently and the
    rest take diffusers' defaults. ``overrides`` replace config keys.
    """
    import inspect

    from diffusers import DDIMScheduler, DDPMScheduler

    classes = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}
    if kind not in classes:
        raise ModelError(f"scheduler kind {kind!r} is not one of {tuple(classes)}")
    cls = classes[kind]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    keep = {k: v for k, v in dict(config).items() if k in accepted}
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ModelError(f"{cls.__name__} has no setting {', '.join(map(repr, unknown))}")
    keep.update(overrides)
    try:
        return cls.from_config(keep)
    except Exception as err:  # diffusers raises plain errors for unknown schedules
        raise ModelError(f"cannot build a {cls.__name__} from the scheduler config: {err}") from err


class DiscreteSchedule:
    """The noise levels of a discrete-time scheduler and the map sigma <-> (fractional) timestep."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.sigmas = sigma_from_alpha_bar(abar).float()  # (T,), increasing with t
        self.log_sigmas = self.sigmas.log()
        self.num_timesteps = len(self.sigmas)

    @classmethod
    def from_scheduler_config(cls, config: dict[str, Any]) -> DiscreteSchedule:
        """The schedule of a diffusers scheduler config (betas as DDPMScheduler computes them)."""
        return cls(diffusers_scheduler(config, "ddpm").alphas_cumprod)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level at (possibly fractional) timestep ``t``, interpolated in log sigma."""
        t = t.float().clamp(0, self.num_timesteps - 1)
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=self.num_timesteps - 1)
        w = t - lo
        log_sigmas = self.log_sigmas.to(t.device)
        return ((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep whose log sigma is ``log(sigma)``, clamped to the trained range."""
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.float().log().clamp(log_sigmas[0], log_sigmas[-1])
        hi = torch.searchsorted(log_sigmas, log_sigma).clamp(1, self.num_timesteps - 1)
        lo = hi - 1
        w = (log_sigma - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
        return lo.float() + w.clamp(0, 1)

    def first_t_at_least(self, sigma: torch.Tensor) -> torch.Tensor:
        """Smallest integer timestep whose sigma is >= ``sigma`` (T when none is)."""
        return torch.searchsorted(self.sigmas.to(sigma.device), sigma.float())

    @property
    def alpha_bars(self) -> torch.Tensor:
        """(T,) float64 ``abar_t = 1 / (1 + sigma_t^2)``, from the float32 sigmas."""
        return alpha_bar_from_sigma(self.sigmas.double())

    @property
    def betas(self) -> torch.Tensor:
        """(T,) float64 discrete betas of :attr:`alpha_bars` (:func:`betas_from_alpha_bar`)."""
        return betas_from_alpha_bar(self.alpha_bars)

    def scheduler_config(self) -> dict[str, Any]:
        """A diffusers scheduler config with these betas and no clipping (for a denoiser that
        has a schedule but no scheduler config of its own)."""
        return {
            "num_train_timesteps": int(self.num_timesteps),
            "trained_betas": self.betas.tolist(),
            "clip_sample": False,
        }


def default_scheduler_config(prediction_type: str = "epsilon") -> dict[str, Any]:
    """The DDPM schedule every pixel preset trains with (Ho et al. 2020: linear betas, T = 1000)."""
    return {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": 1000,
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "prediction_type": prediction_type,
        "clip_sample": True,
    }


def default_schedule() -> DiscreteSchedule:
    """The schedule of :func:`default_scheduler_config`."""
    return DiscreteSchedule.from_scheduler_config(default_scheduler_config())


# ---------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------


class Denoiser(Protocol):
    """What the trainer, sampler, audit, ranker and AMG use of a denoiser.

    ``__call__(x, sigma, cond=None)`` is the x0 estimate at VE input ``x`` (B, C, H, W) and
    noise level ``sigma`` (B,) or a float. :class:`DiffusersDenoiser` implements all of it;
    the audit's closed-form ``EmpiricalDenoiser`` and test doubles implement a pixel model's
    part (``vae = None``), and leave ``schedule`` None when they have no discrete timesteps.
    """

    channels: int  # model-space channels (a latent model's latent channels)
    resolution: int  # model-space side
    conditional: bool  # takes text embeddings as ``cond``
    sigma_min: float
    sigma_max: float
    schedule: DiscreteSchedule | None  # None: continuous noise levels only (euler / heun)
    scheduler_config: dict[str, Any] | None  # None: ddim / ddpm step ``schedule``'s betas
    vae: Any  # a latent model's VAE; None for a pixel model
    info: dict[str, Any]  # curate's metadata: ``path``, ``pipeline``, ``train`` (its config)

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None
    ) -> torch.Tensor: ...


def image_shape(denoiser: Denoiser) -> tuple[int, int, int]:
    """(C, H, W) of the images a denoiser makes (decoded images for a latent model)."""
    if denoiser.vae is None:
        return int(denoiser.channels), int(denoiser.resolution), int(denoiser.resolution)
    res = int(denoiser.image_resolution)
    return int(denoiser.vae.config.out_channels), res, res


def schedule_of(denoiser: Denoiser) -> DiscreteSchedule:
    """The denoiser's discrete schedule, or the default DDPM one for a denoiser without
    timesteps (e.g. the closed-form memorizer)."""
    return denoiser.schedule if denoiser.schedule is not None else default_schedule()


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------


class DiffusersDenoiser(torch.nn.Module):
    """``D(x, sigma, cond=None) -> x0_hat`` for a diffusers UNet and its DDPM scheduler config.

    ``x`` (B, C, H, W) in VE units (images in [-1, 1] plus ``sigma`` times unit noise; for a
    latent model, scaled VAE latents), ``sigma`` (B,) or a float, ``cond`` None, (B, L, D) or
    (B, D) embeddings for a ``UNet2DConditionModel``. A latent model carries its ``vae``.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler_config: dict[str, Any],
        vae: torch.nn.Module | None = None,
        info: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.unet = unet
        self.scheduler_config = {k: v for k, v in dict(scheduler_config).items()}
        self.prediction_type: str = self.scheduler_config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ModelError(
                f"scheduler prediction_type {self.prediction_type!r} is not one of {PREDICTION_TYPES}"
            )
        self.schedule = DiscreteSchedule.from_scheduler_config(self.scheduler_config)
        self.vae = vae
        self.info: dict[str, Any] = dict(info or {})  # curate's own metadata (training config...)
        cfg = unet.config
        self.channels: int = int(cfg.in_channels)
        size = cfg.sample_size
        self.resolution: int = int(size[0] if isinstance(size, list | tuple) else size)
        self.conditional: bool = "cross_attention_dim" in cfg  # UNet2DConditionModel
        self.cond_dim: int | None = int(cfg.cross_attention_dim) if self.conditional else None
        self.sigma_min: float = self.schedule.sigma_min
        self.sigma_max: float = self.schedule.sigma_max
        self.vae_scale: float = float(vae.config.scaling_factor) if vae is not None else 1.0

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def image_resolution(self) -> int:
        """Pixel resolution of the images the model makes (latent size x VAE factor)."""
        if self.vae is None:
            return self.resolution
        return self.resolution * 2 ** (len(self.vae.config.block_out_channels) - 1)

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The x0 estimate (B, C, H, W), in float32 whatever autocast computed inside."""
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(batch)
        timestep = self.schedule.sigma_to_t(sigma)  # (B,) fractional DDPM timesteps
        x_in = ve_to_vp(x, sigma)
        if self.conditional:
            if cond is None:
                raise ModelError("this model is text-conditional: pass cond (B, L, D) embeddings")
            if cond.ndim == 2:
                cond = cond[:, None, :]  # (B, 1, D): a pooled embedding as one token
            out = self.unet(x_in, timestep, encoder_hidden_states=cond).sample
        else:
            if cond is not None:
                raise ModelError("this model is unconditional: cond must be None")
            out = self.unet(x_in, timestep).sample
        return output_to_x0(out.float(), x.float(), sigma, self.prediction_type)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """Per-sample weight that makes an x0-space squared error the model's native DDPM loss."""
        return native_loss_weight(sigma, self.prediction_type)

    # -- latent models ---------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Model-space inputs for images in [-1, 1]: scaled VAE latents (mode), or the images."""
        if self.vae is None:
            return images
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return dist.mode().float() * self.vae_scale  # deterministic, so fixed noise stays fixed

    def decode(self, x: torch.Tensor, *, grad: bool = False, clamp: bool = True) -> torch.Tensor:
        """Images from model-space samples (VAE decode for latent models), clamped to [-1, 1].

        ``grad=True`` keeps the autograd graph (AMG differentiates its similarity through the
        decoder); otherwise no graph is built. ``clamp=False`` returns the decoder's raw output
        (a gradient through a clamp vanishes outside [-1, 1]).
        """
        with contextlib.nullcontext() if grad else torch.no_grad():
            if self.vae is None:
                img = x
            else:
                img = self.vae.decode((x / self.vae_scale).to(self.vae.dtype)).sample.float()
            return img.clamp(-1, 1) if clamp else img


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

ASSET_MODELS = Path(__file__).resolve().parent.parent / "assets" / "models"
CURATE_CONFIG = "curate_train.json"


def resolve_model_path(path_or_id: str | Path) -> str:
    """A local folder, a model shipped with curate (``digits-tiny``), or a Hub id as given."""
    path = Path(path_or_id)
    if path.exists():
        return str(path)
    shipped = ASSET_MODELS / str(path_or_id)
    if shipped.exists():
        return str(shipped)
    name = str(path_or_id)
    parent_is_local = len(path.parts) > 1 and Path(path.parts[0]).is_dir()
    if name.startswith((".", "/", "~")) or not plausible_hub_id(name) or parent_is_local:
        # a mistyped local folder: say so instead of asking the Hub for it
        shipped_names = ", ".join(sorted(p.name for p in ASSET_MODELS.iterdir())) or "none"
        raise ModelError(
            f"{name}: no such model folder (shipped models: {shipped_names}; a Hub id looks "
            "like user/name)"
        )
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelError(
            f"{name}: not a local model folder, and HF_HUB_OFFLINE is set so the Hub is not asked"
        )
    return name


def load_denoiser(path_or_id: str | Path, device: str = "cpu") -> DiffusersDenoiser:
    """Load a diffusers pipeline folder (``save_pretrained``) or Hub id as a denoiser.

    Reads ``unet/`` (UNet2DModel or UNet2DConditionModel), ``scheduler/`` and, for latent
    models, ``vae/``. curate's training config, when present, is kept in ``.info``.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel

    where = resolve_model_path(path_or_id)
    local = Path(where)
    try:
        if local.exists():
            index_path = local / "model_index.json"
            if not index_path.exists():
                raise ModelError(
                    f"{local} is not a diffusers pipeline folder (no model_index.json); "
                    "train one with `curate train` or pass a folder written by save_pretrained"
                )
            index = json.loads(index_path.read_text())
            sched_cfg = json.loads((local / "scheduler" / "scheduler_config.json").read_text())
        else:
            from huggingface_hub import hf_hub_download

            index = json.loads(Path(hf_hub_download(where, "model_index.json")).read_text())
            sched_cfg = json.loads(
                Path(hf_hub_download(where, "scheduler/scheduler_config.json")).read_text()
            )
        unet_cls_name = index.get("unet", [None, "UNet2DModel"])[1]
        unet_cls = {
            "UNet2DModel": UNet2DModel,
            "UNet2DConditionModel": UNet2DConditionModel,
        }.get(unet_cls_name)
        if unet_cls is None:
            raise ModelError(f"{where}: unet class {unet_cls_name!r} is not supported")
        unet = unet_cls.from_pretrained(where, subfolder="unet")
        vae = None
        if index.get("vae"):
            vae = AutoencoderKL.from_pretrained(where, subfolder="vae")
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(
            f"cannot load a denoiser from {path_or_id!r}: {type(err).__name__}: {err}"
        ) from err
    info: dict[str, Any] = {"path": where, "pipeline": index.get("_class_name")}
    if local.exists() and (local / CURATE_CONFIG).exists():
        info["train"] = json.loads((local / CURATE_CONFIG).read_text())
    den = DiffusersDenoiser(unet, sched_cfg, vae=vae, info=info)
    den.eval().requires_grad_(False)
    return den.to(device)
