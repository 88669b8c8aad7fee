"""The training loop: one ``Trainer``, one ``train()`` entry point (settings: ``TrainConfig`` in
``curate.train.config``; loading data and the model folder's records: ``curate.train.job``).

Every random draw is a function of ``(seed, sample_id, stream position)``: which samples a step
sees, their timesteps and noise, the caption drawn from a list. Nothing depends on global RNG
state, so a run resumed from a checkpoint continues exactly as if it had never stopped.

Output folder::

    OUT/model_index.json, unet/, scheduler/ (, vae/, text_encoder/ ...)   diffusers pipeline
    OUT/curate_train.json                                                resolved config + stats
    OUT/text_encoder.safetensors                                         tiny-clip weights, if used
    OUT/checkpoints/step-NNNNNNN/{model,ema,optimizer}.safetensors, state.json
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from curate._version import __version__
from curate.captions.transforms import gaussian_noise_per_sample, make_transform
from curate.errors import UsageError
from curate.io.folders import MARKER, atomic_write_json, folder_kind
from curate.models.denoiser import CURATE_CONFIG, DiffusersDenoiser
from curate.models.presets import ModelBundle, build_model, save_pipeline
from curate.seeding import rng_for, torch_generator
from curate.train.config import RESUME_KEYS, TrainConfig
from curate.train.data import TrainData, positions_to_indices, stream_positions
from curate.train.loss import (
    ambient_loss,
    ddpm_loss,
    fixed_noise,
    redrawn_noise,
    weight_only_loss,
)

CaptionTransform = Callable[[str, str, int], str]

# draw every sample's fixed ambient noise up front when it has at most this many numbers;
# larger datasets draw it per batch from (seed, sample_id), the same values
PRELOAD_NOISE_NUMEL = 1 << 27

__all__ = ["TrainConfig", "Trainer", "TrainResult", "latest_checkpoint", "train"]


@dataclass
class TrainResult:
    out_dir: Path | None
    step: int
    losses: list[tuple[int, float]]
    seconds: float


class Trainer:
    """Owns the model, EMA copy and optimizer; ``run(until)`` trains to a global step."""

    def __init__(
        self,
        data: TrainData,
        config: TrainConfig,
        *,
        device: str = "cpu",
        caption_transform: CaptionTransform | None = None,
        quiet: bool = False,
        accelerate: bool | None = None,
    ):
        config.check()
        if config.channels is None:
            config = dataclasses.replace(config, channels=data.channels)
        self.config = config
        self.data = data
        self.quiet = quiet
        if caption_transform is None and config.caption_transform:
            caption_transform = make_transform(
                config.caption_transform, p=config.caption_p, seed=config.seed
            )
        self.caption_transform = caption_transform
        if len(data) == 0:
            raise UsageError("no training samples")
        if config.channels != data.channels:
            raise UsageError(f"channels: {config.channels} but the data has {data.channels}")

        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.accelerator = None
        self.rank, self.world = 0, 1
        use_acc = world > 1 if accelerate is None else accelerate
        mp = config.mixed_precision
        if mp == "auto":
            mp = "bf16" if str(device).startswith("cuda") else "no"
        if mp == "bf16" and not str(device).startswith("cuda"):
            raise UsageError(
                "mixed_precision: bf16 needs device: cuda; mixed precision is GPU-only"
            )
        self.mixed_precision = mp
        if use_acc:
            from accelerate import Accelerator

            self.accelerator = Accelerator(mixed_precision=mp, cpu=str(device) == "cpu")
            device = str(self.accelerator.device)
            self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.device = device

        bundle: ModelBundle = build_model(
            config.model,
            channels=config.channels,
            resolution=config.resolution or data.resolution,
            text_encoder=config.text_encoder if config.conditioning == "caption" else None,
            prediction_type=config.prediction_type,
            device=device,
            seed=config.seed,
        )
        if bundle.image_resolution != data.resolution:
            raise UsageError(
                f"resolution: the data is {data.resolution}px but model: {config.model} "
                f"makes {bundle.image_resolution}px; load the data at the model's resolution"
            )
        self.bundle = bundle
        self.denoiser = DiffusersDenoiser(bundle.unet, bundle.scheduler_config, vae=bundle.vae)
        self.denoiser.to(device)
        self.text_encoder = bundle.text_encoder
        self.form = config.ambient_form
        if self.form == "auto":
            self.form = "vp" if bundle.latent else "ve"
        self.lr = config.lr if config.lr is not None else bundle.default_lr
        self.optimizer = torch.optim.AdamW(
            bundle.unet.parameters(), lr=self.lr, weight_decay=config.weight_decay
        )
        self.ema = None
        if config.ema_decay > 0:
            self.ema = copy.deepcopy(bundle.unet).eval().requires_grad_(False)
        if self.accelerator is not None:
            unet, self.optimizer = self.accelerator.prepare(bundle.unet, self.optimizer)
            self.denoiser.unet = unet
        self.step = 0
        self.losses: list[tuple[int, float]] = []
        self.seconds = 0.0
        self.model_shape = (
            self.denoiser.channels,
            self.denoiser.resolution,
            self.denoiser.resolution,
        )
        self._sigma_n = self._per_sample_sigma_n()
        self._fixed: torch.Tensor | None = None
        numel = len(data) * math.prod(self.model_shape)
        fixed = config.objective == "ambient" and config.ambient_noise == "fixed"
        if fixed and numel <= PRELOAD_NOISE_NUMEL:
            self._fixed = fixed_noise(
                config.seed, data.sample_ids, self.model_shape
            )  # (N, C, H, W)

    # -- per-sample quantities -----------------------------------------------------------
    def _per_sample_sigma_n(self) -> np.ndarray:
        base = np.full(len(self.data), float(self.config.sigma_n))
        if self.config.objective == "ambient" and self.data.sigma_n is not None:
            col = np.asarray(self.data.sigma_n, dtype=float)
            if np.any(col[np.isfinite(col)] < 0):
                raise UsageError(
                    f"sigma_n_column: {self.config.sigma_n_column!r} has values < 0; a noise "
                    "level must be >= 0"
                )
            base = np.where(np.isfinite(col), col, base)
        return base

    def _noise_draws(
        self, ids: list[str], positions: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform u (b,) for the timestep and Gaussian eta (b, C, H, W), per (sample, position)."""
        u = torch.empty(len(ids))
        eta = torch.empty((len(ids), *self.model_shape))
        for j, (sid, pos) in enumerate(zip(ids, positions, strict=True)):
            g = torch_generator(self.config.seed, "train", sid, int(pos))
            u[j] = torch.rand((), generator=g)
            eta[j] = torch.randn(self.model_shape, generator=g)
        return u, eta

    def _captions(self, idx: np.ndarray, epochs: np.ndarray, positions: np.ndarray) -> list[str]:
        out = []
        for i, ep, pos in zip(idx, epochs, positions, strict=True):
            sid = self.data.sample_ids[i]
            choices = self.data.captions[i]
            rng = rng_for(self.config.seed, "caption", sid, int(pos))
            cap = choices[int(rng.integers(len(choices)))] if len(choices) > 1 else choices[0]
            if self.caption_transform is not None:
                cap = self.caption_transform(cap, sid, int(ep))
            if self.config.caption_dropout and rng.random() < self.config.caption_dropout:
                cap = ""
            out.append(cap)
        return out

    # -- one micro-batch -----------------------------------------------------------------
    def micro_loss(self, micro: int) -> torch.Tensor:
        """Per-sample losses (b,) of micro-batch ``micro`` of the current step."""
        cfg = self.config
        positions = stream_positions(
            self.step, micro, cfg.grad_accum, cfg.batch_size, self.rank, self.world
        )
        idx, epochs = positions_to_indices(positions, len(self.data), cfg.seed)
        ids = [self.data.sample_ids[i] for i in idx]
        x0 = self.data.batch(idx).to(self.device)
        if self.bundle.latent:
            x0 = self.denoiser.encode_images(x0)  # (b, 4, h, w) scaled latents
        u, eta = self._noise_draws(ids, positions)
        sched = self.denoiser.schedule
        num_t = sched.num_timesteps
        t_lo = torch.zeros(len(ids), dtype=torch.long)
        sigma_n = torch.as_tensor(self._sigma_n[idx], dtype=torch.float32)
        if cfg.objective == "ambient" and self.data.noisy_only is not None:
            only = torch.as_tensor(self.data.noisy_only[idx], dtype=torch.bool)
            first = sched.first_t_at_least(sigma_n).clamp(max=num_t - 1)
            t_lo = torch.where(only, first, t_lo)
        t = (t_lo + (u * (num_t - t_lo)).floor().long()).clamp(max=num_t - 1)  # (b,)
        sigma = sched.sigmas[t].to(self.device)
        eta = eta.to(self.device)
        cond = None
        if self.text_encoder is not None:
            captions = self._captions(idx, epochs, positions)
            cond = self.text_encoder.encode(captions)
            if cfg.embedding_noise > 0:
                # one draw per (sample, stream position); empty (dropped) captions stay clean,
                # as the unconditional branch does at sampling time
                keys = [f"{sid}@{int(p)}" for sid, p in zip(ids, positions, strict=True)]
                keep = torch.tensor([c != "" for c in captions], device=cond.device)
                cond = gaussian_noise_per_sample(
                    cond, cfg.embedding_noise, cfg.seed, keys, 0, mask=keep
                )
        with self._autocast():
            if cfg.objective == "ddpm":
                return ddpm_loss(self.denoiser, x0, sigma, eta, cond)
            if cfg.ambient_noise == "weight_only":
                return weight_only_loss(
                    self.denoiser, x0, sigma, eta, sigma_n.to(self.device), cond, form=self.form
                )
            if cfg.ambient_noise == "fixed":
                eps = (
                    self._fixed[idx]
                    if self._fixed is not None
                    else fixed_noise(cfg.seed, ids, self.model_shape)
                )
            else:
                eps = redrawn_noise(cfg.seed, ids, self.model_shape, epochs)
            return ambient_loss(
                self.denoiser,
                x0,
                sigma,
                eta,
                sigma_n.to(self.device),
                eps.to(self.device),
                cond,
                form=self.form,
                weight=cfg.ambient_weight,
            )

    def _autocast(self):
        import contextlib

        if self.mixed_precision == "bf16" and self.accelerator is None:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if self.accelerator is not None:
            return self.accelerator.autocast()
        return contextlib.nullcontext()

    # -- one optimizer step --------------------------------------------------------------
    def train_step(self) -> float:
        """One optimizer step (grad accumulation, clipping, EMA); returns the mean loss."""
        cfg = self.config
        unet = self.denoiser.unet
        unet.train()
        if cfg.warmup_steps:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * min(1.0, (self.step + 1) / cfg.warmup_steps)
        total = 0.0
        for micro in range(cfg.grad_accum):
            sync_ctx = self._no_sync(micro)
            with sync_ctx:
                loss = self.micro_loss(micro).mean() / cfg.grad_accum
                if self.accelerator is not None:
                    self.accelerator.backward(loss)
                else:
                    loss.backward()
            total += float(loss.detach())
        if cfg.grad_clip:
            if self.accelerator is not None:
                self.accelerator.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
            else:
                torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self._update_ema()
        return total

    def _no_sync(self, micro: int):
        import contextlib

        last = micro == self.config.grad_accum - 1
        if self.accelerator is not None and not last:
            return self.accelerator.no_sync(self.denoiser.unet)
        return contextlib.nullcontext()

    @torch.no_grad()
    def _update_ema(self) -> None:
        # warm-up of the decay (as in diffusers' EMAModel) so early EMA weights are not stale
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        ema_p = list(self.ema.parameters())
        raw_p = list(self._raw_unet().parameters())
        torch._foreach_lerp_(ema_p, raw_p, 1 - decay)

    def barrier(self) -> None:
        """Wait for every process of a torchrun / accelerate job (a no-op in one process)."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def _raw_unet(self) -> torch.nn.Module:
        unet = self.denoiser.unet
        if self.accelerator is not None:
            unet = self.accelerator.unwrap_model(unet)
        return unet

    # -- running ---------------------------------------------------------------------------
    def run(self, until: int | None = None, out_dir: Path | str | None = None) -> TrainResult:
        """Train to global step ``until`` (default ``config.steps``), checkpointing into out_dir."""
        until = self.config.steps if until is None else until
        from tqdm.auto import tqdm

        main = self.rank == 0
        bar = tqdm(
            total=until,
            initial=self.step,
            disable=self.quiet or not main,
            desc=f"training ({self.config.objective})",
            unit="step",
        )
        t0 = time.perf_counter()
        recent: list[float] = []
        while self.step < until:
            loss = self.train_step()
            if not math.isfinite(loss):
                raise UsageError(
                    f"training diverged at step {self.step} (loss {loss}); lower lr: {self.lr:g}"
                    " or set grad_clip: 1"
                )
            recent.append(loss)
            if self.step % self.config.log_every == 0 or self.step == until:
                self.losses.append((self.step, float(np.mean(recent))))
                bar.set_postfix(loss=f"{np.mean(recent):.4f}")
                recent = []
            bar.update(1)
            every = self.config.checkpoint_every
            if out_dir is not None and main and every and self.step % every == 0:
                self.save_checkpoint(out_dir)
        bar.close()
        self.seconds += time.perf_counter() - t0
        return TrainResult(Path(out_dir) if out_dir else None, self.step, self.losses, self.seconds)

    def eval_denoiser(self) -> DiffusersDenoiser:
        """A frozen denoiser over the EMA weights (or a copy of the raw ones without EMA)."""
        unet = copy.deepcopy(self.ema if self.ema is not None else self._raw_unet())
        den = DiffusersDenoiser(unet, self.bundle.scheduler_config, vae=self.bundle.vae)
        return den.eval().requires_grad_(False)

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, out_dir: Path | str) -> Path:
        """Write ``OUT/checkpoints/step-N`` atomically; keep the newest ``keep_checkpoints``."""
        from safetensors.torch import save_file

        root = Path(out_dir) / "checkpoints"
        final = root / f"step-{self.step:07d}"
        tmp = root / f".tmp-step-{self.step:07d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(_contiguous(self._raw_unet().state_dict()), str(tmp / "model.safetensors"))
        if self.ema is not None:
            save_file(_contiguous(self.ema.state_dict()), str(tmp / "ema.safetensors"))
        tensors, meta = _flatten_optimizer(self.optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {
            "step": self.step,
            "config": dataclasses.asdict(self.config),
            "optimizer": meta,
            "losses": self.losses,
            "seconds": self.seconds,
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        old = sorted(p for p in root.glob("step-*") if p.is_dir())
        for stale in old[: max(len(old) - self.config.keep_checkpoints, 0)]:
            shutil.rmtree(stale, ignore_errors=True)
        return final

    def load_checkpoint(self, path: Path | str) -> None:
        """Restore weights, EMA, optimizer and step from a checkpoint folder."""
        from safetensors.torch import load_file

        path = Path(path)
        problem = checkpoint_mismatch(path, self.config)
        if problem:
            raise UsageError(problem)
        state = json.loads((path / "state.json").read_text())
        dev = str(self.device)
        if torch.device(dev).type == "cpu":
            dev = "cpu"  # accelerate names it cpu:0, which safetensors refuses
        self._raw_unet().load_state_dict(load_file(str(path / "model.safetensors"), device=dev))
        if self.ema is not None and (path / "ema.safetensors").exists():
            self.ema.load_state_dict(load_file(str(path / "ema.safetensors"), device=dev))
        tensors = load_file(str(path / "optimizer.safetensors"), device=dev)
        self.optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
        self.step = int(state["step"])
        self.losses = [tuple(x) for x in state.get("losses", [])]
        self.seconds = float(state.get("seconds", 0.0))

    # -- final output ----------------------------------------------------------------------
    def save(self, out_dir: Path | str, extra: dict[str, Any] | None = None) -> Path:
        """Write the diffusers pipeline (EMA weights when enabled) and ``curate_train.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        unet = self.ema if self.ema is not None else self._raw_unet()
        save_pipeline(
            out,
            unet,
            self.bundle.scheduler_config,
            vae=self.bundle.vae,
            text_encoder=self.text_encoder,
        )
        info = {
            "config": dataclasses.asdict(self.config),
            "resolved": {
                "lr": self.lr,
                "device": str(self.device),
                "mixed_precision": self.mixed_precision,
                "ambient_form": self.form,
                "image_resolution": self.bundle.image_resolution,
                "model_shape": list(self.model_shape),
                "parameters": sum(p.numel() for p in unet.parameters()),
                "weights": "ema" if self.ema is not None else "raw",
                "world_size": self.world,
            },
            "text_encoder": self.text_encoder.spec() if self.text_encoder is not None else None,
            "caption_transform": (
                self.caption_transform.describe()
                if hasattr(self.caption_transform, "describe")
                else None
            ),
            "data": {"num_samples": len(self.data)},
            "result": {"step": self.step, "seconds": round(self.seconds, 2), "losses": self.losses},
            "versions": _versions(),
        }
        if extra:
            info.update(extra)
        (out / CURATE_CONFIG).write_text(json.dumps(info, indent=1, default=str))
        return out


