"""The bad-input corpus through ``curate ingest`` and ``curate clean``, in all six formats.

Row-level problems become rejected rows with a reason code; no row is lost (rows in = kept +
removed); nothing in the dataset folders changes; the private file outside the dataset never
reaches an export; no traceback, ever.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from tests.reliability.corpus import FORMATS, OK
from tests.reliability.helpers import (
    Watched,
    code_of,
    curate,
    export_folder,
    kept_and_removed,
    parquet_export_rows,
    private_leaks,
    read_run_table,
    write_recipe,
)


@pytest.fixture(scope="module")
def ingested(corpus, tmp_path_factory):
    """Each format ingested once: fmt -> (Result, run folder, changes to the corpus)."""
    runs = tmp_path_factory.mktemp("corpus_runs")
    out = {}
    for fmt, src in corpus.sources.items():
        watch = Watched([corpus.root])
        # The refused connections of the corpus's URLs are retried (0.5 s, 1 s) for one format;
        # the others reject them at the first refusal.
        retries = [] if fmt == "jsonl" else ["--fetch-retries", "0"]
        res = curate("ingest", "--dataset", src.dataset, "--id-column", "id", *retries,
                     "--out", runs / fmt)  # fmt: skip
        out[fmt] = (res, runs / fmt, watch.changes())
    return out


@pytest.fixture(scope="module")
def cleaned(corpus, tmp_path_factory):
    """Each format through a recipe (validate + exact caption dedup + parquet export)."""
    base = tmp_path_factory.mktemp("corpus_clean")
    out = {}
    for fmt, src in corpus.sources.items():
        recipe = write_recipe(
            base / f"{fmt}.yaml",
            f"name: corpus-{fmt}\n"
            f"dataset: {{name: {json.dumps(str(src.dataset))}, id_column: id, fetch_retries: 0}}\n"
            "steps:\n  - validate: {min_side: 1}\n  - dedup_captions: {tiers: [exact]}\n"
            "export: {format: parquet}\n",
        )
        watch = Watched([corpus.root])
        res = curate("clean", "--recipe", recipe, "--out", base / fmt, "-q")
        out[fmt] = (res, base / fmt, watch.changes())
    return out


def _no_crash(res):
    assert not res.traceback, res
    assert not res.internal_error, res


def test_corpus_size(corpus):
    assert set(corpus.sources) == set(FORMATS)
    assert corpus.rows_in >= 200
    kinds = {r.kind for s in corpus.sources.values() for r in s.rows}
    for must in ("bomb_png", "mode_CMYK", "mode_I16", "mode_P", "mode_LA", "zero_bytes",
                 "truncated_png", "caption_nul", "caption_rtl", "path_dotdot", "path_dev_zero",
                 "path_too_long_name", "path_http", "path_directory", "path_missing", "id_a_again"):  # fmt: skip
        assert must in kinds


@pytest.mark.parametrize("fmt", FORMATS)
def test_ingest_exits_cleanly(ingested, fmt):
    res, _, changes = ingested[fmt]
    _no_crash(res)
    assert res.rc == 0, res
    assert changes == [], "ingest changed the user's dataset folder:\n" + "\n".join(changes)


@pytest.mark.parametrize("fmt", FORMATS)
def test_ingest_accounts_for_every_row(ingested, corpus, fmt):
    res, run, _ = ingested[fmt]
    assert res.rc == 0, res
    src = corpus.sources[fmt]
    t = read_run_table(run)
    assert t.height == src.rows_in, f"{fmt}: {src.rows_in} rows in, {t.height} in the table"
    assert set(t["status"].unique()) <= {"ok", "rejected"}
    assert t["sample_id"].n_unique() == t.height, "sample_ids are not unique"
    rejected = t.filter(pl.col("status") == "rejected")
    assert rejected["reason"].null_count() == 0, "a rejected row has no reason"
    ok = t.filter(pl.col("status") == "ok")
    assert ok["reason"].null_count() == ok.height
    lo, hi = src.kept_range()
    assert lo <= ok.height <= hi, f"{fmt}: {ok.height} ok, expected {lo}..{hi}"
    summary = json.loads((run / "ingest.json").read_text())
    assert summary["rows"] == t.height
    assert summary["kept"] + sum(summary["rejected"].values()) == t.height


@pytest.mark.parametrize("fmt", FORMATS)
def test_ingest_row_outcomes(ingested, corpus, fmt):
    """Each row's status and reason code is the one its kind calls for."""
    res, run, _ = ingested[fmt]
    assert res.rc == 0, res
    src = corpus.sources[fmt]
    t = read_run_table(run)
    wrong = src.mismatches(t)
    assert not wrong, f"{fmt}: {len(wrong)} rows with the wrong outcome:\n" + "\n".join(wrong)


