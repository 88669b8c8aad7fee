"""A large table is written as parquet parts with a manifest, read back as the same frame, and
replaced atomically; below the threshold it stays one deterministic file."""

from __future__ import annotations

import json
import os

import polars as pl
import pytest

import curate.table as tablemod
from curate.errors import DataError
from curate.recipe import parse_recipe
from curate.runner import run_recipe
from curate.table import read_table, table_exists, table_readable, write_table


def _frame(n: int, offset: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sample_id": [f"{(i * 7919) % 1000:04d}-{i}" for i in range(n)],  # not sorted
            "source_index": pl.Series(range(offset, offset + n), dtype=pl.Int64),
            "captions": [[f"c{i}", "x"] if i % 3 else [] for i in range(n)],
            "x_drop": [None if i % 5 else f"reason {i}" for i in range(n)],
            "score": [i / 7 if i % 4 else None for i in range(n)],
        }
    )


@pytest.fixture
def small_parts(monkeypatch):
    """Parts from 10 rows on, 4 rows a part."""
    monkeypatch.setattr(tablemod, "PARTS_MIN_ROWS", 10)
    monkeypatch.setattr(tablemod, "PART_ROWS", 4)


def test_parts_round_trip_gives_the_identical_frame_in_order(tmp_path, small_parts):
    frame = _frame(23)
    written = write_table(frame, tmp_path / "table.parquet")
    assert written == tmp_path / "table"
    assert not (tmp_path / "table.parquet").exists()
    meta = json.loads((tmp_path / "table" / "manifest.json").read_text())
    assert meta["rows"] == 23 and meta["part_rows"] == [4, 4, 4, 4, 4, 3]
    assert all((tmp_path / "table" / p).exists() for p in meta["parts"])
    back = read_table(tmp_path)
    assert back.schema == frame.schema
    assert back.equals(frame)  # values and row order
    assert read_table(tmp_path / "table.parquet").equals(frame)
    assert table_exists(tmp_path) and table_readable(tmp_path / "table.parquet")


def test_parts_bytes_are_deterministic(tmp_path, small_parts):
    frame = _frame(23)
    write_table(frame, tmp_path / "a" / "table.parquet")
    write_table(frame, tmp_path / "b" / "table.parquet")
    for p in json.loads((tmp_path / "a" / "table" / "manifest.json").read_text())["parts"]:
        assert (tmp_path / "a" / "table" / p).read_bytes() == (
            tmp_path / "b" / "table" / p
        ).read_bytes()


def test_below_the_threshold_one_file_with_identical_bytes(tmp_path, small_parts):
    frame = _frame(9)
    write_table(frame, tmp_path / "a" / "table.parquet")
    write_table(frame.clone(), tmp_path / "b" / "table.parquet")
    assert not (tmp_path / "a" / "table").exists()
    assert (tmp_path / "a" / "table.parquet").read_bytes() == (
        tmp_path / "b" / "table.parquet"
    ).read_bytes()
    assert read_table(tmp_path / "a").equals(frame)


def test_rewriting_in_the_other_form_leaves_only_the_new_table(tmp_path, small_parts):
    write_table(_frame(9), tmp_path / "table.parquet")
    write_table(_frame(23, offset=100), tmp_path / "table.parquet")  # file -> parts
    assert not (tmp_path / "table.parquet").exists()
    assert read_table(tmp_path).equals(_frame(23, offset=100))
    write_table(_frame(23, offset=200), tmp_path / "table.parquet")  # parts -> parts
    assert sorted(p.name for p in (tmp_path / "table").iterdir()) == ["g000002", "manifest.json"]
    assert read_table(tmp_path).equals(_frame(23, offset=200))
    write_table(_frame(9, offset=300), tmp_path / "table.parquet")  # parts -> file
    assert not (tmp_path / "table").exists()
    assert read_table(tmp_path).equals(_frame(9, offset=300))