def latest_checkpoint(out_dir: Path | str) -> Path | None:
    """The newest ``OUT/checkpoints/step-N`` folder, or None."""
    steps = sorted(p for p in (Path(out_dir) / "checkpoints").glob("step-*") if p.is_dir())
    return steps[-1] if steps else None


def checkpoint_mismatch(path: Path | str, config: TrainConfig) -> str | None:
    """Why ``config`` cannot continue the checkpoint at ``path`` (a ``RESUME_KEYS`` setting
    differs), or None when it can."""
    saved = json.loads((Path(path) / "state.json").read_text())["config"]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for key in RESUME_KEYS:
        # a key the checkpoint predates had its default then
        if saved.get(key, defaults.get(key)) != getattr(config, key):
            return (
                f"resume: the checkpoint has {key}: {saved.get(key)!r}, now "
                f"{getattr(config, key)!r}; use the same value or a new out_dir"
            )
    return None


def train(
    data: TrainData,
    out_dir: Path | str,
    config: TrainConfig,
    *,
    device: str = "cpu",
    caption_transform: CaptionTransform | None = None,
    resume: bool | Literal["auto"] = False,
    overwrite: bool = False,
    quiet: bool = False,
    extra_info: dict[str, Any] | None = None,
) -> Path:
    """Train on ``data`` and write the model folder ``out_dir``; returns its path.

    ``resume``: True continues from the newest checkpoint (the settings in ``RESUME_KEYS``
    must match); "auto" continues when there is one with matching settings and otherwise
    starts over (which needs ``overwrite`` when the folder is not empty). A non-empty folder
    that curate train did not make is never written into or deleted.
    """
    if config.channels is None:
        config = dataclasses.replace(config, channels=data.channels)
    out = Path(out_dir)
    # Under torchrun every process runs this: every process decides from the folder as it was
    # (read-only, before anyone changes it), the Trainer joins the process group, and only
    # process 0 changes the folder, between barriers.
    resume, ckpt, fresh = _out_dir_plan(out, config, resume, overwrite)
    trainer = Trainer(data, config, device=device, caption_transform=caption_transform, quiet=quiet)
    trainer.barrier()
    if trainer.rank == 0:
        if fresh:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        if folder_kind(out) != "model":
            atomic_write_json(out / MARKER, {"kind": "model", "what": "model folder"})
    trainer.barrier()
    if resume:
        trainer.load_checkpoint(ckpt)
    trainer.run(config.steps, out)
    if trainer.rank == 0:
        if config.checkpoint_every and trainer.step % config.checkpoint_every:
            trainer.save_checkpoint(out)
        trainer.save(out, extra_info)
    return out


