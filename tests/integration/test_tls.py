"""SPEC section 2 (`listen: tls`, `tls:`, https upstreams with `tls: {ca,
verify, sni}`, `redirect_https`) and section 3 over TLS: certificate choice by
SNI, full chains, ALPN, protocol versions and suites, a testssl.sh scan,
every proxy behaviour through a TLS listener and to an https upstream, idle
and garbage TLS clients, redirect and ACME challenges, certificate reload, and
the certificate checks of `gatehouse -t`.

Certificates are made here with the openssl command line (tls_util.PKI):
ECDSA P-256 keys, leaves signed by an intermediate signed by a root, leaf
files holding leaf plus intermediate.
"""
import asyncio
import hashlib
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import time
from types import SimpleNamespace

import pytest

from harness import (Conn, Deadline, binary_has_asan, build_request, data_of, free_port,
                     read_events, run_cli,
                     to_yaml, wait_port, wait_until)
from pattern import MAX_SLICE, pattern, pattern_pieces
from tls_util import (PKI, NginxTLS, TlsConn, cert_subject_serial, client_context,
                      handshake_ok, negotiated, pem_blocks, s_client, tls_ready)

TLS_BIG = int(os.environ.get("GH_TLS_BIG_BYTES", str(256 << 20)))
NGINX_TLS_FILE = 64 << 20
IDLE_CONNS = 1000
IDLE_KB_LIMIT = 16.0
ERR_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """The test CA and every certificate the tests use."""
    d = tmp_path_factory.mktemp("pki")
    p = PKI(d / "ca")
    ns = SimpleNamespace(pki=p, root=p.root, inter=p.inter)
    ns.default = p.leaf("default", "default.test", ["default.test", "127.0.0.1"])
    ns.wild = p.leaf("wild", "*.example.test", ["*.example.test"])
    ns.chat = p.leaf("chat", "chat.example.test", ["chat.example.test"])
    ns.rsa = p.leaf("rsa", "rsa.example.test", ["rsa.example.test", "127.0.0.1"], kind="rsa")
    ns.upstream = p.leaf("upstream", "nginx.upstream.test", ["nginx.upstream.test", "127.0.0.1"])
    ns.soon = p.leaf("soon", "soon.example.test", ["soon.example.test"], days=5)
    ns.expired = p.leaf_dated("expired", "expired.example.test", ["expired.example.test"],
                              "20200101000000Z", "20200201000000Z")
    # A CA that signed none of the above: trusting it must fail verification.
    ns.rogue = PKI(d / "rogue", label="Rogue Test")
    return ns


@pytest.fixture(scope="session")
def nginx_tls(tmp_path_factory, pki):
    """nginx serving over TLS with a certificate for nginx.upstream.test and
    127.0.0.1 from the test CA."""
    root = tmp_path_factory.mktemp("www_tls")
    (root / "hello.txt").write_text("hello over tls\n")
    with open(root / "big.bin", "wb") as f:
        for piece in pattern_pieces(NGINX_TLS_FILE, MAX_SLICE):
            f.write(piece)
    n = NginxTLS(root, tmp_path_factory.mktemp("nginx_tls"), pki.upstream.pem, pki.upstream.key)
    n.start()
    yield n
    n.stop()


def tls_config(certs, routes, upstreams=None, min_version=None, extra_listens=(),
               timeouts=None, acme_webroot=None, limits=None):
    """YAML for a gatehouse whose first listener (@PORT@) terminates TLS."""
    cfg = {"listen": [{"address": "127.0.0.1:@PORT@", "tls": True}] + list(extra_listens),
           "timeouts": {"shutdown": "3s", **(timeouts or {})}}
    if limits:
        cfg["limits"] = limits
    cfg["access_log"] = {"path": "stdout", "format": "json"}
    tls = {"certificates": [{"cert": str(c.pem), "key": str(c.key)} for c in certs]}
    if min_version:
        tls["min_version"] = min_version
    if acme_webroot:
        tls["acme_webroot"] = str(acme_webroot)
    cfg["tls"] = tls
    if upstreams:
        cfg["upstreams"] = upstreams
    cfg["routes"] = routes
    return to_yaml(cfg)


def start_tls(gatehouse, certs, routes, **kw):
    gh = gatehouse(tls_config(certs, routes, **kw))
    tls_ready(gh.port)
    gh.https = f"https://127.0.0.1:{gh.port}"
    return gh


@pytest.fixture
def sni_gh(gatehouse, pki):
    """Certificates in the order default, wildcard, exact: the exact name must
    win over the wildcard although it comes later."""
    return start_tls(gatehouse, [pki.default, pki.wild, pki.chat],
                     [{"host": "*", "respond": {"status": 200, "body": "tls ok\n"}}])


@pytest.fixture
def proxy_gh(gatehouse, pki, aio):
    return start_tls(gatehouse, [pki.default, pki.wild, pki.chat],
                     [{"host": "*", "upstream": aio.url, "max_body_bytes": max(TLS_BIG, 1 << 20)}])


def curl(args, timeout=60):
    return subprocess.run(["curl", "-sS", "--max-time", str(timeout)] + list(args),
                          capture_output=True, timeout=timeout + 15)


def curl_tls(pki, port, name, path="/", extra=()):
    """curl -v to https://name:port/path resolved to 127.0.0.1, trusting only
    the root CA. Returns CompletedProcess (bytes)."""
    return curl(["-v", "--resolve", f"{name}:{port}:127.0.0.1", "--cacert", str(pki.root)]
                + list(extra) + [f"https://{name}:{port}{path}"], timeout=20)


def served_cert(port, servername):
    """(CN, serial, number of certificates sent) of what the server presents."""
    rc, out = s_client(port, "-showcerts", servername=servername)
    assert handshake_ok(out), f"handshake failed (SNI {servername!r}):\n{out[-3000:]}"
    blocks = pem_blocks(out)
    cn, serial = cert_subject_serial(blocks[0])
    return cn, serial, len(blocks)


