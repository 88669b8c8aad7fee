"""Running the ``curate`` CLI as a user would, and checking what it left behind.

Shared by the reliability tests and ``scripts/bench_reliability.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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
    """Run ``curate ARGS`` in its own process and wait for it.

    The process is forked from a pre-imported server (``zygote.py``) unless a launcher
    ``prefix``, a ``preexec_fn`` or ``env`` extras are given (the server's imports read the
    environment once) or ``CURATE_TEST_SUBPROCESS=1`` asks for plain subprocesses everywhere.
    """
    argv = [str(a) for a in args]
    start_time = time.perf_counter()
    server = None if (prefix or preexec_fn or env) else _zygote()
    if server is None:
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
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        rc, out, err = _forked_call(server, argv, cwd, timeout)
    return Result(argv, rc, out, err, time.perf_counter() - start_time, str(cwd) if cwd else None)


def _forked_call(server, argv: list[str], cwd, timeout: float, program: bool = False):
    """Fork ARGV from ``server``, wait for it (killed past ``timeout``): (rc, stdout, stderr)."""
    with tempfile.TemporaryDirectory(prefix="curate-call-") as tmp:
        out_path, err_path = Path(tmp, "stdout"), Path(tmp, "stderr")
        child = server.spawn(argv, cwd, out_path, err_path, program=program)
        try:
            rc = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=60)
            raise
        return rc, out_path.read_text(errors="replace"), err_path.read_text(errors="replace")


def torchrun(
    *args: str | os.PathLike, nproc: int = 2, cwd: Path | str | None = None, timeout: float = 300
) -> Result:
    """``torchrun --standalone --nproc_per_node NPROC -m curate -- ARGS``, as its agent starts
    the processes: NPROC ``curate`` processes with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
    ``LOCAL_WORLD_SIZE`` and a loopback ``MASTER_ADDR``/``MASTER_PORT``, here forked from the
    pre-imported server (a fresh process importing torch and diffusers costs ~5 s of CPU, twice
    per launch). curate reads only these variables and torch reads them at
    ``init_process_group``, after import. The outputs are the ranks' in rank order, the exit
    code the first failing rank's (the others are then killed, as the agent does).
    ``tests/scale/test_rank_shards.py`` checks these variables against the real launcher's;
    under ``CURATE_TEST_SUBPROCESS=1`` this function runs the real launcher."""
    import socket

    argv = [str(a) for a in args]
    start_time = time.perf_counter()
    server = _zygote()
    if server is None:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", str(nproc), "-m", "curate", "--"]  # fmt: skip
        proc = subprocess.run([*launcher, *argv], cwd=cwd, env=curate_env(DIST_ENV),
                              capture_output=True, text=True, errors="replace", timeout=timeout)  # fmt: skip
        return Result(argv, proc.returncode, proc.stdout, proc.stderr,
                      time.perf_counter() - start_time, str(cwd) if cwd else None)  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="curate-ranks-") as tmp:
        procs = []
        for rank in range(nproc):
            env = {**DIST_ENV, **rank_env(rank, nproc, port)}
            out, err = Path(tmp, f"{rank}.out"), Path(tmp, f"{rank}.err")
            procs.append((server.spawn(argv, cwd, out, err, env=env), out, err))
        end, failed = time.monotonic() + timeout, []
        while any(p.poll() is None for p, _, _ in procs):
            failed = [p.returncode for p, _, _ in procs if p.returncode not in (None, 0)]
            late = time.monotonic() > end
            if failed or late:
                for p, _, _ in procs:
                    p.kill()
                    p.wait(timeout=60)
                if late and not failed:
                    raise subprocess.TimeoutExpired(["torchrun", *argv], timeout)
                break
            time.sleep(0.02)
        rc = next((p.returncode for p, _, _ in procs if p.returncode != 0), 0)
        rc = failed[0] if failed else rc
        stdout = "".join(o.read_text(errors="replace") for _, o, _ in procs)
        stderr = "".join(e.read_text(errors="replace") for _, _, e in procs)
    return Result(argv, rc, stdout, stderr, time.perf_counter() - start_time,
                  str(cwd) if cwd else None)  # fmt: skip


# CPU only, as the tests' torchrun launches ran
DIST_ENV = {"CUDA_VISIBLE_DEVICES": ""}


def rank_env(rank: int, nproc: int, port: int) -> dict[str, str]:
    """The launcher variables ``torchrun --standalone --nproc_per_node NPROC`` gives process
    RANK on one node (``tests/scale/test_rank_shards.py`` checks them against the real one)."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc), "RANK": str(rank), "LOCAL_RANK": str(rank),
            "GROUP_RANK": "0"}  # fmt: skip


