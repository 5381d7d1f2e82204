#!/usr/bin/python3
"""Helper for bench/run: small clients, parsers and the result tables.

Standard library only (Debian's /usr/bin/python3). Every network call goes
to 127.0.0.1 and every loop is bounded in count and in time.

Sub-commands (see bench/run for how they are used):

  ports N                      print N free TCP ports on 127.0.0.1
  waitport PORT SECS [PID]     wait until 127.0.0.1:PORT is listening
  rss PID                      VmRSS in KiB of PID plus its descendants
  cpu PID...                   CPU seconds (user + system) of the PIDs and their descendants
  waithttp PORT SECS           wait until GET / on 127.0.0.1:PORT answers 200
  resumes PORT                 does a TLS server resume a session? (yes/no)
  requests PORT N              N requests over one keep-alive connection
  idle ...                     open idle keep-alive (or TLS) connections, measure RSS
  streams ...                  open slow streams through a tunnel, measure RSS
  record-wrk ...               parse a wrk output file into results.jsonl
  record-callgrind ...         instructions per request from two callgrind runs
  record-stime ...             handshakes/s and CPU per handshake from openssl s_time runs
  record-curl ...              MiB/s and CPU per GiB of one curl download
  record-fail ...              record a failed measurement
  meta RESULTS KEY=VALUE...    record run parameters
  info ...                     machine and version information (JSON)
  table RESULTS ROUND          print the table of one round
  summary RESULTS INFO [--md FILE]   medians, ratios, Markdown
"""

import argparse
import json
import os
import platform
import re
import select
import socket
import statistics
import subprocess
import sys
import time

HOST = "127.0.0.1"

# ---------------------------------------------------------------------------
# What is measured. One row per metric in the tables.
#   (scenario, metric, label template, unit, better, format)
# The label templates are filled from the run parameters ("meta" rows).
# ---------------------------------------------------------------------------
METRICS = [
    ("small", "rps", "small responses, keep-alive, {conns} conns", "requests/s", "higher", "int"),
    ("small", "p99_ms", "small responses, keep-alive, {conns} conns", "p99 latency ms", "lower", "ms"),
    ("small", "cpu_us", "small responses, keep-alive, {conns} conns", "proxy CPU us per request", "lower", "ms"),
    ("large", "mibps", "10 MiB bodies, {large_conns} conns", "MiB/s", "higher", "int"),
    ("large", "cpu_s_per_gib", "10 MiB bodies, {large_conns} conns", "proxy CPU s per GiB", "lower", "ms"),
    ("upload", "up_mibps", "10 MiB uploads, {large_conns} conns", "MiB/s sent", "higher", "int"),
    ("upload", "cpu_s_per_gib", "10 MiB uploads, {large_conns} conns", "proxy CPU s per GiB", "lower", "ms"),
    ("close", "rps", "new connection per request, {conns} conns", "connections/s", "higher", "int"),
    ("close", "cpu_us", "new connection per request, {conns} conns", "proxy CPU us per connection", "lower", "ms"),
    ("bound", "rps", "small responses, keep-alive, {conns} conns, proxy held to {bound_pct}% of a core", "requests/s", "higher", "int"),
    ("bound", "p99_ms", "small responses, keep-alive, {conns} conns, proxy held to {bound_pct}% of a core", "p99 latency ms", "lower", "ms"),
    ("boundclose", "rps", "new connection per request, {conns} conns, proxy held to {bound_pct}% of a core", "connections/s", "higher", "int"),
    ("idle", "kib_per_conn", "{idle_conns} idle keep-alive connections", "KiB RSS per connection", "lower", "kib"),
    ("idle", "rss_mib", "{idle_conns} idle keep-alive connections", "MiB RSS in all", "lower", "mib"),
    ("callgrind", "ir_per_req", "callgrind, {callgrind_n} keep-alive requests", "instructions per request", "lower", "int"),
    ("multi", "rps", "workers auto, {nproc} cores, {conns} conns", "requests/s", "higher", "int"),
    ("multi", "p99_ms", "workers auto, {nproc} cores, {conns} conns", "p99 latency ms", "lower", "ms"),
    # TLS group (issue 3): the proxies terminate TLS with one ECDSA P-256 certificate
    ("tlshs", "hs_per_s", "TLS full handshakes, s_time -new, {tls_hs_clients} clients", "handshakes/s", "higher", "int"),
    ("tlshs", "hs_per_cpu_s", "TLS full handshakes, s_time -new, {tls_hs_clients} clients", "handshakes per proxy CPU second", "higher", "int"),
    ("tlsclose", "rps", "TLS new connection per request (wrk, resumed), {conns} conns", "connections/s", "higher", "int"),
    ("tlska", "rps", "TLS keep-alive, {conns} conns", "requests/s", "higher", "int"),
    ("tlska", "p99_ms", "TLS keep-alive, {conns} conns", "p99 latency ms", "lower", "ms"),
    ("tlska", "cpu_us", "TLS keep-alive, {conns} conns", "proxy CPU us per request", "lower", "int"),
    ("tlsidle", "kib_per_conn", "{tls_idle_conns} idle TLS connections", "KiB RSS per connection", "lower", "kib"),
    ("tlsidle", "rss_mib", "{tls_idle_conns} idle TLS connections", "MiB RSS in all", "lower", "mib"),
    # Tunnel group (issue 6): gatehouse edge + connector, ssh -R, direct
    ("tunbulk", "mibps", "tunnel: one {tunnel_size} stream (curl)", "MiB/s", "higher", "int"),
    ("tunbulk", "cpu_s_per_gib", "tunnel: one {tunnel_size} stream (curl)", "CPU s per GiB, both ends", "lower", "ms"),
    ("tunrps", "rps", "tunnel: small requests, {conns} conns", "requests/s", "higher", "int"),
    ("tunlat", "rps", "tunnel: paced load, {tunnel_lat_conns} conns, {tunnel_lat_delay} ms pauses", "requests/s (the load)", "same", "int"),
    ("tunlat", "p99_ms", "tunnel: paced load, {tunnel_lat_conns} conns, {tunnel_lat_delay} ms pauses", "p99 latency ms", "lower", "ms"),
    ("tunlat", "added_p99_ms", "tunnel: paced load, {tunnel_lat_conns} conns, {tunnel_lat_delay} ms pauses", "added p99 ms vs direct", "lower", "ms"),
    ("tunmem", "kib_per_stream", "tunnel: {tunnel_streams} open slow streams", "KiB RSS per stream, both ends", "lower", "kib"),
    ("tunmem", "rss_mib", "tunnel: {tunnel_streams} open slow streams", "MiB RSS in all, both ends", "lower", "mib"),
]
TARGETS = ["gatehouse", "nginx", "haproxy", "ssh", "direct"]
ANCHORS = ["nginx", "haproxy", "ssh"]
SHOWN = {"ssh": "ssh -R"}  # column names that differ from the target names

