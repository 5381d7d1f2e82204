"""SPEC section 1 (signals, -s) and section 3 "Reload", under load.

Complements test_signals.py (which has: SIGTERM draining an SSE stream,
shutdown timeout, second SIGTERM, -s reload/stop through pid_file, one bad
reload, a listener moved, SIGHUP between sequential requests) and
test_plugins.py (rate-limit state kept across a reload): here reloads run
while clients keep sending, streams stay open through 200 of them, the
reported error position is checked to the column, listeners are diffed with
their sockets tracked in /proc/net/tcp, and plugin state is followed per
plugin.

Every wait has a deadline and every loop a bound."""
import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time

from harness import (Closed, Conn, ProtocolError, Truncated, build_request,
                     free_port, request, run_cli, to_yaml, wait_port, wait_until)

WAIT = 15          # seconds one reload may take to show up (sanitizer builds are slow)
RELOADS = 200      # SIGHUPs in the reload loop
PACE = 0.025       # seconds between a logged reload and the next SIGHUP
RELOADED = "configuration reloaded"


# ---------------------------------------------------------------- helpers

def refused(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def write_config(gh, cfg):
    """Replaces the config file in one step (a reader never sees half of it)."""
    text = cfg if isinstance(cfg, str) else to_yaml(cfg)
    tmp = gh.config_path.with_name(gh.config_path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, gh.config_path)


def count_in_stderr(gh, needle):
    return gh.stderr().count(needle)


def sighup_and_wait(gh, cfg, what=RELOADED, seconds=WAIT):
    """Writes cfg, sends SIGHUP and waits until stderr has one more `what`
    line than before. Returns True when it did."""
    before = count_in_stderr(gh, what)
    write_config(gh, cfg)
    gh.signal(signal.SIGHUP)
    return wait_until(lambda: count_in_stderr(gh, what) > before, seconds, 0.005)


def metric(admin_port, name, **labels):
    """The value of one sample of /metrics, or None when it is missing."""
    r = request(admin_port, "GET", "/metrics", host="127.0.0.1", timeout=10)
    assert r.status == 200, r
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pat = re.escape(name) + (r"\{" + re.escape(lab) + r"\}" if lab else "") + r" (\S+)$"
    m = re.search("^" + pat, r.body.decode(), re.M)
    return float(m.group(1)) if m else None


def reloads(admin_port):
    return (metric(admin_port, "gatehouse_config_reloads_total", result="ok"),
            metric(admin_port, "gatehouse_config_reloads_total", result="error"))


def listen_inode(port):
    """The inode of the socket listening on 127.0.0.1:port (/proc/net/tcp),
    or None."""
    want = "0100007F:%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            for ln in f.readlines()[1:]:
                parts = ln.split()
                if len(parts) > 9 and parts[1] == want and parts[3] == "0A":
                    return parts[9]
    except OSError:
        return None
    return None


def base(port, admin_port=None, **extra):
    cfg = {"listen": [{"address": f"127.0.0.1:{port}"}],
           "timeouts": {"shutdown": "5s"},
           "access_log": {"path": "stdout", "format": "json"}}
    if admin_port:
        cfg["admin"] = {"address": f"127.0.0.1:{admin_port}"}
    cfg.update(extra)
    return cfg


def start_with_admin(gatehouse, make_cfg):
    """gatehouse(make_cfg(port, admin_port)) on free ports, retried when a
    port was taken in the meantime. Returns (gh, admin_port)."""
    last = None
    for _ in range(3):
        port, aport = free_port(), free_port()
        try:
            gh = gatehouse(make_cfg(port, aport), port=port)
        except Exception as e:          # StartError: port taken between probe and bind
            if "in use" not in str(e).lower():
                raise
            last = e
            continue
        assert wait_port(aport, WAIT, gh.proc), f"admin listener did not open:\n{gh.stderr()}"
        return gh, aport
    raise last


def sse_index(event_text):
    for ln in event_text.splitlines():
        if ln.startswith("data:"):
            return json.loads(ln[5:].strip())["i"]
    return None


# ---------------------------------------------------------------- reload loop

def loop_config(variant, port, admin_port, aio_url):
    """Two valid configs that differ in routes and in how the upstream is named."""
    cfg = base(port, admin_port)
    if variant == "A":
        cfg["routes"] = [
            {"host": "a.test", "respond": {"status": 200, "body": "A1"}},
            {"host": "b.test", "upstream": aio_url},
            {"host": "stream.test", "upstream": aio_url},
            {"host": "*", "respond": {"status": 200, "body": "fallback"}},
        ]
    else:
        cfg["upstreams"] = {"be": {"servers": [aio_url], "keepalive": 8}}
        cfg["routes"] = [
            {"host": "c.test", "respond": {"status": 200, "body": "C"}},
            {"host": "a.test", "respond": {"status": 200, "body": "A2"}},
            {"host": "b.test", "upstream": "be"},
            {"host": "stream.test", "upstream": "be"},
            {"host": "*", "respond": {"status": 200, "body": "fallback"}},
        ]
    return cfg


VALID = {"a.test": {b"A1", b"A2"}, "c.test": {b"C", b"fallback"}}


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = []        # exceptions: reset, closed, timeout, bad framing
        self.wrong = []         # answered, but not a valid answer for the host
        self.server_closed = 0  # keep-alive ended by the server with Connection: close
        self.seen = {}          # (host, body) -> count for the respond routes
        self.by_kind = {"keepalive": 0, "new": 0}

    def record_ok(self, kind, host, body):
        with self.lock:
            self.ok += 1
            self.by_kind[kind] += 1
            if host != "b.test":
                self.seen[(host, body)] = self.seen.get((host, body), 0) + 1

    def record(self, lst, kind, what):
        with self.lock:
            lst.append(what)
            self.by_kind[kind] += 1

    @property
    def total(self):
        return self.ok + len(self.failed) + len(self.wrong)


def check_answer(resp, host, target):
    """None when resp is a valid answer for host at some moment, else why not."""
    if resp.status != 200:
        return f"status {resp.status}"
    if not resp.complete:
        return "incomplete body"
    if host == "b.test":
        if resp.header("x-server") != "A":
            return f"x-server {resp.header('x-server')!r}"
        try:
            doc = resp.json()
        except ValueError:
            return "b.test body is not the echo JSON"
        if doc.get("target") != target:
            return f"echo of {doc.get('target')!r} for {target!r}"
        return None
    if resp.body not in VALID[host]:
        return f"body {resp.body[:80]!r}"
    return None


def keepalive_client(port, tally, stop, tid):
    hosts = ["a.test", "b.test", "c.test"]
    conn = None
    for n in range(1000000):
        if stop.is_set():
            break
        host = hosts[n % 3]
        target = f"/echo/ka{tid}/{n}"
        try:
            if conn is None:
                conn = Conn(port, timeout=5)
            conn.send(build_request("GET", target, host))
            resp = conn.read_response(timeout=5)
        except (OSError, Closed, Truncated, ProtocolError, TimeoutError) as e:
            tally.record(tally.failed, "keepalive", f"keep-alive {host}{target}: {e!r}")
            if conn:
                conn.close()
            conn = None
            continue
        why = check_answer(resp, host, target)
        if why:
            tally.record(tally.wrong, "keepalive", f"keep-alive {host}{target}: {why}")
        else:
            tally.record_ok("keepalive", host, resp.body)
        server_close = (resp.header("connection") or "").lower() == "close"
        if server_close:
            with tally.lock:
                tally.server_closed += 1
        if server_close or why:
            conn.close()
            conn = None
    if conn:
        conn.close()


def new_conn_client(port, tally, stop, tid):
    hosts = ["a.test", "b.test", "c.test"]
    for n in range(1000000):
        if stop.is_set():
            break
        host = hosts[n % 3]
        target = f"/echo/nc{tid}/{n}"
        try:
            resp = request(port, "GET", target, host, timeout=5)
        except (OSError, Closed, Truncated, ProtocolError, TimeoutError) as e:
            tally.record(tally.failed, "new", f"new conn {host}{target}: {e!r}")
            continue
        why = check_answer(resp, host, target)
        if why:
            tally.record(tally.wrong, "new", f"new conn {host}{target}: {why}")
        else:
            tally.record_ok("new", host, resp.body)


class SSEReader(threading.Thread):
    """Reads an SSE stream opened through gatehouse, recording each event's
    index and arrival time, until `until` events are in (settable later)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.conn = Conn(port, timeout=10)
        self.conn.send(build_request("GET", "/sse?n=3000&delay=0.05", "stream.test",
                                     [("Accept", "text/event-stream")]))
        self.head = self.conn.read_head()
        self.events = []            # (arrival, i)
        self.error = None
        self.until = 10 ** 9
        self.lock = threading.Lock()

    def run(self):
        buf = b""
        try:
            for piece in self.conn.iter_body(self.head, timeout=170):
                t = time.monotonic()
                buf += piece
                while b"\n\n" in buf:
                    ev, buf = buf.split(b"\n\n", 1)
                    with self.lock:
                        self.events.append((t, sse_index(ev.decode())))
                with self.lock:
                    if len(self.events) >= self.until:
                        return
            self.error = "the stream ended before the test stopped reading"
        except Exception as e:      # recorded, asserted by the test
            self.error = repr(e)

    def count(self):
        with self.lock:
            return len(self.events)


class WSClient(threading.Thread):
    """A WebSocket echo session through gatehouse that sends a message every
    50 ms until told to stop, then 10 more, and checks every echo."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.opened = threading.Event()
        self.stop = threading.Event()
        self.echoed = 0
        self.echoed_after = 0
        self.error = None
        self.close_code = None

    async def session(self):
        import websockets
        async with websockets.connect(f"ws://stream.test:{self.port}/ws", host="127.0.0.1",
                                      port=self.port, open_timeout=10, close_timeout=5,
                                      ping_interval=None) as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), 10) == "hello"
            self.opened.set()
            for k in range(100000):
                if self.stop.is_set():
                    break
                msg = f"during {k} " + "x" * (k % 97)
                await ws.send(msg)
                got = await asyncio.wait_for(ws.recv(), 10)
                assert got == msg, f"echo {got!r} for {msg!r}"
                self.echoed += 1
                await asyncio.sleep(0.05)
            for k in range(10):
                msg = f"after {k}".encode() * (k + 1)
                await ws.send(msg)
                got = await asyncio.wait_for(ws.recv(), 10)
                assert got == msg, f"echo {got!r} for {msg!r}"
                self.echoed_after += 1
            await ws.close()
            self.close_code = ws.close_code

    def run(self):
        try:
            asyncio.run(asyncio.wait_for(self.session(), 170))
        except BaseException as e:  # recorded, asserted by the test
            self.error = repr(e)
        finally:
            self.opened.set()