def _out_dir_plan(
    out: Path, config: TrainConfig, resume: bool | Literal["auto"], overwrite: bool
) -> tuple[bool, Path | None, bool]:
    """(resume?, the checkpoint to resume from, start over by emptying ``out``?), read-only."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"out_dir: {out} exists and is not a folder")
    nonempty = out.exists() and any(out.iterdir())
    ours = out.exists() and (
        folder_kind(out) == "model"
        or (out / CURATE_CONFIG).exists()
        or any((out / "checkpoints").glob("step-*/state.json"))
    )
    if nonempty and not ours:
        raise UsageError(
            f"out_dir: {out}: the folder is not empty and was not made by curate train; choose "
            "a new or empty folder (curate never deletes your files)"
        )
    ckpt = latest_checkpoint(out) if nonempty else None
    if resume == "auto":
        resume = ckpt is not None and checkpoint_mismatch(ckpt, config) is None
    elif resume and ckpt is None:
        raise UsageError(f"resume: no checkpoint under {out / 'checkpoints'} to continue from")
    if nonempty and not (resume or overwrite):
        raise UsageError(
            f"out_dir: {out} is not empty; set resume: true to continue or overwrite: true to "
            "start over"
        )
    return bool(resume), ckpt, bool(overwrite and not resume and nonempty)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as safetensors tensors plus JSON metadata (param groups, scalars)."""
    tensors, scalars = {}, {}
    for pid, entry in sd["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value.detach().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _versions() -> dict[str, str]:
    import diffusers

    return {"curate": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}