# Targets from the issues: (scenario, metric, text, rule, threshold).
#   best_ratio: gatehouse / the better of nginx and HAProxy must reach threshold
#   best_fraction: gatehouse / the better (lower) of nginx and HAProxy at most threshold
#   ssh_ratio: gatehouse / ssh -R at least threshold
#   below: gatehouse's own value under threshold
GOALS = [
    ("tlshs", "hs_per_s", "TLS full handshakes/s >= 1.1x the better of nginx/HAProxy", "best_ratio", 1.1),
    ("tlshs", "hs_per_cpu_s", "TLS full handshakes per proxy CPU second >= 1.1x the better of nginx/HAProxy",
     "best_ratio", 1.1),
    ("tlska", "rps", "TLS keep-alive requests/s >= 1.1x the better of nginx/HAProxy", "best_ratio", 1.1),
    ("tlsidle", "kib_per_conn", "memory per idle TLS connection <= 0.5x the better of nginx/HAProxy", "best_fraction", 0.5),
    ("tunbulk", "mibps", "tunnel throughput of one stream >= 1.5x ssh -R", "ssh_ratio", 1.5),
    ("tunlat", "added_p99_ms", "tunnel added p99 at moderate load < 1 ms", "below", 1.0),
]


# ---------------------------------------------------------------------------
# Small HTTP/1.1 client
# ---------------------------------------------------------------------------
REQUEST = b"GET / HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: gatehouse-bench\r\n\r\n"


_TLS_CONTEXT = None


def tls_context():
    """A client context that accepts the benchmark's self-signed certificate."""
    global _TLS_CONTEXT
    if _TLS_CONTEXT is None:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _TLS_CONTEXT = ctx
    return _TLS_CONTEXT