def start(*args: str | os.PathLike, cwd: Path | str | None = None, log: Path):
    """Start ``curate ARGS`` in the background, stdout+stderr into ``log``."""
    argv = [str(a) for a in args]
    server = _zygote()
    if server is not None:
        proc = server.spawn(argv, cwd, Path(log), Path(log))
        proc._log = (None, log)
        return proc
    fh = open(log, "wb")  # noqa: SIM115 (closed by finish)
    proc = subprocess.Popen(
        [CURATE, *argv],
        cwd=cwd,
        env=curate_env(),
        stdout=fh,
        stderr=subprocess.STDOUT,
    )
    proc._log = (fh, log)  # type: ignore[attr-defined]
    return proc


def finish(proc, timeout: float = 300) -> Result:
    """Wait for a process from ``start``; its combined output is in ``stderr`` and ``stdout``."""
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        fh, log = proc._log  # type: ignore[attr-defined]
        if fh is not None:
            fh.close()
    text = Path(log).read_text(errors="replace")
    args = [str(a) for a in proc.args[1:]]  # type: ignore[index]
    return Result(args, rc, "", text, 0.0, pid=proc.pid)


# -- the fork server -------------------------------------------------------------------------
ZYGOTE = Path(__file__).with_name("zygote.py")


class ForkedProcess:
    """A command forked by the server: the part of ``subprocess.Popen`` the tests use."""

    def __init__(self, server: _Server, rid: str, args: list[str]):
        self._server, self._rid, self.args = server, rid, args
        self.pid = server.pid_of(rid)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.rc_of(self._rid, block=False)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            rc = self._server.rc_of(self._rid, timeout=timeout)
            if rc is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = rc
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


ZYGOTE_ENV = "CURATE_TEST_ZYGOTE"  # the socket of a server this run shares (tests/conftest.py)


def start_zygote(prefix: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """Start a fork server (``zygote.py``, under a launcher ``prefix`` such as
    ``unshare -rm``): ``(process, socket path)``. It exits once the process's stdin is closed
    and its children have exited (``stop_zygote``)."""
    import socket

    folder = tempfile.mkdtemp(prefix="curate-zygote-")
    path = os.path.join(folder, "socket")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)  # bound before the server starts: clients connect at once
    listener.listen(64)
    log = open(os.path.join(folder, "log"), "wb")  # noqa: SIM115 (the server's output)
    proc = subprocess.Popen(
        [*prefix, sys.executable, str(ZYGOTE), str(listener.fileno())],
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=log,
        env=curate_env(),
        pass_fds=(listener.fileno(),),
    )
    proc.log_path, proc.socket_dir = log.name, folder  # type: ignore[attr-defined]
    log.close()
    listener.close()
    return proc, path


