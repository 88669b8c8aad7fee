"""Caption lists for ``mc`` (multiple captions): from the source data, from groups of rows an
earlier step collapsed (e.g. a dedup cluster), and from an image-captioning model.

With several distinct captions per image, a duplicated image no longer always comes with the
same key; the trainer draws one per use (``make_transform("mc", captions=...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from curate.captions.transforms import distinct_captions
from curate.errors import DataError, ModelError

if TYPE_CHECKING:
    import polars as pl

#: A captioner maps a batch of PIL images to a list of captions per image.
Captioner = Callable[[list], list[list[str]]]


def pooled_captions(
    table: pl.DataFrame, column: str | None = "captions", group: str | None = None
) -> list[list[str]]:
    """Per row, its distinct non-empty captions: ``caption`` first, then ``column``'s list.

    With ``group``, rows sharing a non-null value of that column (and accepted by ingest) pool
    their captions, each row's own captions first. Returns one list per row, in row order.
    """
    for name in (column, group):
        if name is not None and name not in table.columns:
            raise DataError(
                f"captions: column {name!r} is not in the table; run the step that adds it"
            )
    own_caption = table["caption"].to_list()
    extras = table[column].to_list() if column is not None else [None] * table.height
    if column is not None and not table[column].dtype.is_nested():
        extras = [[e] if e is not None else None for e in extras]
    lists = [distinct_captions(c, e) for c, e in zip(own_caption, extras, strict=True)]
    if group is None:
        return lists
    keys = table[group].to_list()
    ok = (table["status"] == "ok").to_list()
    pooled: dict[object, list[str]] = {}
    for key, row_ok, caps in zip(keys, ok, lists, strict=True):
        if key is not None and row_ok:
            pooled.setdefault(key, []).extend(caps)
    return [
        distinct_captions(caps, pooled.get(key)) if key is not None and row_ok else caps
        for key, row_ok, caps in zip(keys, ok, lists, strict=True)
    ]


def load_captioner(
    model: str, device: str = "cpu", num: int = 2, prompt: str | None = None
) -> Captioner:
    """A ``Captioner`` over a transformers ``image-text-to-text`` model (folder or Hub id).

    Beam search returns ``num`` captions per image, deterministic without touching global RNG.
    """
    try:
        from transformers import pipeline

        pipe = pipeline("image-text-to-text", model=model, device=device)
    except Exception as err:  # not installed, not downloadable, not an image-text model
        raise ModelError(
            f"captioner {model!r}: cannot load an image-text-to-text model "
            f"({type(err).__name__}); give a local model folder"
        ) from None

    def caption(images: list) -> list[list[str]]:
        out = pipe(
            images=images,
            text=prompt,
            generate_kwargs={"num_beams": max(num, 1), "num_return_sequences": num},
        )
        return [[str(o["generated_text"]).strip() for o in _as_list(item)] for item in out]

    return caption


def _as_list(item) -> list:
    return item if isinstance(item, list) else [item]


def generated_captions(
    images: Sequence, captioner: Captioner, batch_size: int = 16
) -> list[list[str]]:
    """Run ``captioner`` over ``images`` (PIL or None) in batches; ``[]`` for missing images."""
    out: list[list[str]] = [[] for _ in images]
    present = [i for i, img in enumerate(images) if img is not None]
    for start in range(0, len(present), batch_size):
        idx = present[start : start + batch_size]
        result = captioner([images[i] for i in idx])
        if len(result) != len(idx):
            raise ModelError(f"captioner returned {len(result)} results for {len(idx)} images")
        for i, caps in zip(idx, result, strict=True):
            out[i] = distinct_captions(caps)
    return out
