"""SPEC section 2, `proxy_protocol: true` on a listener: a TCP load balancer
puts a PROXY v1 (text) or v2 (binary) header before the client's bytes, and
gatehouse takes the client address from it: X-Real-IP and X-Forwarded-For
upstream, the access log's client, ip_filter and rate_limit by client_ip.
A connection without the header is closed without an answer.

Headers are built here byte by byte (haproxy's proxy-protocol.txt) and sent
on raw sockets."""
import json
import socket
import struct

import pytest

from harness import Conn, build_request, to_yaml, wait_until

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
CLIENT4 = "203.0.113.7"
CLIENT6 = "2001:db8::7"


def v1(src=CLIENT4, dst="127.0.0.1", sport=5555, dport=80, family="TCP4"):
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def v2(cmd=0x21, fam=0x11, src=CLIENT4, dst="127.0.0.1", sport=5555, dport=80,
       tlvs=b"", addr=None):
    """Signature, version 2 + command (0x21 PROXY, 0x20 LOCAL), family and
    protocol (0x11 TCP over IPv4, 0x21 TCP over IPv6, 0x00 UNSPEC), length,
    addresses, ports, TLVs."""
    if addr is None:
        if fam >> 4 == 1:
            addr = (socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
                    + struct.pack("!HH", sport, dport))
        elif fam >> 4 == 2:
            addr = (socket.inet_pton(socket.AF_INET6, src)
                    + socket.inet_pton(socket.AF_INET6, dst) + struct.pack("!HH", sport, dport))
        else:
            addr = b""
    body = addr + tlvs
    return struct.pack("!12sBBH", V2_SIG, cmd, fam, len(body)) + body


def tlv(t, value):
    return struct.pack("!BH", t, len(value)) + value


def hdr(doc, name):
    return [v for k, v in doc["headers"] if k.lower() == name.lower()]


def xff(doc):
    return [p.strip() for v in hdr(doc, "x-forwarded-for") for p in v.split(",") if p.strip()]


def pp_config(aio, plugins=None, routes=None, extra=None):
    cfg = {"listen": [{"address": "127.0.0.1:@PORT@", "proxy_protocol": True}],
           "timeouts": {"header": "2s", "shutdown": "3s"},
           "access_log": {"path": "stdout", "format": "json"}}
    if extra:
        cfg.update(extra)
    if plugins:
        cfg["plugins"] = plugins
    cfg["routes"] = routes or [{"host": "*", "upstream": aio.url}]
    return to_yaml(cfg)


@pytest.fixture
def pp_gh(gatehouse, aio):
    return gatehouse(pp_config(aio))


def pp_request(gh, header, target="/echo", host="app.test", headers=(), split=False):
    """header then one request on a fresh connection; returns the response."""
    with Conn(gh.port, timeout=10) as c:
        req = build_request("GET", target, host=host, headers=headers)
        if split:
            # the header in pieces, then the request separately
            for i in range(0, len(header), 5):
                c.send(header[i:i + 5])
            c.send(req)
        else:
            c.send(header + req)
        return c.read_response()


def echo_doc(r):
    assert r.status == 200, r
    assert r.header("x-server") == "A", r
    return r.json()


def client_logged(gh, path):
    found = wait_until(lambda: [ln for ln in gh.log_lines() if ln.get("path") == path], 5)
    assert found, f"no access log line for {path}: {gh.stdout()[-2000:]}"
    return found[-1]["client"]


# ---------------------------------------------------------------- accepted headers

@pytest.mark.parametrize("split", [False, True], ids=["one-write", "byte-pieces"])
def test_v1_tcp4_client_address_upstream_and_in_log(pp_gh, split):
    r = pp_request(pp_gh, v1(), target="/v1-tcp4", split=split)
    doc = echo_doc(r)
    assert hdr(doc, "x-real-ip") == [CLIENT4], doc["headers"]
    assert xff(doc) == [CLIENT4], doc["headers"]
    assert client_logged(pp_gh, "/v1-tcp4") == CLIENT4


