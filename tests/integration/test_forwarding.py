"""SPEC section 3 "Forwarding": headers upstream, hop-by-hop, bodies, keep-alive
on both sides, pipelining, balancing, retries, Range through nginx."""
import hashlib
import json
import re
import subprocess

import pytest

from harness import Conn, build_request, chunk_encode, request, suite_workers
from pattern import pattern, pattern_sha256


def hdr(doc, name):
    """Values of header name as the echo backend received it."""
    return [v for k, v in doc["headers"] if k.lower() == name.lower()]


def xff(doc):
    vals = hdr(doc, "x-forwarded-for")
    return [p.strip() for v in vals for p in v.split(",") if p.strip()]


@pytest.fixture
def fwd_gh(gatehouse, aio):
    return gatehouse({"routes": [{"host": "app.test", "upstream": aio.url},
                                 {"host": "*", "upstream": aio.url}]})


def echo(gh, target="/echo", host="app.test", headers=(), method="GET", body=None, source=None):
    r = request(gh.port, method, target, host=host, headers=headers, body=body, source=source)
    assert r.status == 200, r
    assert r.header("x-server") == "A", r
    return r, r.json()


# ------------------------------------------------------------ headers upstream

def test_upstream_gets_original_host_and_forwarded_headers(fwd_gh):
    _, doc = echo(fwd_gh)
    assert hdr(doc, "host") == ["app.test"]
    assert xff(doc) == ["127.0.0.1"]
    assert hdr(doc, "x-forwarded-proto") == ["http"]
    assert hdr(doc, "x-forwarded-host") == ["app.test"]
    assert hdr(doc, "x-real-ip") == ["127.0.0.1"]


def test_original_host_with_port_is_kept(fwd_gh):
    host = f"app.test:{fwd_gh.port}"
    _, doc = echo(fwd_gh, host=host)
    assert hdr(doc, "host") == [host]


def test_spoofed_forwarding_headers_from_untrusted_client_are_not_believed(fwd_gh):
    _, doc = echo(fwd_gh, headers=[("X-Forwarded-For", "1.2.3.4"), ("X-Real-IP", "5.6.7.8")])
    assert xff(doc) == ["127.0.0.1"], doc["headers"]
    assert hdr(doc, "x-real-ip") == ["127.0.0.1"], doc["headers"]


@pytest.fixture
def trusted_gh(gatehouse, aio):
    return gatehouse({"trusted_proxies": ["127.0.0.1/32"],
                      "routes": [{"host": "*", "upstream": aio.url}]})


@pytest.mark.parametrize("source,given,chain,real", [
    ("127.0.0.1", None, ["127.0.0.1"], "127.0.0.1"),
    ("127.0.0.1", "1.2.3.4", ["1.2.3.4", "127.0.0.1"], "1.2.3.4"),
    ("127.0.0.1", "5.6.7.8, 1.2.3.4", ["5.6.7.8", "1.2.3.4", "127.0.0.1"], "1.2.3.4"),
    ("127.0.0.2", "1.2.3.4", ["127.0.0.2"], "127.0.0.2"),
], ids=["trusted-no-xff", "trusted-one", "trusted-chain", "untrusted-peer"])
def test_trusted_proxies_chain(trusted_gh, source, given, chain, real):
    headers = [("X-Forwarded-For", given)] if given else []
    _, doc = echo(trusted_gh, headers=headers, source=source)
    assert xff(doc) == chain, doc["headers"]
    assert hdr(doc, "x-real-ip") == [real], doc["headers"]


def test_request_id_generated_and_echoed(fwd_gh):
    r1, d1 = echo(fwd_gh)
    r2, d2 = echo(fwd_gh)
    for r, d in ((r1, d1), (r2, d2)):
        rid = r.header("x-request-id")
        assert rid, r
        assert hdr(d, "x-request-id") == [rid]
    assert r1.header("x-request-id") != r2.header("x-request-id")


def test_request_id_kept_when_given(fwd_gh):
    r, doc = echo(fwd_gh, headers=[("X-Request-ID", "client-chosen-id-42")])
    assert hdr(doc, "x-request-id") == ["client-chosen-id-42"]
    assert r.header_all("x-request-id") == ["client-chosen-id-42"]