@pytest.mark.parametrize("fmt", FORMATS)
def test_private_file_never_stored(ingested, corpus, fmt):
    _, run, _ = ingested[fmt]
    t = read_run_table(run)
    leaked = t.filter(
        pl.col("src_key").str.contains("path_(dotdot|absolute_outside|symlink)")
        & (pl.col("status") == "ok")
    )
    assert leaked.height == 0, leaked.select("src_key", "status", "reason")


def test_imagefolder_unlisted_images_reported(ingested, corpus):
    res, run, _ = ingested["imagefolder"]
    assert res.rc == 0, res
    notes = json.loads((run / "ingest.json").read_text()).get("notes", {})
    assert notes.get("unlisted_images", {}).get("count") == corpus.sources["imagefolder"].unlisted
    assert "unlisted" in res.stdout.lower(), res


@pytest.mark.parametrize("fmt", FORMATS)
def test_clean_and_export_corpus(cleaned, corpus, fmt):
    """A recipe over the corpus: exit 0, rows = kept + removed, the export holds no private data."""
    res, run, changes = cleaned[fmt]
    _no_crash(res)
    assert res.rc == 0, res
    assert changes == [], "\n".join(changes)
    src = corpus.sources[fmt]
    rows, kept, removed = kept_and_removed(run)
    assert rows == src.rows_in
    stats = json.loads((run / "stats.json").read_text())
    assert (stats["rows"], stats["kept"], stats["removed"]) == (rows, kept, removed)
    export = export_folder(run, "parquet")
    manifest = pl.read_parquet(export / "removed.parquet")
    assert manifest.height == removed
    assert manifest["removed_reason"].null_count() == 0
    data = parquet_export_rows(export)
    assert data.height == kept
    assert private_leaks(export, corpus.private, corpus.private_pixels) == []


def test_allow_outside_paths_flag(corpus, tmp_path):
    src = corpus.sources["jsonl"]
    run = tmp_path / "run"
    res = curate(
        "ingest", "--dataset", src.dataset, "--id-column", "id", "--allow-outside-paths",
        "--fetch-retries", "0", "--out", run, "-q",
    )  # fmt: skip
    _no_crash(res)
    assert res.rc == 0, res
    t = read_run_table(run)
    codes = {k: code_of(r) for k, r in zip(t["src_key"], t["reason"], strict=True) if k}
    by_kind = {r.kind: codes.get(r.key) for r in src.rows}
    for kind in ("path_dotdot", "path_dotdot_inner", "path_absolute_outside"):
        assert by_kind[kind] == OK, (kind, by_kind[kind])
    assert by_kind["path_dev_zero"] != OK  # a device is not an image file
    assert by_kind["path_directory"] == "not_a_file"


def test_allow_outside_paths_recipe_key(corpus, tmp_path):
    src = corpus.sources["jsonl"]
    recipe = write_recipe(
        tmp_path / "r.yaml",
        f"name: outside\ndataset: {{name: {json.dumps(str(src.dataset))}, id_column: id, "
        "allow_outside_paths: true, fetch_retries: 0}\nsteps:\n  - validate: {}\n",
    )
    res = curate("clean", "--recipe", recipe, "--out", tmp_path / "run", "-q")
    _no_crash(res)
    assert res.rc == 0, res
    t = read_run_table(tmp_path / "run")
    row = t.filter(pl.col("src_key").str.ends_with("-path_dotdot"))
    assert row["status"].to_list() == ["ok"], row.select("status", "reason")
