"""SPEC section 2 (`tunnels:`, `connect:`) and section 3 "Tunnel": an edge and
a connector as two gatehouse processes, the backends behind the connector.

  client -> edge (listen, tunnels:, routes to tunnel://ph/SERVICE)
         <= tunnel connections dialed by the connector (connect:, no listen)
         -> connector -> aio backend (service "web") / FastAPI LLM ("inference")

Covered: SSE and LLM token streams unbuffered, WebSocket echo, 1 GiB each way
(big), 500 concurrent streams, no head-of-line blocking behind a stalled
stream, 502 at once without a connector, SIGKILLed connector, edge restart,
wrong token / unknown tunnel and slow retries, a link cut without a FIN
(network namespaces, heartbeats), access log and metrics."""
import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from harness import (Conn, Deadline, Truncated, data_of, read_events, websocket_echo_exchange,
                     assert_error_json, binary_has_asan, build_request, free_port, request,
                     to_yaml, wait_until)
from pattern import MAX_SLICE, pattern, pattern_pieces, pattern_sha256
from tunnel_util import (NetnsPair, NsBackend, Process, count, keygen, kill_hard, matching,
                         ns_curl, wait_count)

BIG = int(os.environ.get("GH_BIG_BYTES", str(1 << 30)))
TUNNEL = "ph"
ATTACHED = rf"tunnel {TUNNEL}: connector attached from "
EDGE_ENDED = rf"tunnel {TUNNEL}: a connector connection ended"
REFUSED = r"tunnel upgrade from \S+ refused"
UP = rf"tunnel {TUNNEL}: connection \d+ to \S+ is up"
CONN_ENDED = rf"tunnel {TUNNEL}: connection \d+ to \S+ ended"
CONN_FAILED_401 = r"tunnel \S+: connection \d+ to \S+ failed: the edge answered 401"
RSS_GROWTH_LIMIT_KB = 64 * 1024


# ---------------------------------------------------------------- set-up

def edge_config(digest, heartbeat="10s", admin_port=None, name=TUNNEL):
    cfg = {
        "timeouts": {"shutdown": "3s"},
        "limits": {"max_connections": 10000},
        "tunnels": {name: {"token_hash": digest, "heartbeat": heartbeat}},
        "routes": [
            {"host": "llm.test", "upstream": f"tunnel://{name}/inference"},
            {"host": "api.test", "path": "/v1/", "upstream": f"tunnel://{name}/web"},
            {"host": "nosvc.test", "upstream": f"tunnel://{name}/nosuchservice"},
            {"host": "*", "upstream": f"tunnel://{name}/web", "max_body_bytes": max(BIG * 2, 1 << 30)},
        ],
    }
    if admin_port:
        cfg["admin"] = {"address": f"127.0.0.1:{admin_port}"}
    return cfg


def connector_config(edge_url, token_file, services, connections=2, heartbeat="10s",
                     name=TUNNEL):
    # No listen: a connector only dials out.
    return {
        "timeouts": {"shutdown": "3s"},
        "connect": [{"edge": edge_url, "tunnel": name, "token_file": str(token_file),
                     "connections": connections, "heartbeat": heartbeat,
                     "services": services}],
    }