def ctx_for(pki, **kw):
    return client_context(pki.root, **kw)


# ---------------------------------------------------------------- SNI, chain, ALPN

@pytest.mark.parametrize("sni,expect", [
    ("chat.example.test", "chat"),        # exact SAN, although listed after the wildcard
    ("CHAT.Example.Test", "chat"),        # names compare case-insensitively
    ("docs.example.test", "wild"),        # wildcard SAN
    ("a.b.example.test", "default"),      # a wildcard covers exactly one label
    ("example.test", "default"),          # ... and not the bare parent
    ("other.test", "default"),            # nothing covers it: the first pair
    (None, "default"),                    # no SNI at all
])
def test_sni_picks_exact_then_wildcard_then_first(sni_gh, pki, sni, expect):
    cn, serial, _ = served_cert(sni_gh.port, sni)
    want = getattr(pki, expect)
    assert (cn, serial) == (want.subject_cn, want.serial), \
        f"SNI {sni!r}: served CN={cn} serial={serial}, want {want}"


@pytest.mark.parametrize("name,cn", [("chat.example.test", "chat.example.test"),
                                     ("docs.example.test", "*.example.test")])
def test_curl_sni_and_full_chain_verify_with_root_only(sni_gh, pki, name, cn):
    r = curl_tls(pki, sni_gh.port, name, "/hello")
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, f"curl exit {r.returncode}:\n{err[-3000:]}"
    assert r.stdout == b"tls ok\n"
    m = re.search(r"^\*\s+subject: (.*)$", err, re.M)
    assert m and m.group(1).strip() == f"CN={cn}", f"served subject {m and m.group(1)!r}:\n{err}"
    assert "SSL certificate verify ok" in err, err


def test_full_chain_is_sent(sni_gh, pki):
    rc, out = s_client(sni_gh.port, "-showcerts", "-CAfile", str(pki.root),
                       "-verify_return_error", "-verify_hostname", "chat.example.test",
                       servername="chat.example.test")
    assert handshake_ok(out), out[-3000:]
    blocks = pem_blocks(out)
    assert len(blocks) == 2, f"{len(blocks)} certificates sent, want leaf + intermediate"
    assert cert_subject_serial(blocks[0])[0] == "chat.example.test"
    assert cert_subject_serial(blocks[1])[0] == "Gatehouse Test Intermediate CA"
    assert pki.root.read_text().strip() not in out, "the root should not be sent"
    assert re.search(r"Verify return code: 0 \(ok\)", out), out[-3000:]


def test_alpn_selects_http11(sni_gh, pki):
    rc, out = s_client(sni_gh.port, "-alpn", "http/1.1,h2", servername="chat.example.test")
    assert handshake_ok(out), out[-3000:]
    assert re.search(r"^ALPN protocol: http/1\.1$", out, re.M), out[-3000:]
    rc, out = s_client(sni_gh.port, "-alpn", "h2,http/1.1", servername="chat.example.test")
    assert re.search(r"^ALPN protocol: http/1\.1$", out, re.M), \
        "a client preferring h2 must still get http/1.1:\n" + out[-3000:]
    # Offering only h2: no ALPN answer (tls.h), the handshake still completes.
    rc, out = s_client(sni_gh.port, "-alpn", "h2", servername="chat.example.test")
    assert handshake_ok(out), out[-3000:]
    assert "No ALPN negotiated" in out, out[-3000:]
    with TlsConn(sni_gh.port, ctx_for(pki, alpn=("h2", "http/1.1")), "chat.example.test") as c:
        assert c.sock.selected_alpn_protocol() == "http/1.1"
        c.send(build_request("GET", "/", "chat.example.test"))
        r = c.read_response()
    assert r.status == 200 and r.body == b"tls ok\n", r


# ---------------------------------------------------------------- protocols and suites

@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_tls10_and_11_are_refused(sni_gh, flag):
    # SECLEVEL=0 so that Debian's openssl offers the old version at all; the
    # alert then proves that it was the server that refused it.
    rc, out = s_client(sni_gh.port, flag, "-cipher", "DEFAULT:@SECLEVEL=0",
                       servername="chat.example.test")
    assert "no protocols available" not in out, "the client did not offer " + flag + ":\n" + out
    assert not handshake_ok(out), f"{flag} handshake completed:\n{out[-3000:]}"
    assert rc != 0
    assert "alert protocol version" in out, out[-3000:]


@pytest.mark.parametrize("flag,version", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_tls12_and_13_work(sni_gh, pki, flag, version):
    rc, out = s_client(sni_gh.port, flag, "-CAfile", str(pki.root), "-verify_return_error",
                       servername="chat.example.test")
    assert handshake_ok(out), out[-3000:]
    assert negotiated(out)[0] == version, out[-3000:]
    ver = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}[version]
    ctx = ctx_for(pki)
    ctx.minimum_version = ctx.maximum_version = ver
    with TlsConn(sni_gh.port, ctx, "chat.example.test") as c:
        assert c.sock.version() == version
        c.send(build_request("GET", "/x", "chat.example.test"))
        r = c.read_response()
    assert r.status == 200, r


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_session_resumes_from_its_one_ticket(sni_gh, pki, tmp_path, flag):
    # A full handshake issues one ticket (a resumed TLS 1.3 client gets a
    # fresh one each time, so one is all a client needs), and it resumes.
    sess = tmp_path / "session.pem"
    req = build_request("GET", "/x", "chat.example.test", headers=[("Connection", "close")])
    rc, out = s_client(sni_gh.port, flag, "-ign_eof", "-sess_out", str(sess),
                       servername="chat.example.test", stdin=req)
    assert handshake_ok(out) and re.search(r"^New, ", out, re.M), out[-3000:]
    if flag == "-tls1_3":
        assert out.count("Post-Handshake New Session Ticket arrived") == 1, out[-3000:]
    rc, out = s_client(sni_gh.port, flag, "-sess_in", str(sess), servername="chat.example.test")
    assert re.search(r"^Reused, ", out, re.M), out[-3000:]


