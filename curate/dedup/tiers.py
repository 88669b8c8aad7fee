"""Duplicate evidence from several tiers, combined into one grouping.

A tier turns one kind of signal (a pixel hash, a perceptual hash, an embedding) into candidate
edges plus a direct pair test ``pair_sim(a, b)`` (similarity, NaN when the pair does not match).
Groups are formed from the union of all tiers' edges, and a member joins its group's kept sample
when *any* tier matches that pair directly: hashes miss flips and crops that SSCD catches, SSCD
misses some heavy JPEG that hashes catch, so each tier's evidence counts on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from curate.core.neighbours import cosine_knn
from curate.dedup.clusters import Groups, Guard, group
from curate.dedup.search import BINARY_FLAT_MAX, Edges, hamming_nn, hamming_pairs, knn_edges

PairSim = Callable[[np.ndarray, np.ndarray], np.ndarray]
# SSCD's score normalisation as the sscd tier applies it by default (see ``embedding_tier``).
NORM_RANK = 32
NORM_MARGIN = 0.08
# The views tier's normalisation: its similarity to the 16th candidate, beaten by 0.05.
VIEWS_NORM_RANK = 16
VIEWS_NORM_MARGIN = 0.05


def beats_background(sim, background_a, background_b, margin: float):
    """Score normalisation's test: ``sim`` beats both rows' background similarity by ``margin``."""
    return sim - np.maximum(background_a, background_b) >= margin


@dataclass
class Tier:
    """One tier's evidence: candidate edges and a direct pair test."""

    name: str
    edges: Edges
    pair_sim: PairSim
    nn_sim: np.ndarray | None = None  # (N,) each row's best similarity to another row
    info: dict = field(default_factory=dict)


def exact_tier(keys: Sequence[str | None], name: str = "exact") -> Tier:
    """Rows with equal non-null ``keys`` (e.g. pixel hashes) match with similarity 1."""
    codes = np.full(len(keys), -1, np.int64)
    seen: dict[str, int] = {}
    for row, key in enumerate(keys):
        if key is not None:
            codes[row] = seen.setdefault(key, len(seen))
    ii, jj = [], []
    first: dict[int, int] = {}
    for row, c in enumerate(codes):
        if c < 0:
            continue
        if c in first:
            ii.append(first[c])
            jj.append(row)
        else:
            first[c] = row
    edges = Edges.build(np.array(ii, np.int64), np.array(jj, np.int64), np.ones(len(ii)))

    def pair_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        same = (codes[a] == codes[b]) & (codes[a] >= 0)
        return np.where(same, 1.0, np.nan).astype(np.float32)

    counts = np.bincount(codes[codes >= 0]) if (codes >= 0).any() else np.zeros(0, int)
    nn = (
        np.where((codes >= 0) & (counts[np.maximum(codes, 0)] > 1), 1.0, 0.0)
        if len(counts)
        else None
    )
    return Tier(name, edges, pair_sim, nn_sim=nn)


def _pair_limit(per_row, band, cross, a, b, stricter) -> np.ndarray:
    """The limit (radius or threshold) a pair of rows ``a, b`` must meet: the stricter of the two
    rows' own (``stricter``: ``np.minimum`` for radii, ``np.maximum`` for similarities); for a
    pair of two size bands (``band`` given), ``cross`` kept between the two rows' limits."""
    own = stricter(per_row[a], per_row[b])
    if band is None:
        return own
    lo, hi = np.minimum(per_row[a], per_row[b]), np.maximum(per_row[a], per_row[b])
    band = np.asarray(band)
    return np.where(band[a] == band[b], own, np.clip(cross, lo, hi))