@pytest.fixture
def connector(tmp_path):
    """Factory: connector(config dict or YAML text, prefix=()) -> running Process
    (a gatehouse without a listener); checked like the gatehouse fixture at
    teardown (clean exit on SIGTERM, no sanitizer report)."""
    started = []

    def start(config, prefix=()):
        d = tmp_path / f"conn{len(started)}"
        d.mkdir()
        text = config if isinstance(config, str) else to_yaml(config)
        p = Process(d, text, prefix=prefix)
        p.start()
        started.append(p)
        return p

    yield start
    problems = []
    for p in started:
        for msg in p.finish():
            problems.append(f"[connector {p.config_path}] {msg}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


class Tunnel:
    """An edge and its connector, attached."""

    def __init__(self, gatehouse, connector, tmp_path, services, connections, heartbeat,
                 admin):
        self.gatehouse = gatehouse
        self.connector_factory = connector
        self.services = services
        self.connections = connections
        self.heartbeat = heartbeat
        self.token, self.digest = keygen()
        self.token_file = tmp_path / "tunnel.token"
        self.token_file.write_text(self.token + "\n")
        self.admin_port = free_port() if admin else None
        self.edge_cfg = edge_config(self.digest, heartbeat, self.admin_port)
        self.edge = gatehouse(self.edge_cfg)
        self.conn = self.start_connector()

    @property
    def port(self):
        return self.edge.port

    def start_connector(self, seconds=15):
        """Starts a connector and waits until all its connections are up and
        the edge logged as many new attaches."""
        cfg = connector_config(self.edge.url, self.token_file, self.services,
                               self.connections, self.heartbeat)
        base = count(self.edge, ATTACHED)
        c = self.connector_factory(cfg)
        took = wait_count(c, UP, self.connections, seconds)
        assert took is not None, \
            f"connector not up within {seconds}s; connector stderr:\n{c.stderr()[-3000:]}" \
            f"\nedge stderr:\n{self.edge.stderr()[-3000:]}"
        got = wait_count(self.edge, ATTACHED, base + self.connections, 5)
        assert got is not None, \
            f"edge logged no attach; edge stderr:\n{self.edge.stderr()[-3000:]}"
        return c

    def metrics(self):
        r = request(self.admin_port, target="/metrics", host="127.0.0.1", timeout=5)
        assert r.status == 200, r
        return r.body.decode()


@pytest.fixture
def tunnel_factory(gatehouse, connector, tmp_path, aio, llm):
    def make(connections=2, heartbeat="10s", admin=False, services=None):
        services = services or {"web": aio.url, "inference": llm.url}
        return Tunnel(gatehouse, connector, tmp_path, services, connections, heartbeat, admin)
    return make


@pytest.fixture
def tun(tunnel_factory):
    return tunnel_factory()



def timed_request(port, target="/echo", host="app.test", timeout=10):
    t0 = time.monotonic()
    r = request(port, target=target, host=host, timeout=timeout)
    return r, time.monotonic() - t0


def metric_value(text, name, labels):
    rx = re.compile(r"^" + re.escape(name) + r"\{([^}]*)\}\s+(\S+)\s*$", re.M)
    for m in rx.finditer(text):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(2))
    return None


# ---------------------------------------------------------------- streaming

def test_basic_request_through_tunnel(tun):
    r = request(tun.port, target="/echo?x=1", host="app.test")
    assert r.status == 200 and r.complete, r
    doc = r.json()
    assert doc["path"] == "/echo" and doc["query"] == "x=1", doc
    hdrs = {k.lower(): v for k, v in doc["headers"]}
    assert hdrs.get("host") == "app.test", doc["headers"]
    assert "x-request-id" in hdrs, doc["headers"]
    assert r.header("x-server") == "A", r


def test_sse_events_arrive_as_sent(tun):
    with Conn(tun.port, timeout=20) as c:
        c.send(build_request("GET", "/sse?n=5&delay=0.7", headers=[
            ("Accept", "text/event-stream"), ("Accept-Encoding", "gzip, deflate, br")]))
        head = c.read_head()
        assert head.status == 200, head
        assert head.header("content-type", "").startswith("text/event-stream"), head
        assert head.header("content-encoding") is None, "the stream was compressed"
        evs = [(t, json.loads(data_of(ev))) for t, ev in read_events(c, head, 20)]
    assert [d["i"] for _, d in evs] == [0, 1, 2, 3, 4]
    lags = [round(t - d["sent"], 3) for t, d in evs]
    assert evs[0][0] < evs[-1][1]["sent"] - 1.0, \
        f"the first event arrived only with the last one: lags {lags}"
    assert max(lags) < 0.9, f"events were held back in the tunnel: lags {lags}"