def test_min_version_13_refuses_12(gatehouse, pki):
    gh = start_tls(gatehouse, [pki.chat], [{"host": "*", "respond": {"status": 200, "body": "ok"}}],
                   min_version="1.3")
    rc, out = s_client(gh.port, "-tls1_2", servername="chat.example.test")
    assert not handshake_ok(out), "min_version 1.3 accepted TLS 1.2:\n" + out[-3000:]
    assert "alert protocol version" in out, out[-3000:]
    rc, out = s_client(gh.port, "-tls1_3", servername="chat.example.test")
    assert handshake_ok(out) and negotiated(out)[0] == "TLSv1.3", out[-3000:]


SUITES_ECDSA = [
    ("AES128-SHA", False),                       # RSA key transport, CBC
    ("AES256-GCM-SHA384", False),                # RSA key transport
    ("ECDHE-ECDSA-AES128-SHA", False),           # forward secret, not AEAD
    ("ECDHE-ECDSA-AES256-SHA384", False),        # forward secret, not AEAD
    ("ECDHE-ECDSA-AES128-GCM-SHA256", True),
    ("ECDHE-ECDSA-AES256-GCM-SHA384", True),
    ("ECDHE-ECDSA-CHACHA20-POLY1305", True),
]
# With an RSA certificate the non-forward-secret suites would be possible at
# all: this is where refusing them is a real choice of the server.
SUITES_RSA = [
    ("AES128-SHA", False),
    ("AES256-GCM-SHA384", False),
    ("AES128-GCM-SHA256", False),
    ("ECDHE-RSA-AES128-SHA", False),
    ("ECDHE-RSA-AES256-SHA384", False),
    ("ECDHE-RSA-AES128-GCM-SHA256", True),
    ("ECDHE-RSA-CHACHA20-POLY1305", True),
]


@pytest.mark.parametrize("cert,suite,ok", [("chat", s, ok) for s, ok in SUITES_ECDSA]
                         + [("rsa", s, ok) for s, ok in SUITES_RSA])
def test_tls12_only_forward_secret_aead_suites(gatehouse, pki, cert, suite, ok):
    c = getattr(pki, cert)
    gh = start_tls(gatehouse, [c], [{"host": "*", "respond": {"status": 200, "body": "ok"}}])
    rc, out = s_client(gh.port, "-tls1_2", "-cipher", suite, servername=c.subject_cn)
    assert "no ciphers available" not in out, out
    if ok:
        assert handshake_ok(out), f"{suite} refused with a {cert} certificate:\n{out[-3000:]}"
        assert negotiated(out) == ("TLSv1.2", suite), out[-3000:]
    else:
        assert not handshake_ok(out), f"{suite} accepted: {negotiated(out)}"
        assert "handshake failure" in out, out[-3000:]


# ---------------------------------------------------------------- testssl.sh

def find_testssl():
    for name in ("testssl", "testssl.sh"):
        p = shutil.which(name)
        if p:
            return p
    # Debian calls the package testssl.sh; try to install it once.
    if os.geteuid() == 0 and shutil.which("apt-get"):
        try:
            subprocess.run(["apt-get", "install", "-y", "-q", "testssl.sh"], capture_output=True,
                           timeout=240, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.SubprocessError):
            pass
        for name in ("testssl", "testssl.sh"):
            p = shutil.which(name)
            if p:
                return p
    return None


FS_KX = re.compile(r"^x[0-9a-f]+\s+(\S+)\s+(ECDH|DH)\b")


def scan_problems(findings):
    """What in testssl's flat JSON findings breaks the contract."""
    bad = []
    for f in findings:
        fid, sev, text = f.get("id", ""), f.get("severity", ""), f.get("finding", "")
        if sev in ("HIGH", "CRITICAL"):
            bad.append(f"{sev} {fid}: {text}")
        elif re.search(r"\bVULNERABLE\b|\bNOT ok\b", text):
            bad.append(f"{sev} {fid}: {text}")
        if fid in ("SSLv2", "SSLv3", "TLS1", "TLS1_1") and not text.startswith("not offered"):
            bad.append(f"protocol below TLS 1.2: {fid}: {text}")
        if fid in ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
                   "cipherlist_3DES_IDEA", "cipherlist_AVERAGE") and \
                not text.startswith("not offered"):
            bad.append(f"weak cipher class offered: {fid}: {text}")
        if fid.startswith("cipher_x") or fid.startswith("cipher-tls"):
            m = FS_KX.match(text.strip())
            if not m:
                bad.append(f"non-forward-secret suite offered: {fid}: {text}")
            elif not re.search(r"GCM|CHACHA20|CCM", m.group(1)) and \
                    not m.group(1).startswith("TLS_"):
                bad.append(f"non-AEAD suite offered: {fid}: {text}")
        if fid == "PFS" and not text.startswith("offered"):
            bad.append(f"forward secrecy: {text}")
    return bad


