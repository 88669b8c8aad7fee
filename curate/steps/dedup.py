"""``dedup_images`` and ``dedup_captions``: duplicate groups per tier, typed by image and caption.

Both steps compute on the rows sorted by ``sample_id`` and map results back, and the keep policy
ends with ``sample_id``, so the output does not depend on the input order. Rows rejected by
ingest take no part and get nulls.

Pair-aware defaults (Somepalli et al. 2023, seeds.md section 4: duplicated image-caption pairs
drive copying most, an image seen under several captions much less):

* same image + same caption  -> the copies are dropped (``same_pair``);
* same image + other caption -> collapsed into the kept sample, whose distinct captions are
  listed in ``dedup_images_captions`` (``same_image``; the trainer samples one per use);
* same caption + other image -> flagged in ``dedup_captions_flag`` for caption rewriting, not
  removed (``shared_caption``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import polars as pl

from curate.dedup.keep import check_policy
from curate.dedup.tiers import NORM_MARGIN, NORM_RANK
from curate.steps.base import DROP_SUFFIX, RunContext, Step

if TYPE_CHECKING:
    from curate.dedup.tiers import Combined, Tier

REPORT_MEMBERS = 24  # thumbnails per duplicate group in the report (the kept sample first)
REPORT_CAPTION_ROWS = 50  # table rows per duplicate-caption group in the report
IMAGE_TIERS = ("exact", "phash", "dhash", "sscd", "clip", "pixel")
CAPTION_TIERS = ("exact", "minhash", "semantic")
_REPORT_ORDER = 40


class _Chunk:
    """One feature-cache chunk: the stored bytes (what the hashes read) and, decoded once on
    first use, the RGB images (what the embedders read)."""

    def __init__(self, encoded: list[bytes | None]):
        self.encoded = encoded
        self._images: list | None = None

    def images(self) -> list:
        if self._images is None:
            from curate.io.store import decode_rgb

            self._images = [decode_rgb(data) for data in self.encoded]
        return self._images


def _sorted_view(table: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
    """The table sorted by sample_id, and for each input row its position in the sorted table."""
    order = np.argsort(np.asarray(table["sample_id"].to_list(), dtype=object), kind="stable")
    pos = np.empty(len(order), np.int64)
    pos[order] = np.arange(len(order))
    return table[order.tolist()] if len(order) else table, pos


def _null_frame(columns: dict[str, pl.DataType], height: int) -> pl.DataFrame:
    return pl.DataFrame({c: pl.Series(c, [None] * height, dtype=t) for c, t in columns.items()})


def _common_problems(tiers, known, keep: str, guard: str) -> list[str]:
    problems = []
    if not tiers:
        problems.append(f"tiers: give at least one of {', '.join(known)}")
    for t in tiers:
        if t not in known:
            problems.append(f"tiers: unknown tier {t!r} (known: {', '.join(known)})")
    if len(set(tiers)) != len(tiers):
        problems.append("tiers: listed twice")
    msg = check_policy(keep)
    if msg:
        problems.append(f"keep: {msg}")
    return problems


@dataclass
class _Grouping:
    """Results on the ok rows (in sorted order) shared by both steps."""

    ids: list[str]
    combined: Combined
    tiers: list[Tier]


def _group_rows(ids, tiers, priority, guard, mutual_m) -> _Grouping:
    from curate.dedup.tiers import combine_tiers

    combined = combine_tiers(len(ids), tiers, priority, guard=guard, mutual_m=mutual_m)
    return _Grouping(list(ids), combined, tiers)


def _base_columns(prefix: str, g: _Grouping) -> dict[str, list]:
    """Cluster ids per tier and combined, duplicate flags, dup_of, similarity, evidence."""
    ids = np.asarray(g.ids, dtype=object)
    groups = g.combined.groups
    sizes = groups.sizes()
    cols: dict[str, list] = {}
    for name, tg in g.combined.per_tier.items():
        tsizes = tg.sizes()
        cols[f"{prefix}_{name}_cluster"] = [
            ids[r] if s > 1 else None for r, s in zip(tg.rep, tsizes, strict=True)
        ]
    is_dup = groups.is_dup
    cols[f"{prefix}_cluster"] = [
        ids[r] if s > 1 else None for r, s in zip(groups.rep, sizes, strict=True)
    ]
    cols[f"{prefix}_cluster_size"] = sizes.astype(int).tolist()
    cols[f"{prefix}_is_dup"] = is_dup.tolist()
    cols[f"{prefix}_dup_of"] = [
        ids[r] if d else None for r, d in zip(groups.rep, is_dup, strict=True)
    ]
    sims = groups.sim.astype(float)
    cols[f"{prefix}_similarity"] = [
        None if (not d or np.isnan(s)) else round(float(s), 4)
        for s, d in zip(sims, is_dup, strict=True)
    ]
    cols[f"{prefix}_evidence"] = list(g.combined.evidence)
    return cols


def _scatter(
    table: pl.DataFrame, ok_mask: np.ndarray, cols: dict[str, list], dtypes
) -> pl.DataFrame:
    """Frame of ``table.height`` rows: ``cols`` (values for the ok rows, in order), nulls elsewhere."""
    ok_rows = np.flatnonzero(ok_mask)
    out = {}
    for name, dtype in dtypes.items():
        full = [None] * table.height
        for row, v in zip(ok_rows, cols[name], strict=True):
            full[row] = v
        out[name] = pl.Series(name, full, dtype=dtype)
    return pl.DataFrame(out)


def _hist_section(nn: dict[str, np.ndarray]) -> str:
    from curate.report import esc, histogram_svg

    parts = []
    for name, vals in nn.items():
        vals = vals[np.isfinite(vals)]
        if vals.size:
            parts.append(
                f"<div><b>{esc(name)}</b>: nearest-neighbour similarity "
                f"(median {np.median(vals):.3f})<br>{histogram_svg(vals.tolist(), label=name)}</div>"
            )
    return "".join(parts)


# ----------------------------------------------------------------------------------------------


def _group_dtypes(
    prefix: str, tiers: tuple[str, ...], extra: dict[str, pl.DataType]
) -> dict[str, pl.DataType]:
    """The columns a dedup step adds, in order: a cluster id per tier, the grouping, ``extra``,
    and the drop reason."""
    d: dict[str, pl.DataType] = {f"{prefix}_{t}_cluster": pl.String for t in tiers}
    d.update(
        {
            f"{prefix}_cluster": pl.String,
            f"{prefix}_cluster_size": pl.Int32,
            f"{prefix}_is_dup": pl.Boolean,
            f"{prefix}_dup_of": pl.String,
            f"{prefix}_similarity": pl.Float32,
            f"{prefix}_evidence": pl.String,
            f"{prefix}_type": pl.String,
            **extra,
            f"{prefix}{DROP_SUFFIX}": pl.String,
        }
    )
    return d


def _group_stats(n, members, groups, drops, counts, tiers, g) -> dict:
    """Counters a dedup step records in ``stats.json``: totals, per type and per tier."""
    by_tier = {}
    for t in tiers:
        tier = g.combined.per_tier[t.name]
        by_tier[t.name] = {
            "edges": len(t.edges),
            "groups": len(set(tier.rep[tier.is_dup])),
            "duplicates": int(tier.is_dup.sum()),
        }
    return {
        "rows": n,
        "groups": len(members),
        "duplicates": int(groups.is_dup.sum()),
        "dropped": int(sum(d is not None for d in drops)),
        "by_type": counts,
        "by_tier": by_tier,
    }


@dataclass(frozen=True)
class DedupImages(Step):
    """Groups duplicate images; adds per-tier cluster ids, the kept sample, types and drops.

    Tiers: ``exact`` (ingest's ``pixel_hash``), ``phash``/``dhash`` (64-bit perceptual hashes
    within ``*_radius`` bits, mirrored hashes catch flips), ``sscd`` (copy-detection cosine),
    ``clip`` (SemDeDup-style k-means + in-cluster cosine), ``pixel`` (downsampled pixels).
    SSCD pairs must also beat each image's background similarity (its ``sscd_norm_rank``-th
    neighbour) by ``sscd_norm_margin``: SSCD's score normalisation, which stops textures and
    tiles of one photo from matching everything; 0 turns it off.
    A row joins a group when some tier matches it to the group's kept sample directly
    (``guard: verify``), which stops chains of near neighbours from merging unrelated images.
    """

    name: ClassVar[str] = "dedup_images"
    requires: ClassVar[tuple[str, ...]] = (
        "sample_id",
        "caption",
        "width",
        "height",
        "num_bytes",
        "pixel_hash",
        "status",
    )

    tiers: tuple[str, ...] = ("exact", "phash", "sscd")
    keep: str = "largest"
    guard: Literal["verify", "mutual", "none"] = "verify"
    mutual_m: int = 5
    phash_radius: int = 10
    dhash_radius: int = 10
    mirrored: bool = True
    sscd_threshold: float = 0.5
    sscd_model: str | None = None
    sscd_variant: str = "sscd"
    sscd_size: int = 288
    sscd_norm_rank: int = NORM_RANK
    sscd_norm_margin: float = NORM_MARGIN
    clip_threshold: float = 0.92
    clip_model: str = "ViT-B-32"
    clip_pretrained: str | None = "laion2b_s34b_b79k"
    clip_clusters: int = 0
    pixel_threshold: float = 0.97
    pixel_size: int = 16
    neighbours: int = 10
    same_pair: Literal["drop", "keep"] = "drop"
    same_image: Literal["collapse", "drop", "keep"] = "collapse"
    batch_size: int = 32
    report_groups: int = 8

    def produced_columns(self) -> tuple[str, ...]:
        return tuple(self._dtypes())

    def _dtypes(self) -> dict[str, pl.DataType]:
        return _group_dtypes(self.name, self.tiers, {f"{self.name}_captions": pl.List(pl.String)})

    def required_columns(self) -> tuple[str, ...]:
        cols = list(self.requires)
        if self.keep.startswith("column:"):
            cols.append(self.keep.split(":", 1)[1])
        return tuple(cols)

    def validate(self) -> list[str]:
        problems = _common_problems(self.tiers, IMAGE_TIERS, self.keep, self.guard)
        for key in ("phash_radius", "dhash_radius"):
            if not 0 <= getattr(self, key) < 64:
                problems.append(f"{key}: must be in [0, 63], got {getattr(self, key)}")
        for key in ("sscd_threshold", "clip_threshold", "pixel_threshold"):
            if not -1.0 <= getattr(self, key) <= 1.0:
                problems.append(f"{key}: a cosine threshold in [-1, 1], got {getattr(self, key)}")
        for key in ("neighbours", "batch_size", "mutual_m", "sscd_size", "pixel_size"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: must be >= 1")
        if self.sscd_norm_rank < 0:
            problems.append("sscd_norm_rank: must be >= 0 (0 turns score normalisation off)")
        if self.clip_clusters < 0:
            problems.append("clip_clusters: must be >= 0 (0 = sqrt of the number of images)")
        return problems

    # -- features ---------------------------------------------------------------------------

    def _extractors(self, ctx: RunContext) -> dict:
        from curate.dedup.embed import get_image_embedder
        from curate.dedup.hashing import image_hashes

        ex: dict = {}
        for kind in ("phash", "dhash"):
            if kind in self.tiers:

                def fn(chunk, kind=kind):
                    # From the stored bytes: decoded straight to the hash's size (JPEG by DCT
                    # scaling), on the decode threads.
                    codes, flipped = image_hashes(chunk.encoded, kind, mirrored=True)
                    return np.concatenate([codes, flipped], axis=1)  # (N, 16): hash, mirrored

                ex[f"{kind}/encoded"] = fn
        options = {
            "sscd": {
                "model": self.sscd_model,
                "variant": self.sscd_variant,
                "size": self.sscd_size,
            },
            "clip": {"model": self.clip_model, "pretrained": self.clip_pretrained},
            "pixel": {"size": self.pixel_size},
        }
        for kind, opts in options.items():
            if kind in self.tiers:
                emb = get_image_embedder(kind, device=ctx.device, **opts)  # fails early if missing

                def batched(chunk, emb=emb):
                    # A cache chunk holds several batches; the model sees one batch at a time.
                    images = chunk.images()
                    b = self.batch_size
                    parts = [emb.embed(images[s : s + b]) for s in range(0, len(images), b)]
                    return np.concatenate(parts) if parts else np.zeros((0, emb.dim), np.float32)

                ex[f"{kind}/{emb.name}"] = batched
        return ex

    def _features(self, ctx: RunContext, ids: list[str]) -> dict[str, np.ndarray]:
        from curate.dedup.features import cached_features

        extractors = self._extractors(ctx)
        if not extractors or not ids:
            return {k.split("/")[0]: np.zeros((0, 16), np.uint8) for k in extractors}
        store = ctx.images()
        feats, stats = cached_features(
            ctx.artifact_dir("features"),
            ids,
            extractors,
            lambda chunk_ids: _Chunk(store.encoded_many(chunk_ids)),
            chunk_size=self.batch_size * 8,
            progress=(lambda **kw: ctx.progress(**kw)),
        )
        ctx.stats["feature_chunks"] = stats
        return {k.split("/")[0]: v for k, v in feats.items()}

    def _tiers(self, ok: pl.DataFrame, feats: dict, ctx: RunContext) -> list:
        from curate.dedup.tiers import embedding_tier, exact_tier, hash_tier

        out = []
        n = ok.height
        for t in self.tiers:
            if t == "exact":
                out.append(exact_tier(ok["pixel_hash"].to_list()))
            elif t in ("phash", "dhash"):
                both = feats[t].astype(np.uint8)
                radius = self.phash_radius if t == "phash" else self.dhash_radius
                mirrored = both[:, 8:] if self.mirrored else None
                out.append(hash_tier(both[:, :8], radius, mirrored=mirrored, name=t))
            else:
                thr = {"sscd": self.sscd_threshold, "clip": self.clip_threshold}.get(
                    t, self.pixel_threshold
                )
                clusters = 0
                if t == "clip":
                    clusters = self.clip_clusters or max(1, int(np.sqrt(n)))
                norm = {"norm_rank": self.sscd_norm_rank, "norm_margin": self.sscd_norm_margin}
                out.append(
                    embedding_tier(
                        feats[t],
                        thr,
                        name=t,
                        k=self.neighbours,
                        kmeans_clusters=clusters,
                        seed=ctx.derive_seed("dedup_images", t),
                        **(norm if t == "sscd" else {}),
                    )
                )
        return out

    # -- compute ----------------------------------------------------------------------------

    def compute(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        from curate.dedup.keep import keep_priority
        from curate.dedup.text import normalize_captions

        p = self.name
        dtypes = self._dtypes()
        view, pos = _sorted_view(table)
        ok_mask = (view["status"] == "ok").to_numpy()
        ok = view.filter(pl.Series(ok_mask))
        if ok.height == 0:
            return _null_frame(dtypes, table.height)
        ids = ok["sample_id"].to_list()
        feats = self._features(ctx, ids)
        tiers = self._tiers(ok, feats, ctx)
        priority = keep_priority(ok, self.keep)
        g = _group_rows(ids, tiers, priority, self.guard, self.mutual_m)
        cols = _base_columns(p, g)

        groups = g.combined.groups
        captions = ok["caption"].to_list()
        norm = normalize_captions(captions)
        n = ok.height
        types: list[str | None] = [None] * n
        drops: list[str | None] = [None] * n
        merged: list[list[str] | None] = [None] * n
        members: dict[int, list[int]] = {}
        for row in np.flatnonzero(groups.is_dup):
            members.setdefault(int(groups.rep[row]), []).append(int(row))
        counts = {"same_pair": 0, "same_image": 0}
        for rep, rows in members.items():
            types[rep] = "kept"
            distinct = [captions[rep]] if captions[rep] else []
            seen = {norm[rep]}
            for row in sorted(rows, key=lambda r: priority[r]):
                sim = cols[f"{p}_similarity"][row]
                how = f"{g.combined.evidence[row]} {sim:.3f}" if sim is not None else "chain"
                if norm[row] == norm[rep]:
                    types[row] = "same_pair"
                    counts["same_pair"] += 1
                    if self.same_pair == "drop":
                        drops[row] = f"duplicate image and caption of {ids[rep]} ({how})"
                else:
                    types[row] = "same_image"
                    counts["same_image"] += 1
                    if norm[row] not in seen and captions[row]:
                        seen.add(norm[row])
                        distinct.append(captions[row])
                    if self.same_image == "collapse":
                        drops[row] = f"same image as {ids[rep]}, caption merged ({how})"
                    elif self.same_image == "drop":
                        drops[row] = f"same image as {ids[rep]} ({how})"
            if self.same_image == "collapse" and len(distinct) > 1:
                merged[rep] = distinct
        cols[f"{p}_type"] = types
        cols[f"{p}_captions"] = merged
        cols[f"{p}{DROP_SUFFIX}"] = drops

        sorted_frame = _scatter(view, ok_mask, cols, dtypes)
        out = sorted_frame[pos.tolist()] if len(pos) else sorted_frame

        ctx.stats.update(_group_stats(n, members, groups, drops, counts, tiers, g))
        self._report(ctx, ok, g, members, types)
        return out

    def _report(self, ctx: RunContext, ok: pl.DataFrame, g: _Grouping, members, types) -> None:
        from curate.report import esc, html_table, thumb_grid

        stats = ctx.stats
        rows = [(t, v["edges"], v["groups"], v["duplicates"]) for t, v in stats["by_tier"].items()]
        body = [
            f"<p>{stats['duplicates']} duplicate rows in {stats['groups']} groups "
            f"({stats['dropped']} dropped); keep policy <code>{esc(self.keep)}</code>, "
            f"guard <code>{esc(self.guard)}</code>.</p>",
            html_table(rows, ["tier", "edges", "groups (alone)", "duplicates (alone)"]),
            html_table(list(stats["by_type"].items()), ["type", "rows"]),
        ]
        nn = {t.name: t.nn_sim for t in g.tiers if t.nn_sim is not None and t.name != "exact"}
        body.append(_hist_section(nn))
        largest = sorted(members.items(), key=lambda kv: (-len(kv[1]), g.ids[kv[0]]))
        largest = largest[: self.report_groups]
        if largest:
            store = ctx.images()
            ids = g.ids
            sims = g.combined.groups.sim

            def weakest(r):
                return (2.0 if np.isnan(sims[r]) else float(sims[r]), ids[r])

            for rep, rows in largest:
                # The weakest links first (where a false merge would show), at most
                # REPORT_MEMBERS of them: the report costs the same for a group of 10 or 10,000.
                shown = sorted(rows, key=weakest)[: REPORT_MEMBERS - 1]
                order = [rep, *shown]
                imgs = store.get([ids[r] for r in order])
                for im in imgs:  # fresh, still-lazy images: JPEGs decode at thumbnail scale
                    if im is not None and im.format == "JPEG":
                        im.draft("RGB", (256, 256))
                cells = []
                for r, im in zip(order, imgs, strict=True):
                    label = (
                        f"{ids[r]} kept"
                        if r == rep
                        else f"{ids[r]} {types[r]} {g.combined.evidence[r]} "
                        + ("" if np.isnan(sims[r]) else f"{sims[r]:.3f}")
                    )
                    cells.append((im, label))
                more = len(rows) - len(shown)
                note = f'<p class="muted">and {more} more in this group</p>' if more else ""
                body.append(f'<div class="group">{thumb_grid(cells)}{note}</div>')
        ctx.report.add_section("dedup_images", "Duplicate images", "".join(body), _REPORT_ORDER)


# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DedupCaptions(Step):
    """Groups duplicate captions; flags captions shared by different images for rewriting.

    Tiers: ``exact`` (after lower-casing, URL and punctuation removal), ``minhash`` (Jaccard of
    word ``minhash_ngram``-grams >= ``minhash_threshold``), ``semantic`` (sentence-embedding
    cosine >= ``semantic_threshold``). Rows whose image is also the same (``dedup_images_cluster``
    when that step ran, else ``pixel_hash``) are ``same_pair`` copies.
    """

    name: ClassVar[str] = "dedup_captions"
    requires: ClassVar[tuple[str, ...]] = (
        "sample_id",
        "caption",
        "width",
        "height",
        "num_bytes",
        "pixel_hash",
        "status",
    )

    tiers: tuple[str, ...] = ("exact", "minhash")
    keep: str = "largest"
    guard: Literal["verify", "mutual", "none"] = "verify"
    mutual_m: int = 5
    minhash_threshold: float = 0.7
    minhash_perm: int = 128
    minhash_ngram: int = 2
    semantic_threshold: float = 0.9
    semantic_model: str = "minilm"
    neighbours: int = 10
    same_pair: Literal["drop", "keep"] = "drop"
    shared_caption: Literal["flag", "drop", "keep"] = "flag"
    report_groups: int = 10

    def produced_columns(self) -> tuple[str, ...]:
        return tuple(self._dtypes())

    def _dtypes(self) -> dict[str, pl.DataType]:
        return _group_dtypes(self.name, self.tiers, {f"{self.name}_flag": pl.Boolean})

    def required_columns(self) -> tuple[str, ...]:
        cols = list(self.requires)
        if self.keep.startswith("column:"):
            cols.append(self.keep.split(":", 1)[1])
        return tuple(cols)

    def validate(self) -> list[str]:
        problems = _common_problems(self.tiers, CAPTION_TIERS, self.keep, self.guard)
        if not 0.0 < self.minhash_threshold <= 1.0:
            problems.append(f"minhash_threshold: a Jaccard in (0, 1], got {self.minhash_threshold}")
        if not -1.0 <= self.semantic_threshold <= 1.0:
            problems.append(
                f"semantic_threshold: a cosine in [-1, 1], got {self.semantic_threshold}"
            )
        for key in ("minhash_perm", "minhash_ngram", "neighbours", "mutual_m"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: must be >= 1")
        return problems

    def _semantic(self, captions: list[str], ctx: RunContext) -> np.ndarray:
        """Sentence embeddings, cached by model name and caption text."""
        import hashlib

        from curate.dedup.text import SentenceEmbedder

        key = hashlib.blake2b(
            "\x1f".join([self.semantic_model, *captions]).encode("utf-8"), digest_size=10
        ).hexdigest()
        path = ctx.artifact_dir("features") / f"semantic-{key}.npy"
        if path.exists():
            return np.load(path)
        vec = SentenceEmbedder(self.semantic_model, device=ctx.device).embed(captions)
        np.save(path, vec)
        return vec

    def _tiers(self, captions: list[str], valid: np.ndarray, ctx: RunContext) -> list:
        from curate.dedup.search import Edges
        from curate.dedup.text import MinHasher, exact_caption_pairs, normalize_captions
        from curate.dedup.text import signature_pairs as sig_pairs
        from curate.dedup.tiers import Tier, embedding_tier

        out = []
        norm = np.asarray(normalize_captions(captions), dtype=object)
        for t in self.tiers:
            if t == "exact":
                edges = exact_caption_pairs(captions)

                def pair_sim(a, b, norm=norm):
                    same = (norm[a] == norm[b]) & (norm[a] != "")
                    return np.where(same, 1.0, np.nan).astype(np.float32)

                out.append(Tier("exact", edges, pair_sim))
            elif t == "minhash":
                seed = ctx.derive_seed("dedup_captions", "minhash")
                sig = MinHasher(self.minhash_perm, self.minhash_ngram, seed).signatures(captions)
                edges = sig_pairs(sig, self.minhash_threshold)
                thr = self.minhash_threshold
                empty = norm == ""

                def pair_sim(a, b, sig=sig, thr=thr, empty=empty):
                    s = (sig[a] == sig[b]).mean(axis=1)
                    ok = (s >= thr) & ~empty[a] & ~empty[b]
                    return np.where(ok, s, np.nan).astype(np.float32)

                out.append(Tier("minhash", edges if len(edges) else Edges.empty(), pair_sim))
            else:
                vec = self._semantic([c or "" for c in captions], ctx)
                out.append(
                    embedding_tier(
                        vec,
                        self.semantic_threshold,
                        name="semantic",
                        k=self.neighbours,
                        valid=valid,
                    )
                )
        return out

    def compute(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        from curate.dedup.keep import keep_priority

        p = self.name
        dtypes = self._dtypes()
        view, pos = _sorted_view(table)
        ok_mask = (view["status"] == "ok").to_numpy()
        ok = view.filter(pl.Series(ok_mask))
        if ok.height == 0:
            return _null_frame(dtypes, table.height)
        ids = ok["sample_id"].to_list()
        captions = ok["caption"].to_list()
        valid = np.array([bool(c and c.strip()) for c in captions])
        tiers = self._tiers(captions, valid, ctx)
        priority = keep_priority(ok, self.keep)
        g = _group_rows(ids, tiers, priority, self.guard, self.mutual_m)
        cols = _base_columns(p, g)

        # Image identity: the image dedup cluster when that step ran, else the pixel hash.
        if "dedup_images_cluster" in ok.columns:
            image_key = [
                c if c is not None else sid
                for c, sid in zip(ok["dedup_images_cluster"].to_list(), ids, strict=True)
            ]
        else:
            image_key = [
                h if h is not None else sid
                for h, sid in zip(ok["pixel_hash"].to_list(), ids, strict=True)
            ]
        groups = g.combined.groups
        n = ok.height
        types: list[str | None] = [None] * n
        flags: list[bool] = [False] * n
        drops: list[str | None] = [None] * n
        members: dict[int, list[int]] = {}
        for row in np.flatnonzero(groups.is_dup):
            members.setdefault(int(groups.rep[row]), []).append(int(row))
        counts = {"same_pair": 0, "shared_caption": 0, "flagged": 0}
        for rep, rows in members.items():
            types[rep] = "kept"
            images = {image_key[rep]}
            shared = []
            for row in rows:
                sim = cols[f"{p}_similarity"][row]
                how = f"{g.combined.evidence[row]} {sim:.3f}" if sim is not None else "chain"
                if image_key[row] == image_key[rep]:
                    types[row] = "same_pair"
                    counts["same_pair"] += 1
                    if self.same_pair == "drop":
                        drops[row] = f"duplicate image and caption of {ids[rep]} ({how})"
                else:
                    types[row] = "shared_caption"
                    counts["shared_caption"] += 1
                    images.add(image_key[row])
                    shared.append(row)
                    if self.shared_caption == "drop":
                        drops[row] = f"caption shared with {ids[rep]} ({how})"
            if len(images) > 1 and self.shared_caption == "flag":
                # Every image carrying the shared caption gets rewritten, the kept one included:
                # the caption itself is the key that retrieves several pictures.
                for row in [rep, *rows]:
                    if types[row] != "same_pair":
                        flags[row] = True
        counts["flagged"] = int(sum(flags))
        cols[f"{p}_type"] = types
        cols[f"{p}_flag"] = flags
        cols[f"{p}{DROP_SUFFIX}"] = drops

        sorted_frame = _scatter(view, ok_mask, cols, dtypes)
        out = sorted_frame[pos.tolist()] if len(pos) else sorted_frame
        ctx.stats.update(_group_stats(n, members, groups, drops, counts, tiers, g))
        self._report(ctx, g, members, captions, types)
        return out

    def _report(self, ctx, g: _Grouping, members, captions, types) -> None:
        from curate.report import html_table

        stats = ctx.stats
        body = [
            f"<p>{stats['duplicates']} duplicate captions in {stats['groups']} groups; "
            f"{stats['by_type']['flagged']} rows flagged for caption rewriting, "
            f"{stats['dropped']} dropped.</p>",
            html_table(
                [(t, v["edges"], v["duplicates"]) for t, v in stats["by_tier"].items()],
                ["tier", "edges", "duplicates (alone)"],
            ),
            html_table(list(stats["by_type"].items()), ["type", "rows"]),
        ]
        nn = {t.name: t.nn_sim for t in g.tiers if t.nn_sim is not None}
        body.append(_hist_section(nn))
        largest = sorted(members.items(), key=lambda kv: (-len(kv[1]), g.ids[kv[0]]))
        for rep, rows in largest[: self.report_groups]:
            shown = sorted(rows, key=lambda r: g.ids[r])[: REPORT_CAPTION_ROWS - 1]
            table_rows = [
                (g.ids[r], types[r], g.combined.evidence[r] or "", captions[r] or "")
                for r in [rep, *shown]
            ]
            more = len(rows) - len(shown)
            note = f'<p class="muted">and {more} more in this group</p>' if more else ""
            header = ["sample_id", "type", "evidence", "caption"]
            body.append(f'<div class="group">{html_table(table_rows, header)}{note}</div>')
        ctx.report.add_section(
            "dedup_captions", "Duplicate captions", "".join(body), _REPORT_ORDER + 1
        )