def test_llm_stream_arrives_token_by_token(tun):
    tokens = ["The", " quick", " brown", " fox", " jumps", "."]
    delay = 0.5
    body = json.dumps({"model": "test-model", "stream": True,
                       "messages": [{"role": "user", "content": "go"}],
                       "x_tokens": tokens, "x_delay": delay}).encode()
    with Conn(tun.port, timeout=30) as c:
        c.send(build_request("POST", "/v1/chat/completions", "llm.test", [
            ("Content-Type", "application/json"), ("Accept", "text/event-stream")], body))
        head = c.read_head()
        assert head.status == 200, head
        events = [(t, data_of(ev)) for t, ev in read_events(c, head, 30)]
    assert events and events[-1][1] == "[DONE]", events[-3:]
    chunks = [(t, json.loads(d)) for t, d in events[:-1]]
    text = "".join(ch["choices"][0]["delta"].get("content", "") for _, ch in chunks)
    assert text == "".join(tokens)
    tok = [(t, ch) for t, ch in chunks if ch["choices"][0]["delta"].get("content")]
    assert len(tok) == len(tokens)
    lags = [round(t - ch["gh_sent"], 3) for t, ch in tok]
    assert tok[0][0] < tok[-1][1]["gh_sent"] - 1.0, \
        f"the first token arrived only when the stream ended: lags {lags}"
    assert max(lags) < 1.0, f"tokens were held back in the tunnel: lags {lags}"


def test_llm_non_stream_json(tun):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "x_tokens": ["a", "b", "c"]}).encode()
    r = request(tun.port, "POST", "/v1/chat/completions", "llm.test",
                [("Content-Type", "application/json")], body)
    assert r.status == 200, r
    assert r.json()["choices"][0]["message"]["content"] == "abc"


def test_websocket_echo_both_ways(tun):
    run = websocket_echo_exchange(f"ws://127.0.0.1:{tun.port}/ws", 50, 30)
    code = asyncio.run(asyncio.wait_for(run, 120))
    assert code == 1000
    r = request(tun.port, target="/echo")
    assert r.status == 200, "the tunnel stopped answering after a WebSocket session"


def big_timeout():
    return max(180.0, BIG / (10 << 20))


def rss_growth(proc, base):
    hwm = proc.hwm_kb()
    return (hwm - base) if hwm is not None and base is not None else None


def check_rss(edge, conn, bases):
    growth = {"edge": rss_growth(edge, bases[0]), "connector": rss_growth(conn, bases[1])}
    print(f"peak RSS growth moving {BIG} bytes: {growth} kB")
    if binary_has_asan():
        return
    for who, g in growth.items():
        assert g is None or g < RSS_GROWTH_LIMIT_KB, \
            f"the {who} grew by {g} kB moving {BIG} bytes through the tunnel"


@pytest.mark.big
def test_big_download_through_tunnel(tun):
    warm = request(tun.port, target="/big?size=4194304", timeout=30)
    assert warm.status == 200 and warm.complete and warm.body == b"".join(
        pattern_pieces(4194304, MAX_SLICE)), warm
    bases = (tun.edge.hwm_kb(), tun.conn.hwm_kb())
    h = hashlib.sha256()
    off = 0
    t0 = time.monotonic()
    with Conn(tun.port, timeout=60) as c:
        c.send(build_request("GET", f"/big?size={BIG}"))
        head = c.read_head()
        assert head.status == 200, head
        try:
            for piece in c.iter_body(head, timeout=big_timeout()):
                if piece != pattern(off, len(piece)):
                    pytest.fail(f"downloaded bytes differ near offset {off}")
                h.update(piece)
                off += len(piece)
        except Truncated:
            pytest.fail(f"the download was cut after {off} of {BIG} bytes")
    took = time.monotonic() - t0
    print(f"download {BIG} bytes in {took:.1f}s ({BIG / took / 1e6:.0f} MB/s)")
    assert off == BIG
    assert h.hexdigest() == pattern_sha256(BIG)
    check_rss(tun.edge, tun.conn, bases)