@pytest.mark.parametrize("cert", ["default", "rsa"])
def test_testssl_scan_finds_nothing(gatehouse, pki, tmp_path, cert):
    exe = find_testssl()
    if not exe:
        pytest.skip("testssl.sh is not installed and could not be installed with apt-get")
    c = getattr(pki, cert)
    gh = start_tls(gatehouse, [c], [{"host": "*", "respond": {"status": 200, "body": "ok\n"}}])
    out_json = tmp_path / "testssl.json"
    argv = [exe, "--quiet", "--color", "0", "--warnings", "batch", "--fast",
            "--openssl", "/usr/bin/openssl", "--add-ca", str(pki.root),
            "--jsonfile", str(out_json), f"127.0.0.1:{gh.port}"]
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, timeout=300, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("testssl.sh ran longer than 300 s")
    took = time.monotonic() - t0
    text = (p.stdout + p.stderr).decode(errors="replace")
    assert out_json.exists(), f"testssl wrote no JSON (exit {p.returncode}):\n{text[-4000:]}"
    findings = json.loads(out_json.read_text())
    ids = {f.get("id") for f in findings}
    assert {"TLS1_2", "TLS1_3", "TLS1", "TLS1_1"} <= ids, f"scan incomplete:\n{text[-4000:]}"
    by_id = {f["id"]: f for f in findings}
    assert by_id["TLS1_2"]["finding"].startswith("offered"), by_id["TLS1_2"]
    assert by_id["TLS1_3"]["finding"].startswith("offered"), by_id["TLS1_3"]
    notable = [f"{f['severity']} {f['id']}: {f['finding']}" for f in findings
               if f.get("severity") not in ("OK", "INFO", "DEBUG")]
    print(f"testssl ({cert} certificate, {took:.0f} s), findings above INFO:\n  "
          + "\n  ".join(notable))
    bad = scan_problems(findings)
    assert not bad, "testssl findings:\n" + "\n".join(bad)
    assert gh.alive()


# ---------------------------------------------------------------- proxying over TLS


def test_sse_over_tls_is_not_held_back(proxy_gh, pki):
    with TlsConn(proxy_gh.port, ctx_for(pki), "chat.example.test", timeout=20) as c:
        c.send(build_request("GET", "/sse?n=4&delay=1.0", "chat.example.test",
                             [("Accept", "text/event-stream")]))
        head = c.read_head()
        assert head.status == 200, head
        assert head.header("content-type", "").startswith("text/event-stream"), head
        evs = [(t, json.loads(data_of(ev))) for t, ev in read_events(c, head, 20)]
    assert [d["i"] for _, d in evs] == [0, 1, 2, 3]
    lags = [round(t - d["sent"], 3) for t, d in evs]
    assert evs[0][0] < evs[-1][1]["sent"] - 1.0, f"event 0 arrived with the last one: lags {lags}"
    assert max(lags) < 0.9, f"events were held back over TLS: lags {lags}"


def test_websocket_over_tls(proxy_gh, pki):
    import websockets
    port = proxy_gh.port

    async def run():
        async with websockets.connect(f"wss://chat.example.test:{port}/ws", ssl=ctx_for(pki),
                                      host="127.0.0.1", port=port,
                                      server_hostname="chat.example.test", open_timeout=10,
                                      close_timeout=5, max_size=None, ping_interval=None) as ws:
            for i in range(50):
                msg = f"text {i} " + "é✓" * (i % 5) + "x" * (i * 101)
                await ws.send(msg)
                assert await asyncio.wait_for(ws.recv(), 10) == msg
            for i in range(20):
                data = pattern(i * 4099, (i * 7919) % 300000 + 1)
                await ws.send(data)
                assert await asyncio.wait_for(ws.recv(), 10) == data
            big = pattern(0, MAX_SLICE) + pattern(MAX_SLICE, MAX_SLICE) + pattern(7, 12345)
            await ws.send(big)
            assert await asyncio.wait_for(ws.recv(), 30) == big
            burst = [pattern(i, 4096 + i) if i % 2 else f"burst {i}" for i in range(200)]
            for m in burst:
                await ws.send(m)
            for m in burst:
                assert await asyncio.wait_for(ws.recv(), 10) == m
            await ws.close()
            return ws.close_code

    assert asyncio.run(asyncio.wait_for(run(), 120)) == 1000
    with TlsConn(port, ctx_for(pki), "chat.example.test") as c:
        c.send(build_request("GET", "/echo", "chat.example.test"))
        assert c.read_response().status == 200


def test_keepalive_over_tls_and_forwarded_proto(proxy_gh, pki):
    conn = http.client.HTTPSConnection("127.0.0.1", proxy_gh.port, timeout=10,
                                       context=ctx_for(pki, check_hostname=False))
    try:
        conn.connect()
        first = conn.sock
        local = first.getsockname()
        for i in range(6):
            body = b"x" * (i * 1000)
            conn.request("POST" if i % 2 else "GET", f"/echo?i={i}", body=body if i % 2 else None,
                         headers={"Host": "chat.example.test"})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200, (resp.status, data[:300])
            doc = json.loads(data)
            assert doc["query"] == f"i={i}"
            hdrs = {k.lower(): v for k, v in doc["headers"]}
            assert hdrs.get("x-forwarded-proto") == "https", doc["headers"]
            assert hdrs.get("host") == "chat.example.test", doc["headers"]
            assert conn.sock is first and first.getsockname() == local, \
                f"request {i} did not reuse the TLS connection"
    finally:
        conn.close()
    logs = [d for d in proxy_gh.log_lines(6) if str(d.get("path", "")).startswith("/echo")]
    assert len(logs) >= 6, logs


def test_big_download_over_tls(proxy_gh, pki):
    off = 0
    h = hashlib.sha256()
    with TlsConn(proxy_gh.port, ctx_for(pki), "chat.example.test", timeout=60) as c:
        c.send(build_request("GET", f"/big?size={TLS_BIG}", "chat.example.test"))
        head = c.read_head()
        assert head.status == 200, head
        for piece in c.iter_body(head, timeout=max(120.0, TLS_BIG / (10 << 20))):
            if piece != pattern(off, len(piece)):
                pytest.fail(f"downloaded bytes differ near offset {off}")
            h.update(piece)
            off += len(piece)
        # Keep-alive after a big body: the connection is still usable.
        c.send(build_request("GET", "/echo", "chat.example.test"))
        assert c.read_response().status == 200
    assert off == TLS_BIG
    want = hashlib.sha256()
    for p in pattern_pieces(TLS_BIG, MAX_SLICE):
        want.update(p)
    assert h.hexdigest() == want.hexdigest()


