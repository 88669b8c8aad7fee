"""The image store finds rows by sample_id without a Python dict: sorted 64-bit hashes of the
ids, every hit confirmed against the stored id; unknown ids are one line; positions are int64."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from datasets import Dataset, Features, Image, Value

import curate.io.store as storemod
from curate.errors import DataError
from curate.io.store import IdIndex, ImageStore


def _store(tmp_path, ids: list[str]) -> ImageStore:
    """A run folder whose image store holds ``ids``, each image's bytes naming its id."""
    feats = Features({"sample_id": Value("string"), "image": Image()})
    cells = [
        None if i % 4 == 3 else {"bytes": f"img:{s}".encode(), "path": None}
        for i, s in enumerate(ids)
    ]
    Dataset.from_dict({"sample_id": ids, "image": cells}, features=feats).save_to_disk(
        str(tmp_path / "images")
    )
    return ImageStore(tmp_path)


def _expected(ids, asked):
    pos = {s: i for i, s in enumerate(ids)}
    return [None if pos[s] % 4 == 3 else f"img:{s}".encode() for s in asked]


IDS = [f"{(i * 37) % 101:03x}{'~1' if i % 9 == 0 else ''}" for i in range(101)]


def test_bytes_come_back_for_the_ids_in_the_order_asked(tmp_path):
    store = _store(tmp_path, IDS)
    asked = [IDS[k] for k in (50, 3, 3, 100, 0, 7, 64)]  # any order, repeats
    assert store.encoded_many(asked) == _expected(IDS, asked)
    assert store.encoded_many(asked[::-1]) == _expected(IDS, asked[::-1])
    assert store.encoded(IDS[5]) == _expected(IDS, [IDS[5]])[0]
    assert store.rows(pl.Series(asked)) == [IDS.index(s) for s in asked]
    assert store.encoded_many([]) == []
    assert len(store) == len(IDS) and IDS[42] in store and "nope" not in store


def test_an_unknown_id_is_one_line_naming_it(tmp_path):
    store = _store(tmp_path, IDS)
    with pytest.raises(
        DataError,
        match=r"2 of 4 sample ids are not in this run's image store "
        r"\(first: 'missing-1'\)",
    ) as err:
        store.encoded_many([IDS[1], "missing-1", IDS[2], "missing-2"])
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="'gone'"):
        store.encoded("gone")
    empty = IdIndex(np.zeros(0, np.uint64), np.zeros(0, np.int64), lambda rows: None)
    assert empty.find(["a", "b"]).tolist() == [-1, -1]


def test_hash_collisions_still_find_the_right_row(tmp_path, monkeypatch):
    """With a hash that collides for every id of the same length, each lookup must still be
    confirmed against the stored id and scan its equals."""
    monkeypatch.setattr(
        storemod, "_hash_ids", lambda ids: ids.str.len_bytes().cast(pl.UInt64).to_numpy()
    )
    store = _store(tmp_path, IDS)
    asked = [IDS[k] for k in (9, 10, 0, 99, 18, 55)]
    assert store.rows(asked) == [IDS.index(s) for s in asked]
    assert store.encoded_many(asked) == _expected(IDS, asked)
    assert "fff" not in store  # same length as the stored ids, stored nowhere


def test_positions_past_two_to_the_31_are_kept_as_int64():
    """An index over rows beyond 2^31 and 2^32 (no rows allocated: the ids are a mapping)."""
    rows = np.array([2**31 + 5, 2**33 + 1, 7, 2**40], np.int64)
    names = {int(r): f"id-{k}" for k, r in enumerate(rows)}

    def ids_at(at):
        return [names[int(r)] for r in at]

    keys = storemod._hash_ids(pl.Series([names[int(r)] for r in rows], dtype=pl.String))
    order = np.argsort(keys, kind="stable")
    index = IdIndex(keys[order], rows[order], ids_at)
    found = index.find(["id-3", "id-0", "nope", "id-1"])
    assert found.dtype == np.int64
    assert found.tolist() == [2**40, 2**31 + 5, -1, 2**33 + 1]
