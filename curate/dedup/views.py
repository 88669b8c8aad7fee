"""The ``views`` tier: copy detection for small images by matching augmented views.

Copy-detection models and perceptual hashes see little in a 32 px image: SSCD's embedding of a
tile barely moves under a crop, and a 64-bit hash of 32 px has few stable bits. What a small
image does have is its pixels, and the planted transforms move them in known ways: a crop is a
window of the original scaled back up, a small rotation is the original turned a few degrees
with black corners, a flip is its mirror image. So each image is stored once as a colour
thumbnail (``THUMB`` px, the feature the step caches) and compared through a fixed set of
**views** of it (``VIEWS``): the whole image, its mirror image, windows at 0.92 / 0.84 / 0.76 of
each side on a grid of positions, and rotations of 4 to 9 degrees, each resampled to ``SIDE`` px.

The similarity of two images ``a`` and ``b`` is the best, over the views ``v`` of one and the
whole image of the other, of ``1 - 2 * RMS(view_v(a) - whole(b))`` (RMS over the pixels and
RGB channels, values in [0, 1]): 1 for equal pixels, 0 at an RMS error of half the range. It is
an absolute distance, not a correlation: two smooth gradients of different brightness or colour
correlate almost perfectly, but their pixels differ. Search: every view of every row queries an
exact L2 index (``curate.core.neighbours.flat_index``) of the rows' whole images at half
resolution; the exact score is then computed on those candidates only. Thresholds come from
the step's ``auto`` calibration like every other tier's, so the tier is switched off where its
scores do not tell a band's images apart; the step also asks a pair to beat both rows' 16th
candidate by 0.05 (``curate.dedup.tiers.VIEWS_NORM_RANK``, score normalisation as for SSCD).

Cost: ``len(VIEWS)`` (51) queries per row against every row's whole image: quadratic in the
row count. Measured on one thread (2 shared cores): ``knn`` of 1,000 rows 4.8 s, of 4,000 rows
25 s (160 rows/s); the calibration's background, all pairs of 2,000 rows, 7.8 s. 10^5 rows
would take hours; an IVF index over the whole images would be the next step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

THUMB = 32  # side of the stored thumbnail (the cached feature), px
SIDE = 16  # side of each compared view, px
CHANNELS = 3
DIM = SIDE * SIDE * CHANNELS
FEATURE_DIM = THUMB * THUMB * CHANNELS
SEARCH_K = 8  # neighbours per view query


def _view_specs() -> tuple[tuple[float, float, float, float, bool], ...]:
    """``(scale, x offset, y offset, degrees, mirrored)`` of each view: the whole image first."""
    specs = [(1.0, 0.0, 0.0, 0.0, False), (1.0, 0.0, 0.0, 0.0, True)]
    for scale, steps in ((0.92, 3), (0.84, 3), (0.76, 5)):  # crops keep 0.75-0.92 of a side
        room = (1.0 - scale) / 2
        for oy in np.linspace(-room, room, steps):
            for ox in np.linspace(-room, room, steps):
                specs.append((scale, float(ox), float(oy), 0.0, False))
    for deg in (-9.0, -6.5, -4.0, 4.0, 6.5, 9.0):  # small rotations: 3-10 degrees either way
        specs.append((1.0, 0.0, 0.0, deg, False))
    return tuple(specs)


VIEWS = _view_specs()


def thumbnails(images: Sequence) -> np.ndarray:
    """``(N, THUMB * THUMB * 3)`` uint8: each image as an RGB thumbnail, channel-major (box
    filter when shrinking, bicubic when enlarging)."""
    from PIL import Image

    out = np.empty((len(images), FEATURE_DIM), np.uint8)
    for i, img in enumerate(images):
        rgb = img.convert("RGB")
        small = min(rgb.size) < THUMB
        resample = Image.Resampling.BICUBIC if small else Image.Resampling.BOX
        arr = np.asarray(rgb.resize((THUMB, THUMB), resample), np.uint8)  # (T, T, 3)
        out[i] = arr.transpose(2, 0, 1).ravel()
    return out


def _sampler(scale, ox, oy, deg, mirrored) -> np.ndarray:
    """Dense ``(SIDE * SIDE, THUMB * THUMB)`` bilinear weights of one view; points outside the
    thumbnail read black, as a rotation's corners do."""
    u = (np.arange(SIDE) + 0.5) / SIDE * 2 - 1
    yy, xx = np.meshgrid(u, u, indexing="ij")
    if mirrored:
        xx = -xx
    a = np.deg2rad(deg)
    x = scale * (np.cos(a) * xx - np.sin(a) * yy) + 2 * ox
    y = scale * (np.sin(a) * xx + np.cos(a) * yy) + 2 * oy
    px = (x + 1) / 2 * THUMB - 0.5
    py = (y + 1) / 2 * THUMB - 0.5
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    fx, fy = px - x0, py - y0
    m = np.zeros((SIDE * SIDE, THUMB * THUMB), np.float32)
    rows = np.arange(SIDE * SIDE)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):  # fmt: skip
        xi, yi, ww = (x0 + dx).ravel(), (y0 + dy).ravel(), w.ravel()
        ok = (xi >= 0) & (xi < THUMB) & (yi >= 0) & (yi < THUMB)
        np.add.at(m, (rows[ok], (yi * THUMB + xi)[ok]), ww[ok])
    return m