def test_v1_header_applies_to_every_request_on_the_connection(pp_gh):
    with Conn(pp_gh.port, timeout=10) as c:
        c.send(v1())
        for i in range(3):
            c.send(build_request("GET", f"/keepalive/{i}", host="app.test"))
            doc = echo_doc(c.read_response())
            assert hdr(doc, "x-real-ip") == [CLIENT4], (i, doc["headers"])
    for i in range(3):
        assert client_logged(pp_gh, f"/keepalive/{i}") == CLIENT4


def test_v1_tcp6(pp_gh):
    doc = echo_doc(pp_request(pp_gh, v1(CLIENT6, "2001:db8::1", family="TCP6"),
                              target="/v1-tcp6"))
    assert hdr(doc, "x-real-ip") == [CLIENT6], doc["headers"]
    assert xff(doc) == [CLIENT6], doc["headers"]
    assert client_logged(pp_gh, "/v1-tcp6") == CLIENT6


def test_v1_unknown_keeps_the_peer_address(pp_gh):
    doc = echo_doc(pp_request(pp_gh, b"PROXY UNKNOWN\r\n", target="/v1-unknown"))
    assert hdr(doc, "x-real-ip") == ["127.0.0.1"], doc["headers"]
    assert client_logged(pp_gh, "/v1-unknown") == "127.0.0.1"


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "byte-pieces"])
def test_v2_tcp4(pp_gh, split):
    header = v2(0x21, 0x11, CLIENT4, "127.0.0.1", 5555, 80)
    assert len(header) == 16 + 12
    doc = echo_doc(pp_request(pp_gh, header, target="/v2-tcp4", split=split))
    assert hdr(doc, "x-real-ip") == [CLIENT4], doc["headers"]
    assert xff(doc) == [CLIENT4], doc["headers"]
    assert client_logged(pp_gh, "/v2-tcp4") == CLIENT4


def test_v2_tcp6(pp_gh):
    header = v2(0x21, 0x21, CLIENT6, "2001:db8::1", 5555, 443)
    assert len(header) == 16 + 36
    doc = echo_doc(pp_request(pp_gh, header, target="/v2-tcp6"))
    assert hdr(doc, "x-real-ip") == [CLIENT6], doc["headers"]
    assert xff(doc) == [CLIENT6], doc["headers"]
    assert client_logged(pp_gh, "/v2-tcp6") == CLIENT6


def test_v2_with_tlvs(pp_gh):
    """Balancers append TLVs (authority, unique id, ...): skipped by length."""
    tlvs = tlv(0x02, b"app.test") + tlv(0x05, b"conn-42") + tlv(0x04, b"")
    doc = echo_doc(pp_request(pp_gh, v2(tlvs=tlvs), target="/v2-tlv"))
    assert hdr(doc, "x-real-ip") == [CLIENT4], doc["headers"]
    assert client_logged(pp_gh, "/v2-tlv") == CLIENT4


@pytest.mark.parametrize("fam", [0x00, 0x11], ids=["unspec", "with-addresses"])
def test_v2_local_keeps_the_peer_address(pp_gh, fam):
    # LOCAL: the balancer's own connection (a health check); any addresses
    # it carries are to be ignored.
    doc = echo_doc(pp_request(pp_gh, v2(cmd=0x20, fam=fam), target=f"/v2-local-{fam}"))
    assert hdr(doc, "x-real-ip") == ["127.0.0.1"], doc["headers"]
    assert xff(doc) == ["127.0.0.1"], doc["headers"]
    assert client_logged(pp_gh, f"/v2-local-{fam}") == "127.0.0.1"


def test_forwarded_for_behind_proxy_protocol_is_not_believed(pp_gh):
    """The declared client is not a trusted proxy: its own X-Forwarded-For
    is ignored."""
    doc = echo_doc(pp_request(pp_gh, v1(), headers=[("X-Forwarded-For", "1.2.3.4"),
                                                    ("X-Real-IP", "1.2.3.4")]))
    assert hdr(doc, "x-real-ip") == [CLIENT4], doc["headers"]
    assert xff(doc) == [CLIENT4], doc["headers"]