def test_hop_by_hop_request_headers_removed(fwd_gh):
    _, doc = echo(fwd_gh, headers=[
        ("Connection", "keep-alive, X-Custom-Hop"),
        ("X-Custom-Hop", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-Trailer"),
        ("Upgrade", "websocket"),
        ("Proxy-Connection", "keep-alive"),
        ("X-End-To-End", "yes"),
    ])
    for name in ("x-custom-hop", "keep-alive", "te", "trailer", "upgrade", "proxy-connection"):
        assert not hdr(doc, name), f"{name} reached the upstream: {doc['headers']}"
    for v in hdr(doc, "connection"):
        assert "x-custom-hop" not in v.lower() and "upgrade" not in v.lower(), v
    assert hdr(doc, "x-end-to-end") == ["yes"]


def test_hop_by_hop_response_headers_removed(fwd_gh):
    r = request(fwd_gh.port, target="/hop")
    assert r.status == 200 and r.body == b"hop\n", r
    assert r.header("x-hop-resp") is None, r
    assert r.header("proxy-connection") is None, r
    assert r.header("upgrade") is None, r
    assert "timeout=99" not in (r.header("keep-alive") or ""), r
    for v in r.header_all("connection"):
        assert "x-hop-resp" not in v.lower(), r
    assert r.header("x-end-to-end") == "kept", r


# ------------------------------------------------------------ bodies

def test_upload_with_content_length_intact(fwd_gh):
    size = 3 * 1000 * 1000 + 7
    body = b"".join(pattern(off, min(1 << 20, size - off)) for off in range(0, size, 1 << 20))
    r, doc = echo(fwd_gh, "/upload", method="POST", body=body)
    assert doc["bytes"] == size
    assert doc["sha256"] == hashlib.sha256(body).hexdigest()


def test_upload_chunked_intact(fwd_gh):
    sizes = [1, 7, 65536, 100000, 3, 250000, 1 << 20, 12345]
    pieces, off = [], 0
    for n in sizes:
        pieces.append(pattern(off, n))
        off += n
    whole = b"".join(pieces)
    raw = build_request("POST", "/echo", "app.test", [("Transfer-Encoding", "chunked")]) \
        + chunk_encode(pieces, trailers=[("X-Trailer", "t")])
    with Conn(fwd_gh.port) as c:
        c.send(raw)
        r = c.read_response()
    assert r.status == 200, r
    doc = r.json()
    assert doc["body_len"] == len(whole)
    assert doc["body_sha256"] == hashlib.sha256(whole).hexdigest()
    assert not (hdr(doc, "content-length") and hdr(doc, "transfer-encoding")), doc["headers"]


def test_curl_upload_with_expect_100_continue(fwd_gh, tmp_path):
    size = 2 * 1000 * 1000
    f = tmp_path / "up.bin"
    f.write_bytes(b"".join(pattern(o, min(1 << 20, size - o)) for o in range(0, size, 1 << 20)))
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "-H", "Host: app.test", "-H", "Expect: 100-continue",
         "--data-binary", f"@{f}", f"{fwd_gh.url}/upload"],
        capture_output=True, timeout=40)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc == {"bytes": size, "sha256": pattern_sha256(size), "server": "A"}


@pytest.mark.parametrize("cl", [False, True], ids=["chunked", "content-length"])
def test_response_bodies_intact(fwd_gh, cl):
    size = 5 * 1000 * 1000 + 3
    r = request(fwd_gh.port, target=f"/big?size={size}{'&cl=1' if cl else ''}", timeout=30)
    assert r.status == 200 and r.complete, r
    assert len(r.body) == size
    assert r.body == b"".join(pattern(o, min(1 << 20, size - o)) for o in range(0, size, 1 << 20))


def test_head_response_has_no_body(fwd_gh):
    with Conn(fwd_gh.port) as c:
        c.send(build_request("HEAD", "/big?size=1000&cl=1"))
        h = c.read_response("HEAD")
        assert h.status == 200 and h.body == b"", h
        c.send(build_request("GET", "/echo?after=head"))
        r = c.read_response()
    assert r.status == 200 and r.json()["query"] == "after=head", r