def _blur() -> np.ndarray:
    """A 3x3 binomial blur of the thumbnail (``(T*T, T*T)``): views sample it at half the
    resolution, so it is low-passed first."""
    k = (0.25, 0.5, 0.25)
    b = np.zeros((THUMB, THUMB), np.float32)
    for i in range(THUMB):
        for d, w in zip((-1, 0, 1), k, strict=True):
            b[i, min(max(i + d, 0), THUMB - 1)] += w
    return np.kron(b, b)


_OPERATORS: tuple | None = None


def _operators():
    """Sparse maps of one thumbnail channel: the blur ``(T*T, T*T)`` and the samplers of all
    views ``(V * SIDE * SIDE, T*T)``."""
    global _OPERATORS
    if _OPERATORS is None:
        from scipy.sparse import csr_matrix

        blur = csr_matrix(_blur())
        sample = csr_matrix(np.concatenate([_sampler(*s) for s in VIEWS]))
        _OPERATORS = (blur, sample)
    return _OPERATORS


def views_of(features: np.ndarray, which: slice | None = None) -> np.ndarray:
    """``(N, V, DIM)`` float32 in [0, 1]: the views of thumbnails ``features`` (N, FEATURE_DIM);
    ``which`` selects views (``slice(0, 1)``: the whole image only)."""
    x = np.asarray(features, np.float32).reshape(-1, THUMB * THUMB) / 255.0  # (N*3, T*T)
    blur, op = _operators()
    nv = len(VIEWS)
    if which is not None:
        idx = np.arange(nv)[which]
        rows = (idx[:, None] * SIDE * SIDE + np.arange(SIDE * SIDE)[None, :]).ravel()
        op = op[rows]
        nv = len(idx)
    x = np.asarray((blur @ x.T), np.float32)  # (T*T, N*3)
    v = np.asarray(op @ x, np.float32).T  # (N*3, nv*S*S)
    n = len(features)
    v = v.reshape(n, CHANNELS, nv, SIDE * SIDE).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(v.reshape(n, nv, DIM))


def whole(features: np.ndarray) -> np.ndarray:
    """``(N, DIM)``: the whole-image view of each thumbnail."""
    return np.concatenate([views_of(features[s : s + 4096], slice(0, 1))[:, 0]
                           for s in range(0, max(len(features), 1), 4096)])  # fmt: skip


def sim_from_sq(sq: np.ndarray) -> np.ndarray:
    """Similarity from a mean squared error per element: ``1 - 2 * RMS``."""
    return (1.0 - 2.0 * np.sqrt(np.maximum(sq, 0.0))).astype(np.float32)


def pair_sim(fa: np.ndarray, fb: np.ndarray, batch: int = 256) -> np.ndarray:
    """Row-wise similarity of two stacks of thumbnails (``(N,)``): the best of every view of
    one against the whole of the other, both ways."""
    n = len(fa)
    out = np.empty(n, np.float32)
    for s in range(0, n, batch):
        va, vb = views_of(fa[s : s + batch]), views_of(fb[s : s + batch])
        d1 = ((va - vb[:, :1]) ** 2).mean(-1).min(1)
        d2 = ((va[:, :1] - vb) ** 2).mean(-1).min(1)
        out[s : s + batch] = sim_from_sq(np.minimum(d1, d2))
    return out


