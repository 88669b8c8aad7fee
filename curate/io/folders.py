"""Folders curate owns: marked when created, locked while in use, written atomically.

curate writes only inside folders it made. Each such folder holds a marker file naming what it
is (a run folder, an export, a model, samples, an audit); a folder without the marker is the
user's and is never written into unless it is empty, and never deleted. Replacing one of
curate's own folders of another kind, or another run's output, needs an explicit
``overwrite``. A run folder also holds a lock: a second process gets one line naming the
holder; a lock left by a dead process is free again (the kernel drops ``flock`` locks with
their process), so a kill never wedges a folder.

Every marker and table is written to a temporary file and renamed into place, and a marker
that cannot be read (torn by a kill, edited by hand) reads as "not there", never as a crash.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curate.errors import DataError, UsageError

MARKER = ".curate.json"
LOCK_FILE = ".curate.lock"
RUN = "run"


class RunInUse(DataError):
    """The run folder's lock is held by another process (one line naming the holder)."""


#: What curate itself writes inside a run folder (everything else there is left alone).
RUN_ENTRIES = (
    MARKER,
    LOCK_FILE,
    "images",
    "table.parquet",
    "table",  # the table as parquet parts + manifest when it is large (curate.table)
    "ingest.json",
    "steps",
    "stats.json",
    "report",
    "export",
    "artifacts",
    "recipe.resolved.yaml",
    "downloads",
    "shards.json",
)
#: Kept when a run's data is replaced: the cache of downloaded URLs is still valid.
KEEP_ON_RESET = ("downloads",)
#: Entries that identify a folder written by curate before folders carried a marker.
_LEGACY_RUN = ("ingest.json", "table.parquet")