def test_big_upload_over_tls(proxy_gh, pki):
    h = hashlib.sha256()
    with TlsConn(proxy_gh.port, ctx_for(pki), "chat.example.test", timeout=60) as c:
        c.send(build_request("POST", f"/upload?pause_at={TLS_BIG // 3}&pause=1.0",
                             "chat.example.test", [("Content-Length", str(TLS_BIG))]))
        for piece in pattern_pieces(TLS_BIG, MAX_SLICE):
            c.send(piece)
            h.update(piece)
        r = c.read_response(timeout=max(120.0, TLS_BIG / (10 << 20)))
    assert r.status == 200, r
    assert r.json()["bytes"] == TLS_BIG
    assert r.json()["sha256"] == h.hexdigest()


# ---------------------------------------------------------------- https upstreams

def https_gh(gatehouse, pki, nginx_tls, tls_conf, server_host="127.0.0.1"):
    up = {"servers": [f"https://{server_host}:{nginx_tls.port}"]}
    if tls_conf is not None:
        up["tls"] = tls_conf
    return start_tls(gatehouse, [pki.chat],
                     [{"host": "*", "upstream": "ng"}], upstreams={"ng": up})


def get(gh, pki, target, timeout=15):
    with TlsConn(gh.port, ctx_for(pki), "chat.example.test", timeout=timeout) as c:
        c.send(build_request("GET", target, "chat.example.test"))
        return c.read_response(timeout=timeout)


def test_https_upstream_verified_with_sni(gatehouse, pki, nginx_tls):
    gh = https_gh(gatehouse, pki, nginx_tls,
                  {"ca": str(pki.root), "verify": True, "sni": "nginx.upstream.test"})
    r = get(gh, pki, "/hello.txt")
    assert r.status == 200 and r.body == b"hello over tls\n", r
    r = get(gh, pki, "/sni")
    assert r.status == 200 and r.body == b"sni=nginx.upstream.test\n", \
        f"the configured sni was not sent upstream: {r!r}"


def test_https_upstream_ip_literal_checked_against_ip_san(gatehouse, pki, nginx_tls):
    # No sni: the server's host, 127.0.0.1, is checked against the IP SANs
    # and, being an IP literal, not sent as SNI (tls.h).
    gh = https_gh(gatehouse, pki, nginx_tls, {"ca": str(pki.root), "verify": True})
    r = get(gh, pki, "/hello.txt")
    assert r.status == 200 and r.body == b"hello over tls\n", (r, gh.stderr()[-2000:])
    r = get(gh, pki, "/sni")
    assert r.status == 200 and r.body == b"sni=\n", r


def test_https_upstream_wrong_ca_is_502_with_reason(gatehouse, pki, nginx_tls):
    gh = https_gh(gatehouse, pki, nginx_tls,
                  {"ca": str(pki.rogue.root), "verify": True, "sni": "nginx.upstream.test"})
    r = get(gh, pki, "/hello.txt")
    assert r.status == 502, r
    assert b"hello over tls" not in r.body
    logs = lambda: "certificate verify failed" in gh.stderr() + gh.stdout()  # noqa: E731
    assert wait_until(logs, 5), \
        "no log line saying 'certificate verify failed':\n" + gh.stderr()[-3000:]


def test_https_upstream_name_mismatch_is_502(gatehouse, pki, nginx_tls):
    gh = https_gh(gatehouse, pki, nginx_tls,
                  {"ca": str(pki.root), "verify": True, "sni": "not-this.example.test"})
    r = get(gh, pki, "/hello.txt")
    assert r.status == 502, r
    assert wait_until(lambda: "certificate verify failed" in gh.stderr() + gh.stdout(), 5), \
        gh.stderr()[-3000:]


def test_https_upstream_verify_false(gatehouse, pki, nginx_tls):
    gh = https_gh(gatehouse, pki, nginx_tls,
                  {"ca": str(pki.rogue.root), "verify": False, "sni": "whatever.example.test"})
    r = get(gh, pki, "/hello.txt")
    assert r.status == 200 and r.body == b"hello over tls\n", r
    r = get(gh, pki, "/sni")
    assert r.body == b"sni=whatever.example.test\n", r


def test_https_upstream_connections_are_pooled(gatehouse, pki, nginx_tls):
    gh = https_gh(gatehouse, pki, nginx_tls,
                  {"ca": str(pki.root), "verify": True, "sni": "nginx.upstream.test"})
    seen = []
    with TlsConn(gh.port, ctx_for(pki), "chat.example.test") as c:
        for _ in range(5):
            c.send(build_request("GET", "/conn", "chat.example.test"))
            r = c.read_response()
            assert r.status == 200, r
            conn_no, reqs = r.body.decode().split()
            seen.append((int(conn_no), int(reqs)))
    conns = {n for n, _ in seen}
    assert len(conns) == 1 and [q for _, q in seen] == [1, 2, 3, 4, 5], \
        f"upstream TLS connections not kept alive: (connection, requests on it) = {seen}"


def test_big_download_from_https_upstream(gatehouse, pki, nginx_tls):
    gh = https_gh(gatehouse, pki, nginx_tls,
                  {"ca": str(pki.root), "verify": True, "sni": "nginx.upstream.test"})
    off = 0
    with TlsConn(gh.port, ctx_for(pki), "chat.example.test", timeout=60) as c:
        c.send(build_request("GET", "/big.bin", "chat.example.test"))
        head = c.read_head()
        assert head.status == 200, head
        for piece in c.iter_body(head, timeout=120):
            if piece != pattern(off, len(piece)):
                pytest.fail(f"bytes differ near offset {off}")
            off += len(piece)
    assert off == NGINX_TLS_FILE


# ---------------------------------------------------------------- idle and garbage clients

def raise_nofile(want=8192):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < 2 * IDLE_CONNS + 200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} too low for {IDLE_CONNS} connections")


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def timed_curl(pki, port):
    t0 = time.monotonic()
    r = curl_tls(pki, port, "chat.example.test", "/echo", extra=["--max-time", "5"])
    return r, time.monotonic() - t0


def rss_settled(gh, seconds=1.0):
    time.sleep(seconds)
    return gh.rss_kb()


