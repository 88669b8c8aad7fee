"""Identity and type handling: stable content-based ids, unique suffixes, text columns, source
fingerprints (an edited source re-ingests), a deleted export is rebuilt."""

from __future__ import annotations

import json
import shutil

import polars as pl

from tests.reliability.corpus import write_simple_jsonl
from tests.reliability.helpers import (
    curate,
    export_folder,
    kept_and_removed,
    kept_pairs,
    parquet_export_files,
    png_bytes,
    read_run_table,
    write_recipe,
)


def _ok(res):
    assert not res.traceback and not res.internal_error, res
    assert res.rc == 0, res


def _kept(run):
    return set(kept_pairs(run))


def _dedup_recipe(path, dataset, name="ident", extra=""):
    return write_recipe(
        path,
        f"name: {name}\ndataset: {{name: {json.dumps(str(dataset))}{extra}}}\n"
        "steps:\n  - dedup_images: {tiers: [exact]}\n  - dedup_captions: {tiers: [exact]}\n"
        "export: {format: parquet}\n",
    )


def test_colliding_id_suffixes_are_unique(tmp_path):
    folder = tmp_path / "ds"
    src = write_simple_jsonl(folder, n=3, ids=["a", "a", "a~1"], dup_images=0, dup_rows=0)
    run = tmp_path / "run"
    _ok(curate("ingest", "--dataset", src, "--id-column", "id", "--out", run, "-q"))
    t = read_run_table(run)
    assert t.height == 3
    assert t["sample_id"].n_unique() == 3, t["sample_id"].to_list()
    assert "a" in t["sample_id"].to_list() and "a~1" in t["sample_id"].to_list()
    res = curate("export", run, "--format", "parquet", "-q")
    _ok(res)
    rows, kept, removed = kept_and_removed(run)
    assert rows == kept + removed == 3
    assert pl.read_parquet(export_folder(run) / "removed.parquet").height == removed


def test_colliding_ids_many(tmp_path):
    ids = ["x", "x~1", "x", "x~2", "x", "x~1~1", "x~1"]
    src = write_simple_jsonl(tmp_path / "ds", n=len(ids), ids=ids, dup_images=0, dup_rows=0)
    run = tmp_path / "run"
    _ok(curate("ingest", "--dataset", src, "--id-column", "id", "--out", run, "-q"))
    t = read_run_table(run)
    assert t["sample_id"].n_unique() == len(ids), t["sample_id"].to_list()
    _ok(curate("export", run, "--format", "disk", "-q"))


def test_content_ids_survive_shuffling(tmp_path):
    """Without an id column, reordering the source changes no id and no cleaning decision."""
    folder = tmp_path / "ds"
    a = write_simple_jsonl(folder, n=48, name="data.jsonl")
    b = write_simple_jsonl(folder, n=48, name="shuffled.jsonl", shuffle=True)
    assert a.read_text() != b.read_text()
    runs = {}
    for src in (a, b):
        run = tmp_path / f"run-{src.stem}"
        _ok(
            curate(
                "clean",
                "--recipe",
                _dedup_recipe(tmp_path / f"{src.stem}.yaml", src),
                "--out",
                run,
                "-q",
            )
        )
        runs[src.stem] = run
    ta, tb = (read_run_table(r) for r in runs.values())
    assert set(ta["sample_id"]) == set(tb["sample_id"])
    pairs = lambda t: set(zip(t["sample_id"], t["caption"], strict=True))  # noqa: E731
    assert pairs(ta) == pairs(tb)
    assert _kept(runs["data"]) == _kept(runs["shuffled"])
    rows, kept, _ = kept_and_removed(runs["data"])
    assert kept < rows  # the dedup had something to remove


def test_content_ids_without_captions_column_order(tmp_path):
    """The same rows with columns in another order get the same ids."""
    folder = tmp_path / "ds"
    src = write_simple_jsonl(folder, n=6, dup_images=0, dup_rows=0)
    rows = [json.loads(x) for x in src.read_text().splitlines()]
    other = folder / "cols.jsonl"
    other.write_text(
        "".join(json.dumps({"text": r["text"], "image": r["image"]}) + "\n" for r in rows)
    )
    ids = []
    for s in (src, other):
        run = tmp_path / f"run-{s.stem}"
        _ok(curate("ingest", "--dataset", s, "--out", run, "-q"))
        ids.append(set(read_run_table(run)["sample_id"]))
    assert ids[0] == ids[1]