def test_200_reloads_under_load_drop_nothing_and_keep_streams(gatehouse, aio):
    gh, aport = start_with_admin(
        gatehouse, lambda p, a: loop_config("A", p, a, aio.url))
    configs = {v: loop_config(v, gh.port, aport, aio.url) for v in "AB"}
    assert request(gh.port, host="a.test").body == b"A1"

    # Long-lived streams opened before the loop.
    sse = SSEReader(gh.port)
    assert sse.head.status == 200, sse.head
    sse.start()
    ws = WSClient(gh.port)
    ws.start()
    assert ws.opened.wait(15) and ws.error is None, f"WebSocket did not open: {ws.error}"
    assert wait_until(lambda: sse.count() >= 3, 10), f"SSE events did not start: {sse.error}"

    tally = Tally()
    stop = threading.Event()
    clients = [threading.Thread(target=keepalive_client, args=(gh.port, tally, stop, i),
                                daemon=True) for i in range(2)]
    clients += [threading.Thread(target=new_conn_client, args=(gh.port, tally, stop, i),
                                 daemon=True) for i in range(2)]
    for t in clients:
        t.start()

    t0 = time.monotonic()
    done = 0
    stuck = None
    try:
        time.sleep(0.2)     # clients running before the first signal
        for i in range(RELOADS):
            variant = "B" if i % 2 == 0 else "A"
            if not sighup_and_wait(gh, configs[variant]):
                stuck = (f"reload {i + 1} (to config {variant}) was not logged within {WAIT}s; "
                         f"{count_in_stderr(gh, RELOADED)} logged; alive={gh.alive()}")
                break
            done += 1
            time.sleep(PACE)
        time.sleep(0.2)     # clients running after the last reload
    finally:
        stop.set()
        for t in clients:
            t.join(15)
    loop_s = time.monotonic() - t0
    hung_clients = [t for t in clients if t.is_alive()]

    # The streams outlive the loop: more events and echoes after it.
    events_at_end = sse.count()
    with sse.lock:
        sse.until = events_at_end + 10
    sse.join(15)
    ws.stop.set()
    ws.join(20)
    sse.conn.close()

    summary = (f"{done} reloads in {loop_s:.1f}s; {tally.total} requests "
               f"({tally.by_kind['keepalive']} keep-alive, {tally.by_kind['new']} new-connection): "
               f"{tally.ok} ok, {len(tally.failed)} failed/reset, {len(tally.wrong)} wrong; "
               f"{tally.server_closed} keep-alive closed by server; answers {tally.seen}; "
               f"SSE {sse.count()} events; WS {ws.echoed}+{ws.echoed_after} echoes")
    print("\n" + summary)

    assert stuck is None, f"{stuck}\n{summary}\nstderr tail:\n{gh.stderr()[-3000:]}"
    assert done == RELOADS
    assert not hung_clients, f"client threads did not stop\n{summary}"
    assert "reload failed" not in gh.stderr(), gh.stderr()[-3000:]
    assert tally.total > 0
    assert not tally.failed, f"{summary}\nfirst failures: {tally.failed[:10]}"
    assert not tally.wrong, f"{summary}\nfirst wrong answers: {tally.wrong[:10]}"
    assert tally.server_closed == 0, f"keep-alive connections were closed by the server: {summary}"
    # Both configs were seen by clients: the reloads took effect under load.
    for key in (("a.test", b"A1"), ("a.test", b"A2"), ("c.test", b"C"), ("c.test", b"fallback")):
        assert tally.seen.get(key), f"no client ever got {key}: {summary}"

    # SSE: in order from 0 without a gap, still delivering after the loop.
    assert sse.error is None, f"SSE stream broke: {sse.error}\n{summary}"
    idx = [i for _, i in sse.events]
    assert idx == list(range(len(idx))), f"SSE events out of order or missing: {idx[:50]}..."
    assert len(idx) >= events_at_end + 10, f"SSE stopped after the loop: {summary}"
    gaps = [b[0] - a[0] for a, b in zip(sse.events, sse.events[1:])]
    assert max(gaps) < 3.0, f"SSE stalled {max(gaps):.2f}s during the reloads (events every 50 ms)"

    # WebSocket: echoed during and after the loop, closed cleanly.
    assert ws.error is None, f"WebSocket broke: {ws.error}\n{summary}"
    assert ws.echoed > 0 and ws.echoed_after == 10, summary
    assert ws.close_code == 1000, ws.close_code

    # The last config written was A; the counters saw every reload.
    assert request(gh.port, host="a.test").body == b"A1"
    assert request(gh.port, host="c.test").body == b"fallback"
    assert reloads(aport) == (RELOADS, 0), reloads(aport)
    assert gh.alive()


