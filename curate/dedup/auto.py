"""``threshold: auto``: each tier's threshold calibrated on the run's own data.

For every tier and image-size band the calibration measures two distributions:

* **copies**: the standard transforms of ``curate.dedup.planting`` (JPEG, resize, crop, flip,
  small rotation, text overlay) planted into a deterministic sample of the run's images; the
  score of each copy against its own original. Copies whose pixels equal the original's (a
  resize of an 8 px image is the image) are left out: the exact tier finds those.
* **background**: every pair within a hashed sample of the run's rows per band (one row per
  identical-pixel key; mirrored hashes included, SSCD score normalisation applied as the tier
  applies it). Random pairs rather than nearest neighbours: a row's nearest neighbour is its
  copy wherever the data holds one, while random pairs hold few copies, and those can be found.
  The per-pair tail ``p(t)`` (share of pairs at or above ``t``) times the number of other rows
  is a query's expected number of false matches ``F(t)``.
* **copies in the background**: the sample's copy groups are the connected components of the
  pairs on which two tiers reach the similarity half the planted copy pairs (copy-original and
  copy-copy) reach, and of near-identical hashes (one bit) that another tier does not
  contradict. Pairs inside a component leave the background (``component_pairs``). The same
  rule applied to the planted groups says which share of a group's pairs it finds
  (``planted_coverage``), so the sample holds about ``component_pairs / planted_coverage`` copy
  pairs (``estimated_copy_pairs``).
* **chance agreement**: two weak tiers (a 64-bit hash and a small-input SSCD on 8 px digits)
  agree at that level by chance on the most similar distinct images, and their components then
  chain. Real copies are found as often at stricter levels as the planted ones are, so the
  estimate holds or grows up the ``REACH_LADDER`` (the level a third, a quarter, ... of the
  planted pairs reach); chance agreement fades much faster than the planted coverage does, so
  the estimate falls. Each band takes the smallest estimate over the rungs that cover at least
  ``MIN_COVERED_PAIRS`` planted pairs, and its copy groups from the loosest rung consistent with
  it (``copy_reach``; ``copy_estimates`` records the ladder). On 400 distinct digits at SSCD
  64 px the estimate falls 3,411 -> 342 -> 70 copy pairs up the ladder (none is a copy); on
  32 px tiles with planted copies it grows 5,970 -> 6,551 -> 8,822 (4,200 true).
* **copies the components miss** are expected in the rest with the tail of the planted pairs
  the rule misses; ``RESIDUAL_SHARE`` of that expectation is subtracted (the planted groups, 7
  images, are smaller than many real ones, whose components hold more of their pairs), never
  below the pairs another tier puts below 98 % of the planted pairs (certainly different
  pictures), and the result made monotone from the loose end. One tier alone never vouches for
  a copy, so a tier that cannot tell a band's images apart (digits) finds no copies to leave
  out. Single-tier runs leave nothing out (conservative).
  The caption tiers keep the nearest-neighbour background (``calibrate_nearest``).

The threshold of a tier in a band is the loosest one whose pair precision reaches
``target_precision`` under the model recorded as ``precision_model``: ``lam R / (lam R + F)``,
``R`` the recall on the planted copies, ``F`` the expected false matches per query and ``lam``
the copies per row (``copies_per_row``): twice the estimated copy pairs over the sampled rows,
at least 1 (as if every row had one copy). A tier whose recall at
that threshold stays below ``min_recall``, or
that reaches the target at no threshold, is **disabled** for the band: its bits or embedding do
not tell that band's images apart, so its matches there count only where a stronger tier agrees
(which then decides on its own). Bands: image min side <= 32 px (``tiny``), <= 128 px
(``small``), larger (``large``); a band with too few rows to calibrate uses the calibration of
all rows together (``pooled``). Cost: ``background_sample`` rows per band, all their pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from curate.seeding import derive_seed

# (name, largest min side in px) of the image-size bands, smallest first.
BANDS: tuple[tuple[str, int], ...] = (("tiny", 32), ("small", 128), ("large", 1 << 30))
CALIBRATION_TRANSFORMS = ("jpeg", "resize", "crop", "flip", "rotate", "text")
MIN_BAND_ORIGINALS = 16  # fewer sampled originals in a band: use the pooled calibration
MIN_ROWS = 8  # fewer rows in the whole run: no calibration, the tier's fixed default
CANDIDATES = 48  # neighbours per row the step searches (kNN width it keeps)
HIST_BINS = 40
# Two rows are in one copy group of the data when a chain of pairs links them on which two
# tiers reach the similarity that this share of the planted copy pairs (copy-original and
# copy-copy) reach.
REACH = 0.5
# Stricter levels (the share of planted pairs that reach them) at which the copy count is
# estimated again: chance agreement of weak tiers fades up the ladder, real copies do not.
REACH_LADDER = (REACH, 0.35, 0.25, 0.15)
# A looser rung's copy groups are used when its count is within this factor of the smallest
# estimate (plus CONSISTENT_SLACK pairs of counting noise).
CONSISTENT_FACTOR = 2.0
CONSISTENT_SLACK = 3
MIN_COVERED_PAIRS = 5  # a stricter rung counts where it covers at least this many planted pairs
NEAR_REACH = (
    0.9  # near-identical hashes: another tier at the similarity 90 % of planted pairs reach
)
UNION_MAX = 4096  # at most this many sampled rows in all bands: copy groups found across bands
MIN_COVERAGE = 0.05  # below this planted coverage the copy count is not extrapolated further
# Share of the expected copy pairs the components miss that is subtracted from the background
# (1: all of them; the planted pairs' shape overstates them at loose thresholds).
RESIDUAL_SHARE = 0.5
# A views pair at the similarity this share of the planted copy pairs reach, that no other
# tier contradicts, is a copy on its own (as a near-identical hash is): the views tier is the one
# that sees crops and rotations of small images, where the other tiers see little.
VIEWS_NEAR_REACH = 0.25
SURE_QUANTILE = 0.02  # another tier below this quantile of planted copy pairs: not a copy
REPORT_BACKGROUND = 4096  # the most similar background pairs kept for the report's histogram
PRECISION_MODEL = (
    "precision = lam R / (lam R + F): R = recall on planted copies, F = (distinct rows - 1) * "
    "p(t), p(t) = share of background pairs (all pairs of a hashed sample per band, less those "
    "inside copy groups two tiers agree on) at or above t, less RESIDUAL_SHARE of the expected "
    "tail of the copies those groups miss; lam = 2 * estimated copy pairs / sampled rows, at "
    "least 1"
)
HASH_BITS = 64
UNITS = {"hash": "radius", "minhash": "jaccard", "views": "similarity"}  # the rest: cosine
COSINE_GRID = np.round(np.arange(0.995, 0.295, -0.005), 3)  # strict to loose
HASH_RADII = np.arange(0, 25)  # strict to loose


def size_band(min_side: np.ndarray) -> np.ndarray:
    """Band index of each image from its smaller side in pixels (see ``BANDS``)."""
    limits = np.array([b[1] for b in BANDS])
    return np.searchsorted(limits, np.asarray(min_side), side="left").clip(0, len(BANDS) - 1)


def hashed_sample(ids: Sequence[str], seed: int, key: str, k: int, rows: np.ndarray) -> np.ndarray:
    """``k`` of ``rows`` (indices into ``ids``) picked by a hash of (seed, key, sample_id): the
    same rows whatever the input order. Returned sorted."""
    rows = np.asarray(rows, np.int64)
    if len(rows) <= k:
        return np.sort(rows)
    rank = np.array([derive_seed(seed, key, ids[r]) for r in rows], dtype=np.uint64)
    return np.sort(rows[np.argsort(rank, kind="stable")[:k]])


def histogram(values: np.ndarray, edges: np.ndarray) -> dict:
    vals = np.asarray(values, float)
    vals = vals[np.isfinite(vals)]
    counts, _ = np.histogram(np.clip(vals, edges[0], edges[-1]), bins=edges)
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.astype(int).tolist()}


def pick_threshold(
    pos: np.ndarray,
    bg: np.ndarray,
    grid: np.ndarray,
    target: float,
    min_recall: float,
    fmr: np.ndarray | None = None,
) -> dict:
    """The loosest threshold of ``grid`` (ordered strict to loose, similarity units) whose
    one-to-one precision ``R / (R + F)`` reaches ``target``; ``status`` says ok or why not.

    ``R``: the fraction of ``pos`` (planted copies) at or above the threshold. ``F``: the
    per-query false-match rate, ``fmr[k]`` for ``grid[k]`` where given, else the fraction of
    ``bg`` (one background score per query) at or above it."""
    pos = np.asarray(pos, float)
    bg = np.asarray(bg, float)
    best = None
    rows = []
    for k, thr in enumerate(grid):
        r = float(np.mean(pos >= thr)) if len(pos) else 0.0
        f_bg = float(np.mean(bg >= thr)) if len(bg) else 0.0
        f = float(fmr[k]) if fmr is not None else f_bg
        p = r / (r + f) if r + f > 0 else 1.0
        rows.append((float(thr), p, r, f))
        if r > 0 and p >= target:
            best = (float(thr), p, r, f)
    if best is None:
        thr, p, r, f = rows[0]
        return {"threshold": thr, "precision": round(p, 4), "recall": round(r, 4),
                "false_match_rate": round(f, 5), "status": "disabled",
                "why": f"no threshold reaches precision {target}"}  # fmt: skip
    thr, p, r, f = best
    out = {"threshold": thr, "precision": round(p, 4), "recall": round(r, 4),
           "false_match_rate": round(f, 5), "status": "ok"}  # fmt: skip
    if r < min_recall:
        out["status"] = "disabled"
        out["why"] = f"recall {r:.2f} < {min_recall} at precision {target}"
    return out


# -- tier scores ---------------------------------------------------------------------------


@dataclass
class TierData:
    """What calibration needs of one tier.

    ``kind`` "hash": features ``(N, 16)`` uint8 (hash, mirrored hash); "cosine": unit rows.
    ``norm_background`` (cosine tiers with score normalisation): each real row's similarity to
    its ``norm_rank``-th neighbour; copies get theirs from a search among the real rows.
    """

    name: str
    kind: str
    real: np.ndarray
    copies: np.ndarray
    norm_rank: int = 0
    norm_margin: float = 0.0
    norm_background: np.ndarray | None = None
    knn: tuple[np.ndarray, np.ndarray] | None = None  # (sims, idx) of every real row, if known
    info: dict = field(default_factory=dict)

    def pair(self, a_feat: np.ndarray, b_feat: np.ndarray) -> np.ndarray:
        """Row-wise similarity of two feature stacks."""
        if self.kind == "hash":
            from curate.dedup.hashing import hamming

            d = np.minimum(
                hamming(a_feat[:, :8], b_feat[:, :8]), hamming(a_feat[:, 8:], b_feat[:, :8])
            )
            return (1.0 - d / HASH_BITS).astype(np.float32)
        if self.kind == "minhash":
            return (a_feat == b_feat).mean(axis=1).astype(np.float32)
        if self.kind == "views":
            from curate.dedup import views

            return views.pair_sim(a_feat, b_feat)
        return np.einsum("nd,nd->n", a_feat, b_feat).astype(np.float32)

    def neighbours(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` real rows for each query feature row: ``(sims, idx)``, best first."""
        k = max(1, min(k, len(self.real)))
        if self.kind == "views":
            from curate.dedup import views

            return views.query_knn(self.real, queries, k)
        if self.kind == "hash":
            import faiss

            index = faiss.IndexBinaryFlat(HASH_BITS)
            index.add(np.ascontiguousarray(self.real[:, :8]))
            d1, i1 = index.search(np.ascontiguousarray(queries[:, :8]), k)
            d2, i2 = index.search(np.ascontiguousarray(queries[:, 8:]), k)
            d = np.concatenate([d1, d2], 1)
            idx = np.concatenate([i1, i2], 1)
            sims = 1.0 - d / HASH_BITS
        elif self.kind == "minhash":
            sims = np.empty((len(queries), len(self.real)), np.float32)
            for start in range(0, len(queries), 64):  # (64, N, K) compares at a time
                q = queries[start : start + 64]
                sims[start : start + 64] = (q[:, None, :] == self.real[None, :, :]).mean(axis=2)
            idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            sims = np.take_along_axis(sims, idx, 1)
        else:
            import faiss

            index = faiss.IndexFlatIP(self.real.shape[1])
            index.add(np.ascontiguousarray(self.real, np.float32))
            sims, idx = index.search(np.ascontiguousarray(queries, np.float32), k)
        order = np.argsort(-sims, axis=1, kind="stable")
        return np.take_along_axis(sims, order, 1), np.take_along_axis(idx, order, 1)

    def copy_background(self) -> np.ndarray | None:
        """Each planted copy's similarity to its ``norm_rank``-th neighbour among the real rows
        (the normalisation background of a copy), None where the tier does not normalise."""
        if self.norm_background is None or self.norm_rank <= 0 or not len(self.copies):
            return None
        sims, _ = self.neighbours(self.copies, self.norm_rank + 1)
        return sims[:, min(self.norm_rank, sims.shape[1] - 1)]

    def normalise(self, sim, bg_a, bg_b) -> np.ndarray:
        if self.norm_rank <= 0 or self.norm_background is None:
            return sim
        from curate.dedup.tiers import beats_background

        ok = beats_background(sim, bg_a, bg_b, self.norm_margin)
        return np.where(ok, sim, -np.inf).astype(np.float32)

    def grid(self) -> np.ndarray:
        if self.kind == "hash":
            return 1.0 - HASH_RADII / HASH_BITS
        if self.kind == "minhash":
            return np.round(np.arange(0.99, 0.19, -0.01), 2)
        return COSINE_GRID

    def edges(self) -> np.ndarray:
        if self.kind == "hash":
            return np.linspace(1.0 - 32 / HASH_BITS, 1.0, 33)
        return np.linspace(0.0, 1.0, HIST_BINS + 1)

    def unit_threshold(self, thr: float):
        """A similarity threshold in the tier's own unit (Hamming radius for hashes)."""
        if self.kind == "hash":
            return int(round((1.0 - thr) * HASH_BITS))
        return round(float(thr), 4)


