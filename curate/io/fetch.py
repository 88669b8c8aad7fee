"""Download images given as http(s) URLs (the img2dataset / LAION layout).

``Fetcher.fetch_many(urls)`` returns ``(bytes, None)`` or ``(None, reason)`` per URL, in order,
and never raises for a URL. Downloads run in a thread pool. Connection errors, timeouts, 408, 429
and 5xx answers are retried with exponential backoff (``Retry-After`` is honoured up to 30 s).
Other 4xx answers are not retried. Each request has a timeout, and each body has a size cap.

Results are cached in ``cache_dir`` under the SHA-256 of the URL (``ab/abcd...``: the image
bytes; ``ab/abcd....json``: a failure record). Every file is written to a temporary file and
renamed into place, so a killed run leaves no torn entries. A rerun returns what it already has
without a request. Permanent failures (4xx, opted out, not an image, too large) are answered from
the record. Transient failures (timeouts, connection errors, 5xx, 408, 429) are fetched again.
A record stops counting when the config that produced it no longer applies: an ``opted_out``
record when ``respect_opt_out`` is off, and a ``too_large`` record when ``max_bytes`` has grown.

Opt-out: an ``X-Robots-Tag`` header carrying any of img2dataset's directives (``noai``,
``noimageai``, ``noindex``, ``noimageindex``) rejects the image as ``opted_out``. This holds when
the directive has no user-agent prefix, or when the prefix is ``curate`` or ``img2dataset``.
``otherbot: noai`` does not apply to us.

Reasons are stable codes, sometimes followed by a detail in parentheses: ``http_<status>``,
``timeout``, ``connection_error (...)``, ``too_large (...)``, ``not_an_image (...)``,
``opted_out (...)``, ``unsupported_url``, and ``fetch_error (...)`` (an unexpected error, treated
as transient). ``reason_code(reason)`` strips the detail, for counting.

Why not img2dataset itself: installing it downgrades pandas 3 to 2.x (it pins ``pandas<3``) and
adds about 30 packages (wandb, opencv, albumentations, opentelemetry, ...). Its per-URL function
returns only an error string. It has no size cap and no HTTP status. It retries every error the
same way, 404s included, with no backoff. Its own download loop writes shards to disk rather
than returning bytes in memory. The standard library does the job in a few hundred lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
import zlib
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from curate._version import __version__

Result = tuple[bytes | None, str | None]

# -- reason codes ---------------------------------------------------------------------------
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
TOO_LARGE = "too_large"
NOT_AN_IMAGE = "not_an_image"
OPTED_OUT = "opted_out"
UNSUPPORTED_URL = "unsupported_url"
FETCH_ERROR = "fetch_error"

#: img2dataset's default ``disallowed_header_directives``.
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
#: ``X-Robots-Tag: <token>: <directives>`` applies to us for these tokens (and with no token).
USER_AGENT_TOKENS = frozenset({"curate", "img2dataset"})

_RECORD_VERSION = 1
_CHUNK = 64 * 1024
_MAX_RETRY_AFTER = 30.0
_RETRY_STATUS = frozenset({408, 429})
_BINARY_TYPES = frozenset(
    {"application/octet-stream", "binary/octet-stream", "application/binary", "application/unknown"}
)
_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",  # JPEG
    b"GIF87a",
    b"GIF89a",
    b"BM",  # BMP
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
    b"\x00\x00\x01\x00",  # ICO
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",  # JPEG 2000
    b"\xffO\xffQ",  # JPEG 2000 codestream
    b"qoif",
)
_FTYP_BRANDS = frozenset(
    {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
)


def reason_code(reason: str) -> str:
    """``"not_an_image (text/html)"`` -> ``"not_an_image"`` (for counting reasons)."""
    return reason.split(" (", 1)[0]


def is_url(value: Any) -> bool:
    """True for an ``http://`` or ``https://`` URL with a host: the URLs ``Fetcher`` downloads."""
    if not isinstance(value, str):
        return False
    try:
        parts = urllib.parse.urlsplit(value.strip())
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def looks_like_url(value: Any) -> bool:
    """True for any ``scheme://...`` value (``s3://``, ``gs://``, ``ftp://`` included).

    Such a value is a URL, not a local path. ``Fetcher`` answers the ones that are not http(s)
    with ``unsupported_url``. The scheme must be at least two letters, so that ``C://x`` is
    not taken for a URL.
    """
    if not isinstance(value, str):
        return False
    scheme, sep, _ = value.strip().partition("://")
    return bool(sep) and len(scheme) >= 2 and scheme[0].isalpha() and scheme.isascii()


