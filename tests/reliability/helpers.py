"""Running the ``curate`` CLI as a user would, and checking what it left behind.

Shared by the reliability tests and ``scripts/bench_reliability.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TRACEBACK = "Traceback (most recent call last)"
CURATE = str(Path(sys.executable).parent / "curate")
CODE_RE = re.compile(r"[a-z][a-z0-9_]*")


def curate_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


@dataclass(repr=False)
class Result:
    args: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float
    cwd: str | None = None
    pid: int | None = None
    note: str = ""

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def traceback(self) -> bool:
        return TRACEBACK in self.output

    @property
    def internal_error(self) -> bool:
        return "internal error" in self.output.lower()

    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("Error")]

    def command(self) -> str:
        shown = ["curate", *self.args]
        return " ".join(a if a and " " not in a else repr(a) for a in shown)

    def __repr__(self) -> str:  # what pytest shows when an assertion fails
        return (
            f"$ {self.command()}  (cwd {self.cwd})\nrc={self.rc}\n--- stdout\n{self.stdout[-3000:]}"
            f"\n--- stderr\n{self.stderr[-3000:]}"
        )


def curate(
    *args: str | os.PathLike,
    cwd: Path | str | None = None,
    env: dict | None = None,
    timeout: float = 300,
    prefix: list[str] | None = None,
    preexec_fn=None,
) -> Result:
    """Run ``curate ARGS`` in a subprocess and wait for it."""
    argv = [str(a) for a in args]
    start = time.perf_counter()
    proc = subprocess.run(
        [*(prefix or []), CURATE, *argv],
        cwd=cwd,
        env=curate_env(env),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        preexec_fn=preexec_fn,
    )
    return Result(
        argv,
        proc.returncode,
        proc.stdout,
        proc.stderr,
        time.perf_counter() - start,
        str(cwd) if cwd else None,
    )


def start(*args: str | os.PathLike, cwd: Path | str | None = None, log: Path) -> subprocess.Popen:
    """Start ``curate ARGS`` in the background, stdout+stderr into ``log``."""
    fh = open(log, "wb")  # noqa: SIM115 (closed by finish)
    proc = subprocess.Popen(
        [CURATE, *(str(a) for a in args)],
        cwd=cwd,
        env=curate_env(),
        stdout=fh,
        stderr=subprocess.STDOUT,
    )
    proc._log = (fh, log)  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: float = 300) -> Result:
    """Wait for a process from ``start``; its combined output is in ``stderr`` and ``stdout``."""
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        fh, log = proc._log  # type: ignore[attr-defined]
        fh.close()
    text = Path(log).read_text(errors="replace")
    args = [str(a) for a in proc.args[1:]]  # type: ignore[index]
    return Result(args, rc, "", text, 0.0, pid=proc.pid)


def kill9(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    finish(proc, timeout=60)


def wait_for(predicate, timeout: float = 60, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until true; False after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(interval)
    return False


# -- trees ----------------------------------------------------------------------------------
def tree_state(root: Path | str, exclude: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every entry under ``root``: relative path -> (type, mode, sha256 | link target)."""
    root = Path(root)
    state: dict[str, tuple] = {}
    if not root.exists() and not root.is_symlink():
        return state
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        keep = []
        for d in dirnames:
            rel = os.path.normpath(os.path.join(rel_dir, d))
            if any(rel == e or rel.startswith(e + os.sep) for e in exclude):
                continue
            full = Path(dirpath, d)
            if full.is_symlink():
                state[rel] = ("link", os.readlink(full))
                continue
            state[rel] = ("dir", os.lstat(full).st_mode & 0o7777)
            keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, f))
            if any(rel == e or rel.startswith(e + os.sep) for e in exclude):
                continue
            full = Path(dirpath, f)
            st = os.lstat(full)
            if full.is_symlink():
                state[rel] = ("link", os.readlink(full))
            else:
                digest = hashlib.sha256(full.read_bytes()).hexdigest()
                state[rel] = ("file", st.st_mode & 0o7777, digest)
    return state


def tree_diff(before: dict, after: dict) -> list[str]:
    """Human-readable differences between two ``tree_state`` snapshots."""
    out = []
    for k in sorted(before.keys() - after.keys()):
        out.append(f"deleted {k}")
    for k in sorted(after.keys() - before.keys()):
        out.append(f"created {k}")
    for k in sorted(before.keys() & after.keys()):
        if before[k] != after[k]:
            out.append(f"modified {k}")
    return out