@pytest.mark.big
def test_big_upload_through_tunnel(tun):
    warm = request(tun.port, "POST", "/upload", body=pattern(0, 1 << 20), timeout=30)
    assert warm.status == 200, warm
    bases = (tun.edge.hwm_kb(), tun.conn.hwm_kb())

    def chunks():                 # a streamed generator: chunked, never in memory
        for piece in pattern_pieces(BIG, MAX_SLICE):
            yield piece

    h = hashlib.sha256()
    t0 = time.monotonic()
    with Conn(tun.port, timeout=60) as c:
        c.send(build_request("POST", f"/upload?pause_at={BIG // 3}&pause=1.0",
                             headers=[("Transfer-Encoding", "chunked")]))
        for piece in chunks():
            c.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
            h.update(piece)
        c.send(b"0\r\n\r\n")
        r = c.read_response(timeout=120)
    took = time.monotonic() - t0
    print(f"upload {BIG} bytes in {took:.1f}s ({BIG / took / 1e6:.0f} MB/s)")
    assert r.status == 200 and r.complete, r
    assert r.json()["bytes"] == BIG
    assert r.json()["sha256"] == h.hexdigest()
    check_rss(tun.edge, tun.conn, bases)


def test_500_concurrent_streams(tunnel_factory):
    tun = tunnel_factory(admin=True)
    n, events, delay = 500, 2, 4.0
    samples = []

    async def one(i):
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", tun.port), 30)
        try:
            w.write(build_request("GET", f"/sse?n={events}&delay={delay}&i={i}",
                                  headers=[("Connection", "close")]))
            await w.drain()
            data = bytearray()
            first = None
            for _ in range(100000):
                piece = await asyncio.wait_for(r.read(65536), 60)
                if not piece:
                    break
                data += piece
                if first is None and b"data: " in data:
                    first = time.monotonic()
            return first, time.monotonic(), bytes(data)
        finally:
            w.close()

    async def sample_metrics():
        await asyncio.sleep(delay / 2 + 1)
        try:
            text = await asyncio.to_thread(tun.metrics)
            samples.append(metric_value(text, "gatehouse_tunnel_streams", {"tunnel": TUNNEL}))
        except Exception as e:  # informative only
            samples.append(repr(e))

    async def run():
        return await asyncio.gather(*(one(i) for i in range(n)), sample_metrics(),
                                    return_exceptions=True)

    res = asyncio.run(asyncio.wait_for(run(), 180))[:n]
    errors = [r for r in res if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} of {n} streams failed, e.g. {errors[:3]!r}"
    bad = [(i, d[:200]) for i, (_, _, d) in enumerate(res)
           if not d.startswith(b"HTTP/1.1 200") or d.count(b"data: ") != events
           or not d.endswith(b"0\r\n\r\n")]
    assert not bad, f"{len(bad)} of {n} streams were not complete 200s, e.g. {bad[:3]!r}"
    firsts = [f for f, _, _ in res]
    ends = [e for _, e, _ in res]
    assert None not in firsts
    # Every stream had its first event before any stream ended: all were open at once.
    assert max(firsts) < min(ends), \
        f"the streams were not all open at once: last first event {max(firsts) - min(firsts):.2f}s " \
        f"after the first, first end {min(ends) - min(firsts):.2f}s"
    print(f"gatehouse_tunnel_streams mid-run: {samples}")


