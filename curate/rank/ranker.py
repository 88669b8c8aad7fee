"""Rank the samples of a run table by volume-growth rate, in resumable shards."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from curate.errors import ModelError
from curate.rank.vgr import VGRConfig, volume_growth


def load_model_space(denoiser, images) -> object:
    """PIL images -> the model's input space: pixels in [-1, 1], or scaled VAE latents."""
    from curate.train.data import images_to_tensor

    if getattr(denoiser, "vae", None) is not None:
        x = images_to_tensor(images, 3, denoiser.image_resolution).to(denoiser.device)
        return denoiser.encode_images(x)
    return images_to_tensor(images, denoiser.channels, denoiser.resolution).to(denoiser.device)


def _shard_key(parts: dict) -> str:
    return hashlib.blake2b(
        json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=6
    ).hexdigest()


def rank_samples(
    denoiser,
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
    conditional = bool(getattr(denoiser, "conditional", False))
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
            x = load_model_space(denoiser, load_images(chunk))
            cond = empty = None
            if captions is not None:
                caps = captions[start + b : start + b + len(chunk)]
                cond = text_encoder.encode(caps).to(x.device)
                empty = text_encoder.encode([""] * len(chunk)).to(x.device)
            score = volume_growth(denoiser, x, chunk, config, cond=cond).numpy()
            cols["sample_id"] += chunk
            cols["vgr"] += score.tolist()
            if captions is not None:
                base = volume_growth(denoiser, x, chunk, config, cond=empty).numpy()
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


def percentile(values: np.ndarray) -> np.ndarray:
    """Rank-based percentile in (0, 1]: the riskiest sample gets 1.0 (ties share the mean rank)."""
    from scipy.stats import rankdata

    if values.size == 0:
        return values.astype(float)
    return rankdata(values, method="average") / values.size