def stop_zygote(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        proc.stdin.close()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    if getattr(proc, "socket_dir", None):
        shutil.rmtree(proc.socket_dir, ignore_errors=True)


class _Server:
    """A connection to a fork server at the Unix socket ``path``."""

    def __init__(self, path: str, log: str | None = None):
        import socket

        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        self._log_path = log
        self._replies = self._sock.makefile("r")
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._state: dict[str, dict] = {}
        self._count = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._replies:
            msg = json.loads(line)
            with self._cond:
                self._state.setdefault(msg["id"], {}).update(msg)
                self._cond.notify_all()
        with self._cond:  # the server is gone: every waiter wakes up and fails
            self._dead = True
            self._cond.notify_all()

    def _wait_for(self, rid: str, key: str, timeout: float | None) -> dict | None:
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while key not in self._state.get(rid, {}) and "error" not in self._state.get(rid, {}):
                if getattr(self, "_dead", False):
                    log = Path(self._log_path).read_text() if self._log_path else ""
                    raise RuntimeError(f"the fork server went away:\n{log}")
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            state = self._state[rid]
        if "error" in state:
            raise OSError(f"the fork server could not fork: {state['error']}")
        return state

    def spawn(
        self,
        argv: list[str],
        cwd,
        stdout: Path,
        stderr: Path,
        env: dict | None = None,
        program: bool = False,
    ) -> ForkedProcess:
        """Fork ``curate ARGV`` (``program``: exec the program ``ARGV``); ``env``: variables
        read after import only (a launcher's)."""
        with self._cond:
            self._count += 1
            rid = str(self._count)
        req = {
            "id": rid,
            "argv": argv,
            "cwd": str(cwd) if cwd else os.getcwd(),
            "env": curate_env(env),
            "stdout": str(stdout),
            "stderr": str(stderr),
            "exec": program,
        }
        self._send(req)
        return ForkedProcess(self, rid, argv if program else [CURATE, *argv])

    def _send(self, req: dict) -> None:
        with self._lock:
            self._sock.sendall((json.dumps(req) + "\n").encode())

    def namespace(self, path: str) -> int:
        """Fork a server in a private user and mount namespace listening at ``path``: its pid."""
        with self._cond:
            self._count += 1
            rid = str(self._count)
        self._send({"id": rid, "namespace": path})
        return self.pid_of(rid)

    def close(self) -> None:
        """This connection ends; a namespace's server exits once its children have."""
        import socket

        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def pid_of(self, rid: str) -> int:
        return self._wait_for(rid, "pid", timeout=120)["pid"]

    def rc_of(self, rid: str, block: bool = True, timeout: float | None = None) -> int | None:
        state = self._wait_for(rid, "rc", timeout=timeout if block else 0)
        return None if state is None else state["rc"]


_SERVER: list = []


def _zygote() -> _Server | None:
    """A connection to the run's fork server (``CURATE_TEST_ZYGOTE``), else to one this
    process starts on first use; None when plain subprocesses are asked."""
    if os.environ.get("CURATE_TEST_SUBPROCESS") == "1":
        return None
    if not _SERVER:
        path, log = os.environ.get(ZYGOTE_ENV), None
        if not path:
            proc, path = start_zygote()
            log = proc.log_path
            atexit.register(stop_zygote, proc)
        _SERVER.append(_Server(path, log))
    return _SERVER[0]


class MountNamespace:
    """A private user and mount namespace (what ``unshare -rm`` makes) with a fork server
    inside, forked from the run's server: ``run`` executes a program there
    (``mount -t tmpfs ...``), ``curate`` a command, and both see the namespace's mounts, which
    nothing outside it does. Under ``CURATE_TEST_SUBPROCESS=1`` the namespace is
    ``unshare -rm`` running a server of its own."""

    def __init__(self):
        self._proc, self._tmp = None, None
        main = _zygote()
        log = None
        if main is None:
            self._proc, path = start_zygote(prefix=("unshare", "-rm"))
            log = self._proc.log_path
        else:
            self._tmp = tempfile.mkdtemp(prefix="curate-ns-")
            path = os.path.join(self._tmp, "socket")
            main.namespace(path)
        self._server = _Server(path, log)

    def _call(self, argv: list[str], program: bool, timeout: float) -> Result:
        start_time = time.perf_counter()
        rc, out, err = _forked_call(self._server, argv, None, timeout, program)
        return Result(argv, rc, out, err, time.perf_counter() - start_time)

    def run(self, *argv: str | os.PathLike, timeout: float = 60) -> Result:
        return self._call([str(a) for a in argv], True, timeout)

    def curate(self, *args: str | os.PathLike, timeout: float = 300) -> Result:
        argv = [str(a) for a in args]
        if os.environ.get("CURATE_TEST_SUBPROCESS") == "1":
            res = self._call([CURATE, *argv], True, timeout)
            res.args = argv
            return res
        return self._call(argv, False, timeout)

    def close(self) -> None:
        self._server.close()
        if self._proc is not None:
            stop_zygote(self._proc)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


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
