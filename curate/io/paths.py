"""Read an image file named by a path string inside a dataset, safely.

``read_image_file(value, base_dir)`` returns the file's bytes or ``(None, reason)`` and never
raises, whatever the string holds. Relative paths resolve against the dataset's own folder
(``base_dir``); a path that leaves it (``../``, an absolute path elsewhere, a symlink pointing
out) is refused unless the caller allows it, so a dataset file cannot pull a private file from
elsewhere on the disk into a run (and from there into an export).

Reasons (stable codes, the ``reason`` column of a rejected row):

- ``path_too_long``: a path component over 255 bytes, the whole path over 4096 bytes, or the
  operating system says ``ENAMETOOLONG``;
- ``outside_dataset``: a relative path whose ``../`` leaves ``base_dir``, an absolute path not
  under ``base_dir``, or a symlink that resolves outside it (all allowed with
  ``allow_outside=True``). Without a ``base_dir`` (built-in and Hub sets) every absolute path
  is outside, and relative paths resolve against the working directory and may not leave it;
- ``url_not_fetched``: ``http://``, ``https://``, ``s3://``, ``data:`` ... values (datasets of
  URLs are not downloaded);
- ``missing_file``: nothing at that path (also an empty path, or a file used as a folder);
- ``not_a_file``: a folder, fifo, socket or device (``/dev/zero``);
- ``file_too_large``: more than ``max_bytes``;
- ``unreadable_file``: permissions or any other ``OSError`` (a symlink loop, an I/O error);
- ``invalid_path``: NUL bytes, a string that cannot be a file name (lone surrogates), or a
  value that is not a string.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

PATH_TOO_LONG = "path_too_long"
OUTSIDE_DATASET = "outside_dataset"
URL_NOT_FETCHED = "url_not_fetched"
MISSING_FILE = "missing_file"
NOT_A_FILE = "not_a_file"
FILE_TOO_LARGE = "file_too_large"
UNREADABLE_FILE = "unreadable_file"
INVALID_PATH = "invalid_path"

#: Every reason ``read_image_file`` can give.
REASONS = (
    PATH_TOO_LONG,
    OUTSIDE_DATASET,
    URL_NOT_FETCHED,
    MISSING_FILE,
    NOT_A_FILE,
    FILE_TOO_LARGE,
    UNREADABLE_FILE,
    INVALID_PATH,
)

NAME_MAX = 255  # bytes in one path component (ext4, xfs, btrfs, apfs, ntfs)
PATH_MAX = 4096  # bytes in a whole path (Linux)
DEFAULT_MAX_BYTES = 512 * 2**20

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_CHUNK = 1 << 20


def is_url(value: str) -> bool:
    """``scheme://...`` or a ``data:`` URI."""
    return bool(_URL.match(value)) or value[:5].lower() == "data:"


def _too_long(raw: bytes) -> bool:
    return len(raw) > PATH_MAX or any(len(part) > NAME_MAX for part in raw.split(b"/"))


def _inside(path: str, root: str) -> bool:
    """``path`` equals ``root`` or lies under it (both absolute and normalised)."""
    if path == root:
        return True
    return path.startswith(root if root.endswith(os.sep) else root + os.sep)


def _fd_target(fd: int) -> str | None:
    """The real path of an open file (Linux ``/proc``), or None when it cannot be told."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _os_reason(err: OSError) -> str:
    if err.errno == errno.ENAMETOOLONG:
        return PATH_TOO_LONG
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return MISSING_FILE
    if err.errno == errno.EISDIR:
        return NOT_A_FILE
    return UNREADABLE_FILE


def read_image_file(
    value: str,
    base_dir: Path | None,
    *,
    allow_outside: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[bytes | None, str | None]:
    """The bytes of the image file named by ``value``, or ``(None, reason)``; never raises.

    See the module docstring for the reasons. ``value`` is used as written: no ``~``
    expansion, no URL decoding; ``file://`` is a URL like any other.
    """
    try:
        return _read(value, base_dir, allow_outside, max_bytes)
    except OSError as err:  # pragma: no cover - every call that can fail is handled below
        return None, _os_reason(err)
    except (ValueError, TypeError, UnicodeError, RuntimeError):  # pragma: no cover
        return None, INVALID_PATH


def _read(
    value: object, base_dir: Path | None, allow_outside: bool, max_bytes: int
) -> tuple[bytes | None, str | None]:
    if not isinstance(value, str):
        return None, INVALID_PATH
    if "\x00" in value:
        return None, INVALID_PATH
    if not value.strip():
        return None, MISSING_FILE
    if is_url(value.strip()):
        return None, URL_NOT_FETCHED
    try:
        raw = os.fsencode(value)  # surrogate-escaped bytes of a non-UTF-8 name come back
    except UnicodeError:
        return None, INVALID_PATH
    if _too_long(raw):
        return None, PATH_TOO_LONG

    absolute = os.path.isabs(value)
    if base_dir is None:
        try:
            root = os.getcwd()
        except OSError:
            return None, UNREADABLE_FILE
        if absolute and not allow_outside:
            return None, OUTSIDE_DATASET
    else:
        root = os.path.abspath(os.fspath(base_dir))
    joined = value if absolute else os.path.join(root, value)
    try:
        joined_raw = os.fsencode(joined)
    except UnicodeError:  # pragma: no cover - base_dir itself is not a file name
        return None, INVALID_PATH
    if len(joined_raw) > PATH_MAX:
        return None, PATH_TOO_LONG
    normal = os.path.normpath(joined)
    real_root = None
    if not allow_outside:
        if not _inside(normal, os.path.normpath(root)):
            return None, OUTSIDE_DATASET
        real_root = os.path.realpath(root)
        if not _inside(os.path.realpath(joined), real_root):
            return None, OUTSIDE_DATASET

    try:
        # a folder, fifo or device is refused before it is opened (opening some devices acts)
        if not stat.S_ISREG(os.stat(joined).st_mode):
            return None, NOT_A_FILE
    except OSError as err:
        return None, _os_reason(err)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(joined, flags)  # O_NONBLOCK: a fifo without a writer does not hang
    except OSError as err:
        return None, _os_reason(err)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, NOT_A_FILE
        if real_root is not None:
            # the path checked above may have been swapped for a symlink since: check the file
            # actually opened
            target = _fd_target(fd)
            if target is not None and not _inside(target, real_root):
                return None, OUTSIDE_DATASET
        if info.st_size > max_bytes:
            return None, FILE_TOO_LARGE
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # the file grew while being read
                return None, FILE_TOO_LARGE
        return b"".join(chunks), None
    except OSError as err:
        return None, _os_reason(err)
    finally:
        os.close(fd)