class Conn:
    """One keep-alive connection that reads whole responses; over TLS with
    tls=True (a full handshake: no session is offered for resumption)."""

    def __init__(self, port, timeout, tls=False, session=None):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.tls = tls
        if tls:
            try:
                self.sock = tls_context().wrap_socket(self.sock, server_hostname="localhost",
                                                      session=session)
            except Exception:
                self.sock.close()
                raise
        self.buf = b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        self.buf += data

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self):
        for _ in range(100000):
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            if len(self.buf) > 65536:
                raise ValueError("line too long")
            self._fill()
        raise ValueError("no line")

    def request(self, raw=REQUEST):
        """Send one request, read the whole response, return the status."""
        self.sock.sendall(raw)
        status_line = self._line()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError("bad status line %r" % status_line)
        status = int(parts[1])
        length, chunked, close = None, False, False
        for _ in range(1000):
            line = self._line()
            if not line:
                break
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                chunked = True
            elif name == b"connection" and value == b"close":
                close = True
        if chunked:
            for _ in range(10000000):
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    for _ in range(1000):  # trailers
                        if not self._line():
                            break
                    break
                self._take(size + 2)
        elif length is not None:
            self._take(length)
        elif close:
            raise ValueError("response without length")
        if close:
            raise ConnectionError("server asked to close the connection")
        return status

    def is_open(self):
        """True while the server has not closed the connection."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        if not poller.poll(0):
            return True
        if self.tls:
            # readable may only mean TLS records that carry no data (session
            # tickets): read without blocking; "want read" means still open
            import ssl
            self.sock.setblocking(False)
            try:
                data = self.sock.recv(1)
            except ssl.SSLWantReadError:
                return True
            except (OSError, ValueError):
                return False
            finally:
                try:
                    self.sock.setblocking(True)
                except OSError:
                    pass
            if data:
                self.buf += data
            return bool(data)
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK))
        except OSError:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------
# /proc helpers
# ---------------------------------------------------------------------------
def listening(port):
    """True when something listens on 127.0.0.1:port or 0.0.0.0:port."""
    want = {"0100007F:%04X" % port, "00000000:%04X" % port}
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and fields[1] in want:
                    return True
    except OSError:
        pass
    return False


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def descendants(root):
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo and len(out) < 10000:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def vmrss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_tree(root):
    """Sum of VmRSS (KiB) over the process and all its descendants."""
    return sum(vmrss_kib(p) for p in descendants(root))


def rss_trees(pids):
    return sum(rss_tree(p) for p in pids)


def cpu_ticks(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0


def cpu_seconds(pids):
    """CPU time (user + system, seconds) of the processes and their descendants."""
    ticks = sum(cpu_ticks(p) for root in pids for p in descendants(root))
    return ticks / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------
# results.jsonl
# ---------------------------------------------------------------------------
def append(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def load(path):
    rows, meta = [], {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            if "meta" in row:
                meta.update(row["meta"])
            else:
                rows.append(row)
    return rows + derived(rows), meta


def derived(rows):
    """Added p99 latency: a path's p99 minus the direct p99 of the same round."""
    out = []
    p99 = {(r["round"], r["target"]): r for r in rows
           if (r["scenario"], r["metric"]) == ("tunlat", "p99_ms")}
    for (rnd, target), r in sorted(p99.items()):
        direct = p99.get((rnd, "direct"))
        if target == "direct" or direct is None:
            continue
        value = None
        if r["value"] is not None and direct["value"] is not None:
            value = r["value"] - direct["value"]
        row = {"round": rnd, "scenario": "tunlat", "target": target,
               "metric": "added_p99_ms", "value": value}
        if r.get("note"):
            row["note"] = r["note"]
        out.append(row)
    return out


def record(path, rnd, scenario, target, metric, value, note=None):
    row = {"round": int(rnd), "scenario": scenario, "target": target,
           "metric": metric, "value": value}
    if note:
        row["note"] = note
    append(path, row)