def test_idle_tls_connections_cost_little_and_block_nothing(gatehouse, pki, aio):
    raise_nofile()
    gh = start_tls(gatehouse, [pki.default, pki.wild, pki.chat],
                   [{"host": "*", "upstream": aio.url}],
                   timeouts={"header": "120s", "idle": "120s"})
    # Warm up: a few full TLS requests so that lazily made state exists.
    for _ in range(20):
        r, _ = timed_curl(pki, gh.port)
        assert r.returncode == 0, r.stderr
    base_fds, base_rss = fd_count(gh.pid), rss_settled(gh)
    silent, done = [], []
    try:
        # 1. Connections that never send a byte (no ClientHello).
        for _ in range(IDLE_CONNS):
            silent.append(socket.create_connection(("127.0.0.1", gh.port), timeout=5))
        assert wait_until(lambda: fd_count(gh.pid) >= base_fds + IDLE_CONNS, 15), \
            f"gatehouse holds {fd_count(gh.pid) - base_fds} of {IDLE_CONNS} silent connections"
        rss_silent = rss_settled(gh)
        r, took = timed_curl(pki, gh.port)
        assert r.returncode == 0 and took < 3.0, \
            f"normal client with {IDLE_CONNS} silent connections open: exit {r.returncode} " \
            f"in {took:.2f}s: {r.stderr[-500:]!r}"

        # 2. Connections that finish the handshake and then stay idle.
        ctx = ctx_for(pki)
        for _ in range(IDLE_CONNS):
            s = socket.create_connection(("127.0.0.1", gh.port), timeout=10)
            done.append(ctx.wrap_socket(s, server_hostname="chat.example.test"))
        assert wait_until(lambda: fd_count(gh.pid) >= base_fds + 2 * IDLE_CONNS, 15)
        rss_done = rss_settled(gh)
        r, took = timed_curl(pki, gh.port)
        assert r.returncode == 0 and took < 3.0, \
            f"normal client with {2 * IDLE_CONNS} idle connections: exit {r.returncode} " \
            f"in {took:.2f}s: {r.stderr[-500:]!r}"
        assert gh.alive()
    finally:
        for s in silent + done:
            try:
                s.close()
            except OSError:
                pass
    per_silent = (rss_silent - base_rss) / IDLE_CONNS
    per_done = (rss_done - rss_silent) / IDLE_CONNS
    print(f"RSS base {base_rss} kB; +{IDLE_CONNS} silent TLS connections {rss_silent} kB "
          f"({per_silent:.2f} kB each); +{IDLE_CONNS} handshaken idle TLS connections "
          f"{rss_done} kB ({per_done:.2f} kB each)")
    if binary_has_asan():
        pytest.skip(f"service checked; RSS not judged under ASan ({per_silent:.1f} / "
                    f"{per_done:.1f} kB per connection)")
    assert per_silent < IDLE_KB_LIMIT, f"{per_silent:.1f} kB per silent TLS connection"
    assert per_done < IDLE_KB_LIMIT, f"{per_done:.1f} kB per idle handshaken TLS connection"


GARBAGE = [
    b"\x00\xff" * 64,                                    # not a TLS record at all
    b"GET / HTTP/1.1\r\nHost: chat.example.test\r\n\r\n",  # plain HTTP on the TLS port
    b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc\x03\x03" + b"\x00" * 20,  # huge ClientHello, cut
    b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\xff",        # ClientHello with a bad length
    bytes(range(256)),
]


def test_garbage_tls_clients_block_nothing(gatehouse, pki, aio):
    raise_nofile()
    gh = start_tls(gatehouse, [pki.chat], [{"host": "*", "upstream": aio.url}],
                   timeouts={"header": "120s", "idle": "120s"})
    socks = []
    try:
        for i in range(IDLE_CONNS):
            s = socket.create_connection(("127.0.0.1", gh.port), timeout=5)
            try:
                s.sendall(GARBAGE[i % len(GARBAGE)])
            except OSError:
                pass
            socks.append((i % len(GARBAGE), s))
        r, took = timed_curl(pki, gh.port)
        assert r.returncode == 0 and took < 3.0, \
            f"normal client after {IDLE_CONNS} garbage connections: exit {r.returncode} in " \
            f"{took:.2f}s: {r.stderr[-500:]!r}"
        assert b'"path": "/echo"' in r.stdout or b'"path":"/echo"' in r.stdout, r.stdout[:300]
        # Plainly broken ones (kinds 0, 1, 4) are closed, not kept.
        still_open = []
        dl = Deadline(10)
        for kind, s in socks:
            if kind not in (0, 1, 4):
                continue
            s.settimeout(max(dl.left(), 0.01))
            try:
                for _ in range(100):
                    if not s.recv(65536):
                        break
            except (socket.timeout, TimeoutError):
                still_open.append(kind)
            except OSError:
                pass
        assert not still_open, f"{len(still_open)} garbage connections still open after 10 s"
        assert gh.alive()
    finally:
        for _, s in socks:
            s.close()


def test_silent_tls_connections_hit_the_header_timeout(gatehouse, pki):
    gh = start_tls(gatehouse, [pki.chat], [{"host": "*", "respond": {"status": 200, "body": "ok"}}],
                   timeouts={"header": "1s"})
    socks = [socket.create_connection(("127.0.0.1", gh.port), timeout=8) for _ in range(20)]
    # A handshake begun and never finished, too.
    half = socket.create_connection(("127.0.0.1", gh.port), timeout=8)
    half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    try:
        dl = Deadline(8)
        open_after = 0
        for s in socks + [half]:
            closed = False
            for _ in range(1000):
                s.settimeout(max(dl.left(), 0.01))
                try:
                    if not s.recv(4096):       # an alert may come first, then EOF
                        closed = True
                        break
                except (socket.timeout, TimeoutError):
                    break
                except OSError:
                    closed = True
                    break
            open_after += not closed
        assert open_after == 0, \
            f"{open_after} of {len(socks) + 1} silent or half-handshaken TLS connections " \
            "outlived timeouts.header 1s by 7 s"
    finally:
        for s in socks + [half]:
            s.close()