def looks_like_image(data: bytes) -> bool:
    """Whether ``data`` starts with a known image magic number (PNG, JPEG, GIF, WebP, ...)."""
    if data.startswith(_MAGIC):
        return True
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return data[4:8] == b"ftyp" and data[8:12] in _FTYP_BRANDS


def is_opted_out(
    values: Sequence[str],
    directives: frozenset[str] = OPT_OUT_DIRECTIVES,
    tokens: frozenset[str] = USER_AGENT_TOKENS,
) -> bool:
    """Whether ``X-Robots-Tag`` header values opt the resource out of dataset use.

    Each value is ``directives`` or ``token: directives`` (comma-separated), as img2dataset
    parses it.
    """
    for value in values:
        head, sep, rest = value.partition(":")
        token = head.strip().lower()
        # a token is one word before the first ":" ("noindex, unavailable_after: ..." has none)
        if not sep or not token or "," in token or " " in token or token in directives:
            token, rest = "", value
        if token and token not in tokens:
            continue
        if any(d.strip().lower() in directives for d in rest.split(",")):
            return True
    return False


@dataclass(frozen=True)
class FetchConfig:
    """How URLs are fetched. ``timeout`` limits each connect and each read. ``total_timeout``
    limits one attempt from request to last byte."""

    workers: int = 16
    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.5
    max_bytes: int = 64 * 2**20
    user_agent: str = f"curate/{__version__} (+image dataset curation)"
    respect_opt_out: bool = True
    total_timeout: float = 60.0

    def __post_init__(self) -> None:
        problems = []
        if self.workers < 1:
            problems.append("workers must be >= 1")
        if self.timeout <= 0 or self.total_timeout <= 0:
            problems.append("timeout and total_timeout must be > 0")
        if self.retries < 0:
            problems.append("retries must be >= 0")
        if self.backoff < 0:
            problems.append("backoff must be >= 0")
        if self.max_bytes < 1:
            problems.append("max_bytes must be >= 1")
        if problems:
            raise ValueError("FetchConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class _Outcome:
    data: bytes | None
    reason: str | None
    retry_after: float | None = None
    opted_out: bool = False  # the header said so, but respect_opt_out is off
    attempts: int = 1


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib would also follow one to ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urljoin(req.full_url, newurl)
        if not is_url(target):
            raise ValueError(f"redirect to {urllib.parse.urlsplit(target).scheme or '?'}://")
        return super().redirect_request(req, fp, code, msg, headers, _requote(target))


def _requote(url: str) -> str:
    """Make a URL sendable: IDNA-encode a non-ASCII host and percent-encode spaces and
    non-ASCII characters. Existing ``%xx`` escapes stay as they are."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if not netloc.isascii():
        userinfo, at, hostport = netloc.rpartition("@")
        host, colon, port = hostport.partition(":")
        with contextlib.suppress(UnicodeError):
            netloc = f"{userinfo}{at}{host.encode('idna').decode('ascii')}{colon}{port}"
    rest = urllib.parse.urlunsplit(("", "", parts.path, parts.query, ""))
    rest = urllib.parse.quote(rest, safe="!#$%&'()*+,/:;=?@[]~")
    return f"{parts.scheme}://{netloc}{rest}"


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _short(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    if isinstance(reason, BaseException):
        err = reason
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(str(text).split())[:80]


def _is_timeout(err: BaseException) -> bool:
    reason = getattr(err, "reason", None)
    return isinstance(err, TimeoutError) or isinstance(reason, TimeoutError)


def _retryable(reason: str) -> bool:
    code = reason_code(reason)
    if code in (TIMEOUT, CONNECTION_ERROR, FETCH_ERROR):
        return True
    if code.startswith("http_") and code[5:].isdigit():
        status = int(code[5:])
        return status >= 500 or status in _RETRY_STATUS
    return False


def is_permanent(reason: str) -> bool:
    """Whether a failure will happen again (not refetched on a rerun): 4xx, opted out, ..."""
    return reason_code(reason) != UNSUPPORTED_URL and not _retryable(reason)


def url_key(url: str) -> str:
    """The cache key of a URL: the SHA-256 of the URL as given (whitespace stripped)."""
    return hashlib.sha256(url.strip().encode("utf-8", "surrogatepass")).hexdigest()


class Fetcher:
    """Download URLs into memory, with a resumable cache in ``cache_dir``.

    One fetcher serves many ``fetch_many`` calls (a chunk of rows each). With ``progress=True``
    one tqdm bar counts over all of them. Call ``close()``, or use the fetcher as a context
    manager, to close the bar. ``stats`` counts ``fetched``, ``cached``, ``failed:<code>`` and
    ``cache_errors``.
    """

    def __init__(
        self, cache_dir: Path | str, config: FetchConfig = FetchConfig(), progress: bool = False
    ):
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.progress = progress
        self.stats: Counter[str] = Counter()
        self._bar: tqdm | None = None
        self._warned = False
        self._lock = threading.Lock()
        self._opener = urllib.request.build_opener(_HttpOnlyRedirects)
        self._headers = {"User-Agent": config.user_agent, "Accept": "image/*,*/*;q=0.8"}

    # -- public ------------------------------------------------------------------------------
    def fetch_many(self, urls: Sequence[str]) -> list[Result]:
        """Return ``(bytes, None)`` or ``(None, reason)`` per URL, in order. Never raises for a URL.

        A URL that appears more than once is fetched once.
        """
        keys = [u.strip() if isinstance(u, str) else None for u in urls]
        todo = list(dict.fromkeys(k for k in keys if k is not None and is_url(k)))
        results: dict[str, Result] = {}
        if todo:
            bar = self._progress_bar(len(todo))
            pool = ThreadPoolExecutor(
                max_workers=min(self.config.workers, len(todo)), thread_name_prefix="curate-fetch"
            )
            try:
                futures = {pool.submit(self._fetch_one, url): url for url in todo}
                for fut in as_completed(futures):
                    url = futures[fut]
                    try:
                        result, source = fut.result()
                    except Exception as err:  # a bug here must not lose the whole chunk
                        result, source = (None, f"{FETCH_ERROR} ({type(err).__name__})"), "fetched"
                    results[url] = result
                    self.stats[source] += 1
                    if result[1] is not None:
                        self.stats[f"failed:{reason_code(result[1])}"] += 1
                    if bar is not None:
                        bar.update(1)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: do not wait for the queue
                raise
            pool.shutdown(wait=True)
        return [
            results.get(k, (None, UNSUPPORTED_URL)) if k else (None, UNSUPPORTED_URL) for k in keys
        ]

    def lookup(self, url: str) -> Result | None:
        """The cached answer for ``url`` under the current config, or None to fetch it."""
        url = url.strip()
        data_path = self._data_path(url)
        record = self._read_record(data_path.with_name(data_path.name + ".json"), url)
        try:
            data = data_path.read_bytes()
        except OSError:
            data = None
        if data is not None:
            if record and record.get("opted_out") and self.config.respect_opt_out:
                return None, f"{OPTED_OUT} (cached)"
            return data, None
        if record and record.get("status") == "failed" and self._still_holds(record):
            return None, record["reason"]
        return None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one URL -----------------------------------------------------------------------------
    def _fetch_one(self, url: str) -> tuple[Result, str]:
        cached = self.lookup(url)
        if cached is not None:
            return cached, "cached"
        outcome = self._download(url)
        self._store(url, outcome)
        return (outcome.data, outcome.reason), "fetched"

    def _download(self, url: str) -> _Outcome:
        cfg = self.config
        outcome = _Outcome(None, FETCH_ERROR)
        for attempt in range(cfg.retries + 1):
            outcome = self._attempt(url)
            if outcome.data is not None or not _retryable(outcome.reason or ""):
                break
            if attempt < cfg.retries:
                delay = cfg.backoff * 2**attempt
                if outcome.retry_after is not None:
                    delay = max(delay, min(outcome.retry_after, _MAX_RETRY_AFTER))
                time.sleep(delay * (1 + 0.1 * random.random()))
        return _Outcome(outcome.data, outcome.reason, None, outcome.opted_out, attempts=attempt + 1)

    def _attempt(self, url: str) -> _Outcome:
        cfg = self.config
        deadline = time.monotonic() + cfg.total_timeout
        try:
            request = urllib.request.Request(_requote(url), headers=self._headers)
            with self._opener.open(request, timeout=cfg.timeout) as resp:
                opted = is_opted_out(resp.headers.get_all("X-Robots-Tag") or [])
                if opted and cfg.respect_opt_out:
                    tags = ", ".join(resp.headers.get_all("X-Robots-Tag") or [])
                    return _Outcome(None, f"{OPTED_OUT} (X-Robots-Tag: {tags[:60]})")
                encoding = (resp.headers.get("Content-Encoding") or "").strip().lower()
                length = (resp.headers.get("Content-Length") or "").strip()
                identity = encoding in ("", "identity")
                if identity and length.isdigit() and int(length) > cfg.max_bytes:
                    return _Outcome(None, f"{TOO_LARGE} ({length} > {cfg.max_bytes} bytes)")
                data = _read_capped(resp, cfg.max_bytes, deadline, encoding)
                if data is None:
                    return _Outcome(None, f"{TOO_LARGE} (> {cfg.max_bytes} bytes)")
                ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        except urllib.error.HTTPError as err:
            with contextlib.suppress(Exception):
                err.close()
            return _Outcome(None, f"http_{err.code}", _retry_after(err.headers))
        except http.client.InvalidURL:
            return _Outcome(None, UNSUPPORTED_URL)
        except ValueError as err:  # urllib: "unknown url type" and the like
            return _Outcome(None, f"{UNSUPPORTED_URL} ({_short(err)})")
        except Exception as err:
            if _is_timeout(err):
                return _Outcome(None, TIMEOUT)
            if isinstance(err, OSError | http.client.HTTPException | zlib.error):
                return _Outcome(None, f"{CONNECTION_ERROR} ({_short(err)})")
            return _Outcome(None, f"{FETCH_ERROR} ({type(err).__name__}: {_short(err)})")
        if not data:
            return _Outcome(None, f"{NOT_AN_IMAGE} (empty body)")
        clearly_not = bool(ctype) and not ctype.startswith("image/") and ctype not in _BINARY_TYPES
        if clearly_not and not looks_like_image(data):
            return _Outcome(None, f"{NOT_AN_IMAGE} ({ctype[:40]})")
        return _Outcome(data, None, opted_out=opted)

    # -- cache -------------------------------------------------------------------------------
    def _data_path(self, url: str) -> Path:
        key = url_key(url)
        return self.cache_dir / key[:2] / key

    def _read_record(self, path: Path, url: str) -> dict | None:
        try:
            record = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return None  # missing, or torn / edited by hand: as if not there
        if not isinstance(record, dict) or record.get("url") != url:
            return None
        return record

    def _still_holds(self, record: dict) -> bool:
        reason = record.get("reason")
        if not isinstance(reason, str) or not is_permanent(reason):
            return False
        code = reason_code(reason)
        if code == OPTED_OUT and not self.config.respect_opt_out:
            return False
        return not (code == TOO_LARGE and self.config.max_bytes > record.get("max_bytes", 0))

    def _store(self, url: str, outcome: _Outcome) -> None:
        data_path = self._data_path(url)
        record_path = data_path.with_name(data_path.name + ".json")
        base = {"v": _RECORD_VERSION, "url": url, "time": round(time.time(), 3)}
        try:
            if outcome.data is not None:
                if outcome.opted_out:  # the record first: a kill in between never serves it
                    _atomic_write(record_path, _json({**base, "status": "ok", "opted_out": True}))
                _atomic_write(data_path, outcome.data)
                if not outcome.opted_out:
                    record_path.unlink(missing_ok=True)  # an earlier transient failure
            else:
                reason = outcome.reason or FETCH_ERROR
                record = {
                    **base,
                    "status": "failed",
                    "reason": reason,
                    "permanent": is_permanent(reason),
                    "attempts": outcome.attempts,
                    "max_bytes": self.config.max_bytes,
                }
                _atomic_write(record_path, _json(record))
        except OSError as err:
            with self._lock:
                self.stats["cache_errors"] += 1
                warn, self._warned = not self._warned, True
            if warn:
                warnings.warn(
                    f"cannot write the download cache in {self.cache_dir}: {_short(err)} "
                    "(downloads go on, but a rerun fetches them again)",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def _progress_bar(self, n: int) -> tqdm | None:
        if not self.progress:
            return None
        if self._bar is None:
            self._bar = tqdm(total=0, desc="fetching images", unit="img", dynamic_ncols=True)
        self._bar.total += n
        self._bar.refresh()
        return self._bar


def _read_capped(resp: Any, max_bytes: int, deadline: float, encoding: str) -> bytes | None:
    """The body, or None when it exceeds ``max_bytes`` (after decompression)."""
    decomp = None
    if encoding in ("gzip", "x-gzip", "deflate"):
        decomp = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("total_timeout")
        chunk = resp.read(_CHUNK)
        if not chunk:
            break
        if decomp is not None:
            chunk = decomp.decompress(chunk, max_bytes - size + 1)
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
    if decomp is not None:
        tail = decomp.flush()
        size += len(tail)
        if size > max_bytes:
            return None
        chunks.append(tail)
    return b"".join(chunks)


def _json(obj: dict) -> bytes:
    return (json.dumps(obj, sort_keys=True) + "\n").encode("utf-8")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file and ``os.replace``: a kill never leaves a torn entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
