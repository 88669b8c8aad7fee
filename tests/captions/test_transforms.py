"""Caption rewriting strategies: deterministic per (seed, sample_id, epoch), exact insertions,
p=0 is the identity, and bad parameters fail with one line."""

from __future__ import annotations

import numpy as np
import pytest

from curate.captions.transforms import (
    DEFAULTS,
    RNA_HIGH,
    STRATEGIES,
    CaptionTransform,
    insert_at_boundaries,
    make_transform,
)
from curate.captions.vocab import DEFAULT_WORDS, vocabulary_from_list
from curate.errors import UsageError

CAPTIONS = [
    "an astronaut in a white spacesuit in front of a flag",
    "a tabby cat looking to the side",
    "old coins",
    "moon",
]
IDS = [f"s{i:05d}" for i in range(400)]
TEXT_STRATEGIES = ("rc", "rt", "cwr", "rna")


def _is_subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(any(w == x for x in it) for w in short)


def _inserted(original: str, new: str) -> list[str]:
    """The words of ``new`` left after removing ``original``'s words in order (greedy)."""
    rest, words = list(new.split()), original.split()
    out, j = [], 0
    for w in rest:
        if j < len(words) and w == words[j]:
            j += 1
        else:
            out.append(w)
    assert j == len(words), f"{original!r} is not kept in order inside {new!r}"
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_seed_sample_and_epoch_give_the_same_caption(strategy):
    alts = {s: ["x y", "z w"] for s in IDS}
    t = make_transform(strategy, p=0.5, seed=3, captions=alts)
    forward = {(s, c): t(c, s, 1) for s in IDS for c in CAPTIONS}
    # a fresh transform, called in reverse order: the draws do not depend on call order
    fresh = make_transform(strategy, p=0.5, seed=3, captions=alts)
    backward = {(s, c): fresh(c, s, 1) for s in reversed(IDS) for c in reversed(CAPTIONS)}
    assert forward == backward


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_epoch_and_seed_change_the_draws(strategy):
    alts = {s: ["x y", "z w", "v u"] for s in IDS}
    base = make_transform(strategy, p=0.5, seed=0, captions=alts)
    other_seed = make_transform(strategy, p=0.5, seed=1, captions=alts)
    cap = CAPTIONS[0]
    e0 = [base(cap, s, 0) for s in IDS]
    assert e0 != [base(cap, s, 1) for s in IDS]
    assert e0 != [other_seed(cap, s, 0) for s in IDS]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_p_zero_changes_nothing(strategy):
    t = make_transform(strategy, p=0.0, k=3, captions={s: ["other caption"] for s in IDS})
    for s in IDS:
        for c in [*CAPTIONS, "", "  spaced   out  "]:
            assert t(c, s, 7) == c


@pytest.mark.parametrize("strategy", TEXT_STRATEGIES)
def test_fraction_rewritten_matches_p(strategy):
    p = 0.3
    t = make_transform(strategy, p=p, k=2)
    ids = [f"id{i}" for i in range(3000)]
    changed = np.mean([t(CAPTIONS[1], s) != CAPTIONS[1] for s in ids])
    sd = np.sqrt(p * (1 - p) / len(ids))
    # rc can by chance give back the caption only with probability ~0; the others always change
    assert abs(changed - p) < 5 * sd


def test_rt_inserts_exactly_k_vocab_tokens_at_word_boundaries():
    vocab = vocabulary_from_list(["zebra", "quartz"])
    t = make_transform("rt", p=1.0, k=3, vocab=vocab)
    for s in IDS:
        for cap in CAPTIONS:
            new = t(cap, s)
            extra = _inserted(cap, new)
            assert len(new.split()) == len(cap.split()) + 3
            assert len(extra) == 3 and set(extra) <= {"zebra", "quartz"}
            assert _is_subsequence(cap.split(), new.split())


def test_rt_uses_every_boundary_including_start_and_end():
    t = make_transform("rt", p=1.0, k=1, vocab=["zebra"])
    positions = {t("a b", s).split().index("zebra") for s in IDS}
    assert positions == {0, 1, 2}


def test_cwr_inserts_k_of_the_captions_own_words():
    t = make_transform("cwr", p=1.0, k=2)
    for s in IDS[:100]:
        cap = CAPTIONS[1]
        new = t(cap, s)
        assert len(new.split()) == len(cap.split()) + 2
        assert set(new.split()) <= set(cap.split())
        assert _is_subsequence(cap.split(), new.split())
    assert t("", "s1") == ""


def test_rna_inserts_k_integers_in_range():
    t = make_transform("rna", k=4)  # default p is 1: inference-time, always on
    for s in IDS[:100]:
        extra = _inserted(CAPTIONS[0], t(CAPTIONS[0], s))
        assert len(extra) == 4
        assert all(x.isdigit() and 0 <= int(x) < RNA_HIGH for x in extra)


def test_rc_replaces_the_caption_with_k_vocab_tokens():
    t = make_transform("rc", p=1.0)
    for s in IDS[:100]:
        words = t(CAPTIONS[0], s).split()
        assert len(words) == DEFAULTS["rc"][1] == 4
        assert set(words) <= set(DEFAULT_WORDS)


def test_k_zero_inserts_nothing():
    for strategy in ("rt", "cwr", "rna"):
        assert make_transform(strategy, p=1.0, k=0)(CAPTIONS[0], "s1") == CAPTIONS[0]


def test_mc_draws_every_caption_of_the_sample_across_epochs():
    alts = {"a": ["second", "third"]}
    t = make_transform("mc", captions=alts)
    seen = [t("first", "a", e) for e in range(300)]
    counts = {c: seen.count(c) for c in ("first", "second", "third")}
    assert set(seen) == {"first", "second", "third"}
    assert min(counts.values()) > 60  # uniform: about 100 each
    assert t("only one", "b", 0) == "only one"  # no alternatives: unchanged


def test_mc_accepts_the_list_itself():
    t = make_transform("mc")
    drawn = {t(["one", "two", "one", ""], "x", e) for e in range(50)}
    assert drawn == {"one", "two"}


def test_insert_at_boundaries_keeps_the_input_list():
    words = ["a", "b"]
    out = insert_at_boundaries(words, ["x"], np.random.default_rng(0))
    assert words == ["a", "b"] and len(out) == 3


def test_defaults_follow_the_papers_code():
    assert make_transform("rt").p == 0.1 and make_transform("rt").k == 2
    assert make_transform("rc").k == 4
    assert make_transform("cwr").k == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "rt", "p": 1.5}, "p: must be a probability between 0 and 1"),
        ({"strategy": "rt", "p": -0.1}, "p: must be a probability between 0 and 1"),
        ({"strategy": "cwr", "k": -1}, "k: must be a whole number >= 0"),
        ({"strategy": "shuffle"}, "strategy: unknown 'shuffle', use one of mc, rc, rt, cwr, rna"),
    ],
)
def test_bad_parameters_give_one_line_usage_errors(kwargs, match):
    with pytest.raises(UsageError, match=match) as err:
        make_transform(**kwargs)
    assert "\n" not in str(err.value)
    assert err.value.exit_code == 2


def test_describe_names_the_parameters():
    assert make_transform("rt", p=0.2, k=3, seed=5).describe() == (
        "rt(p=0.2, k=3, seed=5, vocab=words)"
    )
    assert isinstance(make_transform("cwr"), CaptionTransform)