def pair_matrix(t: TierData, rows: np.ndarray) -> np.ndarray:
    """Similarity of every pair of ``rows`` (indices into ``t.real``) in tier ``t``'s unit,
    the upper triangle flattened (``i < j``, row-major): ``(m * (m - 1) / 2,)`` float32.
    Hashes: popcount of XOR, mirrored hash included; SSCD normalisation applied as the tier
    applies it."""
    m = len(rows)
    iu, ju = np.triu_indices(m, 1)
    if m < 2:
        return np.zeros(0, np.float32)
    f = t.real[rows]
    if t.kind == "views":
        from curate.dedup import views

        s = views.pair_matrix(f)
        if t.norm_background is not None and t.norm_rank > 0:
            bg = t.norm_background[rows]
            s = t.normalise(s, bg[iu], bg[ju])
        return s.astype(np.float32)
    if t.kind == "hash":
        a = np.ascontiguousarray(f[:, :8]).view(np.uint64)[:, 0]
        b = np.ascontiguousarray(f[:, 8:]).view(np.uint64)[:, 0]
        d = np.minimum(
            np.bitwise_count(a[:, None] ^ a[None, :]), np.bitwise_count(b[:, None] ^ a[None, :])
        )
        d = np.minimum(d, d.T)  # mirror either side
        return (1.0 - d[iu, ju] / HASH_BITS).astype(np.float32)
    if t.kind == "minhash":
        s = np.empty((m, m), np.float32)
        for st in range(0, m, 64):
            s[st : st + 64] = (f[st : st + 64, None, :] == f[None, :, :]).mean(axis=2)
        s = s[iu, ju]
    else:
        x = np.ascontiguousarray(f, np.float32)
        s = (x @ x.T)[iu, ju]
    if t.norm_background is not None and t.norm_rank > 0:
        bg = t.norm_background[rows]
        s = t.normalise(s, bg[iu], bg[ju])
    return s.astype(np.float32)