def test_edited_source_is_reingested(tmp_path):
    folder = tmp_path / "ds"
    src = write_simple_jsonl(folder, n=20)
    recipe = _dedup_recipe(tmp_path / "r.yaml", src)
    run = tmp_path / "run"
    _ok(curate("clean", "--recipe", recipe, "--out", run, "-q"))
    assert json.loads((run / "stats.json").read_text())["rows"] == 20
    for i in (900, 901):
        (folder / "images" / f"{i}.png").write_bytes(png_bytes(seed=i))
    with src.open("a") as fh:
        for i in (900, 901):
            fh.write(
                json.dumps({"image": f"images/{i}.png", "text": f"an added picture {i}"}) + "\n"
            )
    res = curate("clean", "--recipe", recipe, "--out", run)
    _ok(res)
    assert json.loads((run / "stats.json").read_text())["rows"] == 22
    assert read_run_table(run).height == 22
    said = [
        ln
        for ln in res.output.splitlines()
        if "ingest" in ln.lower()
        and any(
            w in ln.lower() for w in ("chang", "modif", "differ", "re-ingest", "reingest", "new")
        )
    ]
    assert said, f"no line says why the source was re-ingested:\n{res}"


def test_unchanged_source_is_not_reingested(tmp_path):
    src = write_simple_jsonl(tmp_path / "ds", n=10)
    recipe = _dedup_recipe(tmp_path / "r.yaml", src)
    run = tmp_path / "run"
    _ok(curate("clean", "--recipe", recipe, "--out", run, "-q"))
    before = (run / "table.parquet").read_bytes()
    res = curate("clean", "--recipe", recipe, "--out", run)
    _ok(res)
    assert "unchanged" in res.output.lower(), res
    assert (run / "table.parquet").read_bytes() == before


def test_deleted_export_is_rebuilt(fresh_digits_run):
    recipe, run = fresh_digits_run
    before = _kept(run)
    shutil.rmtree(run / "export")
    res = curate("clean", "--recipe", recipe, "--out", run, "-q")
    _ok(res)
    assert parquet_export_files(export_folder(run)), "the export was not rebuilt"
    assert _kept(run) == before


def test_csv_is_read_as_text(tmp_path):
    folder = tmp_path / "ds"
    (folder / "images").mkdir(parents=True)
    rows = [
        ("007", "NaN"),
        ("7", "null"),
        ("7.0", "123"),
        ("1e3", "None"),
        ("true", "0.50"),
        ("-0", "#N/A"),
    ]
    lines = ["id,image,text"]
    for i, (rid, cap) in enumerate(rows):
        (folder / "images" / f"{i}.png").write_bytes(png_bytes(seed=i))
        lines.append(f"{rid},images/{i}.png,{cap}")
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    _ok(curate("ingest", "--dataset", folder / "data.csv", "--id-column", "id", "--out", run, "-q"))
    t = read_run_table(run)
    assert t.height == len(rows)
    assert sorted(t["sample_id"]) == sorted(r[0] for r in rows)
    assert dict(zip(t["sample_id"], t["caption"], strict=True)) == dict(rows)
    assert set(t["status"]) == {"ok"}, t.select("sample_id", "status", "reason")


def test_jsonl_numbers_do_not_change_string_ids(tmp_path):
    folder = tmp_path / "ds"
    (folder / "images").mkdir(parents=True)
    recs = [
        {"id": "007", "image": "images/0.png", "text": "NaN"},
        {"id": "7", "image": "images/1.png", "text": "123"},
    ]
    for i in range(2):
        (folder / "images" / f"{i}.png").write_bytes(png_bytes(seed=i))
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    run = tmp_path / "run"
    _ok(
        curate(
            "ingest", "--dataset", folder / "data.jsonl", "--id-column", "id", "--out", run, "-q"
        )
    )
    t = read_run_table(run)
    assert dict(zip(t["sample_id"], t["caption"], strict=True)) == {"007": "NaN", "7": "123"}