# ---------------------------------------------------------------- bad configs

GOOD = """\
listen:
  - address: "127.0.0.1:{port}"
admin:
  address: "127.0.0.1:{aport}"
timeouts:
  shutdown: 5s
  idle: 60s
access_log: {{ path: stdout, format: json }}
routes:
  - host: "*"
    respond: {{ status: 200, body: "{body}" }}
"""
# Line 11, column 14: '@' cannot start a YAML token.
SYNTAX_ERROR = GOOD.replace('respond: {{ status: 200, body: "{body}" }}', "respond: @oops")
# Line 7, column 3: a misspelt key (one error only).
UNKNOWN_KEY = GOOD.replace("  idle: 60s", "  iddle: 60s")


def test_bad_reload_keeps_old_config_reports_line_and_col_then_good_one_loads(gatehouse):
    gh, aport = start_with_admin(
        gatehouse, lambda p, a: GOOD.format(port=p, aport=a, body="old"))
    path = str(gh.config_path)
    fmt = dict(port=gh.port, aport=aport, body="bad")
    assert SYNTAX_ERROR.format(**fmt).splitlines()[10] == "    respond: @oops"
    assert UNKNOWN_KEY.format(**fmt).splitlines()[6] == "  iddle: 60s"
    assert reloads(aport) == (0, 0)
    keep = Conn(gh.port, timeout=10)        # a keep-alive connection across the bad reloads
    try:
        keep.send(build_request("GET", "/", "x.test"))
        assert keep.read_response().body == b"old"

        cases = [("YAML syntax error", SYNTAX_ERROR, f"{path}:11:14:"),
                 ("unknown key", UNKNOWN_KEY, f"{path}:7:3:")]
        for n, (what, text, position) in enumerate(cases, 1):
            write_config(gh, text.format(**fmt))
            gh.signal(signal.SIGHUP)
            assert wait_until(lambda: reloads(aport)[1] == n, WAIT), \
                f"{what}: error counter {reloads(aport)}; stderr:\n{gh.stderr()[-2000:]}"
            err = gh.stderr()
            assert position in err, \
                f"{what}: {position} not in stderr (file:line:col of the error):\n{err[-2000:]}"
            line = next(ln for ln in err.splitlines() if position in ln)
            if what == "unknown key":
                assert "iddle" in line, line
            assert RELOADED not in err, err[-2000:]
            assert gh.alive()
            assert request(gh.port, host="x.test").body == b"old", what
            keep.send(build_request("GET", "/", "x.test"))
            r = keep.read_response()
            assert r.status == 200 and r.body == b"old", (what, r)
            assert reloads(aport) == (0, n)

        assert sighup_and_wait(gh, GOOD.format(port=gh.port, aport=aport, body="new")), \
            f"the good config after the bad ones was not loaded:\n{gh.stderr()[-2000:]}"
        assert request(gh.port, host="x.test").body == b"new"
        keep.send(build_request("GET", "/", "x.test"))
        assert keep.read_response().body == b"new"
        assert reloads(aport) == (1, 2)
    finally:
        keep.close()