def test_stalled_stream_does_not_hold_up_another(tunnel_factory):
    # One connection, so both streams share it: only per-stream flow control
    # keeps the SSE stream moving.
    tun = tunnel_factory(connections=1)
    size = 200_000_000
    bases = (tun.edge.rss_kb(), tun.conn.rss_kb())
    stalled = Conn(tun.port, timeout=60)
    try:
        stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        stalled.send(build_request("GET", f"/big?size={size}"))
        head = stalled.read_head(timeout=10)
        assert head.status == 200, head
        time.sleep(2.0)     # the stalled stream's windows fill up meanwhile
        # Held back by flow control, not buffered: neither side holds the 200 MB.
        grown = (tun.edge.rss_kb() - bases[0], tun.conn.rss_kb() - bases[1])
        print(f"RSS growth with the stalled stream (edge, connector): {grown} kB")
        if not binary_has_asan():
            assert max(grown) < RSS_GROWTH_LIMIT_KB, \
                f"a stalled stream was buffered instead of held back: RSS grew {grown} kB"

        delay = 0.5
        with Conn(tun.port, timeout=20) as c:
            c.send(build_request("GET", f"/sse?n=8&delay={delay}"))
            h2 = c.read_head(timeout=5)
            assert h2.status == 200, h2
            evs = [(t, json.loads(data_of(ev))) for t, ev in read_events(c, h2, 20)]
        assert [d["i"] for _, d in evs] == list(range(8))
        # Each event is due when the backend wrote it ("sent"); the backend's
        # own timer drift under load is not the tunnel's doing.
        lags = [round(t - d["sent"], 3) for t, d in evs]
        start = evs[0][1]["sent"]
        drift = [round(d["sent"] - (start + i * delay), 3) for i, (_, d) in enumerate(evs)]
        print(f"SSE lags behind a stalled stream: {lags} (backend drift {drift})")
        assert max(lags) < 1.0, f"SSE events late behind a stalled stream: lags {lags}"
        assert evs[0][0] < evs[-1][1]["sent"] - 1.0, f"SSE events bunched up: lags {lags}"

        r, took = timed_request(tun.port, "/echo", timeout=5)
        assert r.status == 200 and took < 1.0, (r, took)

        # The stalled stream resumes intact once its reader reads again.
        off = 0
        for piece in stalled.iter_body(head, timeout=120):
            if piece != pattern(off, len(piece)):
                pytest.fail(f"the stalled stream's bytes differ near offset {off}")
            off += len(piece)
        assert off == size
    finally:
        stalled.close()


# ---------------------------------------------------------------- no connector

def test_route_without_connector_is_502_at_once(gatehouse):
    _, digest = keygen()
    edge = gatehouse(edge_config(digest))
    for i in range(5):
        r, took = timed_request(edge.port, f"/echo?{i}", timeout=10)
        assert_error_json(r, 502)
        assert took < 0.5, f"502 without a connector took {took:.3f}s (SPEC: at once)"
    r, took = timed_request(edge.port, "/v1/chat/completions", host="llm.test")
    assert r.status == 502 and took < 0.5, (r, took)


def test_unknown_service_is_an_error_not_a_hang(tun):
    r, took = timed_request(tun.port, "/echo", host="nosvc.test", timeout=10)
    assert r.status == 502, r
    assert took < 2.0, f"a stream to an unknown service took {took:.2f}s to fail"
    assert matching(tun.conn, r"unknown service 'nosuchservice'"), tun.conn.stderr()[-2000:]
    # A refused stream processed nothing, so the edge sends it again on a
    # connection of the tunnel, a bounded number of times (3), then gives up.
    rid = r.header("x-request-id")
    tries = rf"request {rid}: tunnel {TUNNEL} refused the stream; trying again"
    assert wait_count(tun.edge, tries, 3, 5) is not None and count(tun.edge, tries) == 3, \
        tun.edge.stderr()[-2000:]
    r = request(tun.port, target="/echo")
    assert r.status == 200, r


# ---------------------------------------------------------------- faults

def test_connector_killed_mid_stream(tun):
    with Conn(tun.port, timeout=20) as c:
        c.send(build_request("GET", "/sse?n=40&delay=0.25"))
        head = c.read_head()
        assert head.status == 200, head
        got, cut = [], False
        t_kill = None
        try:
            for _, ev in read_events(c, head, 15):
                got.append(ev)
                if len(got) == 3:
                    kill_hard(tun.conn)
                    t_kill = time.monotonic()
        except Truncated:
            cut = True
        except TimeoutError:
            pytest.fail(f"the client stream neither ended nor was cut within 15s of the kill "
                        f"({len(got)} events)")
    assert t_kill is not None, f"the stream ended before the kill ({len(got)} events)"
    assert cut, f"a stream whose connector died ended cleanly ({len(got)} events of 40)"
    assert time.monotonic() - t_kill < 5
    assert len(got) < 40

    took = wait_count(tun.edge, EDGE_ENDED, tun.connections, 5)
    assert took is not None, f"edge did not notice the dead connector:\n{tun.edge.stderr()[-2000:]}"
    for i in range(3):
        r, took = timed_request(tun.port, f"/echo?after-kill={i}")
        assert_error_json(r, 502)
        assert took < 0.5, f"502 with the connector gone took {took:.3f}s (SPEC: at once)"

    new = tun.start_connector()
    assert tun.edge.alive()
    r = request(tun.port, target="/echo?after-restart")
    assert r.status == 200 and r.complete, r
    assert count(tun.edge, ATTACHED) == 2 * tun.connections
    assert new.alive()