@pytest.mark.parametrize("code", [204, 304])
def test_bodiless_statuses(fwd_gh, code):
    with Conn(fwd_gh.port) as c:
        c.send(build_request("GET", f"/status/{code}"))
        r = c.read_response()
        assert r.status == code and r.body == b"", r
        c.send(build_request("GET", "/echo?after=status"))
        r2 = c.read_response()
    assert r2.status == 200 and r2.json()["query"] == "after=status", r2


# ------------------------------------------------------------ connections

def test_client_keep_alive(fwd_gh):
    with Conn(fwd_gh.port) as c:
        for i in range(5):
            c.send(build_request("GET", f"/echo?i={i}"))
            r = c.read_response()
            assert r.status == 200 and r.json()["query"] == f"i={i}", r
        c.send(build_request("GET", "/echo?last", headers=[("Connection", "close")]))
        r = c.read_response()
        assert r.status == 200, r
        assert c.wait_closed(5), "Connection: close did not close the client connection"


def test_http_1_0_client(fwd_gh):
    with Conn(fwd_gh.port) as c:
        c.send(build_request("GET", "/echo?v=10", version="HTTP/1.0"))
        r = c.read_response()
        assert r.status == 200 and r.json()["query"] == "v=10", r
        assert c.wait_closed(5), "HTTP/1.0 connection without keep-alive stayed open"


def test_upstream_connections_are_pooled(fwd_gh):
    peers = []
    for i in range(6):
        r = request(fwd_gh.port, target="/connid")      # a new client connection each time
        assert r.status == 200, r
        peers.append(r.json()["peer"])
    with Conn(fwd_gh.port) as c:
        for i in range(4):
            c.send(build_request("GET", "/connid"))
            r = c.read_response()
            assert r.status == 200, r
            peers.append(r.json()["peer"])
    # each worker keeps its own pool: one connection per worker at most
    assert len(set(peers)) <= suite_workers(), \
        f"sequential requests used {len(set(peers))} upstream connections: {peers}"


def test_upstream_connection_close_is_hop_by_hop(fwd_gh):
    with Conn(fwd_gh.port) as c:
        c.send(build_request("GET", "/close"))
        r1 = c.read_response()
        assert r1.status == 200 and r1.body == b"closing\n", r1
        assert not any("close" in v.lower() for v in r1.header_all("connection")), \
            f"the upstream's Connection: close was passed to the client: {r1!r}"
        c.send(build_request("GET", "/connid"))
        r2 = c.read_response()
    assert r2.status == 200, r2


def test_pipelining_answers_in_order(fwd_gh):
    raw = (build_request("GET", "/echo?i=1")
           + build_request("POST", "/echo?i=2", body=b"abc")
           + build_request("GET", "/echo?i=3"))
    with Conn(fwd_gh.port) as c:
        c.send(raw)
        rs = [c.read_response() for _ in range(3)]
    assert [r.status for r in rs] == [200, 200, 200], rs
    docs = [r.json() for r in rs]
    assert [d["query"] for d in docs] == ["i=1", "i=2", "i=3"]
    assert [d["method"] for d in docs] == ["GET", "POST", "GET"]
    assert docs[1]["body_len"] == 3 and docs[0]["body_len"] == 0


# ------------------------------------------------------------ balancing

def pair(gatehouse, servers, balance, **extra):
    up = {"servers": servers, "balance": balance}
    up.update(extra)
    return gatehouse({"upstreams": {"pair": up}, "routes": [{"host": "*", "upstream": "pair"}]})


def test_round_robin(gatehouse, aio, aio_b):
    gh = pair(gatehouse, [aio.url, aio_b.url], "round_robin")
    seq = [request(gh.port, target="/echo").header("x-server") for _ in range(10)]
    assert seq.count("A") == 5 and seq.count("B") == 5, seq
    assert all(a != b for a, b in zip(seq, seq[1:])), f"not alternating: {seq}"


def test_least_conn_avoids_the_busy_server(gatehouse, aio, aio_b):
    gh = pair(gatehouse, [aio.url, aio_b.url], "least_conn")
    with Conn(gh.port, timeout=20) as long:
        long.send(build_request("GET", "/sse?n=3&delay=2.0"))
        head = long.read_head()
        assert head.status == 200
        busy = head.header("x-server")
        seq = [request(gh.port, target="/echo").header("x-server") for _ in range(4)]
    assert busy in ("A", "B")
    other = "B" if busy == "A" else "A"
    assert seq == [other] * 4, f"busy server {busy}, quick requests went to {seq}"