# ---------------------------------------------------------------- listeners

def listener_config(ports, aport, body, aio_url):
    cfg = base(ports[0], aport)
    cfg["listen"] = [{"address": f"127.0.0.1:{p}"} for p in ports]
    cfg["routes"] = [{"host": "slow.test", "upstream": aio_url},
                     {"host": "*", "respond": {"status": 200, "body": body}}]
    return cfg


def test_listeners_follow_the_diff_and_unchanged_ones_keep_their_socket(
        gatehouse, aio, port_holder):
    gh, aport = start_with_admin(
        gatehouse, lambda p, a: listener_config([p], a, "v1", aio.url))
    p1 = gh.port
    inode = listen_inode(p1)
    assert inode, "no LISTEN socket for the listener in /proc/net/tcp"
    keep = Conn(p1, timeout=10)
    backlog = []
    try:
        keep.send(build_request("GET", "/", "x.test"))
        assert keep.read_response().body == b"v1"

        # Add a second listener. Connections opened right before and right
        # after the signal (accepted, or in the backlog, while it reloads)
        # are answered.
        p2 = free_port()
        write_config(gh, listener_config([p1, p2], aport, "v2", aio.url))
        before = count_in_stderr(gh, RELOADED)
        backlog.append(Conn(p1, timeout=10))
        gh.signal(signal.SIGHUP)
        for _ in range(3):
            backlog.append(Conn(p1, timeout=10))
        assert wait_until(lambda: count_in_stderr(gh, RELOADED) > before, WAIT), gh.stderr()
        for i, c in enumerate(backlog):
            c.send(build_request("GET", "/", "x.test"))
            r = c.read_response()
            assert r.status == 200 and r.body == b"v2", (i, r)
        keep.send(build_request("GET", "/", "x.test"))
        assert keep.read_response().body == b"v2"
        assert wait_port(p2, 5), "the added listener does not accept"
        assert request(p2, host="x.test").body == b"v2"
        assert listen_inode(p1) == inode, "the unchanged listener's socket was replaced"

        # A listener that cannot be opened fails the reload; nothing is closed.
        held = port_holder()
        write_config(gh, listener_config([p1, held], aport, "v3", aio.url))
        gh.signal(signal.SIGHUP)
        assert wait_until(lambda: reloads(aport)[1] == 1, WAIT), \
            f"reload with a port in use was not counted as an error: {reloads(aport)}\n" \
            f"{gh.stderr()[-2000:]}"
        assert "reload failed" in gh.stderr()
        assert request(p1, host="x.test").body == b"v2"
        assert request(p2, host="x.test").body == b"v2", "a failed reload closed a listener"

        # Remove the second listener while a request on it is in flight.
        with Conn(p2, timeout=15) as slow:
            slow.send(build_request("GET", "/slow-head?delay=1.5", "slow.test"))
            time.sleep(0.3)
            assert sighup_and_wait(gh, listener_config([p1], aport, "v4", aio.url)), \
                gh.stderr()[-2000:]
            assert wait_until(lambda: refused(p2), 5), "the removed listener still accepts"
            assert request(p1, host="x.test").body == b"v4"
            r = slow.read_response(timeout=15)
            assert r.status == 200 and r.json()["slept"] == 1.5, r
        keep.send(build_request("GET", "/", "x.test"))
        assert keep.read_response().body == b"v4"
        assert listen_inode(p1) == inode, "the unchanged listener's socket was replaced"
        assert listen_inode(p2) is None
        assert reloads(aport) == (2, 1)
    finally:
        keep.close()
        for c in backlog:
            c.close()