def test_connector_reload_replaces_its_connections_without_failing_a_request(tun, aio):
    # Each reload changes the connector's services, so it replaces both its
    # connections. The old ones serve until the new ones are up, and a stream
    # the edge opens as an old one goes away is refused by the connector and
    # sent again on a new one: no request may fail.
    statuses, stop, lock = [], threading.Event(), threading.Lock()

    def load():
        for _ in range(20000):
            if stop.is_set():
                return
            try:
                got = request(tun.port, target="/echo", host="app.test", timeout=10).status
            except OSError as e:
                got = repr(e)
            with lock:
                statuses.append(got)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(6):
            services = dict(tun.services)
            if i % 2 == 0:
                services["extra"] = aio.url
            base = count(tun.conn, UP)
            cfg = connector_config(tun.edge.url, tun.token_file, services, tun.connections,
                                   tun.heartbeat)
            tun.conn.config_path.write_text(to_yaml(cfg))
            tun.conn.signal(signal.SIGHUP)
            assert wait_count(tun.conn, UP, base + tun.connections, 15) is not None, \
                tun.conn.stderr()[-3000:]
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    bad = [s for s in statuses if s != 200]
    assert len(statuses) > 100 and not bad, \
        f"{len(bad)} of {len(statuses)} requests failed, e.g. {bad[:5]}\n" \
        + tun.edge.stderr()[-2000:]
    # the replaced connections drained and went
    drained = rf"tunnel {TUNNEL}: connection \d+ drained"
    assert wait_count(tun.conn, drained, 6 * tun.connections, 15) is not None, \
        tun.conn.stderr()[-3000:]


def test_edge_restart_connector_comes_back(tun):
    assert request(tun.port, target="/echo").status == 200
    port = tun.edge.port
    rc = tun.edge.stop(timeout=10)
    assert rc == 0, f"edge exit {rc} on SIGTERM with connectors attached:\n{tun.edge.stderr()[-2000:]}"
    t_down = time.monotonic()
    took = wait_count(tun.conn, CONN_ENDED, tun.connections, 5)
    assert took is not None, \
        f"connector did not notice the edge going away:\n{tun.conn.stderr()[-2000:]}"

    edge2 = tun.gatehouse(tun.edge_cfg, port=port)
    took = wait_count(edge2, ATTACHED, tun.connections, 35)
    assert took is not None, \
        f"connector not back on the restarted edge within 35s:\n{tun.conn.stderr()[-3000:]}"
    since_down = time.monotonic() - t_down
    print(f"reattached {since_down:.2f}s after the edge stopped ({took:.2f}s after restart)")
    assert took < 10, f"reattach took {took:.1f}s after the edge came back " \
                      f"(backoff starts at 0.5s; expected a few seconds)"
    r = request(port, target="/echo?after-edge-restart")
    assert r.status == 200 and r.complete, r
    assert tun.conn.alive()


@pytest.mark.parametrize("case", ["wrong-token", "unknown-tunnel"])
def test_refused_connector_fails_visibly_and_retries_slowly(gatehouse, connector, tmp_path,
                                                             aio, case):
    token, digest = keygen()
    edge = gatehouse(edge_config(digest))
    tok = tmp_path / "tok"
    if case == "wrong-token":
        other, _ = keygen()
        tok.write_text(other + "\n")
        name, why = TUNNEL, "wrong token"
    else:
        tok.write_text(token + "\n")
        name, why = "nosuch", "unknown tunnel"
    conn = connector(connector_config(edge.url, tok, {"web": aio.url}, connections=2,
                                      name=name))
    assert wait_count(conn, CONN_FAILED_401, 1, 10) is not None, \
        f"connector logged no 401 failure:\n{conn.stderr()[-2000:]}"
    assert wait_count(edge, REFUSED + ": " + why, 1, 5) is not None, \
        f"edge logged no refusal ({why}):\n{edge.stderr()[-2000:]}"
    assert count(edge, ATTACHED) == 0
    r, took = timed_request(edge.port, "/echo")
    assert_error_json(r, 502)
    assert took < 0.5, took
    # It must not hammer the edge: few attempts in the next 5 s.
    before = count(edge, REFUSED)
    time.sleep(5.0)
    after = count(edge, REFUSED)
    print(f"refusals: {before} at first, {after} after 5 more seconds")
    assert after - before <= 5 and after <= 7, \
        f"the connector retried {after - before} times in 5 s after a 401 ({after} in all):\n" \
        + "\n".join(matching(edge, REFUSED)[-10:])
    assert conn.alive()