def test_hash_client_ip_is_stable_and_spreads(gatehouse, aio, aio_b):
    gh = pair(gatehouse, [aio.url, aio_b.url], "hash_client_ip")
    by_ip = {}
    for i in range(1, 33):
        src = f"127.0.0.{i}"
        got = {request(gh.port, target="/echo", source=src).header("x-server") for _ in range(3)}
        assert len(got) == 1, f"{src} went to {got}"
        by_ip[src] = got.pop()
    assert set(by_ip.values()) == {"A", "B"}, f"32 client addresses all went to one server: {by_ip}"


def test_connect_failure_retries_the_other_server(gatehouse, aio, dead_port):
    gh = pair(gatehouse, [f"http://127.0.0.1:{dead_port}", aio.url], "round_robin")
    for i in range(6):
        r = request(gh.port, "POST", f"/echo?i={i}", body=b"x" * 100)
        assert r.status == 200 and r.header("x-server") == "A", r
        assert r.json()["body_len"] == 100


def test_no_retry_once_the_request_was_sent(gatehouse, scripted):
    def dropper(srv, s, idx):
        srv.read_head(s)            # takes the request, then hangs up without a byte

    def answerer(srv, s, idx):
        if srv.read_head(s) is not None:
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    a, b = scripted(dropper), scripted(answerer)
    gh = pair(gatehouse, [a.url, b.url], "round_robin")
    statuses = {}
    for i in range(6):
        r = request(gh.port, "POST", f"/r{i}", host="x.test",
                    headers=[("X-Test-Id", f"id{i}")], body=b"payload")
        statuses[i] = r.status

    def ids(srv):
        return [m.decode() for h in srv.requests for m in re.findall(rb"X-Test-Id: (id\d+)", h, re.I)]
    seen_a, seen_b = ids(a), ids(b)
    assert seen_a, "no request reached the server that drops them"
    for i in range(6):
        n = seen_a.count(f"id{i}") + seen_b.count(f"id{i}")
        assert n == 1, f"request id{i} was sent upstream {n} times (a: {seen_a}, b: {seen_b})"
        want = 502 if f"id{i}" in seen_a else 200
        assert statuses[i] == want, (i, statuses, seen_a, seen_b)


# ------------------------------------------------------------ Range via nginx

@pytest.fixture
def nginx_gh(gatehouse, nginx):
    return gatehouse({"routes": [{"host": "*", "upstream": nginx.url}]})


def test_range_single(nginx_gh, nginx):
    r = request(nginx_gh.port, target="/big.bin", headers=[("Range", "bytes=1000-1999")])
    assert r.status == 206, r
    assert r.header("content-range") == f"bytes 1000-1999/{nginx.file_bytes}", r
    assert r.body == pattern(1000, 1000)


def test_range_suffix(nginx_gh, nginx):
    size = nginx.file_bytes
    r = request(nginx_gh.port, target="/big.bin", headers=[("Range", "bytes=-500")])
    assert r.status == 206, r
    assert r.header("content-range") == f"bytes {size - 500}-{size - 1}/{size}", r
    assert r.body == pattern(size - 500, 500)


def test_range_multipart(nginx_gh):
    r = request(nginx_gh.port, target="/big.bin", headers=[("Range", "bytes=0-9,20-29")])
    assert r.status == 206, r
    assert r.header("content-type", "").startswith("multipart/byteranges"), r
    assert pattern(0, 10) in r.body and pattern(20, 10) in r.body


def test_range_unsatisfiable(nginx_gh, nginx):
    r = request(nginx_gh.port, target="/big.bin",
                headers=[("Range", f"bytes={nginx.file_bytes + 10}-")])
    assert r.status == 416, r


def test_full_file_from_nginx(nginx_gh, nginx):
    size = nginx.file_bytes
    with Conn(nginx_gh.port, timeout=30) as c:
        c.send(build_request("GET", "/big.bin"))
        head = c.read_head()
        assert head.status == 200, head
        assert head.header("accept-ranges") == "bytes", head
        off = 0
        for piece in c.iter_body(head, timeout=120):
            assert piece == pattern(off, len(piece)), f"bytes differ near offset {off}"
            off += len(piece)
    assert off == size