@pytest.mark.parametrize("old_rows", [23, 9], ids=["old-parts", "old-file"])
def test_a_torn_write_leaves_the_old_table_readable(tmp_path, small_parts, monkeypatch, old_rows):
    old = _frame(old_rows)
    write_table(old, tmp_path / "table.parquet")
    real = pl.DataFrame.write_parquet
    calls = []

    def crash_on_third_part(self, file, *args, **kwargs):
        calls.append(file)
        if len(calls) == 3:
            real(self.head(1), file, *args, **kwargs)  # half a generation on disk, then dies
            raise KeyboardInterrupt
        return real(self, file, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash_on_third_part)
    with pytest.raises(KeyboardInterrupt):
        write_table(_frame(23, offset=500), tmp_path / "table.parquet")
    monkeypatch.setattr(pl.DataFrame, "write_parquet", real)
    assert read_table(tmp_path).equals(old)
    # the next write clears the torn generation and commits
    write_table(_frame(23, offset=900), tmp_path / "table.parquet")
    assert read_table(tmp_path).equals(_frame(23, offset=900))
    assert sorted(p.name for p in (tmp_path / "table").iterdir())[-1] == "manifest.json"
    assert len(list((tmp_path / "table").iterdir())) == 2


def test_a_crash_before_the_manifest_rename_keeps_the_old_parts(tmp_path, small_parts, monkeypatch):
    old = _frame(23)
    write_table(old, tmp_path / "table.parquet")
    real = os.replace

    def die_on_commit(src, dst):
        if str(dst).endswith("manifest.json"):
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(tablemod.os, "replace", die_on_commit)
    with pytest.raises(KeyboardInterrupt):
        write_table(_frame(23, offset=1), tmp_path / "table.parquet")
    monkeypatch.setattr(tablemod.os, "replace", real)
    assert read_table(tmp_path).equals(old)


def test_a_missing_or_torn_part_is_one_line_naming_it(tmp_path, small_parts):
    write_table(_frame(23), tmp_path / "table.parquet")
    meta = json.loads((tmp_path / "table" / "manifest.json").read_text())
    part = tmp_path / "table" / meta["parts"][2]
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read the run's table") as err:
        read_table(tmp_path)
    assert "\n" not in str(err.value)
    assert not table_readable(tmp_path)
    part.unlink()
    with pytest.raises(DataError, match=r"part g000001/part-00002\.parquet .* is missing"):
        read_table(tmp_path)


def _two_step_recipe():
    return parse_recipe(
        {
            "dataset": {"name": "builtin:digits", "limit": 40},
            "steps": [
                {"dedup_captions": {"tiers": ["exact"]}},
                {"select": {"where": "source_index > 30", "reason": "late rows"}},
            ],
        }
    )


def test_a_run_with_parted_tables_ends_with_the_same_table(tmp_path, monkeypatch):
    run_recipe(_two_step_recipe(), tmp_path / "one", quiet=True)
    monkeypatch.setattr(tablemod, "PARTS_MIN_ROWS", 8)
    monkeypatch.setattr(tablemod, "PART_ROWS", 7)
    run_recipe(_two_step_recipe(), tmp_path / "parts", quiet=True)
    assert not (tmp_path / "parts" / "table.parquet").exists()
    assert (tmp_path / "parts" / "table" / "manifest.json").exists()
    assert list((tmp_path / "parts" / "steps").glob("*/columns/manifest.json"))
    single, parted = read_table(tmp_path / "one"), read_table(tmp_path / "parts")
    assert parted.equals(single)
    assert parted["dedup_captions_flag"].any()  # the steps did something
    assert parted["select_drop"].is_not_null().any()
    # a second run reads the parted step columns back and recomputes nothing
    again = run_recipe(_two_step_recipe(), tmp_path / "parts", quiet=True)
    assert all(r.skipped for r in again)
    assert read_table(tmp_path / "parts").equals(single)