def hash_tier(
    codes: np.ndarray,
    radius: int,
    mirrored: np.ndarray | None = None,
    name: str = "phash",
    valid: np.ndarray | None = None,
    row_radius: np.ndarray | None = None,
    row_band: np.ndarray | None = None,
    cross_radius: int | None = None,
) -> Tier:
    """Rows whose hashes (or one's mirrored hash) are within Hamming ``radius``.

    ``row_radius`` (N,), when given, is a radius per row (an auto-calibrated threshold of the
    row's size band; -1 where the tier is disabled): a pair matches within the smaller of its
    two rows' radii, and ``radius`` is ignored. With ``row_band`` (N,) and ``cross_radius``, a
    pair of two bands (a resized copy) matches within ``cross_radius`` (the calibration of all
    bands together) kept between the two rows' radii.
    """
    from curate.dedup.hashing import hamming

    bits = codes.shape[1] * 8
    n = len(codes)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    if row_radius is not None:
        row_radius = np.asarray(row_radius, np.int64)
        valid = valid & (row_radius >= 0)
        radius = int(row_radius[valid].max()) if valid.any() else 0
    idx = np.flatnonzero(valid)
    edges = hamming_pairs(codes[idx], radius)
    if mirrored is not None:
        edges = edges.union(hamming_pairs(codes[idx], radius, queries=mirrored[idx]))
    edges = Edges(idx[edges.i], idx[edges.j], edges.sim)
    cross = row_radius is not None and row_band is not None and cross_radius is not None

    def pair_radius(a, b):
        if row_radius is None:
            return radius
        return _pair_limit(row_radius, row_band if cross else None, cross_radius, a, b, np.minimum)

    if row_radius is not None and len(edges):
        d = np.rint((1.0 - edges.sim) * bits)
        edges = edges.filter(d <= pair_radius(edges.i, edges.j))
    nn = None
    if len(idx) <= BINARY_FLAT_MAX:  # exact nearest neighbours are affordable: histogram them
        nn = np.full(n, np.nan, np.float32)
        nn[idx] = hamming_nn(codes[idx], None if mirrored is None else mirrored[idx])

    def pair_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = hamming(codes[a], codes[b])
        if mirrored is not None:
            d = np.minimum(d, hamming(mirrored[a], codes[b]))
        ok = (d <= pair_radius(a, b)) & valid[a] & valid[b]
        return np.where(ok, 1.0 - d / bits, np.nan).astype(np.float32)

    info = {"radius": radius, "mirrored": mirrored is not None, "per_row": row_radius is not None,
            "cross_radius": int(cross_radius) if cross else None}  # fmt: skip
    return Tier(name, edges, pair_sim, nn_sim=nn, info=info)


def embedding_tier(
    vectors: np.ndarray,
    threshold: float,
    name: str,
    k: int = 10,
    method: str = "auto",
    valid: np.ndarray | None = None,
    kmeans_clusters: int = 0,
    kmeans_probe: int = 1,
    seed: int = 0,
    norm_rank: int = 0,
    norm_margin: float = 0.0,
    row_threshold: np.ndarray | None = None,
    row_band: np.ndarray | None = None,
    cross_threshold: float | None = None,
    knn: tuple[np.ndarray, np.ndarray] | None = None,
) -> Tier:
    """Rows whose embeddings have cosine >= ``threshold``.

    ``kmeans_clusters > 0`` searches SemDeDup-style (Abbas et al. 2023): k-means on the
    embeddings, then all pairs inside each cluster (each row in the clusters of its
    ``kmeans_probe`` nearest centroids); otherwise each row's ``k`` nearest neighbours.

    ``norm_rank > 0`` adds score normalisation (Pizzi et al. 2022, SSCD, section 3.4): a pair
    must also beat both rows' background similarity, the cosine to their ``norm_rank``-th
    nearest neighbour, by ``norm_margin``. Textures and tiles of one photo sit close to many
    images at once; a real copy stands out from its background. An image with more than
    ``norm_rank`` copies has a copy as its background, so its weaker copies are left to the
    other tiers; below ``norm_rank + 1`` rows normalisation is off.

    ``row_threshold`` (N,), when given, is a threshold per row (an auto-calibrated threshold of
    the row's size band; +inf where the tier is disabled): a pair must reach the larger of its
    two rows' thresholds, and ``threshold`` is ignored; with ``row_band`` and
    ``cross_threshold``, a pair of two bands must reach ``cross_threshold`` (the calibration of
    all bands together) kept between the two rows' thresholds. ``knn`` passes a precomputed
    ``cosine_knn`` of the valid rows (at least ``max(k, norm_rank)`` columns).
    """
    n = len(vectors)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    threshold, pair_threshold = _similarity_limits(
        threshold, row_threshold, row_band, cross_threshold, valid
    )

    idx = np.flatnonzero(valid)
    x = np.ascontiguousarray(vectors[idx], np.float32)
    nn = np.full(n, np.nan, np.float32)
    background = np.full(n, -np.inf, np.float32)
    use_norm = norm_rank > 0 and len(idx) > norm_rank
    if len(idx) >= 2:
        if knn is not None:
            sims, nbr = knn
        else:
            kk = max(k, norm_rank if use_norm else 0)
            sims, nbr = cosine_knn(x, k=kk, method=method, seed=seed)
        nn[idx] = sims[:, 0]
        if use_norm:
            background[idx] = sims[:, norm_rank - 1]
        sims, nbr = sims[:, :k], nbr[:, :k]
        if kmeans_clusters > 0:
            local = semdedup_pairs(x, threshold, kmeans_clusters, seed=seed, probe=kmeans_probe)
        else:
            local = knn_edges(sims, nbr, threshold)
        edges = Edges(idx[local.i], idx[local.j], local.sim)
        if use_norm:
            ok = beats_background(edges.sim, background[edges.i], background[edges.j], norm_margin)
            edges = edges.filter(ok)
        if row_threshold is not None and len(edges):
            edges = edges.filter(edges.sim >= pair_threshold(edges.i, edges.j))
    else:
        edges = Edges.empty()

    def pair_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        s = np.einsum("nd,nd->n", vectors[a], vectors[b])
        ok = (s >= pair_threshold(a, b)) & valid[a] & valid[b]
        if use_norm:
            ok &= beats_background(s, background[a], background[b], norm_margin)
        return np.where(ok, np.clip(s, 0, 1), np.nan).astype(np.float32)

    info = {
        "threshold": threshold,
        "k": k,
        "kmeans_clusters": kmeans_clusters,
        "kmeans_probe": kmeans_probe if kmeans_clusters > 0 else 0,
        "norm_rank": norm_rank if use_norm else 0,
        "norm_margin": norm_margin,
        "per_row": row_threshold is not None,
    }
    return Tier(name, edges, pair_sim, nn_sim=nn, info=info)


