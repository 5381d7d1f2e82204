"""SPEC section 3 "Failures": every status gatehouse itself produces without
plugins or TLS, the JSON error body, and what happens to the connection."""
import socket
import time

import pytest

from harness import (Conn, Deadline, aio_backend, assert_error_json, build_request,
                     chunk_encode, free_port, request, wait_until)


@pytest.fixture
def err_gh(gatehouse, aio):
    return gatehouse({"timeouts": {"header": "3s"},
                      "routes": [{"host": "*", "upstream": aio.url}]})


def send_raw(port, raw, timeout=8):
    """Sends raw bytes, reads one response; returns (response, closed_after)."""
    with Conn(port, timeout=timeout) as c:
        c.send(raw)
        r = c.read_response(timeout=timeout)
        closed = c.wait_closed(5)
    return r, closed


BAD_REQUESTS = {
    "cl-and-te": b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-and-cl": b"POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    "differing-duplicate-cl": b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n"
                              b"Content-Length: 6\r\n\r\nhello!",
    "cl-list": b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5, 6\r\n\r\nhello!",
    "cl-not-a-number": b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5x\r\n\r\nhello",
    "obs-fold": b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-A: one\r\n two\r\n\r\n",
    "obs-fold-tab": b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-A: one\r\n\ttwo\r\n\r\n",
    "bare-lf-everywhere": b"GET /echo HTTP/1.1\nHost: app.test\n\n",
    "bare-lf-one-header": b"GET /echo HTTP/1.1\r\nHost: app.test\nX-A: b\r\n\r\n",
    "bare-cr-in-value": b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-A: b\rc\r\n\r\n",
    "bare-cr-line-end": b"GET /echo HTTP/1.1\r\nHost: app.test\rX-A: b\r\n\r\n",
    "space-before-colon": b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-A : b\r\n\r\n",
    "tab-before-colon": b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-A\t: b\r\n\r\n",
    "space-before-colon-te": b"POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding : chunked\r\n"
                             b"Content-Length: 3\r\n\r\nabc",
    "control-char-in-value": b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-A: b\x01c\r\n\r\n",
    "del-in-name": b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX\x7fA: b\r\n\r\n",
    "nul-in-value": b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-A: b\x00c\r\n\r\n",
    "nul-in-target": b"GET /ec\x00ho HTTP/1.1\r\nHost: app.test\r\n\r\n",
    "no-colon": b"GET /echo HTTP/1.1\r\nHost: app.test\r\nJustAName\r\n\r\n",
    "garbage-request-line": b"HELLO\r\n\r\n",
    "two-spaces-in-request-line": b"GET  /echo HTTP/1.1\r\nHost: app.test\r\n\r\n",
    "bad-chunk-size": b"POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\nabc\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_malformed_request_is_400_and_closed(err_gh, case):
    r, closed = send_raw(err_gh.port, BAD_REQUESTS[case])
    assert_error_json(r, 400)
    assert len(r.body) < 1024, "error bodies are small"
    assert closed, "the connection stayed open after a 400"


def test_smuggled_request_never_reaches_upstream(err_gh):
    smuggled = b"GET /echo?smuggled=1 HTTP/1.1\r\nHost: app.test\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    raw = (b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n" % len(body)) + body
    with Conn(err_gh.port) as c:
        c.send(raw)
        r = c.read_response()
        rest_closed = c.wait_closed(5)
        rest = bytes(c.buf)
    assert_error_json(r, 400)
    assert rest_closed and rest == b"", f"more came after the 400: {rest[:200]!r}"


def test_good_request_before_a_bad_one_is_answered(err_gh):
    with Conn(err_gh.port) as c:
        c.send(build_request("GET", "/echo?first=1")
               + b"GET /echo?second=1 HTTP/1.1\r\nHost : app.test\r\n\r\n")
        r1 = c.read_response()
        r2 = c.read_response()
        closed = c.wait_closed(5)
    assert r1.status == 200 and r1.json()["query"] == "first=1", r1
    assert_error_json(r2, 400)
    assert closed


def test_unknown_transfer_coding_is_501(err_gh):
    raw = (b"POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: foo, chunked\r\n\r\n"
           b"3\r\nabc\r\n0\r\n\r\n")
    r, closed = send_raw(err_gh.port, raw)
    assert_error_json(r, 501)
    assert closed


def test_transfer_coding_without_chunked_is_rejected(err_gh):
    raw = b"POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: foo\r\n\r\nabc"
    r, closed = send_raw(err_gh.port, raw)
    assert r.status in (400, 501), r
    assert_error_json(r, r.status)
    assert closed


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/3.0"])
def test_other_http_versions_are_505(err_gh, version):
    r, _ = send_raw(err_gh.port, f"GET /echo {version}\r\nHost: app.test\r\n\r\n".encode())
    assert_error_json(r, 505)


# ------------------------------------------------------------ header timeout

