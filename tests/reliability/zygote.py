"""A pre-imported ``curate`` process that forks one child per command (a fork server).

Every reliability test runs the real CLI in its own process, as a user would. Most of such a
process's time is the import of datasets, polars, pyarrow and scikit-learn (about 2 s of CPU
each time on this kind of machine, against milliseconds of work for a small command). This
server imports them once; each request forks a child that is a fresh ``curate`` process in
every way the tests look at: its own pid (a test may ``kill -9`` it), its own working
directory, environment, stdout and stderr files, the console script's entry point
(``curate.cli:main``), its exit code (negative signal number when killed, as ``subprocess``
reports it), and an uncaught exception printed as Python prints one.

Protocol: one JSON object per line on stdin ``{"id", "argv", "cwd", "env", "stdout",
"stderr"}`` (file paths; equal paths share one file, as ``stderr=STDOUT`` does; ``"exec":
true`` runs the program ``argv`` instead of ``curate ARGV``); replies on
the file descriptor given as ``argv[1]``: ``{"id", "pid"}`` once forked, then ``{"id",
"rc"}`` when the child exits. A request the server cannot fork gets ``{"id", "error"}``.
"""

from __future__ import annotations

import json
import os
import select
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


def _child(req: dict, reply_fd: int) -> None:
    """Become the command: never returns."""
    code = 1
    try:
        os.close(reply_fd)
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


def serve(reply_fd: int) -> None:
    _preload()
    reply = os.fdopen(reply_fd, "w", buffering=1)
    children: dict[int, str] = {}
    stdin = sys.stdin.buffer
    pending = b""
    open_input = True
    while open_input or children:
        ready, _, _ = select.select([stdin] if open_input else [], [], [], 0.01)
        if ready:
            chunk = os.read(stdin.fileno(), 65536)
            if not chunk:
                open_input = False
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                req = json.loads(line)
                try:
                    pid = os.fork()
                except OSError as err:
                    reply.write(json.dumps({"id": req["id"], "error": str(err)}) + "\n")
                    continue
                if pid == 0:
                    _child(req, reply_fd)
                children[pid] = req["id"]
                reply.write(json.dumps({"id": req["id"], "pid": pid}) + "\n")
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            rid = children.pop(pid, None)
            if rid is not None:
                rc = os.waitstatus_to_exitcode(status)
                reply.write(json.dumps({"id": rid, "rc": rc}) + "\n")


if __name__ == "__main__":
    serve(int(sys.argv[1]))
