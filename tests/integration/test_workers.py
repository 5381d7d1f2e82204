"""SPEC section 2 `workers: N | auto`: N event-loop threads, each accepting
on its own SO_REUSEPORT socket of every listen address, sharing the config,
the plugins' state, upstream health and metrics.

The whole suite also runs once with every gatehouse at `workers: 2`
(GH_TEST_WORKERS=2, see tests/run); what is here needs several workers to
mean anything: the load reaching every thread, counts summed over workers,
listeners opened and closed on every worker by a reload, and a tunnel
session on one worker serving requests that arrive on the others."""
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

from harness import (BIN, Conn, assert_error_json, build_request, data_of, free_port,
                     read_events, request, wait_until)
from pattern import pattern_sha256
from test_tunnel import (ATTACHED, EDGE_ENDED, UP, connector, connector_config,  # noqa: F401
                         edge_config)
from tunnel_util import count, keygen, kill_hard, wait_count


def worker_threads(pid):
    """{name: cpu ticks} of the threads named gh-worker-N (worker 0 is the
    main thread, named after the program)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        ticks = int(fields[11]) + int(fields[12])     # utime + stime
        if name.startswith("gh-worker-"):
            out[name] = ticks
        elif int(tid) == pid:
            out["main"] = ticks
    return out


def hammer(port, threads, per_thread, target="/echo", host="app.test"):
    """Requests on a new connection each (so the kernel spreads them over
    the workers' sockets); returns the statuses."""
    codes, lock = [], threading.Lock()

    def run():
        mine = []
        for _ in range(per_thread):
            try:
                mine.append(request(port, target=target, host=host, timeout=10).status)
            except OSError as e:
                mine.append(repr(e))
        with lock:
            codes.extend(mine)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts), "a client thread hung"
    return codes


def test_every_worker_takes_connections(gatehouse, aio):
    gh = gatehouse({"workers": 3, "routes": [{"host": "*", "upstream": aio.url}]})
    assert re.search(r"started with \S+, 3 workers", gh.stderr()), gh.stderr()
    before = worker_threads(gh.pid)
    assert sorted(k for k in before if k != "main") == ["gh-worker-1", "gh-worker-2"], before
    # each of the three loops does part of the work. CPU time comes in 10 ms
    # ticks, sampled: a loop that served a few hundred quick requests may not
    # have been charged one yet, so load comes in rounds (at most five).
    for _ in range(5):
        codes = hammer(gh.port, threads=6, per_thread=150)
        assert codes == [200] * 900, {c: codes.count(c) for c in set(codes)}
        after = worker_threads(gh.pid)
        busy = {k: after[k] - before.get(k, 0) for k in after}
        if all(busy[k] > 0 for k in ("main", "gh-worker-1", "gh-worker-2")):
            break
    assert all(busy[k] > 0 for k in ("main", "gh-worker-1", "gh-worker-2")), busy


def test_workers_auto_is_one_per_core(gatehouse, aio):
    gh = gatehouse({"workers": "auto", "routes": [{"host": "*", "upstream": aio.url}]})
    cores = len(os.sched_getaffinity(0))
    if cores == 1:
        assert "workers" not in gh.stderr().split("started with", 1)[1].splitlines()[0]
    else:
        assert re.search(rf"started with \S+, {cores} workers", gh.stderr()), gh.stderr()
    assert request(gh.port, target="/echo").status == 200


def test_counts_are_summed_over_workers(gatehouse, aio):
    admin = free_port()
    gh = gatehouse({"workers": 4, "admin": {"address": f"127.0.0.1:{admin}"},
                    "routes": [{"host": "*", "upstream": aio.url}]})
    codes = hammer(gh.port, threads=4, per_thread=100)
    assert codes == [200] * 400
    # connections held open, spread over the workers, are all counted
    conns = [socket.create_connection(("127.0.0.1", gh.port), timeout=5) for _ in range(24)]
    try:
        for s in conns:
            s.sendall(build_request("GET", "/echo"))
        for s in conns:
            assert s.recv(12).startswith(b"HTTP/1.1 200")

        def scraped():
            return request(admin, target="/metrics", host="127.0.0.1", timeout=5).body.decode()

        def idle_count():
            m = re.search(r'^gatehouse_connections\{state="idle"\} (\d+)$', scraped(), re.M)
            return m and int(m.group(1))
        assert wait_until(lambda: idle_count() == 24, 5), scraped()
        text = scraped()
        m = re.search(r'^gatehouse_requests_total\{route="\*/",code="200"\} (\d+)$', text, re.M)
        assert m and int(m.group(1)) == 424, text
        status = request(admin, target="/status.json", host="127.0.0.1", timeout=5).json()
        assert status["connections"]["idle"] == 24, status
    finally:
        for s in conns:
            s.close()