# ---------------------------------------------------------------------------
# wrk output
# ---------------------------------------------------------------------------
SIZE = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}
TIME_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_wrk(text):
    out = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", text)
    if m:
        out["mibps"] = float(m.group(1)) * SIZE[m.group(2)] / 1024 ** 2
    m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
    if m:
        out["p99_ms"] = float(m.group(1)) * TIME_MS[m.group(2)]
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"requests in [\d.]+\w*, ([\d.]+)([KMGT]?B) read", text)
    if m:
        out["bytes"] = float(m.group(1)) * SIZE[m.group(2)]
    errors = []
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m and any(int(x) for x in m.groups()):
        errors.append("socket errors: connect %s, read %s, write %s, timeout %s" % m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errors.append("%s non-2xx responses" % m.group(1))
    out["errors"] = errors
    return out


def cmd_record_wrk(a):
    try:
        with open(a.wrk_output) as f:
            w = parse_wrk(f.read())
    except OSError as e:
        w = {"requests": 0, "errors": [str(e)]}
    note = "; ".join(w["errors"]) or None
    if a.extra_note:
        note = "; ".join(x for x in (note, a.extra_note) if x)
    if a.cpu is not None and w.get("requests"):
        w["cpu_us"] = a.cpu * 1e6 / w["requests"]
    if a.body_bytes:
        # uploads: what counts is what wrk sent, a body per request
        w["bytes"] = w.get("requests", 0) * a.body_bytes
        if w.get("rps") is not None:
            w["up_mibps"] = w["rps"] * a.body_bytes / 1024 ** 2
    if a.cpu is not None and w.get("bytes"):
        w["cpu_s_per_gib"] = a.cpu / (w["bytes"] / 1024 ** 3)
    if not w.get("requests"):
        for metric in a.metrics.split(","):
            record(a.results, a.round, a.scenario, a.target, metric, None, note or "wrk made no request")
        print("    %-9s failed: %s" % (a.target, note or "wrk made no request"))
        return 1
    shown = []
    for metric in a.metrics.split(","):
        value = w.get(metric)
        record(a.results, a.round, a.scenario, a.target, metric, value, note)
        shown.append("%s=%s" % (metric, fmt_plain(value)))
    print("    %-9s %s%s" % (a.target, "  ".join(shown), ("   (" + note + ")") if note else ""))
    return 0


def fmt_plain(v):
    if v is None:
        return "-"
    return "%.2f" % v if v < 100 else "%.0f" % v


# ---------------------------------------------------------------------------
# Sub-commands: clients
# ---------------------------------------------------------------------------
def cmd_ports(a):
    socks = []
    for _ in range(a.n):
        s = socket.socket()
        s.bind((HOST, 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()
    return 0


def cmd_waitport(a):
    deadline = time.monotonic() + a.secs
    while time.monotonic() < deadline:
        if listening(a.port):
            return 0
        if a.pid and not alive(a.pid):
            print("process %d exited before listening on %d" % (a.pid, a.port), file=sys.stderr)
            return 1
        time.sleep(0.05)
    print("nothing listens on %d after %ss" % (a.port, a.secs), file=sys.stderr)
    return 1


def cmd_rss(a):
    print(rss_tree(a.pid))
    return 0


def cmd_cpu(a):
    print("%.3f" % cpu_seconds(a.pids))
    return 0


def cmd_waithttp(a):
    """Wait until GET / answers 200 (a tunnel is attached, a forward is up)."""
    deadline = time.monotonic() + a.secs
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            conn = Conn(a.port, 2)
            try:
                status = conn.request()
            finally:
                conn.close()
            if status == 200:
                return 0
            last = "status %d" % status
        except (OSError, ValueError) as e:
            last = str(e)
        time.sleep(0.1)
    print("GET / on %d: %s after %ss" % (a.port, last, a.secs), file=sys.stderr)
    return 1


def cmd_resumes(a):
    """Two TLS connections: the second offers the session of the first."""
    try:
        first = Conn(a.port, 10, tls=True)
        try:
            first.request()  # TLS 1.3 tickets arrive after the handshake
            session = first.sock.session
        finally:
            first.close()
        second = Conn(a.port, 10, tls=True, session=session)
        try:
            reused = second.sock.session_reused
            second.request()
        finally:
            second.close()
    except (OSError, ValueError) as e:
        print("unknown (%s)" % e)
        return 1
    print("yes" if reused else "no")
    return 0


def run_requests(port, n, timeout, deadline, tls=False):
    conn = Conn(port, timeout, tls=tls)
    ok = 0
    try:
        for _ in range(n):
            if time.monotonic() > deadline:
                raise TimeoutError("deadline passed after %d requests" % ok)
            if conn.request() == 200:
                ok += 1
    finally:
        conn.close()
    return ok


def cmd_requests(a):
    deadline = time.monotonic() + a.deadline
    try:
        ok = run_requests(a.port, a.n, a.timeout, deadline)
    except (OSError, ValueError) as e:
        print("requests: %s" % e, file=sys.stderr)
        return 1
    print(ok)
    return 0 if ok == a.n else 1


def cmd_idle(a):
    """Open a.conns keep-alive connections, one request each, keep them open.
    With --tls each one is a TLS connection with a full handshake.

    RSS is read before (after a short warm-up on one connection that is
    then closed) and after all connections are open and idle."""
    deadline = time.monotonic() + a.deadline
    conns = []
    note = None
    try:
        run_requests(a.port, 10, 10, deadline, tls=a.tls)  # warm-up: upstream pool, lazy init
        time.sleep(a.settle)
        before = rss_tree(a.pid)
        for i in range(a.conns):
            if time.monotonic() > deadline:
                note = "deadline passed after %d connections" % i
                break
            c = Conn(a.port, 10, tls=a.tls)
            conns.append(c)
            status = c.request()
            if status != 200:
                note = "status %d on connection %d" % (status, i)
                break
        time.sleep(a.settle)
        after = rss_tree(a.pid)
        still_open = sum(1 for c in conns if c.is_open())
    except (OSError, ValueError) as e:
        note = "after %d connections: %s" % (len(conns), e)
        before = after = still_open = None
    finally:
        for c in conns:
            c.close()
    if note is None and still_open < a.conns:
        note = "only %d of %d connections still open" % (still_open, a.conns)
    value = None
    if before is not None and (still_open or 0) >= a.conns * 0.95:
        value = (after - before) / a.conns
    record(a.results, a.round, a.scenario, a.target, "kib_per_conn", value, note)
    record(a.results, a.round, a.scenario, a.target, "rss_mib", after / 1024 if value is not None else None, note)
    if value is None:
        print("    %-9s failed: %s" % (a.target, note))
        return 1
    print("    %-9s RSS %d KiB -> %d KiB with %d idle connections: %.2f KiB/conn%s" % (
        a.target, before, after, still_open, value, ("   (" + note + ")") if note else ""))
    return 0


def cmd_streams(a):
    """Open a.n slow streams (GET of a rate-limited body), keep reading what
    arrives, and read the RSS of the processes that carry them (a tunnel's
    two ends) before and while they are open."""
    pids = [int(p) for p in a.pids.split(",") if p]
    deadline = time.monotonic() + a.deadline
    req = ("GET %s HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: gatehouse-bench\r\n\r\n"
           % a.path).encode()
    socks, note = [], None
    before = after = None
    open_count = 0
    try:
        run_requests(a.port, 10, 10, deadline)  # warm-up
        time.sleep(a.settle)
        before = rss_trees(pids)
        for i in range(a.n):
            s = socket.create_connection((HOST, a.port), timeout=10)
            socks.append(s)
            s.sendall(req)
        for s in socks:
            s.setblocking(False)
        poller = select.poll()
        fds = {s.fileno(): s for s in socks}
        for fd in fds:
            poller.register(fd, select.POLLIN)
        closed = set()
        status = {}  # fd -> first bytes until the status line is complete, then True/False

        def drain(until, heads_only):
            for _ in range(10000000):
                if heads_only and len(status) == len(fds) and \
                        all(isinstance(v, bool) for v in status.values()):
                    return
                left = until - time.monotonic()
                if left <= 0:
                    return
                for fd, _ev in poller.poll(min(left, 0.2) * 1000):
                    try:
                        data = fds[fd].recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        closed.add(fd)
                        poller.unregister(fd)
                        status.setdefault(fd, False)
                        continue
                    head = status.get(fd, b"")
                    if isinstance(head, bytes):
                        head += data
                        if b"\r\n" in head:
                            head = head.split(b" ", 2)[1:2] == [b"200"]
                        status[fd] = head

        drain(min(deadline, time.monotonic() + 30), True)  # every stream has its status line
        drain(time.monotonic() + a.settle, False)  # streams flowing, slowly
        after = rss_trees(pids)
        ok = sum(1 for v in status.values() if v is True)
        open_count = sum(1 for fd in fds if fd not in closed)
        if ok < a.n:
            note = "%d of %d streams answered 200" % (ok, a.n)
        elif open_count < a.n:
            note = "only %d of %d streams still open" % (open_count, a.n)
    except (OSError, ValueError) as e:
        note = "after %d streams: %s" % (len(socks), e)
    finally:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
    value = None
    if before is not None and after is not None and open_count >= a.n * 0.95:
        value = (after - before) / a.n
    record(a.results, a.round, "tunmem", a.target, "kib_per_stream", value, note)
    record(a.results, a.round, "tunmem", a.target, "rss_mib", after / 1024 if value is not None else None, note)
    if value is None:
        print("    %-9s failed: %s" % (a.target, note))
        return 1
    print("    %-9s RSS %d KiB -> %d KiB with %d open streams: %.2f KiB/stream%s" % (
        a.target, before, after, open_count, value, ("   (" + note + ")") if note else ""))
    return 0


def cmd_record_stime(a):
    """openssl s_time prints 'N connections in T real seconds'; the clients
    ran in parallel for a.wall seconds."""
    total, problems = 0, []
    for path in a.outputs:
        try:
            with open(path, errors="replace") as f:
                text = f.read()
        except OSError as e:
            problems.append(str(e))
            continue
        m = re.search(r"(\d+) connections in [\d.]+ real seconds", text)
        if m:
            total += int(m.group(1))
        else:
            problems.append("%s: no count" % os.path.basename(path))
    note = "; ".join(problems) or None
    if a.extra_note:
        note = "; ".join(x for x in (note, a.extra_note) if x)
    if not total or a.wall <= 0:
        for metric in ("hs_per_s", "hs_per_cpu_s"):
            record(a.results, a.round, "tlshs", a.target, metric, None, note or "no handshake")
        print("    %-9s failed: %s" % (a.target, note or "no handshake"))
        return 1
    rate = total / a.wall
    busy = a.cpu / a.wall
    # below 80 % the clients, not the proxy, set the pace
    rate_note = note
    if busy < 0.8:
        rate_note = "; ".join(x for x in (note, "client-bound: the proxy was busy %.0f%% of the run"
                                          % (busy * 100)) if x)
    per_cpu = total / a.cpu if a.cpu > 0 else None
    record(a.results, a.round, "tlshs", a.target, "hs_per_s", rate, rate_note)
    record(a.results, a.round, "tlshs", a.target, "hs_per_cpu_s", per_cpu,
           note if per_cpu else (note or "no CPU time measured"))
    print("    %-9s hs_per_s=%.0f  hs_per_cpu_s=%s  (%d handshakes in %.2f s, proxy CPU %.2f s, busy %.0f%%)%s" % (
        a.target, rate, fmt_plain(per_cpu), total, a.wall, a.cpu, busy * 100,
        ("   (" + rate_note + ")") if rate_note else ""))
    return 0


def cmd_record_curl(a):
    """curl -w '%{http_code} %{size_download} %{time_total}'."""
    note = a.extra_note
    try:
        with open(a.curl_output) as f:
            code, size, secs = f.read().split()[:3]
        code, size, secs = int(code), int(size), float(secs)
    except (OSError, ValueError) as e:
        code, size, secs = 0, 0, 0.0
        note = "; ".join(x for x in ("no curl result (%s)" % e.__class__.__name__, note) if x)
    if code != 200 or size != a.expected or secs <= 0:
        note = "; ".join(x for x in ("status %d, %d of %d bytes" % (code, size, a.expected), note) if x)
        record(a.results, a.round, "tunbulk", a.target, "mibps", None, note)
        record(a.results, a.round, "tunbulk", a.target, "cpu_s_per_gib", None, note)
        print("    %-9s failed: %s" % (a.target, note))
        return 1
    mibps = size / secs / 1024 ** 2
    record(a.results, a.round, "tunbulk", a.target, "mibps", mibps, note)
    cpu = None
    if a.target != "direct":
        cpu = a.cpu / (size / 1024 ** 3)
        record(a.results, a.round, "tunbulk", a.target, "cpu_s_per_gib", cpu, note)
    print("    %-9s mibps=%.0f%s  (%d bytes in %.2f s)%s" % (
        a.target, mibps, "  cpu_s_per_gib=%.2f" % cpu if cpu is not None else "", size, secs,
        ("   (" + note + ")") if note else ""))
    return 0


def callgrind_total(path):
    total = None
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("totals:"):
                return int(line.split()[1])
            if line.startswith("summary:"):
                total = int(line.split()[1])
    if total is None:
        raise ValueError("no totals/summary line in %s" % path)
    return total


def cmd_record_callgrind(a):
    try:
        base = callgrind_total(a.baseline)
        run = callgrind_total(a.run)
    except (OSError, ValueError) as e:
        record(a.results, a.round, "callgrind", a.target, "ir_per_req", None, str(e))
        print("    %-9s failed: %s" % (a.target, e))
        return 1
    value = (run - base) / a.n
    record(a.results, a.round, "callgrind", a.target, "ir_per_req", value)
    print("    %-9s Ir: baseline %d, with %d requests %d: %.0f instructions/request" % (
        a.target, base, a.n, run, value))
    return 0


def cmd_record_fail(a):
    for metric in a.metrics.split(","):
        record(a.results, a.round, a.scenario, a.target, metric, None, a.note)
    print("    %-9s failed: %s" % (a.target, a.note))
    return 0


def cmd_meta(a):
    meta = {}
    for kv in a.pairs:
        k, _, v = kv.partition("=")
        meta[k] = v
    append(a.results, {"meta": meta})
    return 0


# ---------------------------------------------------------------------------
# Machine and versions
# ---------------------------------------------------------------------------
def run_out(argv, both=False):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "not available (%s)" % e.__class__.__name__
    text = (p.stdout + p.stderr) if both else (p.stdout or p.stderr)
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return lines[0] if lines else "?"


def cmd_info(a):
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            mem = "%.1f GiB" % (kib / 1024 / 1024)
    except (OSError, ValueError, IndexError):
        pass
    gh = run_out([a.gatehouse, "--version"])
    rev = run_out(["git", "-C", a.repo, "rev-parse", "--short", "HEAD"])
    info = {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "kernel": "%s %s" % (platform.system(), platform.release()),
        "memory": mem,
        "versions": {
            "gatehouse": "%s (commit %s, build %s)" % (gh, rev, a.gatehouse),
            "nginx": run_out(["nginx", "-v"], both=True),
            "haproxy": run_out(["haproxy", "-v"]),
            "wrk": run_out(["wrk", "-v"], both=True),
            "valgrind": run_out(["valgrind", "--version"]),
        },
    }
    # only what the TLS and tunnel groups use
    if a.tls_tunnel:
        info["versions"]["openssl"] = run_out(["openssl", "version"])
        info["versions"]["ssh"] = run_out(["ssh", "-V"], both=True)
        info["versions"]["curl"] = run_out(["curl", "--version"])
    with open(a.out, "w") as f:
        json.dump(info, f, indent=1)
    return 0


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------
def fmt(v, kind):
    if v is None:
        return "fail"
    if kind == "int":
        return "{:,.0f}".format(v)
    if kind == "ms":
        return "%.2f" % v
    if kind in ("kib", "mib"):
        return "%.2f" % v if v < 100 else "%.0f" % v
    return "%g" % v


def label(template, meta):
    try:
        return template.format(**meta)
    except KeyError:
        return template


def present(rows):
    """Metrics and targets that appear in the rows, in table order."""
    keys = {(r["scenario"], r["metric"]) for r in rows}
    metrics = [m for m in METRICS if (m[0], m[1]) in keys]
    targets = [t for t in TARGETS if any(r["target"] == t for r in rows)]
    return metrics, targets


def render(header, body, md):
    """Aligned plain text, or a Markdown table."""
    if md:
        out = ["| " + " | ".join(header) + " |",
               "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = []
    for r in [header] + body:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def cmd_table(a):
    rows, meta = load(a.results)
    rows = [r for r in rows if r["round"] == a.round]
    metrics, targets = present(rows)
    header = ["round %d" % a.round, "unit"] + [SHOWN.get(t, t) for t in targets]
    body, notes = [], []
    for scen, metric, tmpl, unit, better, kind in metrics:
        line = [label(tmpl, meta), unit]
        for t in targets:
            match = [r for r in rows if (r["scenario"], r["metric"], r["target"]) == (scen, metric, t)]
            if not match:
                line.append("")
                continue
            r = match[-1]
            cell = fmt(r["value"], kind)
            if r.get("note"):
                cell += "*"
                notes.append("%s %s: %s" % (scen, t, r["note"]))
            line.append(cell)
        body.append(line)
    print(render(header, body, False))
    for n in sorted(set(notes)):
        print("  * " + n)
    return 0


def medians(rows):
    values = {}
    for r in rows:
        if r["value"] is not None:
            values.setdefault((r["scenario"], r["metric"], r["target"]), []).append(r["value"])
    return {k: (statistics.median(v), len(v)) for k, v in values.items()}


def tls_text(meta):
    out = "one self-signed ECDSA P-256 certificate for all three"
    if meta.get("tls_params"):
        out += "; wrk negotiates %s" % meta["tls_params"]
    out += "; s_time -new: full handshakes only, no request"
    if meta.get("wrk_resumed"):
        out += ("; wrk resumes sessions when it reconnects (%s connections resumed in a 1 s check"
                " against nginx), so the wrk 'new connection' row counts resumed handshakes"
                % meta["wrk_resumed"])
    res = ["%s %s" % (t, meta["resumes_" + t]) for t in TARGETS if meta.get("resumes_" + t)]
    if res:
        out += "; a second connection resumes the session of the first (TLS 1.3 ticket): " + ", ".join(res)
    return out


def tunnel_text(meta):
    link = "TLS (the edge's certificate)" if meta.get("tunnel_tls", "1") == "1" else "plain http"
    out = ("gatehouse: edge (client listener, tunnels:) and connector (connect:, %s tunnel connection(s)),"
           " the connector dials the edge over %s" % (meta.get("tunnel_connections", "?"), link))
    out += "; ssh -R: OpenSSH sshd and ssh -N -R, cipher %s" % meta.get("ssh_cipher", "?")
    out += "; both ends of each tunnel on the proxy's CPU; curl, wrk and the backend on the load CPU"
    return out


def goal_lines(med):
    """One line per target of the issues whose numbers are there."""
    out = []
    for scen, metric, text, rule, threshold in GOALS:
        gh = med.get((scen, metric, "gatehouse"))
        if not gh:
            continue
        if rule in ("best_ratio", "best_fraction"):
            anchors = [(t, med[(scen, metric, t)][0]) for t in ("nginx", "haproxy")
                       if (scen, metric, t) in med and med[(scen, metric, t)][0]]
            if not anchors:
                continue
            pick = max if rule == "best_ratio" else min
            name, best = pick(anchors, key=lambda x: x[1])
            ratio = gh[0] / best
            ok = ratio >= threshold if rule == "best_ratio" else ratio <= threshold
            out.append("%s: %.2fx %s (%s), %s" % (text, ratio, SHOWN.get(name, name),
                                                   "%g" % round(best, 2), "met" if ok else "missed"))
        elif rule == "ssh_ratio":
            ssh = med.get((scen, metric, "ssh"))
            if not ssh or not ssh[0]:
                continue
            ratio = gh[0] / ssh[0]
            out.append("%s: %.2fx, %s" % (text, ratio, "met" if ratio >= threshold else "missed"))
        elif rule == "below":
            out.append("%s: %.2f ms, %s" % (text, gh[0], "met" if gh[0] < threshold else "missed"))
    return out


def cmd_summary(a):
    rows, meta = load(a.results)
    with open(a.info) as f:
        info = json.load(f)
    meta.setdefault("nproc", info["nproc"])
    med = medians(rows)
    metrics, targets = present(rows)
    rounds = sorted({r["round"] for r in rows})
    anchors = [t for t in ANCHORS if t in targets]
    header = (["metric", "unit"] + [SHOWN.get(t, t) for t in targets]
              + ["gatehouse/" + SHOWN.get(t, t) for t in anchors] + ["better"])
    body = []
    for scen, metric, tmpl, unit, better, kind in metrics:
        line = [label(tmpl, meta), unit]
        for t in targets:
            m = med.get((scen, metric, t))
            present_rows = any(r for r in rows if (r["scenario"], r["metric"], r["target"]) == (scen, metric, t))
            line.append(fmt(m[0], kind) if m else ("fail" if present_rows else ""))
        gh = med.get((scen, metric, "gatehouse"))
        for t in anchors:
            an = med.get((scen, metric, t))
            line.append("%.2f" % (gh[0] / an[0]) if gh and an and an[0] else "")
        line.append(better)
        body.append(line)
    failed = sorted({"%s %s" % (r["scenario"], r["target"]) for r in rows if r["value"] is None})
    notes = sorted({"round %d, %s, %s: %s" % (r["round"], r["scenario"], r["target"], r["note"])
                    for r in rows if r.get("note")})

    params = ("rounds: %s, %s s per wrk run after a %s s warm-up; order of the proxies rotated every round"
              % (meta.get("rounds", len(rounds)), meta.get("duration", "?"), meta.get("warmup", "?")))
    pinning = meta.get("pinning", "?")
    nginx_buf = meta.get("nginx_buffer", "default")
    params += ("; nginx proxy_buffer_size %s" % nginx_buf)
    params += ("; load average %s at the start, %s at the end"
               % (meta.get("load_start", "?"), meta.get("load_end", "?")))
    machine = "%s cores, %s, %s, %s" % (info["nproc"], info["cpu"], info["kernel"], info["memory"])
    versions = info["versions"]
    extra = []  # (label, text) lines for the groups that ran
    scenarios = {r["scenario"] for r in rows}
    if scenarios & {"tlshs", "tlsclose", "tlska", "tlsidle"}:
        extra.append(("tls", tls_text(meta)))
    if scenarios & {"tunbulk", "tunrps", "tunlat", "tunmem"}:
        extra.append(("tunnel", tunnel_text(meta)))
    goals = goal_lines(med)

    text = ["", "Summary: medians over %d round(s)" % len(rounds), render(header, body, False), ""]
    if goals:
        text += ["targets (from the issues):"] + ["  " + g for g in goals] + [""]
    text += ["machine:  " + machine, "params:   " + params, "pinning:  " + pinning]
    text += ["%-9s %s" % (k + ":", v) for k, v in extra]
    for k, v in versions.items():
        text.append("%-9s %s" % (k + ":", v))
    if failed:
        text.append("failed at least once: " + ", ".join(failed))
    for n in notes:
        text.append("  * " + n)
    print("\n".join(text))

    if a.md:
        md = ["# gatehouse benchmark", "",
              "Generated by `%s` on %s. Medians over %d round(s); ratio = gatehouse / anchor "
              "(above 1 is better where higher is better, below 1 where lower is better)."
              % (meta.get("command", "bench/run"), meta.get("date", "?"), len(rounds)), "",
              render(header, body, True), ""]
        if goals:
            md += ["Targets from the issues, on these medians:", ""] + ["- " + g for g in goals] + [""]
        md += ["- machine: " + machine,
               "- " + params,
               "- pinning: " + pinning]
        md += ["- %s: %s" % (k, v) for k, v in extra]
        for k, v in versions.items():
            md.append("- %s: %s" % (k, v))
        if failed:
            md.append("- failed at least once: " + ", ".join(failed))
        for n in notes:
            md.append("- note: " + n)
        md.append("")
        md.append("See bench/README.md for what each number means.")
        with open(a.md, "w") as f:
            f.write("\n".join(md) + "\n")
        print("\nwrote " + a.md)
    return 0


# ---------------------------------------------------------------------------
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("ports"); s.add_argument("n", type=int); s.set_defaults(f=cmd_ports)
    s = sub.add_parser("waitport"); s.add_argument("port", type=int); s.add_argument("secs", type=float)
    s.add_argument("pid", type=int, nargs="?", default=0); s.set_defaults(f=cmd_waitport)
    s = sub.add_parser("rss"); s.add_argument("pid", type=int); s.set_defaults(f=cmd_rss)
    s = sub.add_parser("cpu"); s.add_argument("pids", type=int, nargs="+"); s.set_defaults(f=cmd_cpu)
    s = sub.add_parser("waithttp"); s.add_argument("port", type=int); s.add_argument("secs", type=float)
    s.set_defaults(f=cmd_waithttp)
    s = sub.add_parser("resumes"); s.add_argument("port", type=int); s.set_defaults(f=cmd_resumes)

    s = sub.add_parser("requests"); s.add_argument("port", type=int); s.add_argument("n", type=int)
    s.add_argument("--timeout", type=float, default=30); s.add_argument("--deadline", type=float, default=300)
    s.set_defaults(f=cmd_requests)

    s = sub.add_parser("idle")
    for name in ("results", "round", "target"):
        s.add_argument(name)
    s.add_argument("--port", type=int, required=True); s.add_argument("--pid", type=int, required=True)
    s.add_argument("--conns", type=int, default=4000); s.add_argument("--settle", type=float, default=1.0)
    s.add_argument("--deadline", type=float, default=120); s.add_argument("--tls", action="store_true")
    s.add_argument("--scenario", default="idle"); s.set_defaults(f=cmd_idle)

    s = sub.add_parser("streams")
    for name in ("results", "round", "target"):
        s.add_argument(name)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--pids", required=True, help="comma separated: the processes that carry the streams")
    s.add_argument("--n", type=int, default=200); s.add_argument("--path", required=True)
    s.add_argument("--settle", type=float, default=1.0); s.add_argument("--deadline", type=float, default=120)
    s.set_defaults(f=cmd_streams)

    s = sub.add_parser("record-stime")
    for name in ("results", "round", "target"):
        s.add_argument(name)
    s.add_argument("wall", type=float); s.add_argument("cpu", type=float)
    s.add_argument("outputs", nargs="+"); s.add_argument("--extra-note", default=None)
    s.set_defaults(f=cmd_record_stime)

    s = sub.add_parser("record-curl")
    for name in ("results", "round", "target", "curl_output"):
        s.add_argument(name)
    s.add_argument("expected", type=int); s.add_argument("cpu", type=float)
    s.add_argument("--extra-note", default=None); s.set_defaults(f=cmd_record_curl)

    s = sub.add_parser("record-wrk")
    for name in ("results", "round", "scenario", "target", "metrics", "wrk_output"):
        s.add_argument(name)
    s.add_argument("--extra-note", default=None)
    s.add_argument("--cpu", type=float, default=None, help="proxy CPU seconds during the run")
    s.add_argument("--body-bytes", type=int, default=0, help="request body bytes per request (uploads)")
    s.set_defaults(f=cmd_record_wrk)

    s = sub.add_parser("record-callgrind")
    for name in ("results", "round", "target", "baseline", "run"):
        s.add_argument(name)
    s.add_argument("n", type=int); s.set_defaults(f=cmd_record_callgrind)

    s = sub.add_parser("record-fail")
    for name in ("results", "round", "scenario", "target", "metrics", "note"):
        s.add_argument(name)
    s.set_defaults(f=cmd_record_fail)

    s = sub.add_parser("meta"); s.add_argument("results"); s.add_argument("pairs", nargs="*")
    s.set_defaults(f=cmd_meta)

    s = sub.add_parser("info"); s.add_argument("--gatehouse", required=True)
    s.add_argument("--repo", required=True); s.add_argument("--out", required=True)
    s.add_argument("--tls-tunnel", action="store_true"); s.set_defaults(f=cmd_info)

    s = sub.add_parser("table"); s.add_argument("results"); s.add_argument("round", type=int)
    s.set_defaults(f=cmd_table)
    s = sub.add_parser("summary"); s.add_argument("results"); s.add_argument("info")
    s.add_argument("--md", default=None); s.set_defaults(f=cmd_summary)

    a = p.parse_args()
    sys.exit(a.f(a))


if __name__ == "__main__":
    main()