def test_reload_failing_on_the_admin_address_keeps_every_listener(gatehouse, port_holder):
    """A reload whose new admin address cannot be bound fails; like any failed
    reload it must leave everything as it was: the listeners the new config
    dropped and the old admin listener stay open, and the kept listeners keep
    serving (their settings must not point into the rejected config)."""
    p2 = free_port()

    def cfg(ports, admin_port, body):
        c = base(ports[0], admin_port, routes=[
            {"host": "*", "respond": {"status": 200, "body": body}}])
        c["listen"] = [{"address": f"127.0.0.1:{p}"} for p in ports]
        return c

    gh, aport = start_with_admin(gatehouse, lambda p, a: cfg([p, p2], a, "v1"))
    p1 = gh.port
    assert wait_port(p2, 5)
    held = port_holder()
    assert sighup_and_wait(gh, cfg([p1], held, "v2"), what="reload failed"), \
        gh.stderr()[-2000:]
    time.sleep(0.2)     # a listener closed by mistake is closed by now
    answers = []
    for _ in range(5):
        try:
            answers.append(request(p1, host="x.test", timeout=5).body)
        except (OSError, Closed, ProtocolError, TimeoutError) as e:
            answers.append(repr(e))
    state = {"listener kept by both configs answers v1": answers == [b"v1"] * 5,
             "listener only in the old config still accepts": not refused(p2),
             "old admin listener still accepts": not refused(aport)}
    assert all(state.values()), f"after a failed reload: {state}; answers {answers}\n" \
                                f"stderr:\n{gh.stderr()[-2000:]}"
    assert reloads(aport) == (0, 1)
    assert sighup_and_wait(gh, cfg([p1], aport, "v3")), gh.stderr()[-2000:]
    assert request(p1, host="x.test").body == b"v3"


