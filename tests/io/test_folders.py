"""Folders curate owns: refusing the user's folders, replacing only its own, locks, torn files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curate.errors import DataError, UsageError
from curate.io.folders import (
    MARKER,
    atomic_write_json,
    claim_folder,
    claim_run_dir,
    finish_output_dir,
    folder_kind,
    prepare_output_dir,
    read_json,
    reset_run_dir,
    run_lock,
)


def tree_digest(root: Path) -> str:
    """A hash of every path and file content under ``root``."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _user_folder(path: Path) -> Path:
    (path / "images").mkdir(parents=True)
    (path / "images" / "cat.png").write_bytes(b"not really a png")
    (path / "data.jsonl").write_text('{"image": "images/cat.png", "text": "a cat"}\n')
    return path


def test_a_users_non_empty_folder_is_never_claimed(tmp_path):
    user = _user_folder(tmp_path / "mine")
    before = tree_digest(user)
    with pytest.raises(UsageError, match="not made by curate"):
        claim_run_dir(user)
    with pytest.raises(UsageError, match="not made by curate"):
        claim_folder(user, "samples")
    assert tree_digest(user) == before


def test_new_and_empty_folders_become_run_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "new", tmp_path / "empty"):
        claim_run_dir(path)
        assert folder_kind(path) == "run"
        claim_run_dir(path)  # claiming again is fine


def test_reset_removes_only_what_curate_wrote(tmp_path):
    run = claim_run_dir(tmp_path / "run")
    (run / "steps" / "01-x").mkdir(parents=True)
    (run / "table.parquet").write_bytes(b"x")
    (run / "notes.txt").write_text("the user's own notes")
    reset_run_dir(run)
    assert not (run / "steps").exists() and not (run / "table.parquet").exists()
    assert (run / "notes.txt").read_text() == "the user's own notes"
    assert folder_kind(run) == "run"


def test_output_folder_rules(tmp_path):
    run = claim_run_dir(tmp_path / "run")
    user = _user_folder(tmp_path / "user")
    before = tree_digest(user)
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="not made by curate"):
            prepare_output_dir(user, "export", overwrite=overwrite, owner="a")
    assert tree_digest(user) == before
    with pytest.raises(UsageError, match="would replace"):
        prepare_output_dir(tmp_path, "export", owner="a", protect=(run,))
    with pytest.raises(UsageError, match="would replace"):
        prepare_output_dir(run, "export", owner="a", protect=(run,))

    out = tmp_path / "out"
    staged = prepare_output_dir(out, "export", owner="a")
    (staged / "f").write_text("one")
    finish_output_dir(staged, out, "export", owner="a")
    # the same owner replaces its own output; another needs overwrite
    staged = prepare_output_dir(out, "export", owner="a")
    (staged / "f").write_text("two")
    finish_output_dir(staged, out, "export", owner="a")
    assert (out / "f").read_text() == "two"
    with pytest.raises(UsageError, match="pass overwrite: true"):
        prepare_output_dir(out, "export", owner="b")
    staged = prepare_output_dir(out, "export", owner="b", overwrite=True)
    finish_output_dir(staged, out, "export", owner="b")
    assert not (out / "f").exists() and read_json(out / MARKER)["owner"] == "b"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_torn_marker_and_json_read_as_missing(tmp_path):
    atomic_write_json(tmp_path / "done.json", {"a": 1})
    (tmp_path / "done.json").write_text('{"a": ')
    assert read_json(tmp_path / "done.json") is None
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe")
    assert read_json(tmp_path / "bad.json") is None


_HOLD = """
import sys, time
from curate.io.folders import run_lock
with run_lock(sys.argv[1], command="curate clean --recipe holder.yaml"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(run: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    run = claim_run_dir(tmp_path / "run")
    proc = _holder(run, 30)
    try:
        busy = f"in use by another curate process: pid {proc.pid}"
        with pytest.raises(DataError, match=busy), run_lock(run):
            pass
    finally:
        proc.kill()
        proc.wait()
    with run_lock(run), run_lock(run):  # free after a kill, and re-entrant in one process
        pass


def test_lock_of_a_finished_process_is_free(tmp_path):
    run = claim_run_dir(tmp_path / "run")
    proc = _holder(run, 0)
    proc.wait()
    start = time.monotonic()
    with run_lock(run):
        pass
    assert time.monotonic() - start < 5


def test_the_lock_holder_keeps_temporary_files_of_live_writers(tmp_path):
    """A second ``curate clean --out RUN`` writes its marker into the folder before it asks for
    the lock; the holder clearing temporary files at that moment made the second one fail with
    "cannot write RUN/..curate.json.PID.X.tmp: No such file or directory" instead of naming the
    holder. Only what a dead process left is removed."""
    run = claim_run_dir(tmp_path / "run")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        in_flight = run / f".{MARKER}.{live.pid}.0123abcd.tmp"
        staging = run / f".images.tmp-{live.pid}-0123abcd"
        left = run / f".{MARKER}.{dead.pid}.89abcdef.tmp"
        left_dir = run / f".images.tmp-{dead.pid}-89abcdef"
        old = run / ".images.old-0123abcd"
        for p in (in_flight, left):
            p.write_text("{}")
        for p in (staging, left_dir, old):
            p.mkdir()
        with run_lock(run):
            pass
        assert in_flight.exists() and staging.is_dir()
        assert not left.exists() and not left_dir.exists() and not old.exists()
    finally:
        live.kill()
        live.wait()