# -- atomic files ---------------------------------------------------------------------------
def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    with disk_errors("write", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_name(path)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    return path


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary path beside ``path`` to write a file to (by any library); renamed onto
    ``path`` when the block ends without an error, removed otherwise. The name is unique per
    process, so processes writing different files of one folder never meet."""
    path = Path(path)
    with disk_errors("write", path):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        with disk_errors("write", path):
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Path | str) -> dict | None:
    """A JSON object from ``path``, or None when it is missing, torn or not an object."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


@contextlib.contextmanager
def disk_errors(action: str, path: Path | str) -> Iterator[None]:
    """Turn an ``OSError`` (full or read-only disk, permissions) into a one-line ``DataError``."""
    try:
        yield
    except OSError as err:
        where = err.filename or path
        raise DataError(f"cannot {action} {where}: {err.strerror or err}") from None


def replace_dir(staged: Path, final: Path) -> None:
    """Move the finished folder ``staged`` to ``final``, replacing what is there only at the end.

    The old folder is renamed aside, the new one renamed in, then the old one deleted: a kill
    at any moment leaves either the old or the new folder at ``final``, never half of one.
    """
    with disk_errors("replace", final):
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
        os.replace(staged, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def staging_dir(final: Path) -> Path:
    """A fresh temporary folder beside ``final`` (same disk, so the last rename is atomic)."""
    with disk_errors("create", final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
    return tmp


_WRITER_PID = re.compile(r"\.(\d+)\.[0-9a-f]{8}\.tmp$|\.tmp-(\d+)-[0-9a-f]{8}$")


def _writer_pid(name: str) -> int | None:
    """The pid in a temporary name this module makes (``_tmp_name``, ``staging_dir``)."""
    m = _WRITER_PID.search(name)
    return None if m is None else int(m.group(1) or m.group(2))


def clear_stale_tmp(folder: Path) -> None:
    """Remove temporary files and folders a killed process left in ``folder`` (ours only).

    One whose writer is alive stays: a process that has not taken the run lock yet (claiming
    a new run folder, writing its marker) may be writing it now."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        name = p.name
        if name.startswith(".") and (".tmp" in name or ".old-" in name):
            pid = _writer_pid(name)
            if pid is not None and _pid_alive(pid):
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


# -- ownership ------------------------------------------------------------------------------
def folder_kind(path: Path | str) -> str | None:
    """What curate made ``path`` as (``run``, ``export``, ...), or None if curate did not."""
    path = Path(path)
    meta = read_json(path / MARKER)
    if meta is not None and isinstance(meta.get("kind"), str):
        return meta["kind"]
    if meta is None and (path / MARKER).exists():
        return "unknown"  # a torn marker: ours, kind lost
    if path.is_dir() and all((path / e).exists() for e in _LEGACY_RUN):
        names = {p.name for p in path.iterdir()}
        if names <= set(RUN_ENTRIES):
            return RUN  # a run folder from before markers
    return None


def folder_meta(path: Path | str) -> dict:
    return read_json(Path(path) / MARKER) or {}


def run_id(run_dir: Path | str) -> str:
    """The run folder's identity: made when the folder was, kept when it is moved or copied
    (an older run folder without one gets one now)."""
    run_dir = Path(run_dir)
    meta = folder_meta(run_dir)
    if not meta.get("run_id"):
        meta = {**_marker(RUN), **meta, "kind": RUN, "run_id": uuid.uuid4().hex}
        atomic_write_json(run_dir / MARKER, meta)
    return str(meta["run_id"])


def _is_empty_dir(path: Path) -> bool:
    """Empty, or holding only what a curate process that is creating it writes first (its
    marker's temporary file, the lock): two processes claiming one new folder both succeed."""
    if not path.is_dir():
        return False
    for p in path.iterdir():
        if p.name == LOCK_FILE or (p.name.startswith(f".{MARKER}.") and p.name.endswith(".tmp")):
            continue
        return False
    return True


def _marker(kind: str, **info: Any) -> dict:
    from curate._version import __version__

    return {
        "kind": kind,
        "tool": f"curate {__version__}",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **info,
    }


def claim_run_dir(path: Path | str, key: str = "out_dir") -> Path:
    """Make ``path`` a run folder, or check that it is one; refuse anyone else's folder
    (errors name the setting ``key`` that gave the folder: ``out_dir: PATH: ...``)."""
    path = Path(path)
    if path.is_dir() and not (path / MARKER).exists() and folder_kind(path) == RUN:
        # a run folder from before markers: give it one
        atomic_write_json(path / MARKER, _marker(RUN, run_id=uuid.uuid4().hex))
    return claim_folder(path, RUN, key, run_id=uuid.uuid4().hex)


def claim_folder(path: Path | str, kind: str, key: str = "out_dir", **info: Any) -> Path:
    """Make ``path`` a curate ``kind`` folder (run, samples, audit), or check that it is one.

    A new or empty folder is marked (with ``info`` in its marker); a folder curate made as
    ``kind`` is reused (a rerun may replace files in it); anything else is refused.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{key}: {path}: exists and is not a folder")
    have = folder_kind(path) if path.exists() else None
    if have == kind:
        return path
    if have is not None:
        raise UsageError(f"{key}: {path}: holds a curate {have}, not {kind}; choose another folder")
    if path.exists() and not _is_empty_dir(path):
        raise UsageError(
            f"{key}: {path}: the folder is not empty and was not made by curate; "
            "choose a new or empty folder (curate never writes into or deletes your files)"
        )
    with disk_errors("create", path):
        path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / MARKER, _marker(kind, **info))
    return path


def require_run_dir(path: Path | str, flag: str = "RUN_DIR") -> Path:
    """``path`` must be an existing run folder (one-line error otherwise)."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{flag} {path}: no such folder; create it with `curate ingest`")
    if folder_kind(path) != RUN:
        raise UsageError(
            f"{flag} {path}: not a curate run folder (no {MARKER} or table.parquet); "
            "create one with `curate ingest --dataset NAME --out RUN_DIR`"
        )
    return path


def reset_run_dir(path: Path | str) -> None:
    """Delete what curate wrote in a run folder (not the marker, lock or anything else)."""
    path = Path(path)
    if folder_kind(path) != RUN:
        raise UsageError(f"{path}: not a curate run folder; refusing to reset it")
    for name in RUN_ENTRIES:
        if name in (MARKER, LOCK_FILE, *KEEP_ON_RESET):
            continue
        p = path / name
        with disk_errors("remove", p):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


def prepare_output_dir(
    path: Path | str,
    kind: str,
    *,
    overwrite: bool = False,
    key: str = "out_dir",
    owner: str | None = None,
    protect: tuple[Path, ...] = (),
) -> Path | None:
    """Check that curate may write a ``kind`` folder at ``path``; returns a staging folder.

    - a missing or empty folder: fine;
    - a curate folder of the same ``kind`` made for the same ``owner`` (e.g. the same run):
      replaced, as a rerun replaces its own output;
    - any other curate folder: replaced only with ``overwrite``;
    - a non-empty folder curate did not make, a run folder, or a folder holding one of
      ``protect``: refused, ``overwrite`` or not.

    Write the new content into the returned staging folder, then ``finish_output_dir`` moves
    it into place (the old content is replaced only when the new one is complete).
    """
    path = Path(path)
    for p in protect:
        if _inside(p, path):
            raise UsageError(f"{key}: {path}: would replace {p}; choose another folder")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{key}: {path}: exists and is not a folder")
    if path.exists() and not _is_empty_dir(path):
        have = folder_kind(path)
        if have is None:
            raise UsageError(
                f"{key}: {path}: the folder is not empty and was not made by curate; "
                "choose a new or empty folder (curate never deletes your files)"
            )
        if have == RUN:
            raise UsageError(f"{key}: {path}: is a curate run folder; choose another folder")
        same = have == kind and owner is not None and folder_meta(path).get("owner") == owner
        if not same and not overwrite:
            what = folder_meta(path).get("what") or have
            raise UsageError(
                f"{key}: {path}: holds an earlier curate {what}; pass overwrite: true to replace it"
            )
    _clear_stale_siblings(path)
    return staging_dir(path)


def _clear_stale_siblings(path: Path) -> None:
    """Remove staging folders beside ``path`` that a killed curate process left behind."""
    if not path.parent.is_dir():
        return
    for p in path.parent.glob(f".{path.name}.tmp-*"):
        pid = _writer_pid(p.name)
        if pid is not None and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
    for p in path.parent.glob(f".{path.name}.old-*"):
        shutil.rmtree(p, ignore_errors=True)


def finish_output_dir(staged: Path, path: Path | str, kind: str, **info: Any) -> Path:
    """Mark ``staged`` as a curate ``kind`` folder and move it to ``path``."""
    path = Path(path)
    atomic_write_json(staged / MARKER, _marker(kind, **info))
    replace_dir(staged, path)
    return path


# -- locks ----------------------------------------------------------------------------------
_held: dict[str, list] = {}  # resolved path -> [fd, depth, shared]: re-entrant per process


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(path: Path | str, command: str | None = None, shared: bool = False) -> Iterator[None]:
    """Hold the run folder's lock for the duration of the block.

    A second process gets one line naming the holder (pid, command, since when) and exit 1.
    The lock is an ``flock`` on ``RUN_DIR/.curate.lock``: the kernel releases it when its
    process ends, however it ends, so a lock left by a dead process is simply free.

    ``shared=True`` takes it shared: any number of shard processes (``--shard i/N``) hold it
    at once, each writing only its own files; a command that needs the whole folder (ingest,
    clean, merge) is refused while they run, and they are refused while it runs.
    """
    path = Path(path)
    key = str(path.resolve())
    if key in _held:
        if _held[key][2] and not shared:
            raise RuntimeError(f"{path}: the run lock is held shared; cannot take it exclusively")
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    lock_path = path / LOCK_FILE
    with disk_errors("lock", lock_path):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; run without one
        fcntl = None
    if fcntl is not None:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = read_json(lock_path) or {}
            if holder.get("pid"):
                who = f"pid {holder['pid']}"
                if holder.get("command"):
                    who += f" ({holder['command']})"
                if holder.get("since"):
                    who += f" since {holder['since']}"
            else:  # shard processes hold it shared and leave the file empty
                who = "shard process(es) (--shard i/N)"
            raise RunInUse(
                f"{path} is in use by another curate process: {who}; wait for it to finish"
            ) from None
    if not shared:
        info = {
            "pid": os.getpid(),
            "command": command or " ".join(["curate", *sys.argv[1:]])[:300],
            "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
    _held[key] = [fd, 1, shared]
    try:
        if not shared:  # other processes' temporary files may be in flight while shared
            clear_stale_tmp(path)
        yield
    finally:
        del _held[key]
        if not shared:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the flock