def self_signed(d):
    key, crt = d / "tls.key", d / "tls.pem"
    p = subprocess.run(["/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(crt),
                        "-days", "30", "-subj", "/CN=x.test", "-addext",
                        "subjectAltName=DNS:x.test"], capture_output=True, timeout=30)
    assert p.returncode == 0, p
    return crt, key


def tls_get(port, host="x.test"):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(build_request("GET", "/", host, [("Connection", "close")]))
            data = b""
            for _ in range(1000):
                d = s.recv(65536)
                if not d:
                    break
                data += d
    return data


def test_reload_turns_tls_on_and_off_for_the_same_address(gatehouse, tmp_path):
    """`tls: true` added to (then removed from) a listen address that stays:
    the reload succeeds and the port speaks what the new config says."""
    crt, key = self_signed(tmp_path)
    port = free_port()

    def cfg(tls, body):
        lst = {"address": f"127.0.0.1:{port}"}
        if tls:
            lst["tls"] = True
        return base(port, listen=[lst],
                    tls={"certificates": [{"cert": str(crt), "key": str(key)}]},
                    routes=[{"host": "*", "respond": {"status": 200, "body": body}}])

    gh = gatehouse(cfg(False, "plain"), port=port)
    assert request(port, host="x.test").body == b"plain"
    write_config(gh, cfg(True, "tls"))
    r = run_cli(["-t", "-c", str(gh.config_path)])
    assert r.returncode == 0, r
    gh.signal(signal.SIGHUP)
    assert wait_until(lambda: RELOADED in gh.stderr() or "reload failed" in gh.stderr(), WAIT)
    assert RELOADED in gh.stderr(), \
        f"switching tls on for an unchanged address failed the reload:\n{gh.stderr()[-1500:]}"
    assert tls_get(port).endswith(b"tls")
    assert sighup_and_wait(gh, cfg(False, "plain again")), gh.stderr()[-1500:]
    assert request(port, host="x.test").body == b"plain again"