@pytest.fixture
def slow_gh(gatehouse, aio):
    return gatehouse({"timeouts": {"header": "1s", "idle": "1s"},
                      "routes": [{"host": "*", "upstream": aio.url}]})


def test_unfinished_head_is_408(slow_gh):
    with Conn(slow_gh.port, timeout=10) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: app.test\r\n")
        r = c.read_response(timeout=8)
        closed = c.wait_closed(5)
    assert_error_json(r, 408)
    assert closed


def test_trickled_head_is_408(slow_gh):
    """The whole head must arrive within timeouts.header, however it trickles."""
    line = b"X-Slow: " + b"a" * 200 + b"\r\n"
    with Conn(slow_gh.port, timeout=10) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: app.test\r\n")
        dl = Deadline(8)
        sent = 0
        for i in range(len(line)):
            if dl.expired():
                break
            try:
                c.send(line[i:i + 1])
            except OSError:
                break               # closed on us: read what it said
            sent += 1
            c.sock.settimeout(0.1)
            try:
                data = c.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            c.buf += data
            if not data:
                c.eof = True
            break
        r = c.read_response(timeout=5)
    assert_error_json(r, 408)
    assert sent < len(line), "the trickled head was never timed out"


def test_idle_keep_alive_connection_is_closed(slow_gh):
    with Conn(slow_gh.port, timeout=10) as c:
        c.send(build_request("GET", "/echo"))
        assert c.read_response().status == 200
        assert c.wait_closed(6), "an idle keep-alive connection outlived timeouts.idle 1s"


def _closed_count(socks):
    """How many of socks the server has closed (EOF or reset), without waiting."""
    n = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":   # the sockets are non-blocking
                n += 1
        except BlockingIOError:
            pass
        except OSError:
            n += 1
    return n


def test_each_idle_connection_is_closed_at_its_own_deadline(gatehouse, aio):
    """Many idle keep-alive connections, in two waves two seconds apart (more
    than the first size of the worker's deadline heap): each wave is closed
    once timeouts.idle has passed for it and not before, while a connection
    that keeps sending requests stays open through both."""
    gh = gatehouse({"timeouts": {"header": "5s", "idle": "2s"},
                    "routes": [{"host": "*", "upstream": aio.url}]})
    per_wave = 140
    req = build_request("GET", "/echo")
    waves = []
    busy = Conn(gh.port, timeout=10)
    try:
        for wave in range(2):
            for _ in range(20):
                if not wave or time.monotonic() >= start + 2.0:
                    break
                busy.send(req)      # idle for 2 s, it would be closed too
                assert busy.read_response().status == 200
                time.sleep(min(0.5, max(0.0, start + 2.0 - time.monotonic())))
            socks = []
            for i in range(per_wave):
                c = Conn(gh.port, timeout=10)
                c.send(req)
                assert c.read_response().status == 200
                c.sock.settimeout(0)
                socks.append(c)
                if i % 32 == 0:
                    busy.send(req)
                    assert busy.read_response().status == 200
            if not wave:
                start = time.monotonic()    # the first wave's last request
            waves.append(socks)
        # t = 2 s: the second wave has just gone idle, the first is due now
        seen = {}
        dl = Deadline(12)
        while not dl.expired():
            t = time.monotonic() - start
            a = _closed_count(s.sock for s in waves[0])
            b = _closed_count(s.sock for s in waves[1])
            if t < 3.6:
                assert b == 0, "%d connections of the second wave closed %.2f s after the first" % (b, t)
            if a == per_wave and "a" not in seen:
                seen["a"] = t
            if b == per_wave:
                seen["b"] = t
                break
            busy.send(req)
            assert busy.read_response().status == 200, "the busy connection was closed"
            time.sleep(0.2)
        assert "a" in seen and "b" in seen, "idle connections were not all closed: %r" % seen
        assert 1.9 <= seen["a"], "the first wave was closed before timeouts.idle"
        assert seen["b"] >= 3.9, "the second wave was closed before timeouts.idle"
    finally:
        busy.close()
        for socks in waves:
            for c in socks:
                c.close()


# ------------------------------------------------------------ sizes

@pytest.fixture
def limits_gh(gatehouse, aio):
    return gatehouse({"limits": {"max_body_bytes": "1k", "max_header_bytes": "4k"},
                      "routes": [
                          {"host": "bigger.test", "upstream": aio.url, "max_body_bytes": "4k"},
                          {"host": "smaller.test", "upstream": aio.url, "max_body_bytes": 512},
                          {"host": "*", "upstream": aio.url}]})