# ---------------------------------------------------------------- a silent link cut

def test_link_cut_without_fin_is_detected_by_heartbeats(tmp_path):
    why = NetnsPair.permitted()
    if why:
        pytest.skip(f"network namespaces unavailable: {why}")
    tag = f"{os.getpid() & 0xffff:04x}"
    pair = NetnsPair(tag)
    procs, backend, problems = [], None, []
    hb = 1.0
    try:
        pair.up()
        (tmp_path / "nsb").mkdir()
        backend = NsBackend(pair.b, tmp_path / "nsb")
        backend.start()
        token, digest = keygen()
        tok = tmp_path / "tok"
        tok.write_text(token + "\n")
        port = 8080
        ecfg = edge_config(digest, heartbeat="1s")
        ecfg = {"listen": [{"address": f"{pair.addr_a}:{port}"},
                           {"address": f"127.0.0.1:{port}"}],
                "access_log": {"path": "stdout", "format": "json"}, **ecfg}
        (tmp_path / "edge").mkdir()
        edge = Process(tmp_path / "edge", to_yaml(ecfg), prefix=["ip", "netns", "exec", pair.a])
        edge.start()
        procs.append(edge)
        (tmp_path / "conn").mkdir()
        ccfg = connector_config(f"http://{pair.addr_a}:{port}", tok,
                                {"web": f"http://127.0.0.1:{backend.port}"},
                                connections=2, heartbeat="1s")
        conn = Process(tmp_path / "conn", to_yaml(ccfg), prefix=["ip", "netns", "exec", pair.b])
        conn.start()
        procs.append(conn)
        assert wait_count(conn, UP, 2, 15) is not None, conn.stderr()[-2000:]
        assert wait_count(edge, ATTACHED, 2, 5) is not None, edge.stderr()[-2000:]

        url = f"http://127.0.0.1:{port}"
        rc, code, _, body = ns_curl(pair.a, url + "/echo")
        assert (rc, code) == (0, 200), (rc, code, body)

        # A stream in flight when the link goes silent.
        out = tmp_path / "sse.out"
        sse = subprocess.Popen(["ip", "netns", "exec", pair.a, "curl", "-sS", "-N",
                                "--max-time", "40", "-o", str(out), url + "/sse?n=300&delay=0.1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            started = Deadline(10)
            while not started.expired() and (not out.exists() or out.stat().st_size == 0):
                time.sleep(0.05)
            assert out.exists() and out.stat().st_size > 0, "the SSE stream did not start"

            how = pair.drop()
            t_cut = time.monotonic()
            t_edge = wait_count(edge, EDGE_ENDED, 2, 4 * hb + 6)
            t_conn_rel = wait_count(conn, CONN_ENDED, 2, max(0.1, 4 * hb + 6 - (time.monotonic() - t_cut)))
            t_conn = None if t_conn_rel is None else time.monotonic() - t_cut
            print(f"cut by {how}; edge noticed after {t_edge}s, connector by {t_conn}s")
            assert t_edge is not None, \
                f"the edge did not end the sessions within {4 * hb + 6}s of a silent cut " \
                f"(heartbeat {hb}s):\n{edge.stderr()[-2000:]}"
            assert t_conn is not None, \
                f"the connector did not end its connections within {4 * hb + 6}s of a silent " \
                f"cut (heartbeat {hb}s):\n{conn.stderr()[-2000:]}"
            assert t_edge <= 4 * hb + 1.0, f"edge took {t_edge:.2f}s (heartbeat {hb}s)"
            assert t_conn <= 4 * hb + 1.0, f"connector took {t_conn:.2f}s (heartbeat {hb}s)"

            try:
                sse_rc = sse.wait(5)
            except subprocess.TimeoutExpired:
                sse_rc = None
            print(f"client stream ended with curl exit {sse_rc}")
            assert sse_rc in (18, 56), \
                f"the client stream did not fail once the link was dead (curl {sse_rc}, " \
                f"{out.stat().st_size} bytes): {sse.stderr.read() if sse_rc is not None else ''}"
        finally:
            if sse.poll() is None:
                sse.kill()
                sse.wait(5)

        rc, code, secs, body = ns_curl(pair.a, url + "/echo?during-cut", max_time=10)
        assert code == 502, (rc, code, body)
        assert secs is not None and secs < 1.0, f"502 during the cut took {secs}s"

        pair.undrop()
        t_heal = time.monotonic()
        took = wait_count(conn, UP, 4, 40)
        assert took is not None, \
            f"the connector did not reconnect within 40 s of the link coming back:\n" \
            f"{conn.stderr()[-3000:]}"
        assert wait_count(edge, ATTACHED, 3, 5) is not None, edge.stderr()[-2000:]
        print(f"reconnected {time.monotonic() - t_heal:.1f}s after the link came back")
        rc, code, _, body = ns_curl(pair.a, url + "/echo?after-heal")
        assert (rc, code) == (0, 200), (rc, code, body)
    finally:
        for p in procs:
            problems += [f"[{p.config_path}] {m}" for m in p.finish()]
        if backend:
            backend.stop()
        errs = pair.close()
        if errs:
            problems.append(f"namespace clean-up: {errs}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# ---------------------------------------------------------------- observability

def test_access_log_names_route_and_tunnel_upstream(tun):
    r = request(tun.port, target="/v1/echo?log=1", host="api.test")
    assert r.status == 200, r
    rid = r.header("x-request-id")

    def mine_now():
        return [ln for ln in tun.edge.log_lines() if ln.get("request_id") == rid]
    mine = wait_until(mine_now, 5)
    lines = tun.edge.log_lines()
    assert mine, f"no access-log line for request {rid}: {lines[-5:]}"
    ln = mine[0]
    assert ln["status"] == 200 and ln["path"] == "/v1/echo", ln
    assert "api.test" in str(ln.get("route")), ln
    up = str(ln.get("upstream"))
    assert ln.get("upstream") and TUNNEL in up, \
        f"the upstream of a tunnel request should name the tunnel: {ln}"


def test_metrics_count_tunnel_connections(tunnel_factory):
    tun = tunnel_factory(connections=2, admin=True)
    text = tun.metrics()
    conns = metric_value(text, "gatehouse_tunnel_connections", {"tunnel": TUNNEL})
    assert conns is not None, \
        "gatehouse_tunnel_connections{tunnel=\"ph\"} missing:\n" + \
        "\n".join(ln for ln in text.splitlines() if "tunnel" in ln)
    assert conns == 2, \
        f"gatehouse_tunnel_connections{{tunnel=\"{TUNNEL}\"}} is {conns} with 2 connections " \
        f"attached (edge logged {count(tun.edge, ATTACHED)} attaches)"


def test_metrics_count_open_tunnel_streams(tunnel_factory):
    tun = tunnel_factory(connections=2, admin=True)
    with Conn(tun.port, timeout=20) as c:
        c.send(build_request("GET", "/sse?n=3&delay=1.5"))
        head = c.read_head()
        assert head.status == 200, head
        text = tun.metrics()
        for _ in c.iter_body(head, timeout=20):
            pass
    streams = metric_value(text, "gatehouse_tunnel_streams", {"tunnel": TUNNEL})
    assert streams is not None and streams >= 1, \
        f"gatehouse_tunnel_streams{{tunnel=\"{TUNNEL}\"}} is {streams} with a stream open"
