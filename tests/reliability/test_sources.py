"""Source-level problems: one line naming the file, exit 1 (2 for usage), never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.reliability.corpus import write_simple_jsonl
from tests.reliability.helpers import (
    MountNamespace,
    Watched,
    curate,
    digits_recipe,
    read_run_table,
    write_recipe,
)


def _one_line(res, rc: int | tuple[int, ...], *names: str) -> None:
    """Exit ``rc`` with one ``Error`` line (naming ``names``) and no traceback."""
    assert not res.traceback, res
    assert not res.internal_error, res
    codes = rc if isinstance(rc, tuple) else (rc,)
    assert res.rc in codes, res
    lines = res.error_lines()
    assert len(lines) == 1, res
    others = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("Error")]
    assert not [ln for ln in others if "warning" not in ln.lower()], res
    for name in names:
        assert name in lines[0], (name, lines[0])


def _ingest(dataset, out, **kw):
    return curate("ingest", "--dataset", dataset, "--out", out, "-q", **kw)


def test_empty_jsonl(tmp_path):
    src = tmp_path / "empty.jsonl"
    src.write_bytes(b"")
    _one_line(_ingest(src, tmp_path / "run"), 1, "empty.jsonl")


def test_blank_lines_only_jsonl(tmp_path):
    src = tmp_path / "blank.jsonl"
    src.write_bytes(b"\n\n  \n")
    _one_line(_ingest(src, tmp_path / "run"), 1, "blank.jsonl")


def test_zero_row_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "zero.parquet"
    pq.write_table(
        pa.table({"image": pa.array([], pa.string()), "text": pa.array([], pa.string())}), src
    )
    _one_line(_ingest(src, tmp_path / "run"), 1, "zero.parquet")


def test_empty_directory(tmp_path):
    src = tmp_path / "emptydir"
    src.mkdir()
    _one_line(_ingest(src, tmp_path / "run"), 1, "emptydir")


def test_header_only_csv(tmp_path):
    src = tmp_path / "header.csv"
    src.write_text("image,text\n")
    _one_line(_ingest(src, tmp_path / "run"), 1, "header.csv")


def test_missing_source(tmp_path):
    _one_line(_ingest(tmp_path / "nope.jsonl", tmp_path / "run"), (1, 2), "nope.jsonl")


def test_unsupported_file_type(tmp_path):
    src = tmp_path / "data.txt"
    src.write_text("hello\n")
    _one_line(_ingest(src, tmp_path / "run"), 2, "data.txt")


def test_only_bad_lines_is_accounted(tmp_path):
    """A jsonl whose every line is broken: rows in = rejected rows (or one line, exit 1)."""
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b'{"image": \n\xff\xfe\n{"text": "\\ud800"}\n')
    res = _ingest(src, tmp_path / "run")
    assert not res.traceback, res
    if res.rc == 0:
        t = read_run_table(tmp_path / "run")
        assert t.height == 3 and set(t["status"]) == {"rejected"}
    else:
        _one_line(res, 1, "bad.jsonl")


def test_recipe_with_invalid_utf8(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_bytes(b"name: caf\xe9\ndataset: {name: 'builtin:digits', limit: 5}\nsteps: []\n")
    res = curate("clean", "--recipe", recipe, "--out", tmp_path / "run", "-q")
    _one_line(res, (1, 2), "bad.yaml")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize(
    "pattern",
    [r"(?=cat)", r"(a)\1", r"(?<!x)seven"],  # fine for Python's re, not for polars (Rust regex)
)
def test_regex_invalid_for_polars_caught_by_dry_run(tmp_path, pattern):
    steps = f"  - validate: {{reject_caption_patterns: [{json.dumps(pattern)}]}}\n"
    recipe = write_recipe(tmp_path / "r.yaml", digits_recipe("rx", limit=10, steps=steps))
    res = curate("clean", "--recipe", recipe, "--dry-run")
    _one_line(res, 2, "reject_caption_patterns")
    res = curate("clean", "--recipe", recipe, "--out", tmp_path / "run", "-q")
    _one_line(res, 2, "reject_caption_patterns")


def test_regex_invalid_for_python_caught_by_dry_run(tmp_path):
    steps = "  - validate: {reject_caption_patterns: ['([unclosed']}\n"
    recipe = write_recipe(tmp_path / "r.yaml", digits_recipe("rx", limit=10, steps=steps))
    _one_line(curate("clean", "--recipe", recipe, "--dry-run"), 2, "reject_caption_patterns")


# -- read-only and full disks ---------------------------------------------------------------
def _have_userns_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=16k tmpfs /tmp"],
        capture_output=True,
    )
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _have_userns_mount(), reason="needs unshare -rm and tmpfs")


@pytest.fixture(scope="module")
def ns():
    """One private mount namespace for this file's small file systems (its fork server imports
    curate once for all of them)."""
    space = MountNamespace()
    yield space
    space.close()


def _tmpfs(ns, mountpoint: Path, size: str, ro: bool = False) -> Path:
    """A tiny tmpfs at ``mountpoint``, seen only inside ``ns``."""
    mountpoint.mkdir()
    opts = f"size={size}" + (",ro" if ro else "")
    res = ns.run("mount", "-t", "tmpfs", "-o", opts, "tmpfs", mountpoint)
    assert res.rc == 0, res
    return mountpoint


def _grow(ns, mountpoint: Path) -> None:
    """Free space: the same file system, now with room."""
    res = ns.run("mount", "-o", "remount,size=64m", mountpoint)
    assert res.rc == 0, res


def test_read_only_output_parent(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: permissions are not enforced (see the tmpfs variant)")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        res = curate(
            "ingest", "--dataset", "builtin:digits", "--limit", "5", "--out", parent / "run", "-q"
        )
        _one_line(res, 1)
        res = curate("clean", "--recipe", write_recipe(tmp_path / "r.yaml", digits_recipe(limit=5)),
                     "--out", parent / "run", "-q")  # fmt: skip
        _one_line(res, 1)
    finally:
        parent.chmod(0o755)


@needs_mounts
def test_read_only_filesystem(ns, tmp_path):
    mnt = _tmpfs(ns, tmp_path / "mnt", "1m", ro=True)
    res = ns.curate("ingest", "--dataset", "builtin:digits", "--limit", "5", "--out", mnt / "run",
                    "-q")  # fmt: skip
    _one_line(res, 1)


@needs_mounts
def test_disk_full_during_ingest_then_rerun(ns, tmp_path):
    """ENOSPC in ingest: one line, exit 1; after space is freed the same command works."""
    mnt = _tmpfs(ns, tmp_path / "mnt", "96k")
    args = ["ingest", "--dataset", "builtin:digits", "--out", mnt / "run", "-q"]
    _one_line(ns.curate(*args), 1)
    _grow(ns, mnt)
    second = ns.curate(*args)
    assert second.rc == 0 and not second.traceback, second
    keep = tmp_path / "kept"  # out of the namespace's file system, to read it here
    assert ns.run("cp", "-r", mnt / "run", keep).rc == 0
    assert read_run_table(keep).height == 1797


@needs_mounts
def test_disk_full_during_export_then_rerun(ns, tmp_path):
    run = tmp_path / "run"
    res = curate("ingest", "--dataset", "builtin:digits", "--out", run, "-q")
    assert res.rc == 0, res
    mnt = _tmpfs(ns, tmp_path / "mnt", "64k")
    args = ["export", run, "--format", "parquet", "--out", mnt / "exp", "-q"]
    _one_line(ns.curate(*args), 1)
    left = ns.run("ls", "-A", mnt / "exp").stdout.split()
    assert "export.json" not in left, f"a failed export looks finished: {left}"
    _grow(ns, mnt)
    second = ns.curate(*args)
    assert second.rc == 0 and not second.traceback, second
    assert "data" in ns.run("ls", mnt / "exp").stdout.split()


@needs_mounts
def test_disk_full_during_clean(ns, tmp_path):
    mnt = _tmpfs(ns, tmp_path / "mnt", "160k")
    recipe = write_recipe(tmp_path / "r.yaml", digits_recipe(limit=1797))
    args = ["clean", "--recipe", recipe, "--out", mnt / "run", "-q"]
    _one_line(ns.curate(*args), 1)
    _grow(ns, mnt)
    second = ns.curate(*args)
    assert second.rc == 0 and not second.traceback, second


def test_source_left_untouched_on_error(tmp_path):
    folder = tmp_path / "ds"
    write_simple_jsonl(folder, n=6)
    (folder / "broken.jsonl").write_bytes(b"")
    watch = Watched([folder])
    _one_line(_ingest(folder / "broken.jsonl", tmp_path / "run"), 1)
    assert watch.changes() == []