def test_reload_opens_and_closes_listeners_on_every_worker(gatehouse, aio):
    gh = gatehouse({"workers": 3, "routes": [{"host": "*", "upstream": aio.url}]})
    old = gh.port
    new = free_port()
    text = gh.config_path.read_text().replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    assert text != gh.config_path.read_text()
    gh.config_path.write_text(text)
    gh.signal(signal.SIGHUP)
    assert wait_until(lambda: "configuration reloaded" in gh.stderr(), 5), gh.stderr()
    codes = hammer(new, threads=3, per_thread=40)
    assert codes == [200] * 120, {c: codes.count(c) for c in set(codes)}
    # the old address is gone from every worker: no connection is accepted
    refused = 0
    for _ in range(30):
        try:
            socket.create_connection(("127.0.0.1", old), timeout=2).close()
        except ConnectionRefusedError:
            refused += 1
    assert refused == 30, f"{30 - refused} of 30 connections still accepted on the old address"


def test_busy_port_is_an_error_with_workers(aio, tmp_path):
    """SO_REUSEPORT is only shared among gatehouse's own sockets: a port
    another program holds is still a start-up error (exit 1, file:line:col)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cfg = tmp_path / "busy.yaml"
    cfg.write_text(f'listen:\n  - address: "127.0.0.1:{port}"\nworkers: 2\n'
                   f'routes:\n  - host: "*"\n    upstream: "{aio.url}"\n')
    try:
        p = subprocess.run([BIN, "-c", str(cfg)], capture_output=True, text=True, timeout=20)
    finally:
        taken.close()
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert re.search(r"busy\.yaml:2:\d+: cannot listen on 127\.0\.0\.1:\d+: address already in use",
                     p.stderr), p.stderr


# ---------------------------------------------------------------- tunnel

def test_one_tunnel_session_serves_every_worker(gatehouse, connector, tmp_path, aio, llm):
    """A connector with one connection attaches to one worker of a 4-worker
    edge; requests accepted by the other three reach it through that
    worker (three in four of them, with connections spread by the kernel)."""
    token, digest = keygen()
    token_file = tmp_path / "tunnel.token"
    token_file.write_text(token + "\n")
    edge = gatehouse({**edge_config(digest), "workers": 4})
    base = count(edge, ATTACHED)
    conn = connector(connector_config(edge.url, token_file, {"web": aio.url, "inference": llm.url},
                                      connections=1))
    assert wait_count(conn, UP, 1, 15) is not None, conn.stderr()[-2000:]
    assert wait_count(edge, ATTACHED, base + 1, 5) is not None, edge.stderr()[-2000:]

    codes = hammer(edge.port, threads=4, per_thread=20)
    assert codes == [200] * 80, {c: codes.count(c) for c in set(codes)}

    # streams keep their timing and their bytes across workers
    for _ in range(4):
        with Conn(edge.port, timeout=20) as c:
            c.send(build_request("GET", "/sse?n=3&delay=0.4"))
            head = c.read_head()
            assert head.status == 200, head
            evs = [(t, json.loads(data_of(ev))) for t, ev in read_events(c, head, 10)]
        assert [d["i"] for _, d in evs] == [0, 1, 2]
        lags = [t - d["sent"] for t, d in evs]
        assert max(lags) < 0.35, f"events held back on their way between workers: {lags}"
    size = 8 << 20
    for _ in range(4):
        r = request(edge.port, target=f"/big?size={size}", timeout=60)
        assert r.status == 200 and r.complete, r
        assert hashlib.sha256(r.body).hexdigest() == pattern_sha256(size)
        body = os.urandom(size)
        r = request(edge.port, "POST", "/upload", body=body, timeout=60)
        assert r.status == 200 and r.json()["bytes"] == size, r
        assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()

    # without the connector every worker answers 502 at once
    kill_hard(conn)
    assert wait_count(edge, EDGE_ENDED, 1, 5) is not None, edge.stderr()[-2000:]
    for i in range(8):
        t0 = time.monotonic()
        r = request(edge.port, target=f"/echo?gone={i}", timeout=10)
        assert_error_json(r, 502)
        assert time.monotonic() - t0 < 0.5