def _identity(identity: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(key per row, the first row of each key, sorted): rows with equal keys (identical pixels
    or captions) count as one original; a None key is the row's own."""
    keys = np.array([k if k is not None else f"\x00row{r}" for r, k in enumerate(identity)],
                    dtype=object)  # fmt: skip
    _, first = np.unique(keys, return_index=True)
    return keys, np.sort(first)


def tail_counts(scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """For each threshold of ``grid``, how many of ``scores`` reach it."""
    s = np.sort(np.asarray(scores, np.float64))
    return (len(s) - np.searchsorted(s, np.asarray(grid, np.float64) - 1e-9, side="left")).astype(
        np.int64
    )


def calibrate(
    tiers: Sequence[TierData],
    ids: Sequence[str],
    band: np.ndarray,
    copy_src: np.ndarray,
    copy_kind: np.ndarray,
    identity: Sequence,
    seed: int,
    target: float,
    min_recall: float,
    background_sample: int = 4096,
    band_names: Sequence[str] = tuple(b[0] for b in BANDS),
    copies_per_original: int = len(CALIBRATION_TRANSFORMS),
) -> dict:
    """Thresholds per tier and band. ``copy_src[c]`` is the real row copy ``c`` was made from;
    ``identity[i]`` is a key equal for rows with identical pixels (or captions), None if unknown:
    the background is drawn from one row per key.

    Background: every pair within a hashed sample of (at most ``background_sample``) rows of
    each band, one row per identity key, less the pairs inside the sample's copy groups (see the
    module docstring); the per-pair tail ``p(t)`` of the rest, times the number of other rows a
    query is matched against, is the per-query false-match rate ``F(t)`` (see
    ``pick_threshold``).

    Returns ``{"tiers": {name: {"bands": {band: result}, ...}}, "rounds": n}`` with a result per
    band as ``pick_threshold`` plus the threshold in the tier's unit, recall per transform and
    histograms of the copy and background scores.
    """
    n = len(ids)
    nb = len(band_names)
    band = np.asarray(band)
    copy_src = np.asarray(copy_src, np.int64)
    copy_kind = np.asarray(copy_kind, dtype=object)
    keys, reps = _identity(identity)
    is_rep = np.zeros(n, bool)
    is_rep[reps] = True
    others = max(1, len(reps) - 1)  # rows a query is matched against, identical pixels once
    # Copies against their originals, and pairs of copies of one original (how two real copies
    # of one picture in the data score against each other).
    pos, gpos, graw = {}, {}, {}
    ga, gb = _group_pairs(copy_src)  # indices into copies; -1: the original itself
    for t in tiers:
        s = t.pair(t.copies, t.real[copy_src])
        bg_c = t.copy_background()
        s_norm = s if bg_c is None else t.normalise(s, bg_c, t.norm_background[copy_src])
        pos[t.name] = s_norm
        cc = t.pair(t.copies[ga], t.copies[gb]) if len(ga) else np.zeros(0, np.float32)
        graw[t.name] = np.concatenate([s, cc])
        if bg_c is not None and len(ga):
            cc = t.normalise(cc, bg_c[ga], bg_c[gb])
        gpos[t.name] = np.concatenate([s_norm, cc])
    copy_band = band[copy_src]
    # Copy groups in the data: components of the pairs on which two tiers (scores as each tier
    # applies them, SSCD normalised) reach the similarity half the planted copy pairs reach.
    # The same rule on the planted groups (original + its copies) says which share of a real
    # group's pairs such components hold (``planted_coverage``).
    # The same at each stricter rung of REACH_LADDER (see the module docstring).
    levels = [{k: _reach_level(v, r) for k, v in gpos.items()} for r in REACH_LADDER]
    weak = {k: _reach_level(v, NEAR_REACH) for k, v in graw.items()}
    # "views" tiers: the level a pair must reach to count as a copy with no second vote
    weak |= {f"{t.name}\x00near": _reach_level(gpos[t.name], VIEWS_NEAR_REACH) for t in tiers
             if t.kind == "views"}  # fmt: skip
    joint = len(tiers) >= 2
    rungs = ([_planted_coverage(gpos, lv, copy_src, ga, gb, n, graw, weak, tiers) for lv in levels]
             if joint else [])  # fmt: skip
    info = {"background_pairs": 0, "sample_rows": 0, "component_pairs": 0,
            "estimated_copy_pairs": 0.0, "copy_reach": {}, "copy_estimates": {}}  # fmt: skip
    bg: dict[str, dict[int, tuple]] = {t.name: {} for t in tiers}
    band_rows = [
        hashed_sample(
            ids, seed, "background", background_sample, np.flatnonzero((band == b) & is_rep)
        )  # fmt: skip
        for b in range(nb)
    ]
    # Copy groups span bands (a resized copy is smaller than its original): the components are
    # found among the rows of every band's sample together where that is affordable.
    union = np.sort(np.concatenate(band_rows)) if nb else np.zeros(0, np.int64)
    group_of = None
    if joint and 2 <= len(union) <= UNION_MAX:
        u_raw, u_scored = _pair_scores(tiers, union)
        group_of = [dict(zip(union.tolist(),
                             _components(tiers, union, lv, weak, u_raw, u_scored).tolist(),
                             strict=True)) for lv in levels]  # fmt: skip
        del u_raw, u_scored
    for b in range(nb):
        rows = band_rows[b]
        m = len(rows)
        raw, scored = _pair_scores(tiers, rows)
        within = np.zeros(m * (m - 1) // 2, bool)
        covered, n_copies = None, 0.0
        if joint and m >= 2:
            iu, ju = np.triu_indices(m, 1)
            ladder = []
            for i, lv in enumerate(levels):
                label = (np.array([group_of[i][r] for r in rows.tolist()]) if group_of is not None
                         else _components(tiers, rows, lv, weak, raw, scored))  # fmt: skip
                w = label[iu] == label[ju]
                ladder.append((w, int(w.sum()), rungs[i][0], rungs[i][1]))
            within, covered, n_copies, pick, estimates = _consistent_rung(ladder)
            info["copy_reach"][band_names[b]] = REACH_LADDER[pick]
            info["copy_estimates"][band_names[b]] = estimates
        inside = int(within.sum())
        # Pairs inside a component are copies and leave the background; the real copy pairs
        # the components miss (those of the planted pairs ``covered`` misses, shaped like the planted pairs the rule
        # misses) are expected in what is left, and part of them (RESIDUAL_SHARE) subtracted.
        npairs = int((~within).sum())
        info["background_pairs"] += npairs
        info["sample_rows"] += m
        info["component_pairs"] += inside
        info["estimated_copy_pairs"] += round(n_copies, 1)
        for t in tiers:
            s = scored[t.name][~within]
            grid = t.grid()
            counts = tail_counts(s, grid).astype(float)
            missed = gpos[t.name][~covered] if covered is not None else gpos[t.name][:0]
            share = tail_counts(missed, grid) / max(1, len(gpos[t.name]))
            # A floor no subtraction goes below: pairs another tier puts below nearly every
            # planted copy pair are certainly different pictures.
            sure = np.zeros(npairs, bool)
            for o in tiers:
                if o.name != t.name and len(graw[o.name]):
                    sure |= raw[o.name][~within] < np.quantile(graw[o.name], SURE_QUANTILE)
            floor = tail_counts(s[sure], grid).astype(float)
            b_counts = np.maximum(counts - RESIDUAL_SHARE * n_copies * share, floor)
            # never more pairs at a stricter threshold than at a looser one
            b_counts = np.minimum.accumulate(b_counts[::-1])[::-1]
            lam = max(1.0, 2.0 * n_copies / max(m, 1))
            bg[t.name][b] = (b_counts, npairs, s, lam)
    results = {t.name: _per_band(t, pos[t.name], copy_band, copy_kind, bg[t.name],
                                 target, min_recall, nb, copies_per_original, others)
               for t in tiers}  # fmt: skip
    out = dict(info)
    out["reach"] = REACH
    out["planted_coverage"] = round(float(rungs[0][1]), 4) if rungs else 0.0
    out["reach_ladder"] = list(REACH_LADDER)
    out["ladder_coverage"] = [round(float(c), 4) for _, c in rungs]
    out["residual_share"] = RESIDUAL_SHARE
    out["precision_model"] = PRECISION_MODEL
    out["tiers"] = {}
    for t in tiers:
        out["tiers"][t.name] = {
            "unit": UNITS.get(t.kind, "cosine"),
            "bands": {band_names[b]: results[t.name][b] for b in range(nb)},
            # pairs of two bands: the calibration of all bands together
            "pooled": results[t.name]["pooled"],
        }
    return out


def _consistent_rung(ladder: list[tuple]) -> tuple:
    """The copy groups of one band from the ``REACH_LADDER`` rungs ``(within, component pairs,
    planted covered mask, planted coverage)``, loosest first.

    A rung's estimate is ``pairs / coverage``; it counts where at least ``MIN_COVERED_PAIRS``
    planted pairs are covered (the loosest rung always counts). The groups are those of the
    loosest counting rung whose pair count is consistent with the smallest estimate (within
    ``CONSISTENT_FACTOR``, plus ``CONSISTENT_SLACK`` pairs); its copy count is extrapolated with
    the coverage floored at ``MIN_COVERAGE``, as a single rung is. Returns ``(within, covered,
    estimated copy pairs, rung, estimates)``."""
    usable = [i for i, (_, _, cov, _) in enumerate(ladder)
              if i == 0 or int(cov.sum()) >= MIN_COVERED_PAIRS]  # fmt: skip
    eff = [c if i and c > 0 else max(c, MIN_COVERAGE) for i, (_, _, _, c) in enumerate(ladder)]
    est = [k / e for (_, k, _, _), e in zip(ladder, eff, strict=True)]
    low = min(est[i] for i in usable)
    # the rung of the smallest estimate always qualifies
    pick = next(i for i in usable
                if ladder[i][1] <= CONSISTENT_FACTOR * eff[i] * low + CONSISTENT_SLACK)  # fmt: skip
    w, k, covered, cover = ladder[pick]
    estimates = {str(r): round(e, 1) if i in usable else None
                 for i, (r, e) in enumerate(zip(REACH_LADDER, est, strict=True))}  # fmt: skip
    return w, covered, k / max(cover, MIN_COVERAGE), pick, estimates


def _reach_level(scores: np.ndarray, reach: float = 0.0) -> float:
    """The similarity ``reach`` (default ``REACH``) of the planted copy pairs reach (inf with
    none)."""
    v = np.asarray(scores, float)
    v = v[np.isfinite(v)]
    return float(np.quantile(v, 1.0 - (reach or REACH))) if len(v) else np.inf


def _pair_scores(tiers, rows) -> tuple[dict, dict]:
    """Every pair of ``rows`` per tier: ``(raw, scored)``, raw as the features give it and
    scored as the tier applies it (SSCD normalised; the same array where a tier does not)."""
    raw = {t.name: pair_matrix(TierData(t.name, t.kind, t.real, t.copies), rows) for t in tiers}
    scored = {t.name: raw[t.name] if t.norm_background is None or t.norm_rank <= 0
              else pair_matrix(t, rows) for t in tiers}  # fmt: skip
    return raw, scored


def _components(tiers, rows, level, weak, raw=None, scored=None) -> np.ndarray:
    """Copy-group label of each of ``rows``: connected components of the pairs on which two
    tiers reach ``level`` (scores as each tier applies them) and of near-identical hashes (one
    bit at most, mirror included) that another tier does not contradict (its raw score at least
    ``weak``: small copies whose embedding does not stand out). ``raw`` / ``scored``: the pair
    matrices of ``rows`` if already computed."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = len(rows)
    if raw is None or scored is None:
        raw, scored = _pair_scores(tiers, rows)
    votes = sum((scored[k] >= level[k]).astype(np.int64) for k in scored)
    edge = votes >= 2
    for t in tiers:
        if t.kind not in ("hash", "views"):
            continue
        ok = np.zeros(len(edge), bool)
        for o in tiers:
            if o.name != t.name:
                ok |= raw[o.name] >= weak[o.name]
        near = (weak[f"{t.name}\x00near"] if t.kind == "views"
                else 1.0 - 1.0 / HASH_BITS - 1e-6)  # fmt: skip
        edge |= (raw[t.name] >= near) & ok
    iu, ju = np.triu_indices(m, 1)
    g = coo_matrix((np.ones(int(edge.sum())), (iu[edge], ju[edge])), shape=(m, m))
    return connected_components(g, directed=False)[1]


def _planted_coverage(gpos, level, copy_src, ga, gb, n, graw=None, weak=None, tiers=()
                      ) -> tuple[np.ndarray, float]:  # fmt: skip
    """Which planted pairs (copy-original, then copy-copy, as in ``gpos``) the component rule
    (two tiers; a views pair no other tier contradicts) puts in one component, and their
    share."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    c = len(copy_src)
    a = np.concatenate([np.arange(c) + n, ga + n]).astype(np.int64)
    b = np.concatenate([copy_src, gb + n]).astype(np.int64)
    if len(a) == 0:
        return np.zeros(0, bool), 0.0
    votes = sum((v >= level[k]).astype(np.int64) for k, v in gpos.items())
    e = votes >= 2
    for t in tiers:
        if t.kind == "views" and graw is not None and weak is not None:
            ok = np.zeros(len(e), bool)
            for o in tiers:
                if o.name != t.name:
                    ok |= graw[o.name] >= weak[o.name]
            e |= (graw[t.name] >= weak[f"{t.name}\x00near"]) & ok
    g = coo_matrix((np.ones(int(e.sum())), (a[e], b[e])), shape=(n + c, n + c))
    label = connected_components(g, directed=False)[1]
    covered = label[a] == label[b]
    return covered, float(covered.mean())


def _group_pairs(copy_src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(a, b)`` of planted copies made from the same original."""
    a, b = [], []
    order = np.argsort(copy_src, kind="stable")
    src = copy_src[order]
    for lo, hi in zip(*_runs(src), strict=True):
        idx = order[lo:hi]
        i, j = np.triu_indices(len(idx), 1)
        a.append(idx[i])
        b.append(idx[j])
    if not a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(a).astype(np.int64), np.concatenate(b).astype(np.int64)


def _runs(sorted_vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(sorted_vals) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cut = np.flatnonzero(sorted_vals[1:] != sorted_vals[:-1]) + 1
    return np.r_[0, cut], np.r_[cut, len(sorted_vals)]


def _per_band(t: TierData, pos, copy_band, copy_kind, bg, target, min_recall, nb, per_original,
              others) -> dict:  # fmt: skip
    """``pick_threshold`` per band on that band's background pairs ``bg[b] = (tail counts per
    grid threshold, pairs, scores)``; pooled where a band has too few samples."""
    grid = t.grid()
    edges = t.edges()

    def one(pmask, counts, pairs, scores, lam: float, pooled: bool) -> dict:
        p_tail = counts / max(pairs, 1)
        fmr = np.minimum(1.0, others * p_tail)
        # precision = lam R / (lam R + F): lam real copies per row (at least one)
        r = pick_threshold(pos[pmask], np.zeros(0), grid, target, min_recall, fmr=fmr / lam)
        k = int(np.argmin(np.abs(grid - r["threshold"])))
        r["false_match_rate"] = round(float(fmr[k]), 5)
        r["copies_per_row"] = round(float(lam), 3)
        if pairs < MIN_BAND_ORIGINALS * (MIN_BAND_ORIGINALS - 1) // 2:
            r["status"] = "disabled"
            r["why"] = f"{pairs} background pairs: too few"
        thr = r["threshold"]
        r["sim_threshold"] = thr if r["status"] == "ok" else np.inf
        r["threshold"] = t.unit_threshold(thr)
        r["pooled"] = pooled
        r["copies"] = int(pmask.sum())
        r["background_pairs"] = int(pairs)
        r["pair_tail"] = float(p_tail[k])
        kinds = copy_kind[pmask]
        ps = pos[pmask]
        r["recall_by_transform"] = {
            k: round(float(np.mean(ps[kinds == k] >= thr)), 3) for k in sorted(set(kinds))
        }
        r["copy_hist"] = histogram(ps, edges)
        r["background_hist"] = histogram(scores, edges)
        r["_copies"] = ps  # raw scores for the report; dropped from stats
        r["_background"] = np.sort(scores)[-REPORT_BACKGROUND:]  # its tail, for the report
        return r

    sizes = {b: bg[b][1] for b in range(nb)}
    total = sum(sizes.values())
    counts = sum(bg[b][0] for b in range(nb))
    scores_all = np.concatenate([bg[b][2] for b in range(nb)]) if nb else np.zeros(0)
    lam_all = sum(bg[b][3] * bg[b][1] for b in range(nb)) / max(total, 1)
    pooled = one(np.ones(len(pos), bool), counts, total, scores_all, max(1.0, lam_all), True)
    out = {}
    for b in range(nb):
        pm = copy_band == b
        originals = pm.sum() / max(1, per_original)
        if (
            originals >= MIN_BAND_ORIGINALS
            and sizes[b] >= MIN_BAND_ORIGINALS * (MIN_BAND_ORIGINALS - 1) // 2
        ):
            out[b] = one(pm, bg[b][0], sizes[b], bg[b][2], bg[b][3], False)
        else:
            out[b] = dict(pooled, background_pairs_in_band=int(sizes[b]))
    out["pooled"] = pooled
    return out


# -- nearest-neighbour background (the caption tiers) ------------------------------------

STANDOUT_RANK = 8  # a copy stands out from a row's 8th nearest neighbour
ROUNDS = 4  # rounds of "leave out confirmed copies, recompute thresholds"


def calibrate_nearest(
    tiers: Sequence[TierData],
    ids: Sequence[str],
    band: np.ndarray,
    copy_src: np.ndarray,
    copy_kind: np.ndarray,
    identity: Sequence,
    seed: int,
    target: float,
    min_recall: float,
    background_sample: int = 4096,
    band_names: Sequence[str] = tuple(b[0] for b in BANDS),
    copies_per_original: int = len(CALIBRATION_TRANSFORMS),
) -> dict:
    """The nearest-neighbour calibration (caption tiers): each background row against its nearest
    non-copy row; pairs two tiers agree on, identical keys and standout pairs left out.

    Thresholds per tier and band. ``copy_src[c]`` is the real row copy ``c`` was made from;
    ``identity[i]`` is a key equal for rows with identical pixels (or captions), None if unknown:
    the background is searched among one row per key.

    Returns ``{"tiers": {name: {"bands": {band: result}, ...}}, "rounds": n}`` with a result per
    band as ``pick_threshold`` plus the threshold in the tier's unit, recall per transform and
    histograms of the copy and background scores.
    """
    n = len(ids)
    nb = len(band_names)
    band = np.asarray(band)
    copy_src = np.asarray(copy_src, np.int64)
    copy_kind = np.asarray(copy_kind, dtype=object)
    # Background rows: per band, a hashed sample.
    bg_rows = np.concatenate(
        [
            hashed_sample(ids, seed, "background", background_sample, np.flatnonzero(band == b))
            for b in range(nb)
        ]
    ).astype(np.int64)
    keys, reps = _identity(identity)
    # Candidate neighbours of every background row, in every tier.
    cand: list[np.ndarray] = []
    for t in tiers:
        if len(reps) == n and t.knn is not None and t.knn[1].shape[1] >= 1:
            idx = t.knn[1][bg_rows, :CANDIDATES]
        else:
            sub = TierData(t.name, t.kind, t.real[reps], t.copies)
            _, local = sub.neighbours(t.real[bg_rows], CANDIDATES + 1)
            idx = np.where(local >= 0, reps[np.maximum(local, 0)], -1)
        cand.append(idx)
    pairs_i = np.repeat(bg_rows, sum(c.shape[1] for c in cand))
    pairs_j = np.concatenate(cand, axis=1).ravel()
    keep = (pairs_j >= 0) & (pairs_j != pairs_i)
    key = np.unique(pairs_i[keep] * n + pairs_j[keep])
    pi, pj = key // n, key % n  # (P,) sorted by background row
    bg_rows = np.unique(pi)
    same = keys[pi] == keys[pj]
    scores = {}
    for t in tiers:
        s = t.pair(t.real[pi], t.real[pj])
        if t.norm_background is not None and t.norm_rank > 0:
            s = t.normalise(s, t.norm_background[pi], t.norm_background[pj])
        scores[t.name] = s
    # Copies against their originals.
    pos = {}
    for t in tiers:
        s = t.pair(t.copies, t.real[copy_src])
        bg_c = t.copy_background()
        pos[t.name] = s if bg_c is None else t.normalise(s, bg_c, t.norm_background[copy_src])
    copy_band = band[copy_src]
    row_start = np.searchsorted(pi, bg_rows)  # pairs of each background row: contiguous
    # Near-identical pairs are copies from the start: a hash within one bit (mirror included) and
    # some other tier at least as similar as three quarters of the planted copies. Distinct images of a band
    # a tier cannot tell apart (digits, flat icons) rarely hash that close, and never with
    # another tier agreeing at copy level; a real copy of a photo does.
    raw = {t.name: t.pair(t.real[pi], t.real[pj]) for t in tiers}
    rawpos = {t.name: t.pair(t.copies, t.real[copy_src]) for t in tiers}
    # the similarity three quarters of the planted copies reach
    median = {k: float(np.quantile(v, 0.25)) if len(v) else np.inf for k, v in rawpos.items()}
    near = np.zeros(len(pi), bool)
    for t in tiers:
        if t.kind != "hash":
            continue
        others = [o for o in tiers if o.name != t.name]
        agree = np.zeros(len(pi), bool)
        for o in others:
            agree |= raw[o.name] >= median[o.name]
        near |= (raw[t.name] >= 1.0 - 1.0 / HASH_BITS - 1e-6) & agree
    same = same | near
    # Copies stand out from a row's other neighbours; hard negatives of a tier that cannot tell
    # the images apart do not. Where the planted copies beat their 8th neighbour by more than
    # nine background rows in ten beat theirs (so the tier separates copies from neighbours in
    # this data), a background pair that stands out as much as the median planted copy is a
    # copy. With many copies in the data (over a tenth of the rows) the gate stays shut.
    rows = np.unique(np.concatenate([pi, pj, copy_src]))
    for t in tiers:
        sub = TierData(t.name, t.kind, t.real[reps], t.copies)
        kth = np.full(n, np.nan)
        kth[rows] = sub.neighbours(t.real[rows], STANDOUT_RANK + 1)[0][:, -1]
        kth_c = sub.neighbours(t.copies, STANDOUT_RANK + 1)[0][:, -1] if len(t.copies) else kth[:0]
        z = raw[t.name] - np.maximum(kth[pi], kth[pj])
        zpos = rawpos[t.name] - np.maximum(kth_c, kth[copy_src])
        order = np.lexsort((-raw[t.name], pi))  # each background row's nearest candidate first
        ps = pi[order]
        z_nn = z[order][np.r_[True, ps[1:] != ps[:-1]]] if len(pi) else z
        if len(zpos) and len(z_nn) and np.median(zpos) > np.quantile(z_nn, 0.9):
            same = same | (z >= np.median(zpos))
    excluded = same.copy()
    results: dict[str, dict[int, dict]] = {}
    rounds = 0
    for _ in range(ROUNDS):
        rounds += 1
        results = {}
        for t in tiers:
            nn = _nearest_non_copy(scores[t.name], excluded, row_start)
            results[t.name] = _per_band_nearest(t, pos[t.name], copy_band, copy_kind, nn,
                                        band[bg_rows], target, min_recall, nb,
                                        copies_per_original)  # fmt: skip
        # Pairs on which two or more tiers agree (or with identical pixels) are copies.
        votes = np.zeros(len(pi), np.int64)
        for t in tiers:
            thr = np.array([results[t.name][b]["sim_threshold"] for b in range(nb)])
            on = np.array([results[t.name][b]["status"] == "ok" for b in range(nb)])
            need = np.maximum(thr[band[pi]], thr[band[pj]])
            votes += (scores[t.name] >= need) & on[band[pi]] & on[band[pj]]
        new = same | (votes >= 2)
        if np.array_equal(new, excluded):
            break
        excluded = new
    out = {
        "rounds": rounds,
        "background_pairs": len(pi),
        "identical_pairs": int((same & ~near).sum()),
        "near_identical_pairs": int((near & ~(same & ~near)).sum()),
        "excluded_pairs": int(excluded.sum()),
        "tiers": {},
    }
    for t in tiers:
        out["tiers"][t.name] = {
            "unit": UNITS.get(t.kind, "cosine"),
            "bands": {band_names[b]: results[t.name][b] for b in range(nb)},
        }
    return out


def _nearest_non_copy(scores: np.ndarray, excluded: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Per background row (its candidate pairs are ``scores[start[k]:start[k+1]]``), the best
    score of a pair not left out; NaN where every candidate was left out (the row says nothing
    about the background), -1 where no candidate scores at all."""
    if len(scores) == 0:
        return np.full(len(start), np.nan)
    s = np.where(excluded, -np.inf, scores)
    nn = np.maximum.reduceat(s, start)
    left = np.add.reduceat((~excluded).astype(np.int64), start)
    nn = np.where(np.isfinite(nn), nn, -1.0)
    return np.where(left == 0, np.nan, nn)


def _per_band_nearest(
    t: TierData, pos, copy_band, copy_kind, nn, bg_band, target, min_recall, nb, per_original
) -> dict:
    """``pick_threshold`` per band, pooled where a band has too few samples."""
    grid = t.grid()
    edges = t.edges()

    nn_ok = ~np.isnan(nn)
    nn, bg_band = nn[nn_ok], bg_band[nn_ok]

    def one(pmask, bmask, pooled: bool) -> dict:
        r = pick_threshold(pos[pmask], nn[bmask], grid, target, min_recall)
        if bmask.sum() < MIN_BAND_ORIGINALS:
            r["status"] = "disabled"
            r["why"] = f"{int(bmask.sum())} distinct rows: too few for a background"
        thr = r["threshold"]
        r["sim_threshold"] = thr if r["status"] == "ok" else np.inf
        r["threshold"] = t.unit_threshold(thr)
        r["pooled"] = pooled
        r["copies"] = int(pmask.sum())
        r["background_rows"] = int(bmask.sum())
        kinds = copy_kind[pmask]
        ps = pos[pmask]
        r["recall_by_transform"] = {
            k: round(float(np.mean(ps[kinds == k] >= thr)), 3) for k in sorted(set(kinds))
        }
        r["copy_hist"] = histogram(ps, edges)
        r["background_hist"] = histogram(nn[bmask], edges)
        r["_copies"] = ps  # raw scores for the report; dropped from stats
        r["_background"] = nn[bmask]
        return r

    allp = np.ones(len(pos), bool)
    allb = np.ones(len(nn), bool)
    pooled = one(allp, allb, True)
    out = {}
    for b in range(nb):
        pm, bm = copy_band == b, bg_band == b
        originals = pm.sum() / max(1, per_original)
        if originals >= MIN_BAND_ORIGINALS and bm.sum() >= MIN_BAND_ORIGINALS:
            out[b] = one(pm, bm, False)
        else:
            out[b] = dict(pooled, background_rows_in_band=int(bm.sum()))
    return out


# -- captions ----------------------------------------------------------------------------------

CAPTION_EDITS = ("case", "drop", "swap", "add", "replace")


def plant_caption_edits(
    captions: Sequence[str], ids: Sequence[str], seed: int, vocabulary: Sequence[str]
) -> list[tuple[str, int, str]]:
    """Edited copies of ``captions`` as a scraped set's near-duplicate captions look:
    ``(copy, index of the source caption, edit)``. Edits: case and punctuation changed, one
    word dropped, two neighbouring words swapped, one word added, one word replaced (the new
    words from ``vocabulary``, the run's own words). Randomness from (seed, sample_id, edit)."""
    from curate.seeding import rng_for

    vocab = list(vocabulary) or ["photo"]
    out = []
    for row, (text, sid) in enumerate(zip(captions, ids, strict=True)):
        words = (text or "").split()
        if not words:
            continue
        for edit in CAPTION_EDITS:
            rng = rng_for(seed, sid, "caption", edit)
            w = list(words)
            k = int(rng.integers(0, len(w)))
            if edit == "case":
                w = [x.upper() if rng.random() < 0.5 else x.lower() for x in w]
                w[-1] = w[-1] + str(rng.choice([".", "!", " ...", ","]))
            elif edit == "drop" and len(w) > 1:
                del w[k]
            elif edit == "swap" and len(w) > 1:
                k = min(k, len(w) - 2)
                w[k], w[k + 1] = w[k + 1], w[k]
            elif edit == "add":
                w.insert(k, str(vocab[int(rng.integers(0, len(vocab)))]))
            elif edit == "replace":
                w[k] = str(vocab[int(rng.integers(0, len(vocab)))])
            else:
                continue
            out.append((" ".join(w), row, edit))
    return out


def format_auto(result: dict, target: float) -> str:
    """Plain-text lines of an auto calibration (``DedupImages`` / ``DedupCaptions`` stats)."""
    lines = [f"auto thresholds (target precision {target}; background {result.get('background_pairs', 0)} "
             f"sampled pairs, about {result.get('estimated_copy_pairs', 0):.0f} of them copies)"]  # fmt: skip
    for name, res in result.get("tiers", {}).items():
        if "fixed" in res:
            lines.append(f"  {name}: fixed {res['fixed']} {res.get('why', '')}".rstrip())
            continue
        for band, r in res["bands"].items():
            state = "ok" if r["status"] == "ok" else f"disabled ({r.get('why', '')})"
            lines.append(
                f"  {name} {band}{' (pooled)' if r.get('pooled') else ''}: threshold "
                f"{r['threshold']} {res['unit']}, precision {r['precision']}, recall "
                f"{r['recall']}, false-match rate {r['false_match_rate']}, {state}"
            )
    return "\n".join(lines)
