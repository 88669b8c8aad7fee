"""Source readers on hostile inputs: bad lines are rows, bad sources are one line, no guessing."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.errors import DataError, UsageError
from curate.io.load import ROW_ERROR, open_source, source_fingerprint
from curate.io.paths import read_image_file


def _rows(source, limit=None):
    return list(source.iter_rows(limit))


def _errors(rows):
    return [r[ROW_ERROR] for r in rows if ROW_ERROR in r]


# ------------------------------------------------------------------------------------- jsonl
def _hostile_jsonl(path):
    lines = [
        b'{"image": "a.png", "text": "first", "id": "007"}',  # line 1
        b"",  # 2: blank, skipped
        b'{"image": "b.png", "text": "caf\xe9", "id": "x"}',  # 3: invalid UTF-8
        b'{"image": "c.png", "text": "\\ud800 lone", "id": "y"}',  # 4: lone surrogate
        b'{"image": "d.png", "text": ',  # 5: malformed
        b"[1, 2, 3]",  # 6: not an object
        b"   \t",  # 7: blank
        b'{"image": null, "text": 7, "id": 7}',  # 8
        b'{"image": {"bytes": "%s", "path": null}, "text": 7.0, "id": 7.0, "score": 0.5}'
        % base64.b64encode(b"PNGDATA"),  # 9
        b'{"image": {"bytes": null, "path": "e.png"}, "text": true, "id": 1E5}',  # 10
        b'{"image": "f.png", "text": ["a cat", "a small cat"], "id": "\\ud83d\\ude00"}',  # 11
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_jsonl_bad_lines_become_error_rows_with_line_numbers(tmp_path):
    src = open_source(str(_hostile_jsonl(tmp_path / "d.jsonl")), id_column="id")
    assert src.kind == "file" and src.base_dir == tmp_path and src.dataset is None
    rows = _rows(src)
    assert src.num_rows == len(rows) == 9  # blank lines are not rows
    errors = _errors(rows)
    assert len(errors) == 4
    assert all(e.startswith("bad_line (line ") for e in errors)
    assert "line 3: invalid UTF-8" in errors[0]
    assert "line 4: a lone surrogate" in errors[1]
    assert "line 5: invalid JSON" in errors[2]
    assert "line 6: not a JSON object" in errors[3]
    assert [list(r) == [ROW_ERROR] for r in rows] == [False] + [True] * 4 + [False] * 4


def test_jsonl_numbers_as_captions_and_ids_keep_their_text(tmp_path):
    src = open_source(str(_hostile_jsonl(tmp_path / "d.jsonl")), id_column="id")
    good = [r for r in _rows(src) if ROW_ERROR not in r]
    assert [r["id"] for r in good] == ["007", "7", "7.0", "1E5", "😀"]
    assert [r["text"] for r in good] == ["first", "7", "7.0", "true", ["a cat", "a small cat"]]
    assert good[1]["image"] is None
    assert good[2]["image"] == {"bytes": base64.b64encode(b"PNGDATA").decode(), "path": None}
    assert good[3]["image"] == {"bytes": None, "path": "e.png"}
    score = good[2]["score"]  # other columns keep their JSON type, as a plain float
    assert score == 0.5 and type(score) is float
    assert src.extra_columns == ["score"]
    assert src.column_values("id") == [
        "007", None, None, None, None, "7", "7.0", "1E5", "😀",
    ]  # fmt: skip
    assert [r.get("id") for r in _rows(src, limit=2)] == ["007", None]


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf\n"])
def test_empty_jsonl_is_one_error_naming_the_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"empty\.jsonl has no rows"):
        open_source(str(path))


def test_jsonl_where_no_line_parses_is_one_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"image": \n\xff\xfe\n{"text": "\\ud800"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: no line could be read \(3 bad; first: "):
        open_source(str(path))


def test_json_array_file_and_bom(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('\ufeff[{"image": "a.png", "text": 1}, 5, {"image": "b.png", "text": "x"}]')
    rows = _rows(open_source(str(path)))
    assert rows[0] == {"image": "a.png", "text": "1"}
    assert rows[1] == {ROW_ERROR: "bad_line (item 2: not a JSON object (a int))"}
    (tmp_path / "l.jsonl").write_bytes(b'\xef\xbb\xbf{"image": "a.png", "text": "x"}\n')
    assert _rows(open_source(str(tmp_path / "l.jsonl"))) == [{"image": "a.png", "text": "x"}]


def test_jsonl_columns_come_from_the_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"image": "a.png", "caption": "x"}\n{"image": "b.png", "caption": "y", "k": 1}\n'
    )
    src = open_source(str(path))
    assert (src.image_column, src.caption_column, src.extra_columns) == ("image", "caption", ["k"])
    with pytest.raises(UsageError, match="^caption_column: .nope.: not a column"):
        open_source(str(path), caption_column="nope")


# --------------------------------------------------------------------------------------- csv
def test_csv_is_read_as_text(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(
        "id,image,text,score\n"
        "007,a.png,NaN,1\n"
        "7,b.png,null,2.50\n"
        "7.0,c.png,None,\n"
        "x,d.png,123,true\n"
        "y,,,\n"
    )
    src = open_source(str(path), id_column="id")
    rows = _rows(src)
    assert [r["id"] for r in rows] == ["007", "7", "7.0", "x", "y"]
    assert [r["text"] for r in rows] == ["NaN", "null", "None", "123", None]
    assert [r["score"] for r in rows] == ["1", "2.50", None, "true", None]
    assert rows[4]["image"] is None
    assert src.extra_columns == ["score"] and src.num_rows == 5
    assert src.column_values("id") == ["007", "7", "7.0", "x", "y"]


def test_csv_ragged_and_undecodable_rows_are_error_rows(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(
        b"id,image,text\r\n"  # 1
        b'a,a.png,"a caption\r\nover two lines"\r\n'  # 2-3: one record
        b"ragged,b.png,too,many,fields\r\n"  # 4
        b"short,c.png\r\n"  # 5
        b"\r\n"  # 6: blank
        b"bad,d.png,caf\xe9 \xff\r\n"  # 7
        b"ok,e.png,fine\r\n"  # 8
    )
    rows = _rows(open_source(str(path)))
    assert rows[0]["text"] == "a caption\r\nover two lines"
    assert _errors(rows) == [
        "bad_line (line 4: expected 3 fields, got 5)",
        "bad_line (line 5: expected 3 fields, got 2)",
        "bad_line (line 7: invalid UTF-8)",
    ]
    assert rows[-1] == {"id": "ok", "image": "e.png", "text": "fine"}
    assert len(rows) == 5


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", r"h\.csv has no rows"),
        (b"image,text\n", r"h\.csv has no rows"),
        (b"image,text\n\n\n", r"h\.csv has no rows"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe garbage", r"h\.csv: line 1: not a CSV header"),
        (b"image,image\na,b\n", r"h\.csv: line 1: duplicate column"),
        (b"image,text\na,b,c\nd\n", r"h\.csv: not a CSV file curate can read .*line 2"),
    ],
)
def test_unusable_csv_is_one_error_naming_the_file(tmp_path, content, match):
    path = tmp_path / "h.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as err:
        open_source(str(path))
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ parquet
def test_zero_row_and_corrupt_parquet_are_one_error(tmp_path):
    zero = tmp_path / "zero.parquet"
    pq.write_table(
        pa.table({"image": pa.array([], pa.string()), "text": pa.array([], pa.string())}), zero
    )
    with pytest.raises(DataError, match=r"zero\.parquet has no rows"):
        open_source(str(zero))
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"image": ["a.png"] * 50, "text": ["x"] * 50}), good)
    for name, data in [
        ("junk.parquet", b"this is not parquet at all"),
        ("torn.parquet", good.read_bytes()[: len(good.read_bytes()) // 2]),
        ("nothing.parquet", b""),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=rf"{name}: not a readable parquet file") as err:
            open_source(str(tmp_path / name))
        assert "\n" not in str(err.value)


def test_parquet_numeric_captions_and_ids_become_text(tmp_path):
    path = tmp_path / "d.parquet"
    table = pa.table(
        {
            "image": pa.array([{"bytes": b"x", "path": None}] * 3),
            "text": pa.array([7, 8, None], pa.int64()),
            "id": pa.array([7.0, 7.5, 1.0], pa.float64()),
            "n": pa.array([1, 2, 3], pa.int32()),
        }
    )
    pq.write_table(table, path)
    src = open_source(str(path), id_column="id")
    rows = _rows(src)
    assert [r["text"] for r in rows] == ["7", "8", None]
    assert [r["id"] for r in rows] == ["7.0", "7.5", "1.0"]
    assert [r["n"] for r in rows] == [1, 2, 3] and src.extra_columns == ["n"]
    assert rows[0]["image"] == {"bytes": b"x", "path": None}
    assert src.image_column == "image" and not src.image_is_path and src.num_rows == 3


# ------------------------------------------------------------------------------------ folders
def test_empty_folder_is_one_error(tmp_path):
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match=r"emptydir holds no images or data files"):
        open_source(str(tmp_path / "emptydir"))
    (tmp_path / "emptydir" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"emptydir holds no images or data files"):
        open_source(str(tmp_path / "emptydir"))


def test_folder_of_data_files_in_sorted_order(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    pq.write_table(
        pa.table({"image": ["p0.png", "p1.png"], "text": ["p", "q"]}), folder / "a.parquet"
    )
    (folder / "b.jsonl").write_text('{"image": "j0.png", "text": "j"}\nnot json\n')
    (folder / "c.csv").write_text("image,text\nc0.png,c\nc1.png,c,extra\n")
    src = open_source(str(folder))
    assert src.kind == "file" and src.base_dir == folder and src.num_rows == 6
    rows = _rows(src)
    assert [r.get("image") for r in rows] == ["p0.png", "p1.png", "j0.png", None, "c0.png", None]
    assert _errors(rows) == [
        "bad_line (b.jsonl line 2: invalid JSON: Expecting value at column 1)",
        "bad_line (c.csv line 3: expected 2 fields, got 3)",
    ]


def test_data_file_beside_its_images_folder_is_a_file_source(tmp_path):
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "images" / "a.png").write_bytes(b"x")
    (tmp_path / "ds" / "data.jsonl").write_text('{"image": "images/a.png", "text": "t"}\n')
    src = open_source(str(tmp_path / "ds"))
    assert src.kind == "file" and _rows(src) == [{"image": "images/a.png", "text": "t"}]


def test_data_files_linking_out_of_the_folder_are_skipped_and_noted(tmp_path):
    (tmp_path / "elsewhere.jsonl").write_text('{"image": "z.png", "text": "private"}\n')
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"image": "a.png", "text": "mine"}\n')
    (folder / "b.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    src = open_source(str(folder))
    assert [r["text"] for r in _rows(src)] == ["mine"]
    assert src.notes["skipped_outside_links"] == {"count": 1, "first": ["b.jsonl"]}


def test_split_folders(tmp_path):
    folder = tmp_path / "ds"
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True)
        (folder / split / "d.jsonl").write_text(
            json.dumps({"image": "a.png", "text": split}) + "\n"
        )
    assert [r["text"] for r in _rows(open_source(str(folder)))] == ["train"]
    assert [r["text"] for r in _rows(open_source(str(folder), split="test"))] == ["test"]
    with pytest.raises(UsageError, match=r"^split: 'dev': not in .*available: test, train"):
        open_source(str(folder), split="dev")
    with pytest.raises(UsageError, match=r"^split: 'test': not in .*available: train"):
        open_source(str(folder / "train" / "d.jsonl"), split="test")


# ------------------------------------------------------------------------------- imagefolder
def _imagefolder(root, metadata: list[dict] | None, images=("a.png", "b.png", "sub/c.png")):
    for name in images:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(f"bytes of {name}".encode())
    if metadata is not None:
        with open(root / "metadata.jsonl", "w") as f:
            for row in metadata:
                f.write(json.dumps(row) + "\n")
    return root


def test_imagefolder_joins_metadata_and_reports_unlisted_images(tmp_path):
    (tmp_path / "secret.png").write_bytes(b"private")
    root = tmp_path / "ds"
    root.mkdir()
    long_name = "x" * 300 + ".png"
    meta = [
        {"file_name": "a.png", "text": "an a"},
        {"file_name": "../secret.png", "text": "dotdot"},
        {"file_name": str(tmp_path / "secret.png"), "text": "absolute"},
        {"file_name": "gone.png", "text": "missing"},
        {"file_name": long_name, "text": "long"},
        {"file_name": None, "text": "no file"},
    ]
    _imagefolder(root, meta, images=("a.png", "b.png", "sub/c.png", "sub/d.png"))
    with open(root / "metadata.jsonl", "ab") as f:
        f.write(b'{"file_name": "b.png", "text": \n')  # a bad line: b.png is still not listed
    src = open_source(str(root))
    assert src.kind == "imagefolder" and src.base_dir == root
    assert (src.image_column, src.caption_column) == ("image", "text")
    rows = _rows(src)
    assert src.num_rows == len(rows) == 7
    images = [r.get("image") for r in rows[:6]]
    assert images == [
        "a.png",
        "../secret.png",
        str(tmp_path / "secret.png"),
        "gone.png",
        long_name,
        None,
    ]
    assert _errors(rows) == [
        "bad_line (metadata.jsonl line 7: invalid JSON: Expecting value at column 31)"
    ]
    reasons = [read_image_file(v, src.base_dir)[1] for v in images[:5]]
    assert reasons == [None, "outside_dataset", "outside_dataset", "missing_file", "path_too_long"]
    assert src.notes["unlisted_images"] == {
        "count": 3,
        "first": ["b.png", "sub/c.png", "sub/d.png"],
    }


def test_imagefolder_metadata_in_a_subfolder_and_csv_metadata(tmp_path):
    root = _imagefolder(tmp_path / "ds", None, images=("sub/a.png", "sub/b.png"))
    (root / "sub" / "metadata.csv").write_text(
        "file_name,text,id\na.png,NaN,007\n../../x.png,t,7\n"
    )
    src = open_source(str(root), id_column="id")
    rows = _rows(src)
    assert rows == [
        {"image": "sub/a.png", "text": "NaN", "id": "007"},
        {"image": "sub/../../x.png", "text": "t", "id": "7"},
    ]
    assert read_image_file(rows[1]["image"], root) == (None, "outside_dataset")
    assert src.notes["unlisted_images"] == {"count": 1, "first": ["sub/b.png"]}


def test_imagefolder_without_metadata(tmp_path):
    root = _imagefolder(tmp_path / "flat", None)
    src = open_source(str(root), caption_column="none")
    assert [r["image"] for r in _rows(src)] == ["a.png", "b.png", "sub/c.png"]
    assert src.caption_column is None and src.notes == {}
    with pytest.raises(UsageError, match="no caption column found"):
        open_source(str(root))
    classes = _imagefolder(
        tmp_path / "classes", None, images=("cat/1.png", "cat/2.png", "dog/1.png")
    )
    rows = _rows(open_source(str(classes), caption_column="label"))
    assert rows == [
        {"image": "cat/1.png", "label": "cat"},
        {"image": "cat/2.png", "label": "cat"},
        {"image": "dog/1.png", "label": "dog"},
    ]


def test_imagefolder_with_odd_file_names(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    with open(os.fsencode(root) + b"/caf\xe9.png", "wb") as f:
        f.write(b"latin-1")
    (root / "ünï cødé 猫.png").write_bytes(b"unicode")
    (root / ("y" * 250 + ".png")).write_bytes(b"long")
    src = open_source(str(root), caption_column="none")
    rows = _rows(src)
    assert len(rows) == 3
    got = {read_image_file(r["image"], root) for r in rows}
    assert got == {(b"latin-1", None), (b"unicode", None), (b"long", None)}
    (root / "metadata.jsonl").write_text('{"file_name": "ünï cødé 猫.png", "text": "x"}\n')
    notes = open_source(str(root)).notes["unlisted_images"]
    assert notes["count"] == 2 and "caf\\xe9.png" in notes["first"]
    json.dumps(notes, ensure_ascii=False).encode("utf-8")  # printable and writable


def test_imagefolder_metadata_without_file_name(tmp_path):
    root = _imagefolder(tmp_path / "ds", [{"name": "a.png", "text": "x"}])
    with pytest.raises(DataError, match=r"metadata\.jsonl: no file_name column"):
        open_source(str(root))


# ------------------------------------------------------------------- datasets-backed sources
def test_builtin_and_save_to_disk_sources(tmp_path):
    from datasets import Dataset, Features, Image, Value

    src = open_source("builtin:digits")
    assert src.kind == "builtin" and src.dataset is not None and not src.streaming
    assert src.num_rows == 1797 and src.extra_columns == ["label"]
    rows = _rows(src, limit=3)
    assert len(rows) == 3 and rows[0]["text"].startswith("a handwritten digit")
    assert isinstance(rows[0]["image"]["bytes"], bytes)  # Image(decode=False)
    assert len(src.column_values("text", limit=5)) == 5

    feats = Features({"image": Image(), "text": Value("string")})
    ds = Dataset.from_dict(
        {"image": [{"bytes": b"x", "path": None}], "text": ["t"]}, features=feats
    )
    ds.save_to_disk(str(tmp_path / "disk"))
    src = open_source(str(tmp_path / "disk"))
    assert src.kind == "disk" and src.base_dir == tmp_path / "disk"
    assert _rows(src) == [{"image": {"bytes": b"x", "path": None}, "text": "t"}]
    assert src.fingerprint == source_fingerprint(str(tmp_path / "disk"))


def test_hub_names_fail_fast_with_one_line(tmp_path):
    start = time.monotonic()
    with pytest.raises(DataError, match="could not load it from the Hugging Face Hub"):
        open_source("someone/not-a-real-dataset-xyz")  # tests run with HF_HUB_OFFLINE=1
    for name in ("not a hub name!", "a/b/c/d", "nope.jsonl", str(tmp_path / "nope.jsonl")):
        with pytest.raises(DataError, match="no such file or folder") as err:
            open_source(name)
        assert "\n" not in str(err.value)
    assert time.monotonic() - start < 30
    with pytest.raises(UsageError, match="unsupported file type '.txt'"):
        (tmp_path / "d.txt").write_text("x")
        open_source(str(tmp_path / "d.txt"))


# ------------------------------------------------------------------------------ fingerprints
def test_fingerprint_changes_with_the_source_files(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"image": "a.png", "text": "x"}\n')
    fp = source_fingerprint(str(path))
    assert (
        fp is not None and fp == source_fingerprint(str(path)) == open_source(str(path)).fingerprint
    )
    with open(path, "a") as f:
        f.write('{"image": "b.png", "text": "y"}\n')
    assert source_fingerprint(str(path)) != fp
    fp2 = source_fingerprint(str(path))
    os.utime(path, ns=(1, 1))  # same size, other mtime
    assert source_fingerprint(str(path)) != fp2

    root = _imagefolder(tmp_path / "ds", [{"file_name": "a.png", "text": "a"}])
    fp = source_fingerprint(str(root))
    (root / "sub" / "new.png").write_bytes(b"new")
    fp_img = source_fingerprint(str(root))
    assert fp_img != fp
    (root / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "other"}\n')
    assert source_fingerprint(str(root)) != fp_img
    assert source_fingerprint(str(root), "train") != source_fingerprint("builtin:digits")


def test_fingerprint_of_builtin_hub_and_missing(tmp_path):
    assert source_fingerprint("builtin:digits") == source_fingerprint("builtin:digits")
    assert source_fingerprint("builtin:digits") != source_fingerprint("builtin:photos")
    assert source_fingerprint("someone/dataset") is None
    assert source_fingerprint(str(tmp_path / "nope")) is None
    (tmp_path / "empty").mkdir()
    assert source_fingerprint(str(tmp_path / "empty")) is None  # never raises


def test_a_bad_source_leaves_nothing_behind(tmp_path):
    path = _hostile_jsonl(tmp_path / "d.jsonl")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    for name in (path, tmp_path / "missing.csv"):
        with contextlib.suppress(DataError):
            _rows(open_source(str(name)))
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before


def test_deeply_nested_and_reserved_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    deep = '{"image": "a.png", "text": "x", "k": ' + "[" * 500 + "]" * 500 + "}"
    path.write_text(
        '{"image": "a.png", "text": "fine", "k": [[1]]}\n'
        + deep
        + "\n"
        + '{"image": "a.png", "text": "x", "__curate_row_error__": "forged"}\n'
    )
    rows = _rows(open_source(str(path)))
    assert rows[0]["k"] == [[1]]
    assert _errors(rows) == [
        "bad_line (line 2: nested more than 100 levels deep)",
        "bad_line (line 3: uses the reserved key __curate_row_error__)",
    ]
    (tmp_path / "r.csv").write_text("image,text,__curate_row_error__\na.png,x,\n")
    with pytest.raises(DataError, match="reserves"):
        open_source(str(tmp_path / "r.csv"))


def test_json_file_holding_json_lines_that_start_with_an_array(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[1, 2]\n{"image": "a.png", "text": "x"}\n')
    rows = _rows(open_source(str(path)))
    assert rows == [
        {ROW_ERROR: "bad_line (line 1: not a JSON object (a list))"},
        {"image": "a.png", "text": "x"},
    ]
    (tmp_path / "broken.json").write_text('[{"image": "a.png",\n "text": }]')
    with pytest.raises(DataError, match=r"broken\.json: line 2: invalid JSON"):
        open_source(str(tmp_path / "broken.json"))


def test_unnamed_files_are_the_train_split_beside_an_eval_file(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "data.jsonl").write_text('{"image": "a.png", "text": "train row"}\n')
    (folder / "eval.jsonl").write_text('{"image": "b.png", "text": "eval row"}\n')
    assert [r["text"] for r in _rows(open_source(str(folder)))] == ["train row"]
    assert [r["text"] for r in _rows(open_source(str(folder), split="eval"))] == ["eval row"]


def test_names_that_cannot_be_paths_are_one_line(tmp_path):
    for name in ("x" * 5000, str(tmp_path / ("y" * 300)) + ".jsonl", "a\x00b"):
        with pytest.raises(DataError, match="no such file or folder"):
            open_source(name)
        assert source_fingerprint(name) is None