def test_requests_in_flight_finish_on_the_old_config(gatehouse, aio):
    """A reload that removes the route and the (health-checked, pooled)
    upstream of requests still waiting for their answer: they finish with
    that upstream's answer; the next request on the same connection uses
    the new config."""
    port = free_port()

    def cfg(with_upstream):
        c = base(port, routes=[{"host": "*", "respond": {"status": 200, "body": "new"}}])
        if with_upstream:
            c["upstreams"] = {"u": {"servers": [aio.url], "keepalive": 4,
                                    "health_check": {"path": "/health", "interval": "200ms"}}}
            c["routes"].insert(0, {"host": "slow.test", "upstream": "u"})
        return c

    gh = gatehouse(cfg(True), port=port)
    assert request(port, target="/echo", host="slow.test").status == 200
    conns = [Conn(port, timeout=15) for _ in range(3)]
    try:
        for c in conns:
            c.send(build_request("GET", "/slow-head?delay=1", "slow.test"))
        time.sleep(0.3)
        assert sighup_and_wait(gh, cfg(False)), gh.stderr()[-2000:]
        assert request(port, target="/echo", host="slow.test").body == b"new"
        for i, c in enumerate(conns):
            r = c.read_response(timeout=15)
            assert r.status == 200 and r.json() == {"slept": 1.0, "server": "A"}, (i, r)
            c.send(build_request("GET", "/slow-head?delay=1", "slow.test"))
            r = c.read_response(timeout=15)
            assert r.status == 200 and r.body == b"new", (i, r)
    finally:
        for c in conns:
            c.close()


# ---------------------------------------------------------------- plugin state

def rl_config(port, one_rate="1/m", marker=None):
    plugins = {"one": {"type": "rate_limit", "rate": one_rate, "burst": 2, "by": "client_ip"},
               "two": {"type": "rate_limit", "rate": "1/m", "burst": 2, "by": "client_ip"}}
    routes = [{"host": "one.test", "respond": {"status": 200, "body": "one"}, "plugins": ["one"]},
              {"host": "two.test", "respond": {"status": 200, "body": "two"}, "plugins": ["two"]}]
    if marker:
        routes.insert(0, {"host": "marker.test", "respond": {"status": 200, "body": marker}})
    return base(port, plugins=plugins, routes=routes)


def codes(port, host, n):
    return [request(port, host=host).status for _ in range(n)]


def test_rate_limit_state_per_plugin_across_reloads(gatehouse):
    port = free_port()
    gh = gatehouse(rl_config(port), port=port)
    assert codes(port, "one.test", 3) == [200, 200, 429]
    assert codes(port, "two.test", 3) == [200, 200, 429]

    # Several unrelated reloads and a failed one: both stay limited.
    for k in range(3):
        assert sighup_and_wait(gh, rl_config(port, marker=f"m{k}")), gh.stderr()[-2000:]
        assert request(port, host="marker.test").body == f"m{k}".encode()
        assert codes(port, "one.test", 1) == [429], f"state of 'one' lost by reload {k + 1}"
        assert codes(port, "two.test", 1) == [429], f"state of 'two' lost by reload {k + 1}"
    bad = to_yaml(rl_config(port, marker="m9")).replace("burst: 2", "burst: 2\n    brust: 2", 1)
    assert sighup_and_wait(gh, bad, what="reload failed"), gh.stderr()[-2000:]
    assert request(port, host="marker.test").body == b"m2"
    assert codes(port, "one.test", 1) == [429]

    # Only 'one' changes (its rate): 'one' starts afresh, 'two' keeps its state.
    assert sighup_and_wait(gh, rl_config(port, one_rate="2/m", marker="m3")), gh.stderr()[-2000:]
    assert request(port, host="marker.test").body == b"m3"
    assert codes(port, "two.test", 1) == [429], "state of the unchanged plugin was reset"
    assert codes(port, "one.test", 3) == [200, 200, 429], "state of the changed plugin was kept"


