"""Rank the samples of a run table by volume-growth rate, in resumable shards."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch

from curate.core.images import pil_to_tensor
from curate.errors import ModelError
from curate.models.denoiser import Denoiser, image_shape
from curate.rank.vgr import VGRConfig, volume_growth


def load_model_space(denoiser: Denoiser, images) -> torch.Tensor:
    """PIL images -> the model's input space: pixels in [-1, 1], or scaled VAE latents."""
    channels, resolution, _ = image_shape(denoiser)
    x = pil_to_tensor(images, channels=channels, resolution=resolution).to(denoiser.device)
    return denoiser.encode_images(x) if denoiser.vae is not None else x


def _shard_key(parts: dict) -> str:
    return hashlib.blake2b(
        json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=6
    ).hexdigest()


def rank_samples(
    denoiser: Denoiser,
    sample_ids: list[str],
    load_images: Callable[[list[str]], list],
    config: VGRConfig,
    *,
    captions: list[str] | None = None,
    text_encoder=None,
    batch_size: int = 64,
    shard_dir: Path | None = None,
    shard_size: int = 1024,
    model_key: str = "",
    progress: Callable | None = None,
) -> pl.DataFrame:
    """``sample_id``, ``vgr`` (and ``vgr_empty``, ``gap`` with captions) for every id.

    Work is split into shards of ``shard_size`` ids; with ``shard_dir`` each finished shard is
    saved and reused on a re-run with the same model and settings, so a killed job resumes.
    """
    conditional = bool(denoiser.conditional)
    if conditional and (captions is None or text_encoder is None):
        raise ModelError(
            "the model is text-conditional: rank with condition: caption (and its text encoder)"
        )
    if not conditional and captions is not None:
        raise ModelError("the model is unconditional: rank with condition: none")
    frames = []
    bar = progress(total=len(sample_ids), desc="rank", unit="img") if progress else None
    for start in range(0, len(sample_ids), shard_size):
        ids = sample_ids[start : start + shard_size]
        key = _shard_key(
            {
                "model": model_key,
                "config": config.__dict__,
                "ids": ids,
                "cond": captions is not None,
            }
        )
        path = shard_dir / f"shard-{start // shard_size:05d}-{key}.parquet" if shard_dir else None
        if path is not None and path.exists():
            frames.append(pl.read_parquet(path))
            if bar:
                bar.update(len(ids))
            continue
        cols: dict[str, list] = {"sample_id": [], "vgr": []}
        if captions is not None:
            cols.update(vgr_empty=[], gap=[])
        for b in range(0, len(ids), batch_size):
            chunk = ids[b : b + batch_size]
            # Every forward pass gets exactly batch_size rows (the last one repeated): CPU
            # kernels block by batch size, so a row's score would otherwise depend on how many
            # rows share its batch, and shards (curate.shards) would not reproduce one process.
            pad = batch_size - len(chunk)
            padded = chunk + chunk[-1:] * pad
            x = load_model_space(denoiser, load_images(chunk))
            if pad:
                x = _pad(x, pad)
            cond = empty = None
            if captions is not None:
                caps = captions[start + b : start + b + len(chunk)]
                cond = text_encoder.encode(caps + caps[-1:] * pad).to(x.device)
                empty = text_encoder.encode([""] * len(padded)).to(x.device)
            n = len(chunk)
            score = volume_growth(denoiser, x, padded, config, cond=cond).numpy()[:n]
            cols["sample_id"] += chunk
            cols["vgr"] += score.tolist()
            if captions is not None:
                base = volume_growth(denoiser, x, padded, config, cond=empty).numpy()[:n]
                cols["vgr_empty"] += base.tolist()
                cols["gap"] += (score - base).tolist()
            if bar:
                bar.update(len(chunk))
        frame = pl.DataFrame(cols, schema_overrides={"sample_id": pl.String})
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            frame.write_parquet(tmp)
            tmp.replace(path)
        frames.append(frame)
    if bar:
        bar.close()
    if not frames:
        schema = {"sample_id": pl.String, "vgr": pl.Float64}
        if captions is not None:
            schema.update(vgr_empty=pl.Float64, gap=pl.Float64)
        return pl.DataFrame(schema=schema)
    return pl.concat(frames)


def _pad(x, pad: int):
    """``x`` with its last row repeated ``pad`` more times (along the batch dimension)."""
    import torch

    return torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])


def percentile(values: np.ndarray) -> np.ndarray:
    """Rank-based percentile in (0, 1]: the highest score gets 1.0 (ties share the mean rank)."""
    from scipy.stats import rankdata

    if values.size == 0:
        return values.astype(float)
    return rankdata(values, method="average") / values.size