# ---------------------------------------------------------------- redirect_https and ACME

@pytest.fixture
def redirect_gh(gatehouse, pki, tmp_path):
    webroot = tmp_path / "acme"
    chal = webroot / ".well-known" / "acme-challenge"
    chal.mkdir(parents=True)
    (chal / "tok-EN_123abc").write_text("tok-EN_123abc.thumbprint-xyz")
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    (webroot / "secret.txt").write_text("WEBROOT SECRET")
    rport = free_port()
    gh = start_tls(gatehouse, [pki.chat], [{"host": "*", "respond": {"status": 200, "body": "ok"}}],
                   extra_listens=[{"address": f"127.0.0.1:{rport}", "redirect_https": True}],
                   acme_webroot=webroot)
    assert wait_port(rport, 10), "the redirect_https listener does not accept"
    gh.rport = rport
    return gh


def plain(port, target, host="chat.example.test", method="GET"):
    with Conn(port, timeout=10) as c:
        c.send(build_request(method, target, host))
        return c.read_response(method)


@pytest.mark.parametrize("target", ["/", "/a/b", "/a/b?x=1&y=%20z", "/v1/chat/completions?stream=true"])
def test_redirect_https_308(redirect_gh, target):
    r = plain(redirect_gh.rport, target)
    assert r.status == 308, r
    assert r.header("location") == f"https://chat.example.test{target}", r


def test_redirect_https_keeps_query_and_drops_port(redirect_gh):
    r = plain(redirect_gh.rport, "/p?q=1", host="chat.example.test:8080")
    assert r.status == 308, r
    assert r.header("location") in ("https://chat.example.test/p?q=1",
                                    "https://chat.example.test:8080/p?q=1"), r


def test_acme_challenge_served_over_plain_http(redirect_gh):
    r = plain(redirect_gh.rport, "/.well-known/acme-challenge/tok-EN_123abc")
    assert r.status == 200, r
    assert r.body == b"tok-EN_123abc.thumbprint-xyz", r
    r = plain(redirect_gh.rport, "/.well-known/acme-challenge/unknown-token")
    assert r.status == 404, r


@pytest.mark.parametrize("target", [
    "/.well-known/acme-challenge/..%2f..%2fsecret.txt",
    "/.well-known/acme-challenge/..%2Fsecret.txt",
    "/.well-known/acme-challenge/%2e%2e%2fsecret.txt",
    "/.well-known/acme-challenge/..",
    "/.well-known/acme-challenge/.%2e/.%2e/secret.txt",
    "/.well-known/acme-challenge/../../secret.txt",
    "/.well-known/acme-challenge/x/../../../secret.txt",
])
def test_acme_challenge_traversal_refused(redirect_gh, target):
    r = plain(redirect_gh.rport, target)
    assert b"SECRET" not in r.body, r
    assert r.status != 200, r
    # A path that normalises to somewhere outside /.well-known/acme-challenge/
    # is no challenge: the listener redirects it (SPEC: "308 to https://host/path,
    # except ACME challenges"); one that stays inside is 404 or 400.
    if r.status == 308:
        loc = r.header("location", "")
        assert loc.startswith("https://chat.example.test/") and \
            not loc.startswith("https://chat.example.test/.well-known/acme-challenge/"), r
    else:
        assert r.status in (400, 404), r


def test_tls_listener_answers_normally_next_to_redirect(redirect_gh, pki):
    r = curl_tls(pki, redirect_gh.port, "chat.example.test", "/x")
    assert r.returncode == 0 and r.stdout == b"ok", r


# ---------------------------------------------------------------- reload

def replace_pair(site_pem, site_key, cert):
    """Puts cert's files in place the way certbot's deploy does: a new file
    renamed over the old one."""
    for src, dst in ((cert.key, site_key), (cert.pem, site_pem)):
        tmp = dst.with_suffix(".new")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def test_reload_rereads_certificates(gatehouse, pki, aio, tmp_path):
    site_pem, site_key = tmp_path / "site.pem", tmp_path / "site.key"
    replace_pair(site_pem, site_key, pki.chat)
    site = SimpleNamespace(pem=site_pem, key=site_key)
    gh = start_tls(gatehouse, [site], [{"host": "*", "upstream": aio.url}])
    assert served_cert(gh.port, "chat.example.test")[:2] == (pki.chat.subject_cn, pki.chat.serial)
    renewed = pki.pki.leaf("renewed", "renewed.chat.example.test", ["chat.example.test"])
    old = TlsConn(gh.port, ctx_for(pki), "chat.example.test", timeout=15)
    try:
        old.send(build_request("GET", "/echo?before", "chat.example.test"))
        assert old.read_response().status == 200
        # An SSE stream in flight over TLS across the reload, too.
        stream = TlsConn(gh.port, ctx_for(pki), "chat.example.test", timeout=20)
        stream.send(build_request("GET", "/sse?n=5&delay=0.5", "chat.example.test"))
        head = stream.read_head()
        assert head.status == 200

        replace_pair(site_pem, site_key, renewed)
        gh.signal(signal.SIGHUP)

        def now_served():
            cn, serial, _ = served_cert(gh.port, "chat.example.test")
            return (cn, serial) == (renewed.subject_cn, renewed.serial)
        assert wait_until(now_served, 10, 0.2), \
            f"still serving {served_cert(gh.port, 'chat.example.test')[:2]} 10 s after SIGHUP " \
            f"with a new certificate on disk; stderr:\n{gh.stderr()[-2000:]}"
        assert "reload failed" not in gh.stderr(), gh.stderr()[-2000:]
        r = curl_tls(pki, gh.port, "chat.example.test", "/echo")
        assert r.returncode == 0 and b"subject: CN=renewed.chat.example.test" in r.stderr, r

        # The connection made before the reload keeps working, on the old cert.
        old.send(build_request("GET", "/echo?after", "chat.example.test"))
        r = old.read_response()
        assert r.status == 200 and r.json()["query"] == "after", r
        assert old.peer_subject_serial() == (pki.chat.subject_cn, pki.chat.serial)
        body = b""
        for piece in stream.iter_body(head, timeout=20):
            body += piece
        assert body.count(b"data: ") == 5, f"the TLS stream did not survive the reload: {body!r}"
        stream.close()
    finally:
        old.close()