# ---------------------------------------------------------------- SIGTERM

def test_sigterm_waits_for_a_request_still_waiting_for_its_head(gatehouse, aio):
    """test_signals.py drains a stream whose head was already sent; here the
    upstream has not answered at all when SIGTERM comes."""
    port = free_port()
    gh = gatehouse(base(port, timeouts={"shutdown": "20s"},
                        routes=[{"host": "slow.test", "upstream": aio.url},
                                {"host": "*", "respond": {"status": 200, "body": "idle"}}]),
                   port=port)
    idle = Conn(port, timeout=10)
    try:
        idle.send(build_request("GET", "/", "x.test"))
        assert idle.read_response().body == b"idle"
        with Conn(port, timeout=20) as c:
            c.send(build_request("GET", "/slow-head?delay=2", "slow.test"))
            time.sleep(0.4)
            t0 = time.monotonic()
            gh.signal(signal.SIGTERM)
            saw_refused = wait_until(lambda: gh.alive() and refused(port), 1.5, 0.02)
            # The idle keep-alive connection is let go; it has nothing in flight.
            idle_closed = idle.wait_closed(3)
            r = c.read_response(timeout=15)
            took = time.monotonic() - t0
        assert r.status == 200 and r.json() == {"slept": 2.0, "server": "A"}, r
        assert saw_refused, "a new connection was accepted (or not refused) during the drain"
        assert idle_closed, "an idle keep-alive connection was kept open during the drain"
        assert wait_until(lambda: not gh.alive(), 10, 0.05), \
            "still running after the only request in flight finished"
        took_exit = time.monotonic() - t0
        assert took_exit < 8, f"exit {took_exit:.1f}s after SIGTERM (shutdown timeout 20s)"
        assert took >= 1.0, f"the slow response came {took:.2f}s after SIGTERM, before the upstream's"
        assert gh.stop() == 0
    finally:
        idle.close()


# ---------------------------------------------------------------- -s

def test_dash_s_without_a_running_instance_fails_with_a_message(tmp_path):
    """test_signals.py covers -s reload/stop reaching a running instance; here
    there is none to reach, and the command must say so, not signal anything."""
    port = free_port()
    no_pid = tmp_path / "no-pid.yaml"
    no_pid.write_text(to_yaml(base(port, routes=[
        {"host": "*", "respond": {"status": 200, "body": "x"}}])))
    r = run_cli(["-s", "reload", "-c", str(no_pid)])
    assert r.returncode == 1, r
    assert b"pid_file" in r.stderr, r

    missing = tmp_path / "missing.pid"
    cfg = tmp_path / "missing.yaml"
    cfg.write_text(to_yaml(base(port, pid_file=str(missing), routes=[
        {"host": "*", "respond": {"status": 200, "body": "x"}}])))
    r = run_cli(["-s", "stop", "-c", str(cfg)])
    assert r.returncode == 1, r
    assert str(missing).encode() in r.stderr, r

    # A pid above any pid_max: nothing can be signalled by mistake.
    stale = tmp_path / "stale.pid"
    stale.write_text("999999999\n")
    cfg2 = tmp_path / "stale.yaml"
    cfg2.write_text(to_yaml(base(port, pid_file=str(stale), routes=[
        {"host": "*", "respond": {"status": 200, "body": "x"}}])))
    r = run_cli(["-s", "reload", "-c", str(cfg2)])
    assert r.returncode == 1, r
    assert b"999999999" in r.stderr, r
