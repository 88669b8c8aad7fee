"""URL fetching against a loopback HTTP server the tests start (no network beyond 127.0.0.1)."""

from __future__ import annotations

import gzip
import io
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from curate.io.fetch import (
    FetchConfig,
    Fetcher,
    is_opted_out,
    is_permanent,
    is_url,
    looks_like_image,
    looks_like_url,
    reason_code,
)

FAST = FetchConfig(workers=8, timeout=0.5, retries=1, backoff=0.01, max_bytes=4096)


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 255 - value, 7)).save(buf, format="PNG")
    return buf.getvalue()


PNG = {i: _png(i * 40) for i in range(5)}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()

    def handle_error(self, request, client_address):  # a client that timed out: not an error
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", ctype="image/png", headers=(), length=True):
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        parts = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(parts.path)
        with self.server.lock:
            self.server.hits[self.path] += 1
            n = self.server.hits[self.path]
        query = dict(urllib.parse.parse_qsl(parts.query))
        if path.startswith("/img/"):
            return self._send(200, PNG[int(query.get("i", "0"))])
        if path == "/missing":
            return self._send(404, b"not found", "text/plain")
        if path == "/flaky":  # 500 first, then the image
            return self._send(500, b"oops", "text/plain") if n == 1 else self._send(200, PNG[1])
        if path == "/always500":
            return self._send(503, b"down", "text/plain")
        if path == "/ratelimited":
            if n == 1:
                return self._send(429, b"slow down", "text/plain", [("Retry-After", "0")])
            return self._send(200, PNG[2])
        if path == "/slow":
            time.sleep(1.5)
            return self._send(200, PNG[0])
        if path == "/robots":
            return self._send(200, PNG[3], headers=[("X-Robots-Tag", query["tag"])])
        if path == "/page.html":
            return self._send(200, b"<!doctype html><html><body>hi</body></html>", "text/html")
        if path == "/lying":  # says HTML, is a PNG
            return self._send(200, PNG[4], "text/html; charset=utf-8")
        if path == "/big":
            return self._send(200, b"\x89PNG\r\n\x1a\n" + b"\0" * 5000)
        if path == "/big-unsized":  # no Content-Length: the cap must hold while reading
            self.close_connection = True
            return self._send(200, b"\x89PNG\r\n\x1a\n" + b"\0" * 5000, length=False)
        if path == "/gzip":
            body = gzip.compress(PNG[2])
            return self._send(200, body, headers=[("Content-Encoding", "gzip")])
        if path == "/redirect":
            return self._send(302, b"", None, [("Location", "/img/x?i=1")])
        if path == "/redirect-ftp":
            return self._send(302, b"", None, [("Location", "ftp://example.invalid/x.png")])
        if path == "/empty":
            return self._send(200, b"")
        return self._send(418, b"teapot", "text/plain")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """A proxy from the environment must not swallow loopback requests."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def url(server, request):
    """``url("/path", **query)``: a URL unique to this test, so hit counts do not mix."""
    host, port = server.server_address[:2]
    test = request.node.name

    def make(path, **query):
        q = urllib.parse.urlencode({**query, "t": test})
        return f"http://{host}:{port}{path}?{q}"

    return make


def _hits(server, u):
    parts = urllib.parse.urlsplit(u)
    return server.hits[f"{parts.path}?{parts.query}"]


def test_mixed_batch_in_order_with_reasons(tmp_path, server, url):
    urls = [
        url("/img/a", i=0),
        url("/missing"),
        url("/img/b", i=1),
        url("/page.html"),
        "s3://bucket/key.png",
        url("/robots", tag="noai"),
        url("/big"),
        url("/img/c", i=2),
    ]
    with Fetcher(tmp_path / "cache", FAST) as f:
        results = f.fetch_many(urls)
    assert len(results) == len(urls)
    assert results[0] == (PNG[0], None)
    assert results[1] == (None, "http_404")
    assert results[2] == (PNG[1], None)
    assert results[3][0] is None and reason_code(results[3][1]) == "not_an_image"
    assert "text/html" in results[3][1]
    assert results[4] == (None, "unsupported_url")
    assert results[5][0] is None and reason_code(results[5][1]) == "opted_out"
    assert results[6][0] is None and reason_code(results[6][1]) == "too_large"
    assert results[7] == (PNG[2], None)
    assert f.stats["fetched"] == 7 and f.stats["failed:http_404"] == 1
    assert _hits(server, urls[1]) == 1  # a 404 is not retried


def test_retry_on_5xx_and_429(tmp_path, server, url):
    flaky, limited = url("/flaky"), url("/ratelimited")
    results = Fetcher(tmp_path, FAST).fetch_many([flaky, limited])
    assert results == [(PNG[1], None), (PNG[2], None)]
    assert _hits(server, flaky) == 2 and _hits(server, limited) == 2


def test_retries_give_up_with_status(tmp_path, server, url):
    down = url("/always500")
    cfg = FetchConfig(timeout=0.5, retries=2, backoff=0.01)
    assert Fetcher(tmp_path, cfg).fetch_many([down]) == [(None, "http_503")]
    assert _hits(server, down) == 3  # 1 + 2 retries


def test_slow_response_times_out(tmp_path, server, url):
    cfg = FetchConfig(timeout=0.3, retries=0)
    start = time.monotonic()
    assert Fetcher(tmp_path, cfg).fetch_many([url("/slow")]) == [(None, "timeout")]
    assert time.monotonic() - start < 1.2


def test_connection_refused(tmp_path):
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()  # nothing listens there now
    cfg = FetchConfig(timeout=0.5, retries=1, backoff=0.01)
    [(data, reason)] = Fetcher(tmp_path, cfg).fetch_many([f"http://127.0.0.1:{port}/x.png"])
    assert data is None and reason_code(reason) == "connection_error"


@pytest.mark.parametrize(
    "tag, opted",
    [
        ("noai", True),
        ("noimageai", True),
        ("noindex, nofollow", True),
        ("NoImageIndex", True),
        ("curate: noai", True),
        ("img2dataset: noimageai", True),
        ("otherbot: noai", False),
        ("nofollow", False),
    ],
)
def test_opt_out_header(tmp_path, url, tag, opted):
    [(data, reason)] = Fetcher(tmp_path, FAST).fetch_many([url("/robots", tag=tag)])
    if opted:
        assert data is None and reason.startswith("opted_out")
    else:
        assert (data, reason) == (PNG[3], None)


def test_opt_out_can_be_switched_off_and_cache_keeps_the_flag(tmp_path, server, url):
    u = url("/robots", tag="noai")
    loose = FetchConfig(timeout=0.5, retries=0, respect_opt_out=False)
    assert Fetcher(tmp_path, loose).fetch_many([u]) == [(PNG[3], None)]
    [(data, reason)] = Fetcher(tmp_path, FAST).fetch_many([u])  # from the cache
    assert data is None and reason.startswith("opted_out")
    assert _hits(server, u) == 1


def test_magic_bytes_beat_content_type(tmp_path, url):
    results = Fetcher(tmp_path, FAST).fetch_many([url("/lying"), url("/empty")])
    assert results[0] == (PNG[4], None)
    assert results[1][0] is None and reason_code(results[1][1]) == "not_an_image"


def test_size_cap_without_content_length_gzip_and_redirect(tmp_path, url):
    results = Fetcher(tmp_path, FAST).fetch_many(
        [url("/big-unsized"), url("/gzip"), url("/redirect"), url("/redirect-ftp")]
    )
    assert results[0][0] is None and reason_code(results[0][1]) == "too_large"
    assert results[1] == (PNG[2], None)
    assert results[2] == (PNG[1], None)
    assert results[3][0] is None and reason_code(results[3][1]) == "unsupported_url"


def test_url_with_space_is_quoted(tmp_path, url):
    [(data, reason)] = Fetcher(tmp_path, FAST).fetch_many([url("/img/a b", i=3)])
    assert (data, reason) == (PNG[3], None)


def test_cache_reuse_makes_no_requests(tmp_path, server, url):
    urls = [url("/img/a", i=0), url("/img/b", i=1), url("/missing"), url("/page.html")]
    first = Fetcher(tmp_path / "c", FAST).fetch_many(urls)
    before = sum(server.hits.values())
    again = Fetcher(tmp_path / "c", FAST)  # a new process would start like this
    assert again.fetch_many(urls) == first
    assert sum(server.hits.values()) == before
    assert again.stats["cached"] == 4 and again.stats["fetched"] == 0
    assert not list((tmp_path / "c").rglob("*.tmp"))


def test_transient_failures_are_refetched_permanent_are_not(tmp_path, server, url):
    missing, down, slow = url("/missing"), url("/always500"), url("/slow")
    cfg = FetchConfig(timeout=0.3, retries=0)
    urls = [missing, down, slow]
    assert [r for _, r in Fetcher(tmp_path, cfg).fetch_many(urls)] == [
        "http_404",
        "http_503",
        "timeout",
    ]
    Fetcher(tmp_path, cfg).fetch_many(urls)
    assert _hits(server, missing) == 1
    assert _hits(server, down) == 2
    assert _hits(server, slow) == 2


def test_transient_failure_then_success_replaces_record(tmp_path, server, url):
    flaky = url("/flaky")
    no_retry = FetchConfig(timeout=0.5, retries=0)
    assert Fetcher(tmp_path, no_retry).fetch_many([flaky]) == [(None, "http_500")]
    assert Fetcher(tmp_path, no_retry).fetch_many([flaky]) == [(PNG[1], None)]
    assert not list(tmp_path.rglob("*.json"))  # the stale failure record is gone
    assert Fetcher(tmp_path, no_retry).fetch_many([flaky]) == [(PNG[1], None)]
    assert _hits(server, flaky) == 2


def test_too_large_refetched_when_cap_grows(tmp_path, server, url):
    big = url("/big")
    assert reason_code(Fetcher(tmp_path, FAST).fetch_many([big])[0][1]) == "too_large"
    assert reason_code(Fetcher(tmp_path, FAST).fetch_many([big])[0][1]) == "too_large"
    assert _hits(server, big) == 1
    roomy = FetchConfig(timeout=0.5, retries=0, max_bytes=10_000)
    [(data, reason)] = Fetcher(tmp_path, roomy).fetch_many([big])
    assert reason is None and len(data) == 5008 and _hits(server, big) == 2


def test_torn_record_reads_as_missing(tmp_path, server, url):
    missing = url("/missing")
    Fetcher(tmp_path, FAST).fetch_many([missing])
    [record] = tmp_path.rglob("*.json")
    record.write_text('{"status": "fail')
    assert Fetcher(tmp_path, FAST).fetch_many([missing]) == [(None, "http_404")]
    assert _hits(server, missing) == 2


def test_duplicates_fetched_once_and_progress_bar(tmp_path, server, url, capsys):
    u = url("/img/d", i=2)
    with Fetcher(tmp_path, FAST, progress=True) as f:
        assert f.fetch_many([u, u, "ftp://x/y", u]) == [
            (PNG[2], None),
            (PNG[2], None),
            (None, "unsupported_url"),
            (PNG[2], None),
        ]
        f.fetch_many([url("/img/e", i=0)])
    assert _hits(server, u) == 1
    assert "fetching images" in capsys.readouterr().err


def test_empty_and_non_string_inputs(tmp_path):
    f = Fetcher(tmp_path, FAST)
    assert f.fetch_many([]) == []
    assert f.fetch_many([None, "", "  ", "not a url"]) == [(None, "unsupported_url")] * 4


def test_helpers():
    assert is_url("http://a.b/c.png") and is_url(" HTTPS://a.b ")
    assert not is_url("s3://bucket/x") and not is_url("http://") and not is_url("/tmp/x.png")
    assert not is_url(None)
    assert looks_like_url("s3://bucket/x") and looks_like_url("https://a")
    assert not looks_like_url("C://x") and not looks_like_url("images/a.png")
    assert looks_like_image(PNG[0]) and looks_like_image(b"RIFF\0\0\0\0WEBPVP8 ")
    assert not looks_like_image(b"<html>")
    assert is_opted_out(["noindex, unavailable_after: 25 Jun 2010 15:00:00 PST"])
    assert not is_opted_out(["unavailable_after: 25 Jun 2010"])
    assert is_permanent("http_404") and is_permanent("opted_out (x)")
    assert not is_permanent("http_503") and not is_permanent("http_429")
    assert not is_permanent("timeout") and not is_permanent("connection_error (refused)")
    with pytest.raises(ValueError, match="workers"):
        FetchConfig(workers=0)