@pytest.mark.parametrize("host,size,status", [
    ("app.test", 1000, 200),
    ("app.test", 1024, 200),
    ("app.test", 1025, 413),
    ("app.test", 2000, 413),
    ("bigger.test", 3000, 200),
    ("bigger.test", 5000, 413),
    ("smaller.test", 500, 200),
    ("smaller.test", 800, 413),
])
def test_body_limit_content_length(limits_gh, host, size, status):
    r, _ = send_raw(limits_gh.port, build_request("POST", "/upload", host, body=b"x" * size))
    if status == 200:
        assert r.status == 200 and r.json()["bytes"] == size, r
    else:
        assert_error_json(r, 413)


def test_body_limit_chunked(limits_gh):
    pieces = [b"y" * 500] * 4
    raw = build_request("POST", "/upload", "app.test", [("Transfer-Encoding", "chunked")]) \
        + chunk_encode(pieces)
    r, _ = send_raw(limits_gh.port, raw)
    assert_error_json(r, 413)
    raw = build_request("POST", "/upload", "app.test", [("Transfer-Encoding", "chunked")]) \
        + chunk_encode([b"y" * 300] * 3)
    r, _ = send_raw(limits_gh.port, raw)
    assert r.status == 200 and r.json()["bytes"] == 900, r


def test_long_uri_is_414(limits_gh):
    r, _ = send_raw(limits_gh.port, build_request("GET", "/" + "a" * 8000, "app.test"))
    assert_error_json(r, 414)


def test_huge_header_is_431(limits_gh):
    r, _ = send_raw(limits_gh.port, build_request("GET", "/echo", "app.test",
                                                  [("X-Big", "b" * 8000)]))
    assert_error_json(r, 431)


def test_many_headers_over_the_limit_are_431(limits_gh):
    headers = [(f"X-H{i}", "v" * 60) for i in range(80)]
    r, _ = send_raw(limits_gh.port, build_request("GET", "/echo", "app.test", headers))
    assert_error_json(r, 431)


def test_head_just_under_the_limit_passes(limits_gh):
    headers = [("X-Fill", "f" * 3000)]
    r, _ = send_raw(limits_gh.port, build_request("GET", "/echo", "app.test", headers))
    assert r.status == 200, r


# ------------------------------------------------------------ upstream failures

def test_upstream_refused_is_502(gatehouse, dead_port):
    gh = gatehouse({"routes": [{"host": "*", "upstream": f"http://127.0.0.1:{dead_port}"}]})
    assert_error_json(request(gh.port, target="/x"), 502)


def test_every_server_refusing_is_502_or_503(gatehouse):
    servers = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    gh = gatehouse({"upstreams": {"down": {"servers": servers}},
                    "routes": [{"host": "*", "upstream": "down"}]})
    for _ in range(3):
        r = request(gh.port, target="/x")
        assert r.status in (502, 503), r
        assert_error_json(r, r.status)


def test_recovers_when_the_upstream_comes_back(gatehouse, tmp_path, dead_port):
    gh = gatehouse({"routes": [{"host": "*", "upstream": f"http://127.0.0.1:{dead_port}"}]})
    r = request(gh.port, target="/echo")
    assert r.status in (502, 503), r
    b = aio_backend("late", tmp_path / "late", port=dead_port)
    b.start()
    try:
        ok = wait_until(lambda: request(gh.port, target="/echo").status == 200, 30, 0.2)
        assert ok, "still failing 30 s after the upstream came back"
    finally:
        b.stop()


MALFORMED_RESPONSES = {
    "garbage": b"THIS IS NOT HTTP\r\n\r\n",
    "bad-status-code": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    "header-without-colon": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBroken Header\r\n\r\nok",
    "cl-not-a-number": b"HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\nok",
    "differing-duplicate-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    "head-cut-short": b"HTTP/1.1 200 OK\r\nContent-Le",
    "nothing": b"",
}


@pytest.mark.parametrize("case", list(MALFORMED_RESPONSES))
def test_malformed_upstream_response_is_502(gatehouse, scripted, case):
    def handler(srv, s, idx):
        if srv.read_head(s) is not None:
            s.sendall(MALFORMED_RESPONSES[case])
    srv = scripted(handler)
    gh = gatehouse({"routes": [{"host": "*", "upstream": srv.url}]})
    r = request(gh.port, target="/x")
    assert_error_json(r, 502)


def test_upstream_first_byte_timeout_is_504(gatehouse, aio):
    gh = gatehouse({"timeouts": {"upstream_first_byte": "1s"},
                    "routes": [{"host": "*", "upstream": aio.url}]})
    t0 = time.monotonic()
    r = request(gh.port, target="/slow-head?delay=6", timeout=15)
    assert_error_json(r, 504)
    assert time.monotonic() - t0 < 5.0, "the 504 came only when the backend answered"
    # A fast request on the same route still works.
    assert request(gh.port, target="/echo").status == 200


def test_error_ids_are_unique(err_gh):
    ids = set()
    for _ in range(3):
        r, _ = send_raw(err_gh.port, BAD_REQUESTS["obs-fold"])
        ids.add(assert_error_json(r, 400)["request_id"])
    assert len(ids) == 3