def pair_matrix(features: np.ndarray, block: int = 64) -> np.ndarray:
    """Similarity of every pair of the rows of ``features``, the upper triangle flattened
    (``i < j``, row-major), float32: the background of the calibration."""
    m = len(features)
    if m < 2:
        return np.zeros(0, np.float32)
    w = whole(features)  # (m, D)
    w2 = (w * w).sum(1)
    best = np.full((m, m), np.inf, np.float32)  # min over views of row i vs whole j
    for s in range(0, m, block):
        v = views_of(features[s : s + block])  # (b, V, D)
        b, nv, _ = v.shape
        flat = v.reshape(b * nv, DIM)
        d = (flat * flat).sum(1)[:, None] + w2[None, :] - 2.0 * (flat @ w.T)  # (b*V, m)
        best[s : s + b] = d.reshape(b, nv, m).min(1)
    best = np.minimum(best, best.T) / DIM
    iu, ju = np.triu_indices(m, 1)
    return sim_from_sq(best[iu, ju])


def _coarse(v: np.ndarray) -> np.ndarray:
    """Views ``(..., DIM)`` pooled 2x2 to ``(..., DIM / 4)``: the space candidates are searched
    in (a quarter of the cost); exact scores are computed at full resolution afterwards."""
    shape = v.shape[:-1]
    x = v.reshape(-1, CHANNELS, SIDE // 2, 2, SIDE // 2, 2).mean(axis=(3, 5))
    return np.ascontiguousarray(x.reshape(*shape, DIM // 4), np.float32)


def knn(features: np.ndarray, k: int = SEARCH_K, batch: int = 256
        ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Candidates: for each row, the ``k`` other rows whose whole image is nearest to one of
    its views, ``(sims, idx)`` best first (``idx = -1``, ``sim = -inf`` where missing). Every
    view queries an exact L2 index of the whole images at half resolution (``_coarse``); the
    candidates are then scored exactly. ``sims`` are one-way (this row's views against the
    other's whole image); a pair found from both ends gets the better of the two in the tier's
    edges."""
    from curate.core.neighbours import flat_index

    n = len(features)
    kk = max(1, min(k, n - 1))
    sims = np.full((n, kk), -np.inf, np.float32)
    idx = np.full((n, kk), -1, np.int64)
    if n < 2:
        return sims, idx
    base = whole(features)  # (n, D)
    index = flat_index(_coarse(base), "l2")
    for s in range(0, n, batch):
        v = views_of(features[s : s + batch])  # (b, V, D)
        b, nv, _ = v.shape
        _, nb = index.search(_coarse(v).reshape(b * nv, -1), min(kk + 1, n))
        nb = nb.reshape(b, -1)
        for r in range(b):
            row = s + r
            c = np.unique(nb[r])
            c = c[(c >= 0) & (c != row)]
            if not len(c):
                continue
            w = base[c]  # (c, D)
            d = ((v[r] * v[r]).sum(1)[:, None] + (w * w).sum(1)[None, :]
                 - 2.0 * (v[r] @ w.T)).min(0)  # fmt: skip
            best = np.argsort(d, kind="stable")[:kk]
            sims[row, : len(best)] = sim_from_sq(d[best] / DIM)
            idx[row, : len(best)] = c[best]
    return sims, idx


def query_knn(features: np.ndarray, queries: np.ndarray, k: int, block: int = 64
              ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Top-``k`` rows of ``features`` for each query thumbnail by the one-way view score (the
    query's views against each row's whole image), exhaustively: ``(sims, idx)``, best first."""
    n = len(features)
    k = max(1, min(k, n))
    w = whole(features)
    w2 = (w * w).sum(1)
    sims = np.empty((len(queries), k), np.float32)
    idx = np.empty((len(queries), k), np.int64)
    for s in range(0, len(queries), block):
        v = views_of(queries[s : s + block])
        b, nv, _ = v.shape
        flat = v.reshape(b * nv, DIM)
        d = (flat * flat).sum(1)[:, None] + w2[None, :] - 2.0 * (flat @ w.T)
        sim = sim_from_sq(d.reshape(b, nv, n).min(1) / DIM)  # (b, n)
        top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        sims[s : s + b] = np.take_along_axis(sim, top, 1)
        idx[s : s + b] = top
    return sims, idx
