"""Ingest: every loader on local data, every bad-input class, the count invariant, stable ids."""

from __future__ import annotations

import io
import json

import numpy as np
import polars as pl
import pytest
from PIL import Image

from curate.errors import DataError, UsageError
from curate.io.ingest import IngestConfig, ingest
from curate.io.store import ImageStore
from curate.table import read_table


def _png(seed: int, size=(12, 10)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _write_images(folder, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        (folder / f"img{i}.png").write_bytes(_png(i))
        names.append(f"img{i}.png")
    return names


def _check_invariant(summary, table):
    assert table.height == summary["rows"]
    assert summary["kept"] + sum(summary["rejected"].values()) == summary["rows"]
    assert table["sample_id"].n_unique() == table.height


def test_imagefolder_with_metadata_captions(tmp_path):
    names = _write_images(tmp_path / "folder")
    with open(tmp_path / "folder" / "metadata.jsonl", "w") as f:
        for i, n in enumerate(names):
            f.write(json.dumps({"file_name": n, "text": f"picture {i}"}) + "\n")
    s = ingest(IngestConfig(name=str(tmp_path / "folder")), tmp_path / "run", quiet=True)
    table = read_table(tmp_path / "run")
    _check_invariant(s, table)
    assert s["source"]["kind"] == "imagefolder"
    assert sorted(table["caption"].to_list()) == [f"picture {i}" for i in range(4)]
    assert set(table["status"]) == {"ok"}


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_files_with_relative_image_paths(tmp_path, fmt):
    names = _write_images(tmp_path / "imgs")
    df = pl.DataFrame(
        {
            "path": [f"imgs/{n}" for n in names] + ["imgs/missing.png"],
            "caption": ["a", "b", "c", "d", "e"],
        }
    )
    path = tmp_path / f"data.{fmt}"
    {"parquet": df.write_parquet, "jsonl": df.write_ndjson, "csv": df.write_csv}[fmt](path)
    s = ingest(
        IngestConfig(name=str(path), image_column="path", caption_column="caption"),
        tmp_path / "run",
        quiet=True,
    )
    table = read_table(tmp_path / "run")
    _check_invariant(s, table)
    assert s["rejected"] == {"missing_file": 1}
    assert table.filter(pl.col("status") == "rejected")["caption"].to_list() == ["e"]


def test_parquet_with_image_bytes_and_list_captions(tmp_path):
    df = pl.DataFrame(
        {"img": [_png(0), _png(1), b""], "text": [["first", "alt first"], ["second"], ["third"]]}
    )
    df.write_parquet(tmp_path / "d.parquet")
    s = ingest(
        IngestConfig(name=str(tmp_path / "d.parquet"), image_column="img"),
        tmp_path / "run",
        quiet=True,
    )
    table = read_table(tmp_path / "run")
    _check_invariant(s, table)
    assert table["captions"].to_list()[0] == ["first", "alt first"]
    assert table["caption"].to_list()[0] == "first"
    assert s["rejected"] == {"empty_image": 1}


def test_save_to_disk_folder_split_and_ids(tmp_path):
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as HFImage

    feats = Features({"image": HFImage(), "text": Value("string"), "key": Value("string")})
    rows = {
        "image": [{"bytes": _png(i), "path": None} for i in range(3)],
        "text": ["x", "y", "z"],
        "key": ["a", "b", "a"],
    }
    DatasetDict({"validation": Dataset.from_dict(rows, features=feats)}).save_to_disk(
        str(tmp_path / "ds")
    )
    with pytest.raises(UsageError, match="^split: 'train': not in"):
        ingest(IngestConfig(name=str(tmp_path / "ds")), tmp_path / "r0", quiet=True)
    s = ingest(
        IngestConfig(name=str(tmp_path / "ds"), split="validation", id_column="key"),
        tmp_path / "run",
        quiet=True,
    )
    table = read_table(tmp_path / "run")
    _check_invariant(s, table)
    assert table["sample_id"].to_list()[:2] == ["a", "b"]
    assert table["reason"].to_list()[2] == "duplicate_id"


def test_bad_captions_are_rejected_with_reasons(tmp_path):
    df = pl.DataFrame(
        {"image": [_png(i) for i in range(4)], "text": ["ok caption", "   ", None, "fine"]},
        schema_overrides={"text": pl.String},
    )
    df.write_parquet(tmp_path / "d.parquet")
    s = ingest(IngestConfig(name=str(tmp_path / "d.parquet")), tmp_path / "run", quiet=True)
    assert s["rejected"] == {"empty_caption": 1, "missing_caption": 1}


def test_builtin_photos_every_bad_class_is_a_row(photos_run_template):
    table = read_table(photos_run_template)
    summary = json.loads((photos_run_template / "ingest.json").read_text())
    _check_invariant(summary, table)
    by_transform = dict(zip(table["src_gt_transform"], table["reason"], strict=True))
    assert by_transform["bad_truncated"] == "truncated"
    assert by_transform["bad_zero_bytes"] == "empty_image"
    assert by_transform["bad_empty_caption"] == "empty_caption"
    converted = table.filter(
        pl.col("src_gt_transform").is_in(["bad_rgba", "bad_palette", "bad_16bit"])
    )
    assert converted["status"].to_list() == ["ok"] * 3
    assert ImageStore(photos_run_template).get(converted["sample_id"].to_list())[0].mode == "RGB"


def test_same_input_gives_byte_identical_table(tmp_path):
    cfg = IngestConfig(name="builtin:digits", limit=50)
    ingest(cfg, tmp_path / "a", quiet=True)
    ingest(cfg, tmp_path / "b", quiet=True)
    a = (tmp_path / "a" / "table.parquet").read_bytes()
    assert a == (tmp_path / "b" / "table.parquet").read_bytes()
    ids = read_table(tmp_path / "a")["sample_id"].to_list()
    assert len(set(ids)) == 50 and all(len(i) == 20 for i in ids)  # content ids, not positions


def test_limit_and_unknown_columns(tmp_path):
    s = ingest(IngestConfig(name="builtin:digits", limit=7), tmp_path / "run", quiet=True)
    assert s["rows"] == 7
    with pytest.raises(UsageError, match="^caption_column: 'nope': not a column"):
        ingest(
            IngestConfig(name="builtin:digits", caption_column="nope"), tmp_path / "r2", quiet=True
        )


def test_unreachable_hub_name_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="could not load it from the Hugging Face Hub"):
        ingest(IngestConfig(name="someone/not-a-real-dataset-xyz"), tmp_path / "run", quiet=True)


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        ingest(IngestConfig(name=str(tmp_path / "nope" / "x")), tmp_path / "run", quiet=True)


def test_colliding_id_suffixes_stay_unique(tmp_path):
    df = pl.DataFrame({"id": ["a", "a", "a~1"], "img": [_png(0), _png(1), _png(2)], "text": "x"})
    df.write_parquet(tmp_path / "d.parquet")
    cfg = IngestConfig(name=str(tmp_path / "d.parquet"), id_column="id")
    ingest(cfg, tmp_path / "run", quiet=True)
    table = read_table(tmp_path / "run")
    assert table["sample_id"].n_unique() == 3 and "a~1" in table["sample_id"].to_list()
    # the third row keeps its own id; the repeated "a" gets a suffix nobody holds
    assert table.filter(pl.col("source_index") == 2)["sample_id"][0] == "a~1"
    assert table.filter(pl.col("reason") == "duplicate_id")["source_index"].to_list() == [1]


def test_content_ids_do_not_depend_on_row_order(tmp_path):
    df = pl.DataFrame({"img": [_png(i) for i in range(6)], "text": [f"c{i}" for i in range(6)]})
    df.write_parquet(tmp_path / "a.parquet")
    df.reverse().write_parquet(tmp_path / "b.parquet")
    for name in ("a", "b"):
        ingest(IngestConfig(name=str(tmp_path / f"{name}.parquet")), tmp_path / name, quiet=True)
    a, b = (read_table(tmp_path / n).sort("sample_id") for n in ("a", "b"))
    assert a["sample_id"].to_list() == b["sample_id"].to_list()
    assert a["caption"].to_list() == b["caption"].to_list()


def test_reingesting_other_settings_needs_overwrite_and_clears_old_outputs(tmp_path):
    run = tmp_path / "run"
    ingest(IngestConfig(name="builtin:digits", limit=20), run, quiet=True)
    (run / "steps" / "01-dedup_images").mkdir(parents=True)
    with pytest.raises(UsageError, match="pass overwrite: true"):
        ingest(IngestConfig(name="builtin:digits", limit=10), run, quiet=True)
    assert read_table(run).height == 20
    ingest(IngestConfig(name="builtin:digits", limit=10), run, quiet=True, overwrite=True)
    assert read_table(run).height == 10 and not (run / "steps").exists()


def test_a_folder_that_is_not_curates_is_refused_untouched(tmp_path):
    _write_images(tmp_path / "images")
    (tmp_path / "data.jsonl").write_text('{"image": "images/img0.png", "text": "a"}\n')
    before = sorted((p.name, p.stat().st_size) for p in tmp_path.rglob("*"))
    with pytest.raises(UsageError, match="not made by curate"):
        ingest(IngestConfig(name=str(tmp_path / "data.jsonl")), tmp_path, quiet=True)
    assert sorted((p.name, p.stat().st_size) for p in tmp_path.rglob("*")) == before


@pytest.fixture
def image_server():
    """A loopback HTTP server: /ok/N.png images, /missing (404), /optout (noai), /page (HTML),
    /busy (503)."""
    import http.server
    import threading

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            hits.append(self.path)
            if self.path.startswith("/ok/") or self.path == "/optout":
                body, kind = _png(len(self.path)), "image/png"
            elif self.path == "/page":
                body, kind = b"<html>not an image</html>", "text/html"
            elif self.path == "/busy":
                self.send_error(503)
                return
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            if self.path == "/optout":
                self.send_header("X-Robots-Tag", "noai")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()


def test_url_datasets_are_downloaded_with_a_reason_per_failure(tmp_path, image_server):
    base, hits = image_server
    urls = [f"{base}/ok/{i}.png" for i in range(3)] + [
        f"{base}/missing",
        f"{base}/optout",
        f"{base}/page",
    ]
    pl.DataFrame({"url": urls, "caption": [f"c{i}" for i in range(6)]}).write_csv(
        tmp_path / "laion.csv"
    )
    cfg = IngestConfig(name=str(tmp_path / "laion.csv"), image_column="url", fetch_timeout=2)
    s = ingest(cfg, tmp_path / "run", quiet=True)
    table = read_table(tmp_path / "run").sort("source_index")
    assert table["status"].to_list()[:3] == ["ok"] * 3
    assert [r.split(" ")[0] for r in table["reason"].to_list()[3:]] == [
        "http_404",
        "opted_out",
        "not_an_image",
    ]
    assert s["kept"] == 3 and sum(s["rejected"].values()) == 3
    assert ImageStore(tmp_path / "run").get(table["sample_id"].to_list()[:1])[0].size == (12, 10)
    # a rerun into a new ingest of the same run reuses the downloads: no request at all
    n = len(hits)
    ingest(cfg, tmp_path / "run", quiet=True, overwrite=True)
    assert len(hits) == n
    # --no-fetch: URLs are rejected with their own reason, nothing is requested
    cfg = IngestConfig(name=str(tmp_path / "laion.csv"), image_column="url", fetch_urls=False)
    s = ingest(cfg, tmp_path / "nofetch", quiet=True)
    assert s["rejected"] == {"url_not_fetched": 6} and len(hits) == n


@pytest.mark.parametrize("retries", [0, 1])
def test_fetch_retries_is_how_often_a_transient_failure_is_tried_again(
    tmp_path, image_server, retries
):
    base, hits = image_server
    pl.DataFrame({"url": [f"{base}/busy"], "caption": ["c"]}).write_csv(tmp_path / "a.csv")
    cfg = IngestConfig(name=str(tmp_path / "a.csv"), image_column="url", fetch_retries=retries)
    s = ingest(cfg, tmp_path / "run", quiet=True)
    assert hits.count("/busy") == 1 + retries
    assert list(s["rejected"]) == ["http_503"]
    # how hard URLs are tried is not what the ingest depends on: a rerun resumes
    assert cfg.fingerprint() == IngestConfig(name=cfg.name, image_column="url").fingerprint()