# ---------------------------------------------------------------- refused connections

def assert_closed_without_response(gh, data, timeout=5.0):
    with Conn(gh.port, timeout=timeout) as c:
        try:
            c.send(data)
        except OSError:
            return      # reset while we were still sending: closed all the same
        closed = c.wait_closed(timeout)
        assert closed, f"connection still open {timeout}s after {data[:60]!r}"
        assert bytes(c.buf) == b"", f"gatehouse answered {bytes(c.buf)[:200]!r}"


def test_plain_http_without_header_is_closed_without_response(pp_gh, aio):
    assert_closed_without_response(pp_gh, build_request("GET", "/echo", host="app.test"))
    # ... and the listener still serves balancers.
    assert echo_doc(pp_request(pp_gh, v1()))["server"] == "A"


@pytest.mark.parametrize("data", [
    b"PROXY TCP4 999.0.113.7 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"PROXY TCP4 203.0.113.7 127.0.0.1 70000 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"PROXY TCP5 203.0.113.7 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"PROXY TCP4 " + b"1" * 120 + b"\r\n",
    V2_SIG + b"\x31\x11\x00\x0c" + b"\x00" * 12,        # version 3
    V2_SIG + b"\x21\x11\x00\x04" + b"\x00" * 4,         # too short for IPv4 addresses
    V2_SIG[:-1] + b"X" + b"\x21\x11\x00\x0c" + b"\x00" * 12,
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",    # a TLS ClientHello
], ids=["bad-address", "bad-port", "bad-family", "lf-only", "v1-too-long", "v2-version",
        "v2-short-addresses", "v2-bad-signature", "tls-hello"])
def test_malformed_header_is_closed_without_response(pp_gh, data):
    assert_closed_without_response(pp_gh, data)


def test_incomplete_header_is_closed_at_the_header_timeout(pp_gh):
    """A peer that stops mid-header is dropped (timeouts.header is 2s here),
    without an answer."""
    with Conn(pp_gh.port, timeout=10) as c:
        c.send(b"PROXY TCP4 203.0")
        assert c.wait_closed(8), "a half-sent PROXY header kept the connection open"
        assert bytes(c.buf) == b"", f"gatehouse answered {bytes(c.buf)[:200]!r}"


# ---------------------------------------------------------------- plugins see the client

def test_ip_filter_uses_the_declared_address(gatehouse, aio):
    gh = gatehouse(pp_config(
        aio, plugins={"docs_net": {"type": "ip_filter", "allow": ["203.0.113.0/24"]}},
        routes=[{"host": "*", "upstream": aio.url, "plugins": ["docs_net"]}]))
    assert echo_doc(pp_request(gh, v1(CLIENT4)))["server"] == "A"
    assert echo_doc(pp_request(gh, v2(src=CLIENT4)))["server"] == "A"
    for header in (v1("198.51.100.1"), v2(src="198.51.100.1")):
        r = pp_request(gh, header, target="/refused")
        assert r.status == 403, r
        doc = json.loads(r.body)
        assert doc["error"] and doc["request_id"] == r.header("x-request-id"), r
    # The balancer itself (127.0.0.1) is outside the range too.
    assert pp_request(gh, v2(cmd=0x20, fam=0x00)).status == 403
    assert client_logged(gh, "/refused") == "198.51.100.1"


def test_rate_limit_by_client_ip_uses_the_declared_address(gatehouse, aio):
    gh = gatehouse(pp_config(
        aio, plugins={"per_ip": {"type": "rate_limit", "rate": "1/m", "burst": 1}},
        routes=[{"host": "*", "upstream": aio.url, "plugins": ["per_ip"]}]))
    assert pp_request(gh, v1("203.0.113.7")).status == 200
    assert pp_request(gh, v2(src="203.0.113.7")).status == 429
    assert pp_request(gh, v1("203.0.113.8")).status == 200
    assert pp_request(gh, v2(fam=0x21, src="2001:db8::8", dst="2001:db8::1")).status == 200