def views_tier(
    features: np.ndarray,
    threshold: float,
    name: str = "views",
    k: int = 8,
    valid: np.ndarray | None = None,
    row_threshold: np.ndarray | None = None,
    row_band: np.ndarray | None = None,
    cross_threshold: float | None = None,
    knn: tuple[np.ndarray, np.ndarray] | None = None,
    norm_rank: int = 0,
    norm_margin: float = 0.0,
) -> Tier:
    """Rows whose thumbnails match under some view (``curate.dedup.views``) with similarity
    ``>= threshold``; ``row_threshold`` / ``row_band`` / ``cross_threshold`` as in
    ``embedding_tier``. ``knn``: a precomputed ``views.knn`` of the valid rows (at least
    ``max(k, norm_rank)`` columns). ``norm_rank > 0``: a pair must also beat both rows'
    similarity to their ``norm_rank``-th candidate by ``norm_margin`` (as SSCD's score
    normalisation): many near-identical distinct images (handwritten digits) do not stand out
    from each other, a copy does."""
    from curate.dedup import views

    n = len(features)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    threshold, pair_threshold = _similarity_limits(
        threshold, row_threshold, row_band, cross_threshold, valid
    )

    idx = np.flatnonzero(valid)
    nn = np.full(n, np.nan, np.float32)
    background = np.full(n, -np.inf, np.float32)
    use_norm = norm_rank > 0 and len(idx) > norm_rank
    edges = Edges.empty()
    if len(idx) >= 2:
        sims, nbr = knn if knn is not None else views.knn(features[idx], k=max(k, norm_rank))
        nn[idx] = sims[:, 0]
        if use_norm:
            background[idx] = sims[:, norm_rank - 1]
        local = knn_edges(sims[:, :k], nbr[:, :k], threshold) if threshold <= 1.0 else Edges.empty()
        edges = Edges(idx[local.i], idx[local.j], local.sim)
        if use_norm and len(edges):
            ok = beats_background(edges.sim, background[edges.i], background[edges.j], norm_margin)
            edges = edges.filter(ok)
        if len(edges):
            edges = edges.filter(edges.sim >= pair_threshold(edges.i, edges.j))

    def pair_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ok = valid[a] & valid[b]
        s = np.full(len(a), np.nan, np.float32)
        if ok.any():
            s[ok] = views.pair_sim(features[a[ok]], features[b[ok]])
        ok &= s >= pair_threshold(a, b)
        if use_norm:
            ok &= beats_background(s, background[a], background[b], norm_margin)
        return np.where(ok, np.clip(s, 0, 1), np.nan).astype(np.float32)

    info = {"threshold": threshold, "k": k, "views": len(views.VIEWS),
            "norm_rank": norm_rank if use_norm else 0, "norm_margin": norm_margin,
            "per_row": row_threshold is not None}  # fmt: skip
    return Tier(name, edges, pair_sim, nn_sim=nn, info=info)


