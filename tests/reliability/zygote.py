"""A pre-imported ``curate`` process that forks one child per command (a fork server).

Every reliability test runs the real CLI in its own process, as a user would. Most of such a
process's time is the import of datasets, polars, pyarrow and scikit-learn (about 2 s of CPU
each time on this kind of machine, against milliseconds of work for a small command). This
server imports them once; each request forks a child that is a fresh ``curate`` process in
every way the tests look at: its own pid (a test may ``kill -9`` it), its own working
directory, environment, stdout and stderr files, the console script's entry point
(``curate.cli:main``), its exit code (negative signal number when killed, as ``subprocess``
reports it), and an uncaught exception printed as Python prints one.

Protocol: the server listens on a Unix socket (its file descriptor is ``argv[1]``, bound
by the process that starts it) and serves every connection: one JSON object per line
``{"id", "argv", "cwd", "env", "stdout", "stderr"}`` (file paths; equal paths share one file,
as ``stderr=STDOUT`` does; ``"exec": true`` runs the program ``argv`` instead of
``curate ARGV``); replies on the same connection: ``{"id", "pid"}`` once forked, then
``{"id", "rc"}`` when the child exits. A request the server cannot fork gets
``{"id", "error"}``. ``{"id", "namespace": PATH}`` forks a server of its own in a private user
and mount namespace (what ``unshare -rm`` makes) listening at ``PATH``: its commands see the
mounts made there, nothing outside does, and it needs no imports of its own. One server
serves every pytest worker of a run (``tests/conftest.py`` starts it): the imports cost
~12 s of CPU per server on this kind of machine.

A server exits once its input is closed (its stdin; a namespace's server: its last
connection) and its children have exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import socket
import sys


def _preload() -> None:
    # What curate commands import before they do any work (the CLI loads commands lazily);
    # torch and diffusers for the ones that rank. Importing starts no torch threads.
    import datasets  # noqa: F401
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401
    import polars  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import sklearn.datasets  # noqa: F401
    import torch  # noqa: F401
    import yaml  # noqa: F401
    from diffusers import DDPMScheduler, UNet2DModel  # noqa: F401

    import curate.cli  # noqa: F401
    import curate.export  # noqa: F401
    import curate.io.ingest  # noqa: F401
    import curate.models.denoiser  # noqa: F401
    import curate.recipe  # noqa: F401
    import curate.runner  # noqa: F401


def _child(req: dict, inherited: list[int]) -> None:
    """Become the command: never returns. ``inherited``: the server's sockets, closed."""
    code = 1
    try:
        for fd in inherited:
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = out
        if req["stderr"] != req["stdout"]:
            err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        if req.get("exec"):  # a program, not a curate command: ``mount`` in a namespace's server
            try:
                os.execvp(req["argv"][0], req["argv"])
            except OSError as exc:
                print(f"{req['argv'][0]}: {exc}", file=sys.stderr)
                code = 127
                return
        sys.argv = ["curate", *req["argv"]]
        from curate.cli import main

        try:
            main()
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:  # what the interpreter does with an uncaught exception
            import traceback

            traceback.print_exc()
            code = 1
        import atexit

        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_REC, MS_PRIVATE = 0x4000, 0x40000


def _enter_namespace() -> None:
    """What ``unshare -rm`` does: a new user namespace where this user is root, a new mount
    namespace, and mounts that do not propagate out of it."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    for name, text in (("uid_map", f"0 {uid} 1"), ("setgroups", "deny"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as fh:
            fh.write(text)
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")


class _Conn:
    def __init__(self, sock: socket.socket):
        self.sock, self.pending = sock, b""

    def send(self, msg: dict) -> None:
        with contextlib.suppress(OSError):  # the client is gone; its children run to the end
            self.sock.sendall((json.dumps(msg) + "\n").encode())


def serve(listener: socket.socket, lifeline: int | None, preload: bool = True) -> None:
    """Serve ``listener``'s connections until the input ends (``lifeline`` readable at EOF;
    None: the last connection closed) and every child has exited. ``preload``: import what
    commands import (``_preload``) when the first connection comes."""
    conns: dict[int, _Conn] = {}
    children: dict[int, tuple[_Conn, str]] = {}
    served = False

    def fds() -> list[int]:
        return [listener.fileno(), *conns, *([lifeline] if lifeline is not None else [])]

    def handle(conn: _Conn, req: dict) -> None:
        sub = None
        if "namespace" in req:
            sub = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sub.bind(req["namespace"])
            sub.listen(16)
        try:
            pid = os.fork()
        except OSError as err:
            conn.send({"id": req["id"], "error": str(err)})
            return
        if pid == 0:
            if sub is None:
                _child(req, fds())
            try:  # the namespace's server
                for fd in fds():
                    os.close(fd)
                _enter_namespace()
                serve(sub, None, preload=False)
            finally:
                os._exit(0)
        if sub is not None:
            sub.close()
        children[pid] = (conn, req["id"])
        conn.send({"id": req["id"], "pid": pid})

    while lifeline is not None or not served or conns or children:
        ready, _, _ = select.select(fds(), [], [], 0.01)
        for fd in ready:
            if fd == lifeline:
                if not os.read(lifeline, 4096):
                    lifeline = None
                    served = True
            elif fd == listener.fileno():
                if preload:  # on the first connection: a run that forks nothing imports nothing
                    _preload()
                    preload = False
                sock, _ = listener.accept()
                conns[sock.fileno()] = _Conn(sock)
                served = True
            else:
                conn = conns[fd]
                chunk = conn.sock.recv(65536)
                if not chunk:
                    conn.sock.close()
                    del conns[fd]
                    continue
                conn.pending += chunk
                while b"\n" in conn.pending:
                    line, conn.pending = conn.pending.split(b"\n", 1)
                    handle(conn, json.loads(line))
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            owner = children.pop(pid, None)
            if owner is not None:
                owner[0].send({"id": owner[1], "rc": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])), sys.stdin.fileno())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter teardown of torch and the rest: seconds, for nothing
