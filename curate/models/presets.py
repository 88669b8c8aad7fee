"""Named model presets, built in code, and saving a trained model as a diffusers pipeline folder.

| preset | network | resolution | params (1 channel) |
| --- | --- | --- | --- |
| ``tiny`` | UNet2DModel, 2 levels (16, 32), no attention | 16 | ~0.16M |
| ``unet-32`` | the DDPM CIFAR-10 layout: (128, 256, 256, 256), attention at 16x16 | 32 | ~36M |
| ``unet-64`` | (128, 256, 384, 512), attention at 16x16 and 8x8 | 64 | ~80M |
| ``sd-finetune:ID`` | the UNet, VAE and text encoder of a Stable Diffusion checkpoint | from ID | from ID |

With caption conditioning the pixel presets use ``UNet2DConditionModel`` with cross-attention
in the blocks where the unconditional layout has self-attention (the lowest level for ``tiny``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from curate.core.text import HFTextEncoder, get_text_encoder
from curate.errors import ModelError, UsageError
from curate.models.denoiser import default_scheduler_config
from curate.seeding import derive_seed

PIXEL_PRESETS = ("tiny", "unet-32", "unet-64")
SD_PREFIX = "sd-finetune:"

# (block_out_channels, layers_per_block, attention per level, default resolution, dropout, lr)
_LAYOUTS: dict[str, tuple[tuple[int, ...], int, tuple[bool, ...], int, float, float]] = {
    "tiny": ((16, 32), 1, (False, True), 16, 0.0, 1e-3),
    "unet-32": ((128, 256, 256, 256), 2, (False, True, False, False), 32, 0.1, 2e-4),
    "unet-64": ((128, 256, 384, 512), 2, (False, False, True, True), 64, 0.1, 2e-4),
}


@dataclass
class ModelBundle:
    """A fresh or pretrained model ready to train: UNet, schedule, optional VAE/text encoder."""

    preset: str
    unet: torch.nn.Module
    scheduler_config: dict[str, Any]
    vae: torch.nn.Module | None = None
    text_encoder: Any = None  # curate.core.text.TextEncoder or None
    image_resolution: int = 16
    channels: int = 1  # image channels (3 for latent models: the VAE's input)
    default_lr: float = 1e-3
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def latent(self) -> bool:
        return self.vae is not None


def preset_defaults(preset: str) -> dict[str, Any]:
    """Default resolution and learning rate of a preset (for configs before building it)."""
    if preset in _LAYOUTS:
        _, _, _, res, _, lr = _LAYOUTS[preset]
        return {"resolution": res, "lr": lr}
    if preset.startswith(SD_PREFIX):
        return {"resolution": None, "lr": 1e-5}
    raise UsageError(
        f"--model {preset!r} is not one of {', '.join(PIXEL_PRESETS)} or {SD_PREFIX}ID"
    )


def build_pixel_unet(
    preset: str,
    channels: int,
    resolution: int | None = None,
    cross_attention_dim: int | None = None,
    seed: int = 0,
) -> torch.nn.Module:
    """A randomly initialised UNet for a pixel preset (seeded; global RNG state untouched)."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    if preset not in _LAYOUTS:
        raise UsageError(f"--model {preset!r} is not one of {', '.join(PIXEL_PRESETS)}")
    widths, layers, attn, default_res, dropout, _ = _LAYOUTS[preset]
    res = resolution or default_res
    if res % 2 ** (len(widths) - 1):
        raise UsageError(
            f"--resolution {res} must be divisible by {2 ** (len(widths) - 1)} for --model {preset}"
        )
    groups = 8 if widths[0] < 64 else 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init", preset) % 2**31)
        if cross_attention_dim is None:
            down = tuple(
                "AttnDownBlock2D" if a and preset != "tiny" else "DownBlock2D" for a in attn
            )
            up = tuple("AttnUpBlock2D" if a and preset != "tiny" else "UpBlock2D" for a in attn)
            return UNet2DModel(
                sample_size=res,
                in_channels=channels,
                out_channels=channels,
                block_out_channels=widths,
                layers_per_block=layers,
                down_block_types=down,
                up_block_types=up[::-1],
                norm_num_groups=groups,
                add_attention=preset != "tiny",  # tiny stays attention-free (fast on CPU)
                dropout=dropout,
            )
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attn)
        return UNet2DConditionModel(
            sample_size=res,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=widths,
            layers_per_block=layers,
            down_block_types=down,
            up_block_types=up[::-1],
            mid_block_type="UNetMidBlock2DCrossAttn",
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=max(widths[0] // 16, 2) if preset == "tiny" else 8,
            norm_num_groups=groups,
            dropout=dropout,
        )


def build_model(
    preset: str,
    *,
    channels: int = 1,
    resolution: int | None = None,
    text_encoder: str | None = None,
    prediction_type: str = "epsilon",
    device: str = "cpu",
    seed: int = 0,
) -> ModelBundle:
    """Build a preset: a fresh pixel UNet, or a Stable Diffusion checkpoint to fine-tune.

    ``text_encoder`` (``minilm``, ``tiny-clip``, an id/path) makes a pixel preset conditional;
    ``sd-finetune:ID`` is always conditional on its own CLIP text encoder.
    """
    if preset.startswith(SD_PREFIX):
        return _load_sd(preset[len(SD_PREFIX) :], resolution, device)
    defaults = preset_defaults(preset)
    encoder = get_text_encoder(text_encoder, device) if text_encoder else None
    unet = build_pixel_unet(
        preset,
        channels,
        resolution or defaults["resolution"],
        cross_attention_dim=encoder.dim if encoder is not None else None,
        seed=seed,
    )
    return ModelBundle(
        preset=preset,
        unet=unet.to(device),
        scheduler_config=default_scheduler_config(prediction_type),
        text_encoder=encoder,
        image_resolution=resolution or defaults["resolution"],
        channels=channels,
        default_lr=defaults["lr"],
    )


def _load_sd(model_id: str, resolution: int | None, device: str) -> ModelBundle:
    """UNet2DConditionModel + VAE + CLIP text encoder + DDPM scheduler config of a checkpoint."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    if not model_id:
        raise UsageError("--model sd-finetune:ID needs a model id or path after the colon")
    try:
        unet = UNet2DConditionModel.from_pretrained(model_id, subfolder="unet")
        vae = AutoencoderKL.from_pretrained(model_id, subfolder="vae")
        sched = DDPMScheduler.from_pretrained(model_id, subfolder="scheduler")
    except Exception as err:
        raise ModelError(
            f"--model sd-finetune:{model_id}: cannot load unet/vae/scheduler "
            f"({type(err).__name__}: {err}); pass a Stable Diffusion pipeline folder or a Hub id "
            "reachable from this machine"
        ) from err
    encoder = HFTextEncoder(model_id, device, name=model_id)
    if encoder.dim != unet.config.cross_attention_dim:
        raise ModelError(
            f"sd-finetune:{model_id}: text encoder width {encoder.dim} does not match the UNet's "
            f"cross_attention_dim {unet.config.cross_attention_dim}"
        )
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_res = int(unet.config.sample_size)
    if resolution:
        if resolution % factor:
            raise UsageError(
                f"--resolution {resolution} must be divisible by the VAE factor {factor}"
            )
        latent_res = resolution // factor
        unet.register_to_config(sample_size=latent_res)
    vae.eval().requires_grad_(False)
    return ModelBundle(
        preset=f"{SD_PREFIX}{model_id}",
        unet=unet.to(device),
        scheduler_config=dict(sched.config),
        vae=vae.to(device),
        text_encoder=encoder,
        image_resolution=latent_res * factor,
        channels=int(vae.config.in_channels),
        default_lr=1e-5,
        extra={"model_id": model_id},
    )


def save_pipeline(
    out_dir,
    unet: torch.nn.Module,
    scheduler_config: dict[str, Any],
    *,
    vae: torch.nn.Module | None = None,
    text_encoder: Any = None,
) -> None:
    """Write a diffusers pipeline folder loadable with ``DiffusionPipeline.from_pretrained``.

    Pixel models become a ``DDPMPipeline`` (unet + scheduler; a conditional UNet loads too, and
    ``curate sample`` feeds it captions). Latent models become a ``StableDiffusionPipeline``.
    """
    from diffusers import DDPMPipeline, DDPMScheduler

    scheduler = DDPMScheduler.from_config(
        {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    )
    if vae is None:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(
            str(out_dir), safe_serialization=True
        )
        if text_encoder is not None and text_encoder.name == "tiny-clip":
            text_encoder.save(f"{out_dir}/text_encoder.safetensors")
        return
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.model,
        tokenizer=text_encoder.tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