def semdedup_pairs(
    x: np.ndarray,
    threshold: float,
    n_clusters: int,
    seed: int = 0,
    max_block: int = 4096,
    probe: int = 1,
) -> Edges:
    """All pairs with cosine >= ``threshold`` inside each spherical k-means cluster (SemDeDup,
    Abbas et al. 2023).

    ``probe > 1``: each row joins the clusters of its ``probe`` nearest centroids (multi-probe,
    as an IVF index searches several lists), so a pair that a cluster border splits is still
    compared when its two rows share one of those clusters; a pair compared in several clusters
    is kept once. ``probe >= n_clusters`` compares every pair.
    """
    import faiss

    n, dim = x.shape
    k = int(max(1, min(n_clusters, n // 2)))
    probe = int(max(1, min(probe, k)))
    if k > 1:
        km = faiss.Kmeans(dim, k, niter=20, seed=seed % 2**31, spherical=True, verbose=False)
        km.train(x)
        _, assign = km.index.search(x, probe)  # (n, probe): the nearest centroids first
    else:
        assign = np.zeros((n, 1), np.int64)
    # rows by cluster, ascending row ids inside each (a stable sort of row-major entries)
    cluster = assign.ravel()
    order = np.argsort(cluster, kind="stable")
    row_of = np.repeat(np.arange(n, dtype=np.int64), assign.shape[1])[order]
    cuts = np.flatnonzero(np.diff(cluster[order])) + 1
    found_i, found_j, found_s = [], [], []
    for members in np.split(row_of, cuts):
        xm = x[members]
        for start in range(0, len(members), max_block):
            s = xm[start : start + max_block] @ xm.T  # (b, m)
            r, col = np.nonzero(s >= threshold)
            found_i.append(members[start + r])
            found_j.append(members[col])
            found_s.append(s[r, col])
    if not found_i:
        return Edges.empty()
    return Edges.build(np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s))


@dataclass
class Combined:
    """The grouping from all tiers and, per duplicate row, which tiers match its kept sample."""

    groups: Groups
    evidence: list[str | None]  # comma-joined tier names per row (None for kept rows)
    tier_sims: dict[str, np.ndarray]  # per tier: similarity of each row to its kept sample
    per_tier: dict[str, Groups]  # each tier grouped on its own


def combine_tiers(
    n: int, tiers: Sequence[Tier], priority: np.ndarray, guard: Guard = "verify", mutual_m: int = 5
) -> Combined:
    """Group rows by the union of all tiers' edges; a member must match its kept sample in some
    tier (``guard="verify"``), or each edge must be mutual (``"mutual"``), or neither (``"none"``).
    """

    def verify_with(ts: Sequence[Tier]):
        def verify(rep: int, members: np.ndarray) -> np.ndarray:
            a = np.full(len(members), rep, np.int64)
            sims = np.stack([t.pair_sim(a, members) for t in ts])  # (tiers, members)
            return np.nanmax(sims, axis=0)  # NaN where no tier matches

        return verify

    def run(ts: Sequence[Tier]) -> Groups:
        edges = Edges.empty()
        for t in ts:
            edges = edges.union(t.edges) if len(edges) else t.edges
        with np.errstate(all="ignore"), _quiet_nanmax():
            return group(n, edges, priority, guard=guard, verify=verify_with(ts), mutual_m=mutual_m)

    groups = run(tiers)
    per_tier = {t.name: run([t]) for t in tiers}
    dups = np.flatnonzero(groups.is_dup)
    tier_sims: dict[str, np.ndarray] = {}
    evidence: list[str | None] = [None] * n
    names_per_row: list[list[str]] = [[] for _ in range(n)]
    for t in tiers:
        s = np.full(n, np.nan, np.float32)
        if dups.size:
            s[dups] = t.pair_sim(groups.rep[dups], dups)
            for row in dups[~np.isnan(s[dups])]:
                names_per_row[row].append(t.name)
        tier_sims[t.name] = s
    for row in dups:
        evidence[row] = ",".join(names_per_row[row]) or "chain"
    return Combined(groups, evidence, tier_sims, per_tier)


class _quiet_nanmax:
    """Silence numpy's 'All-NaN slice' warning: an all-NaN column means 'no tier matched'."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def _similarity_limits(threshold, row_threshold, row_band, cross_threshold, valid):
    """(the search threshold, ``pair_threshold(a, b)``) of a similarity tier: one ``threshold``
    for every pair, or per-row thresholds (the loosest valid one to search with) where a pair
    must reach the stricter of its rows', or for a pair of two bands ``cross_threshold`` kept
    between them (:func:`_pair_limit`)."""
    if row_threshold is not None:
        row_threshold = np.asarray(row_threshold, np.float64)
        finite = np.isfinite(row_threshold) & valid
        threshold = float(row_threshold[finite].min()) if finite.any() else 2.0
    cross = row_threshold is not None and row_band is not None and cross_threshold is not None

    def pair_threshold(a, b):
        if row_threshold is None:
            return threshold
        band = row_band if cross else None
        return _pair_limit(row_threshold, band, cross_threshold, a, b, np.maximum) - 1e-6

    return threshold, pair_threshold