def test_reload_with_mismatched_key_keeps_old_certificate(gatehouse, pki, tmp_path):
    site_pem, site_key = tmp_path / "site.pem", tmp_path / "site.key"
    replace_pair(site_pem, site_key, pki.chat)
    site = SimpleNamespace(pem=site_pem, key=site_key)
    gh = start_tls(gatehouse, [site], [{"host": "*", "respond": {"status": 200, "body": "ok"}}])
    shutil.copyfile(pki.wild.key, site_key)      # a key of another certificate
    gh.signal(signal.SIGHUP)
    assert wait_until(lambda: "reload failed" in gh.stderr(), 10), gh.stderr()[-2000:]
    assert re.search(re.escape(str(gh.config_path)) + r":\d+:\d+: .*does not match", gh.stderr()), \
        gh.stderr()[-2000:]
    assert served_cert(gh.port, "chat.example.test")[:2] == (pki.chat.subject_cn, pki.chat.serial)
    r = curl_tls(pki, gh.port, "chat.example.test", "/")
    assert r.returncode == 0 and r.stdout == b"ok", r


# ---------------------------------------------------------------- gatehouse -t

def check_config(tmp_path, certs, routes=None, name="gatehouse.yaml"):
    text = tls_config(certs, routes or [{"host": "*", "respond": {"status": 200}}])
    text = text.replace("@PORT@", str(free_port()))
    p = tmp_path / name
    p.write_text(text)
    r = run_cli(["-t", "-c", str(p)])
    return p, text, r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def located(path, stderr):
    out = []
    for ln in stderr.splitlines():
        m = ERR_LINE.match(ln.strip())
        if m and m.group("file") == str(path):
            out.append((int(m.group("line")), int(m.group("col")), m.group("msg")))
    return out


def line_of(text, needle):
    return text[:text.index(needle)].count("\n") + 1


def test_check_key_not_matching_certificate(tmp_path, pki):
    bad = SimpleNamespace(pem=pki.chat.pem, key=pki.wild.key)
    p, text, rc, out, err = check_config(tmp_path, [pki.default, bad])
    assert rc == 1, (rc, out, err)
    assert "configuration OK" not in out
    lines = located(p, err)
    hits = [x for x in lines if "match" in x[2]]
    assert hits, f"no FILE:LINE:COL line about the mismatch:\n{err}"
    line, col, msg = hits[0]
    assert str(pki.wild.key) in msg or str(pki.chat.pem) in msg, msg
    # It points at the second pair, not the first.
    first = line_of(text, str(pki.default.pem))
    assert line > first and line <= text.count("\n"), (line, text)


def test_check_certificate_expiring_soon_warns(tmp_path, pki):
    p, text, rc, out, err = check_config(tmp_path, [pki.soon],
                                         [{"host": "soon.example.test", "respond": {"status": 200}}])
    assert rc == 0, (rc, out, err)
    assert f"{p}: configuration OK" in out, out
    warns = [x for x in located(p, err) if x[2].startswith("warning:")]
    assert any("expires in" in m and str(pki.soon.pem) in m for _, _, m in warns), err


def test_check_expired_certificate_warns(tmp_path, pki):
    p, text, rc, out, err = check_config(tmp_path, [pki.expired],
                                         [{"host": "expired.example.test",
                                           "respond": {"status": 200}}])
    warns = [x for x in located(p, err) if "expired" in x[2]]
    assert warns, f"no warning about the expired certificate (exit {rc}):\n{err}"
    assert rc == 0 and "configuration OK" in out, (rc, out, err)


def test_check_route_host_without_certificate_warns(tmp_path, pki):
    routes = [{"host": "chat.example.test", "respond": {"status": 200}},
              {"host": "docs.example.test", "respond": {"status": 200}},
              {"host": "nocert.other.test", "respond": {"status": 200}},
              {"host": "*", "respond": {"status": 404}}]
    p, text, rc, out, err = check_config(tmp_path, [pki.wild], routes)
    assert rc == 0 and "configuration OK" in out, (rc, out, err)
    warns = [x for x in located(p, err) if x[2].startswith("warning:")]
    about = [x for x in warns if "nocert.other.test" in x[2]]
    assert about, f"no warning about the uncovered route host:\n{err}"
    assert about[0][0] == line_of(text, "nocert.other.test"), (about, text)
    assert not [x for x in warns if "chat.example.test" in x[2] or "docs.example.test" in x[2]], \
        f"warned about hosts the wildcard covers:\n{err}"


def test_check_good_tls_config_is_quiet(tmp_path, pki):
    routes = [{"host": "chat.example.test", "respond": {"status": 200}},
              {"host": "default.test", "respond": {"status": 200}}]
    p, text, rc, out, err = check_config(tmp_path, [pki.default, pki.wild, pki.chat], routes)
    assert rc == 0 and f"{p}: configuration OK" in out, (rc, out, err)
    assert "warning" not in err, err


def test_check_tls_listener_without_certificates(tmp_path):
    p = tmp_path / "gatehouse.yaml"
    text = to_yaml({"listen": [{"address": f"127.0.0.1:{free_port()}", "tls": True}],
                    "routes": [{"host": "*", "respond": {"status": 200}}]})
    p.write_text(text)
    r = run_cli(["-t", "-c", str(p)])
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1, (r.returncode, r.stdout, err)
    assert located(p, err), err