@dataclass
class Watched:
    """Snapshot folders before a command; ``changes()`` lists what happened to them."""

    folders: list[Path]
    exclude: tuple[str, ...] = ()
    before: dict = field(default_factory=dict)

    def __post_init__(self):
        self.before = {str(f): tree_state(f, self.exclude) for f in self.folders}

    def changes(self) -> list[str]:
        out = []
        for f in self.folders:
            out += [
                f"{f}: {d}" for d in tree_diff(self.before[str(f)], tree_state(f, self.exclude))
            ]
        return out


# -- run folders ----------------------------------------------------------------------------
def code_of(reason: str | None) -> str:
    """The reason code at the start of a ``reason`` value (``bad_line: line 3 ...`` -> bad_line)."""
    if reason is None:
        return "ok"
    m = CODE_RE.match(reason.strip())
    return m.group(0) if m else reason


def read_run_table(run: Path):
    import polars as pl

    return pl.read_parquet(Path(run) / "table.parquet")


def kept_and_removed(run: Path) -> tuple[int, int, int]:
    """(rows, kept, removed) of a run folder, by the README's rule."""
    import polars as pl

    t = read_run_table(run)
    drops = [c for c in t.columns if c.endswith("_drop")]
    keep = pl.col("status") == "ok"
    for c in drops:
        keep = keep & pl.col(c).is_null()
    kept = int(t.select(keep.sum()).item())
    return t.height, kept, t.height - kept


def export_images(export_dir: Path) -> list[bytes]:
    """Every image (encoded bytes) in every dataset file under an export folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    found: list[bytes] = []

    def scan(table: pa.Table) -> None:
        for col in table.columns:
            values = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
            if pa.types.is_struct(values.type):
                names = [values.type.field(i).name for i in range(values.type.num_fields)]
                if "bytes" in names:
                    values = values.field("bytes")
                else:
                    continue
            if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
                found.extend(v for v in values.to_pylist() if v)

    for p in Path(export_dir).rglob("*.parquet"):
        scan(pq.read_table(p))
    for p in Path(export_dir).rglob("*.arrow"):
        with pa.memory_map(str(p)) as src:
            try:
                scan(pa.ipc.open_stream(src).read_all())
            except pa.ArrowInvalid:
                src.seek(0)
                scan(pa.ipc.open_file(src).read_all())
    return found


def private_leaks(export_dir: Path, private: Path, private_pixels: str) -> list[str]:
    """Where the private file's bytes or pixels appear in an export (should be nowhere)."""
    from tests.reliability.corpus import pixel_digest

    raw = Path(private).read_bytes()
    leaks = []
    for p in Path(export_dir).rglob("*"):
        if p.is_file() and raw in p.read_bytes():
            leaks.append(f"{p}: raw bytes")
    for data in export_images(export_dir):
        if data == raw or pixel_digest(data) == private_pixels:
            leaks.append(f"{export_dir}: an exported image has the private pixels")
            break
    return leaks


def truncate_half(path: Path) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def png_bytes(seed: int = 0, size: int = 8) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_recipe(path: Path, text: str) -> Path:
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


def digits_recipe(
    name: str = "rel", limit: int = 60, steps: str | None = None, export: str = "parquet"
) -> str:
    """A cheap recipe on builtin:digits (validate + exact caption dedup + export)."""
    steps = steps or ("  - validate: {min_side: 1}\n  - dedup_captions: {tiers: [exact]}\n")
    return (
        f"name: {name}\nseed: 0\n"
        f"dataset: {{name: 'builtin:digits', limit: {limit}}}\n"
        f"steps:\n{steps}"
        f"export: {{format: {export}}}\n"
    )


# -- exports (layout-agnostic: RUN/export or RUN/export/<format>; a disk dataset at the root
# of the export folder or under dataset/) ---------------------------------------------------
def export_folder(run: Path, fmt: str = "parquet") -> Path:
    base = Path(run) / "export"
    return base / fmt if (base / fmt).is_dir() else base


def parquet_export_files(export_dir: Path) -> list[Path]:
    return sorted(Path(export_dir).glob("data/*.parquet"))


def parquet_export_rows(export_dir: Path):
    """The kept rows of a parquet export folder as one polars frame."""
    import polars as pl

    files = parquet_export_files(export_dir)
    if not files:
        raise AssertionError(f"no data/*.parquet under {export_dir}")
    return pl.concat([pl.read_parquet(p) for p in files])


def disk_export_dataset(export_dir: Path):
    from datasets import load_from_disk

    export_dir = Path(export_dir)
    root = export_dir if (export_dir / "state.json").exists() else export_dir / "dataset"
    return load_from_disk(str(root))


def kept_pairs(run: Path) -> list[tuple]:
    """Sorted (sample_id, text) of a run's parquet export."""
    data = parquet_export_rows(export_folder(run, "parquet"))
    rows = data.select("sample_id", "text").rows()
    return sorted((sid, tuple(t) if isinstance(t, list) else t) for sid, t in rows)
