"""Per-image features (hashes, embeddings) computed in chunks, cached on disk, resumable.

Each chunk of ``chunk_size`` sample ids is saved as ``<dir>/<feature>/<first-id-hash>.npy`` once
computed, keyed by the ids it holds, so an interrupted run reloads the finished chunks and only
computes the rest. Images are decoded once per chunk for all features that still need it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Extractor = Callable[[Any], np.ndarray]  # takes what ``load_images`` returns for a chunk


def _chunk_key(ids: Sequence[str]) -> str:
    return hashlib.blake2b("\x1f".join(ids).encode("utf-8"), digest_size=10).hexdigest()


def cached_features(
    cache_dir: Path,
    ids: Sequence[str],
    extractors: dict[str, Extractor],
    load_images: Callable[[list[str]], Any],
    chunk_size: int = 256,
    progress: Callable | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Feature name -> ``(len(ids), ...)`` array, and chunk counts (cached / computed).

    Only chunks without a cache file are loaded (``load_images(chunk_ids)``, once per chunk
    for all the features it still needs) and computed.
    """
    ids = list(ids)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in extractors}
    starts = range(0, len(ids), chunk_size)
    bar = progress(total=len(ids), desc="features", unit="img") if progress else None
    stats = {"cached_chunks": 0, "computed_chunks": 0}
    for start in starts:
        chunk = ids[start : start + chunk_size]
        key = _chunk_key(chunk)
        missing = []
        for name in extractors:
            path = cache_dir / name / f"{start:09d}-{key}.npy"
            if path.exists():
                parts[name].append(np.load(path))
            else:
                parts[name].append(None)
                missing.append(name)
        if missing:
            images = load_images(chunk)
            for name in missing:
                arr = np.asarray(extractors[name](images))
                path = cache_dir / name / f"{start:09d}-{key}.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npy")
                np.save(tmp, arr)
                tmp.replace(path)  # atomic: a killed run never leaves half a chunk
                parts[name][-1] = arr
            stats["computed_chunks"] += 1
        else:
            stats["cached_chunks"] += 1
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    out = {name: np.concatenate(arrs) if arrs else np.zeros((0,)) for name, arrs in parts.items()}
    return out, stats
