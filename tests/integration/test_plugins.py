"""SPEC sections 2 and 3, the built-in plugins (plugins/README.md): api_key,
rate_limit, ip_filter and headers, driven through the real binary with real
clients, and what they add to the access log and /metrics.

The aio backend echoes the request headers it received, so every "never
reaches the upstream" below is what the upstream actually saw."""
import copy
import hashlib
import json
import re
import secrets
import signal
import socket
import struct
import threading
import time

import pytest

from harness import (Closed, Conn, ProtocolError, StartError, assert_error_json,
                     build_request, free_port, request, run_cli, to_yaml, wait_port,
                     wait_until)

WAIT = 15   # seconds a reload or a state change may take (sanitizer builds are slow)


# ---------------------------------------------------------------- helpers

def sha(key):
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def keygen():
    """(key, hash) from `gatehouse keygen`."""
    r = run_cli(["keygen"])
    assert r.returncode == 0, r
    lines = [ln.strip() for ln in r.stdout.decode().splitlines() if ln.strip()]
    assert len(lines) == 2 and lines[1].startswith("sha256:"), r.stdout
    return lines[0], lines[1]


def hash_key(key):
    """The hash `gatehouse hash-key` prints for key."""
    r = run_cli(["hash-key"], stdin=key.encode() + b"\n")
    assert r.returncode == 0, r
    return r.stdout.decode().strip()


def hdr(doc, name):
    """Values of header name as the echo backend received it."""
    return [v for k, v in doc["headers"] if k.lower() == name.lower()]


def xff(doc):
    return [p.strip() for v in hdr(doc, "x-forwarded-for") for p in v.split(",") if p.strip()]


def get(gh, host="app.test", target="/echo", headers=(), source=None):
    return request(gh.port, "GET", target, host=host, headers=headers, source=source)


def echo(gh, host="app.test", target="/echo", headers=(), source=None):
    """A request that must reach the aio backend; returns (response, echo doc)."""
    r = get(gh, host, target, headers, source)
    assert r.status == 200, r
    assert r.header("x-server") == "A", r
    return r, r.json()


def statuses(gh, host, n, headers=(), target="/echo", source=None):
    return [get(gh, host, target, headers, source).status for _ in range(n)]


def full(cfg, port):
    """cfg as the gatehouse fixture writes it, for rewriting before SIGHUP."""
    out = copy.deepcopy(cfg)
    out.setdefault("listen", [{"address": f"127.0.0.1:{port}"}])
    out.setdefault("access_log", {"path": "stdout", "format": "json"})
    out.setdefault("timeouts", {}).setdefault("shutdown", "3s")
    return out


def reload(gh, cfg):
    gh.config_path.write_text(to_yaml(full(cfg, gh.port)))
    gh.signal(signal.SIGHUP)


def start_with_admin(gatehouse, cfg):
    """gatehouse with an admin listener; returns (gh, admin_port)."""
    last = None
    for _ in range(3):
        aport = free_port()
        c = copy.deepcopy(cfg)
        c["admin"] = {"address": f"127.0.0.1:{aport}"}
        try:
            gh = gatehouse(c)
        except StartError as e:
            if "in use" not in str(e).lower():
                raise
            last = str(e)
            continue
        if wait_port(aport, WAIT, gh.proc):
            return gh, aport
        last = gh.stderr()
        gh.stop()
    pytest.fail(f"the admin listener did not open:\n{last}")


def metric(aport, family, plugin):
    r = request(aport, "GET", "/metrics", host="127.0.0.1")
    assert r.status == 200, r
    text = r.body.decode()
    m = re.search(r'^%s\{plugin="%s"\} (\S+)$' % (re.escape(family), re.escape(plugin)),
                  text, re.M)
    assert m, f"no {family}{{plugin=\"{plugin}\"}} sample in /metrics:\n{text}"
    return float(m.group(1))


def rl_headers(r):
    """RateLimit-Limit/Remaining/Reset of r as ints (asserting they are there)."""
    out = []
    for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"):
        v = r.header(name)
        assert v is not None and re.fullmatch(r"\d+", v), f"{name} = {v!r} in {r!r}"
        out.append(int(v))
    return tuple(out)


def retry_after(r):
    v = r.header("Retry-After")
    assert v is not None and re.fullmatch(r"\d+", v), f"Retry-After = {v!r} in {r!r}"
    return int(v)


def assert_429(r):
    assert_error_json(r, 429)
    retry_after(r)
    rl_headers(r)


def reset_sock(c):
    """Closes c's socket with an RST instead of a FIN."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


# ---------------------------------------------------------------- api_key

@pytest.fixture
def keys():
    """Two keys: one made by `gatehouse keygen`, one hashed by `hash-key`."""
    k1, h1 = keygen()
    k2 = "gh-test-" + secrets.token_urlsafe(24)
    h2 = hash_key(k2)
    assert h2 == sha(k2)
    return {"openwebui": (k1, h1), "n8n": (k2, h2)}


def key_config(keys, **plugin):
    p = {"type": "api_key",
         "keys": [{"id": i, "hash": h} for i, (_, h) in keys.items()],
         "forward_key_id": "X-Gatehouse-Key-Id"}
    p.update(plugin)
    return {"log_level": "debug",
            "plugins": {"require_key": p},
            "routes": [{"host": "api.test", "upstream": None, "plugins": ["require_key"]},
                       {"host": "open.test", "upstream": None}]}


def with_upstream(cfg, url):
    for r in cfg["routes"]:
        if "upstream" in r and r["upstream"] is None:
            r["upstream"] = url
    return cfg


def test_api_key_bearer_and_x_api_key_accepted_and_never_forwarded(gatehouse, aio, keys):
    gh = gatehouse(with_upstream(key_config(keys), aio.url))
    k1, k2 = keys["openwebui"][0], keys["n8n"][0]
    cases = [
        ("openwebui", [("Authorization", f"Bearer {k1}")]),
        ("openwebui", [("Authorization", f"bearer   {k1}  ")]),   # scheme is case-insensitive
        ("n8n", [("X-API-Key", k2)]),
        ("n8n", [("X-API-Key", k2), ("Authorization", "Basic dXNlcjpwYXNz")]),
        ("openwebui", [("Authorization", f"Bearer {k1}"), ("X-API-Key", k1)]),
    ]
    for kid, headers in cases:
        r, doc = echo(gh, "api.test", headers=headers)
        seen = [k.lower() for k, _ in doc["headers"]]
        assert "authorization" not in seen, (headers, doc["headers"])
        assert "x-api-key" not in seen, (headers, doc["headers"])
        assert hdr(doc, "X-Gatehouse-Key-Id") == [kid], (headers, doc["headers"])
        for key in (k1, k2):
            assert key not in json.dumps(doc), "a key reached the upstream"
    # A client cannot choose the id the upstream is told about.
    _, doc = echo(gh, "api.test", headers=[("X-Gatehouse-Key-Id", "admin"),
                                          ("X-API-Key", k2)])
    assert hdr(doc, "X-Gatehouse-Key-Id") == ["n8n"], doc["headers"]
    # A route without the plugin is untouched (the client's header goes through).
    _, doc = echo(gh, "open.test", headers=[("X-API-Key", "not-checked-here")])
    assert hdr(doc, "x-api-key") == ["not-checked-here"]


@pytest.mark.parametrize("headers,presented", [
    ([], False),
    ([("Authorization", "Basic dXNlcjpwYXNz")], False),
    ([("Authorization", "Bearer")], False),
    ([("Authorization", "Bearer wrong-key-0123456789")], True),
    ([("X-API-Key", "wrong-key-0123456789")], True),
], ids=["missing", "basic-scheme", "empty-bearer", "wrong-bearer", "wrong-x-api-key"])
def test_api_key_refusals_are_401_with_www_authenticate(gatehouse, aio, keys, headers, presented):
    gh = gatehouse(with_upstream(key_config(keys), aio.url))
    r = get(gh, "api.test", headers=headers)
    assert_error_json(r, 401)
    www = r.header("WWW-Authenticate")
    assert www is not None and www.split()[0] == "Bearer", r
    assert r.header("x-server") is None, "a refused request reached the upstream"
    # The key that was sent comes back nowhere in the answer.
    for _, v in headers:
        if "wrong-key" in v:
            assert b"wrong-key" not in r.body and "wrong-key" not in repr(r.headers), r


def test_api_key_near_miss_of_a_real_key_is_401(gatehouse, aio, keys):
    gh = gatehouse(with_upstream(key_config(keys), aio.url))
    k1 = keys["openwebui"][0]
    for bad in (k1[:-1], k1 + "x", k1.upper() if k1.upper() != k1 else k1.lower(), " "):
        assert_error_json(get(gh, "api.test", headers=[("X-API-Key", bad)]), 401)
    assert get(gh, "api.test", headers=[("X-API-Key", k1)]).status == 200


def test_api_key_never_logged_key_id_is(gatehouse, aio, keys):
    """Access log and diagnostics (log_level: debug) hold the id, never the key;
    /metrics counts the 401s."""
    gh, aport = start_with_admin(gatehouse, with_upstream(key_config(keys), aio.url))
    k1, k2 = keys["openwebui"][0], keys["n8n"][0]
    wrong = "wrong-" + secrets.token_urlsafe(24)
    sent = [
        ([("Authorization", f"Bearer {k1}")], 200, "openwebui"),
        ([("X-API-Key", k2)], 200, "n8n"),
        ([("X-API-Key", wrong)], 401, None),
        ([("Authorization", f"Bearer {wrong}")], 401, None),
        ([], 401, None),
    ]
    for i, (headers, status, _) in enumerate(sent):
        r = get(gh, "api.test", target=f"/echo/{i}", headers=headers)
        assert r.status == status, (headers, r)
    lines = gh.log_lines(min_count=len(sent))
    by_path = {ln.get("path"): ln for ln in lines}
    for i, (_, status, kid) in enumerate(sent):
        ln = by_path.get(f"/echo/{i}")
        assert ln is not None, f"no access log line for /echo/{i}: {lines}"
        assert ln["status"] == status, ln
        assert ln.get("key_id") == kid, ln
    assert metric(aport, "gatehouse_auth_failures_total", "require_key") == 3
    out = gh.stdout() + gh.stderr()
    for secret in (k1, k2, wrong):
        assert secret not in out, "a presented key appears in gatehouse's output"
    # Stopping writes its own diagnostics: those hold no key either.
    assert gh.stop() == 0
    out = gh.stdout() + gh.stderr()
    for secret in (k1, k2, wrong):
        assert secret not in out, "a presented key appears in gatehouse's output"


def test_api_key_keys_file_rotation_on_sighup(gatehouse, aio, tmp_path):
    old_key, old_hash = keygen()
    new_key, new_hash = keygen()
    kf = tmp_path / "keys"
    kf.write_text(f"# rotated by the test\nold-client {old_hash}\n")
    cfg = {"log_level": "debug",
           "plugins": {"require_key": {"type": "api_key", "keys_file": str(kf),
                                       "forward_key_id": "X-Key-Id"}},
           "routes": [{"host": "*", "upstream": aio.url, "plugins": ["require_key"]}]}
    gh = gatehouse(cfg)
    _, doc = echo(gh, headers=[("Authorization", f"Bearer {old_key}")])
    assert hdr(doc, "X-Key-Id") == ["old-client"]
    assert get(gh, headers=[("Authorization", f"Bearer {new_key}")]).status == 401

    # The YAML does not change: only the file does.
    kf.write_text(f"new-client {new_hash}  # since today\n")
    gh.signal(signal.SIGHUP)
    ok = wait_until(lambda: get(gh, headers=[("X-API-Key", new_key)]).status == 200, WAIT, 0.1)
    assert ok, f"the new key was not accepted after SIGHUP; stderr:\n{gh.stderr()[-2000:]}"
    _, doc = echo(gh, headers=[("X-API-Key", new_key)])
    assert hdr(doc, "X-Key-Id") == ["new-client"]
    assert_error_json(get(gh, headers=[("Authorization", f"Bearer {old_key}")]), 401)
    assert_error_json(get(gh, headers=[("X-API-Key", old_key)]), 401)
    assert gh.alive()
    out = gh.stdout() + gh.stderr()
    assert old_key not in out and new_key not in out, "a key appears in gatehouse's output"


def test_api_key_bad_keys_file_on_reload_keeps_old_keys(gatehouse, aio, tmp_path):
    key, h = keygen()
    kf = tmp_path / "keys"
    kf.write_text(f"svc {h}\n")
    cfg = {"plugins": {"require_key": {"type": "api_key", "keys_file": str(kf)}},
           "routes": [{"host": "*", "upstream": aio.url, "plugins": ["require_key"]}]}
    gh = gatehouse(cfg)
    assert get(gh, headers=[("X-API-Key", key)]).status == 200
    # A key pasted where its hash belongs: refused, and never echoed.
    pasted = "pasted-" + secrets.token_urlsafe(24)
    kf.write_text(f"svc {pasted}\n")
    gh.signal(signal.SIGHUP)
    assert wait_until(lambda: "keys" in gh.stderr() and re.search(r":1:\d+:", gh.stderr()),
                      WAIT), f"no file:line:col error for the keys file:\n{gh.stderr()}"
    assert get(gh, headers=[("X-API-Key", key)]).status == 200
    assert gh.alive()
    assert pasted not in gh.stdout() + gh.stderr(), "the pasted key was logged"


# ---------------------------------------------------------------- rate_limit

def flood(port, host, seconds, threads=4, headers=(), source=None):
    """Every thread sends requests back to back on its own keep-alive
    connection until `seconds` after the first request of all was sent (the
    connections are open before the clock starts). Returns the responses,
    each with .sent and .received (time.monotonic())."""
    results, errors = [], []
    lock = threading.Lock()
    start = threading.Barrier(threads)
    t0 = []
    raw = build_request("GET", "/echo", host=host, headers=headers)

    def worker():
        mine = []
        c = None
        try:
            c = Conn(port, timeout=10, source=source)
            start.wait(10)
            for _ in range(1000000):
                now = time.monotonic()
                with lock:
                    if not t0:
                        t0.append(now)
                if now >= t0[0] + seconds:
                    break
                if c is None:
                    c = Conn(port, timeout=10, source=source)
                    now = time.monotonic()
                c.send(raw)
                r = c.read_response()
                r.sent, r.received = now, time.monotonic()
                mine.append(r)
                if (r.header("connection") or "").lower() == "close":
                    c.close()
                    c = None
        except (OSError, Closed, ProtocolError, TimeoutError, threading.BrokenBarrierError) as e:
            with lock:
                errors.append(repr(e))
        finally:
            if c is not None:
                c.close()
            with lock:
                results.extend(mine)

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 30)
    assert not any(t.is_alive() for t in ts), "a flood thread hung"
    assert not errors, errors
    return results


@pytest.mark.parametrize("workers", [1, 4])
def test_rate_limit_accuracy_10_per_s_burst_20(gatehouse, aio, workers):
    """3 s of flooding gives burst + 3 s * rate = 20 + 30 (README's example),
    with every worker thread sharing one bucket (SPEC: state shared by all
    workers).

    The client can only bound when gatehouse saw the first and the last
    request (between their send and receive times). A run in which that
    uncertainty is over one emission interval (0.1 s: the machine stalled
    one side or the other) says nothing exact, so it is done again from
    another client address (a fresh bucket), up to three times; the last
    run is held to 50 +- 2 whatever happened."""
    cfg = {"workers": workers,
           "plugins": {"per_ip": {"type": "rate_limit", "rate": "10/s", "burst": 20,
                                  "by": "client_ip"}},
           "routes": [{"host": "*", "upstream": aio.url, "plugins": ["per_ip"]}]}
    gh, aport = start_with_admin(gatehouse, cfg)
    total_limited = 0
    sources = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    for attempt, source in enumerate(sources):
        results = flood(gh.port, "api.test", 3.0, threads=4, source=source)
        codes = [r.status for r in results]
        ok, limited = codes.count(200), codes.count(429)
        total_limited += limited
        assert ok + limited == len(codes), f"unexpected statuses {set(codes)}"
        assert limited > 100, f"the flood was too slow to test anything ({len(codes)} requests)"
        lo = max(r.sent for r in results) - min(r.received for r in results)
        hi = max(r.received for r in results) - min(r.sent for r in results)
        # Whatever the stalls, the count fits the window gatehouse saw.
        assert 20 + int(lo * 10) - 1 <= ok <= 20 + int(hi * 10) + 1, \
            f"{ok} requests passed while the flood lasted {lo:.3f} to {hi:.3f} s"
        if hi - lo <= 0.1 or attempt == len(sources) - 1:
            break
    assert abs(ok - 50) <= 2, f"{ok} requests passed in 3 s (expected 20 + 30 = 50 +- 2), " \
                              f"{limited} got 429; the flood lasted {lo:.3f} to {hi:.3f} s " \
                              f"as gatehouse saw it"
    passed = [r for r in results if r.status == 200]
    refused = [r for r in results if r.status == 429]
    remaining = []
    for r in passed:
        lim, rem, reset = rl_headers(r)
        assert lim == 20 and 0 <= rem <= 19 and reset <= 2, r
        remaining.append(rem)
    assert max(remaining) == 19, "the first request of a full bucket leaves 19"
    for r in refused:
        assert_error_json(r, 429)
        lim, rem, reset = rl_headers(r)
        assert lim == 20 and rem == 0 and 1 <= reset <= 2, r
        assert retry_after(r) == 1, r
    assert metric(aport, "gatehouse_rate_limited_total", "per_ip") == total_limited


def test_rate_limit_headers_count_down_then_429(gatehouse, aio):
    cfg = {"plugins": {"slow": {"type": "rate_limit", "rate": "1/m", "burst": 3}},
           "routes": [{"host": "*", "upstream": aio.url, "plugins": ["slow"]}]}
    gh = gatehouse(cfg)
    for want in (2, 1, 0):
        r = get(gh)
        assert r.status == 200, r
        lim, rem, reset = rl_headers(r)
        assert (lim, rem) == (3, want), r
        # back to a full burst: (3 - remaining) minutes, rounded up
        assert (3 - want) * 60 - 2 <= reset <= (3 - want) * 60, r
    r = get(gh)
    assert_429(r)
    lim, rem, reset = rl_headers(r)
    assert (lim, rem) == (3, 0), r
    assert 170 <= reset <= 180, r
    assert 55 <= retry_after(r) <= 60, r
    assert r.header("x-server") is None, "a limited request reached the upstream"


def test_rate_limit_by_header_separates_tenants(gatehouse, aio):
    cfg = {"plugins": {"per_tenant": {"type": "rate_limit", "rate": "1/m", "burst": 2,
                                      "by": "header:X-Tenant"}},
           "routes": [{"host": "*", "upstream": aio.url, "plugins": ["per_tenant"]}]}
    gh = gatehouse(cfg)
    assert statuses(gh, "app.test", 3, [("X-Tenant", "acme")]) == [200, 200, 429]
    assert statuses(gh, "app.test", 3, [("X-Tenant", "globex")]) == [200, 200, 429]
    assert statuses(gh, "app.test", 1, [("X-Tenant", "acme")]) == [429]
    # Without the header a client is limited by its address, not let through.
    assert statuses(gh, "app.test", 3) == [200, 200, 429]


def test_rate_limit_by_route(gatehouse, aio):
    cfg = {"plugins": {"per_route": {"type": "rate_limit", "rate": "1/m", "burst": 2,
                                     "by": "route"}},
           "routes": [{"host": "a.test", "upstream": aio.url, "plugins": ["per_route"]},
                      {"host": "b.test", "upstream": aio.url, "plugins": ["per_route"]}]}
    gh = gatehouse(cfg)
    assert statuses(gh, "a.test", 2, source="127.0.0.1") == [200, 200]
    # Another client shares the route's budget.
    assert_429(get(gh, "a.test", source="127.0.0.2"))
    assert statuses(gh, "b.test", 3, source="127.0.0.2") == [200, 200, 429]


def test_rate_limit_overrides_for_a_key_id(gatehouse, aio, keys):
    (k1, h1), (k2, h2) = keys["openwebui"], keys["n8n"]
    cfg = {"plugins": {
        "require_key": {"type": "api_key", "keys": [{"id": "openwebui", "hash": h1},
                                                    {"id": "n8n", "hash": h2}]},
        "per_key": {"type": "rate_limit", "rate": "1/m", "burst": 2, "by": "api_key",
                    "overrides": {"n8n": {"rate": "1/m", "burst": 5}}}},
        "routes": [{"host": "*", "upstream": aio.url,
                    "plugins": ["require_key", "per_key"]}]}
    gh = gatehouse(cfg)
    a = [get(gh, headers=[("X-API-Key", k1)]) for _ in range(3)]
    assert [r.status for r in a] == [200, 200, 429], a
    assert rl_headers(a[0])[0] == 2
    b = [get(gh, headers=[("X-API-Key", k2)]) for _ in range(6)]
    assert [r.status for r in b] == [200] * 5 + [429], b
    assert rl_headers(b[0])[:2] == (5, 4)
    # Keys, not addresses: both came from 127.0.0.1. The access log says who.
    # Lines from different connections may come in any order when workers > 1.
    lines = gh.log_lines(min_count=9)
    seen = sorted((ln.get("key_id"), ln["status"]) for ln in lines[-9:])
    assert seen == sorted([("openwebui", 200)] * 2 + [("openwebui", 429)]
                          + [("n8n", 200)] * 5 + [("n8n", 429)]), lines
    # Refused before the limiter: no key, 401, not 429.
    assert get(gh).status == 401


def start_sse(port, n, delay):
    c = Conn(port, timeout=30)
    c.send(build_request("GET", f"/sse?n={n}&delay={delay}", host="app.test"))
    head = c.read_head()
    assert head.status == 200, head
    return c, head


def conc_config(aio):
    return {"plugins": {"two": {"type": "rate_limit", "rate": "1000/s", "burst": 1000,
                                "concurrency": 2}},
            "routes": [{"host": "*", "upstream": aio.url, "plugins": ["two"]}]}


def test_rate_limit_concurrency_slot_freed_when_stream_ends(gatehouse, aio):
    gh = gatehouse(conc_config(aio))
    c1, h1 = start_sse(gh.port, 3, 0.5)
    c2, h2 = start_sse(gh.port, 40, 0.5)
    try:
        r = get(gh)
        assert_429(r)
        assert retry_after(r) == 1, r
        body = b"".join(c1.iter_body(h1, timeout=20))
        assert body.count(b"data: ") == 3, body
        # The first stream is over: its slot is free again.
        ok = wait_until(lambda: get(gh).status == 200, 5, 0.05)
        assert ok, "a request was still refused after a stream finished"
        # ... exactly one slot: a new stream fills it, the next request is refused.
        c3, _ = start_sse(gh.port, 40, 0.5)
        try:
            assert_429(get(gh))
        finally:
            c3.close()
    finally:
        c1.close()
        c2.close()


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_rate_limit_concurrency_slot_freed_when_client_disconnects(gatehouse, aio, how):
    gh = gatehouse(conc_config(aio))
    c1, _ = start_sse(gh.port, 100, 0.2)
    c2, _ = start_sse(gh.port, 100, 0.2)
    conns = [c2]
    try:
        assert_429(get(gh))
        reset_sock(c1) if how == "rst" else c1.close()
        ok = wait_until(lambda: get(gh).status == 200, 10, 0.05)
        assert ok, "the slot of a client that went away was never released"
        # One slot came back, not more.
        c3, _ = start_sse(gh.port, 100, 0.2)
        conns.append(c3)
        assert_429(get(gh))
    finally:
        c1.close()
        for c in conns:
            c.close()


def test_rate_limit_state_kept_across_reload_reset_on_change(gatehouse, aio):
    plugin = {"type": "rate_limit", "rate": "1/m", "burst": 3, "by": "client_ip"}
    cfg = {"plugins": {"slow": plugin},
           "routes": [{"host": "app.test", "upstream": aio.url, "plugins": ["slow"]}]}
    gh = gatehouse(cfg)
    assert statuses(gh, "app.test", 4) == [200, 200, 200, 429]

    # Unrelated change: a new route. Keys reordered in the plugin's mapping
    # do not make it a different definition either.
    cfg2 = copy.deepcopy(cfg)
    cfg2["plugins"]["slow"] = {"by": "client_ip", "burst": 3, "rate": "1/m",
                               "type": "rate_limit"}
    cfg2["routes"].append({"host": "marker1.test", "respond": {"status": 200, "body": "1"}})
    reload(gh, cfg2)
    assert wait_until(lambda: get(gh, "marker1.test").status == 200, WAIT), \
        f"the reload did not happen:\n{gh.stderr()[-2000:]}"
    r = get(gh, "app.test")
    assert_429(r)

    # The plugin's definition changes: fresh buckets.
    cfg3 = copy.deepcopy(cfg2)
    cfg3["plugins"]["slow"]["burst"] = 4
    cfg3["routes"].append({"host": "marker2.test", "respond": {"status": 200, "body": "2"}})
    reload(gh, cfg3)
    assert wait_until(lambda: get(gh, "marker2.test").status == 200, WAIT), \
        f"the reload did not happen:\n{gh.stderr()[-2000:]}"
    codes = statuses(gh, "app.test", 5)
    assert codes == [200, 200, 200, 200, 429], codes


def test_rate_limit_in_flight_stream_survives_reload(gatehouse, aio):
    """A concurrency slot taken before a reload (plugin unchanged) still counts
    after it, and is given back to the same table when the stream ends."""
    cfg = conc_config(aio)
    gh = gatehouse(cfg)
    c1, h1 = start_sse(gh.port, 8, 0.25)
    c2, _ = start_sse(gh.port, 100, 0.2)
    try:
        cfg2 = copy.deepcopy(cfg)
        cfg2["routes"].insert(0, {"host": "marker.test", "respond": {"status": 200, "body": "m"}})
        reload(gh, cfg2)
        assert wait_until(lambda: get(gh, "marker.test").status == 200, WAIT)
        assert_429(get(gh))
        body = b"".join(c1.iter_body(h1, timeout=20))
        assert body.count(b"data: ") == 8
        assert wait_until(lambda: get(gh).status == 200, 5, 0.05), \
            "the slot taken before the reload was not released into the new config's table"
    finally:
        c1.close()
        c2.close()


# ---------------------------------------------------------------- ip_filter

def test_ip_filter_allow_and_deny(gatehouse, aio):
    cfg = {"plugins": {
        "allow_local": {"type": "ip_filter", "allow": ["127.0.0.0/8"]},
        "allow_office": {"type": "ip_filter", "allow": ["10.0.0.0/8", "192.0.2.0/24"]},
        "deny_local": {"type": "ip_filter", "deny": ["127.0.0.0/8"]},
        "deny_office": {"type": "ip_filter", "deny": ["10.0.0.0/8"]},
        "allow_but_two": {"type": "ip_filter", "allow": ["127.0.0.0/8"],
                          "deny": ["127.0.0.2/32"]}},
        "routes": [{"host": f"{n.replace('_', '-')}.test", "upstream": aio.url, "plugins": [n]}
                   for n in ("allow_local", "allow_office", "deny_local", "deny_office",
                             "allow_but_two")]}
    gh = gatehouse(cfg)
    assert echo(gh, "allow-local.test")[0].status == 200
    r = get(gh, "allow-office.test")
    assert_error_json(r, 403)
    assert r.header("x-server") is None
    assert_error_json(get(gh, "deny-local.test"), 403)
    assert echo(gh, "deny-office.test")[0].status == 200
    # deny wins over allow
    assert echo(gh, "allow-but-two.test", source="127.0.0.1")[0].status == 200
    assert_error_json(get(gh, "allow-but-two.test", source="127.0.0.2"), 403)
    lines = gh.log_lines(min_count=6)
    seen = sorted((ln["host"], ln["client"], ln["status"]) for ln in lines[-6:])
    assert seen == sorted([("allow-local.test", "127.0.0.1", 200),
                           ("allow-office.test", "127.0.0.1", 403),
                           ("deny-local.test", "127.0.0.1", 403),
                           ("deny-office.test", "127.0.0.1", 200),
                           ("allow-but-two.test", "127.0.0.1", 200),
                           ("allow-but-two.test", "127.0.0.2", 403)]), lines


def test_ip_filter_uses_real_address_behind_trusted_proxy(gatehouse, aio):
    cfg = {"trusted_proxies": ["127.0.0.1/32"],
           "plugins": {"docs_net": {"type": "ip_filter", "allow": ["203.0.113.0/24"]},
                       "no_docs_net": {"type": "ip_filter", "deny": ["203.0.113.0/24"]}},
           "routes": [{"host": "allow.test", "upstream": aio.url, "plugins": ["docs_net"]},
                      {"host": "deny.test", "upstream": aio.url, "plugins": ["no_docs_net"]}]}
    gh = gatehouse(cfg)
    via = [("X-Forwarded-For", "203.0.113.7")]
    _, doc = echo(gh, "allow.test", headers=via)
    assert hdr(doc, "x-real-ip") == ["203.0.113.7"], doc["headers"]
    assert_error_json(get(gh, "allow.test", headers=[("X-Forwarded-For", "198.51.100.1")]), 403)
    assert_error_json(get(gh, "allow.test"), 403)          # the proxy itself: 127.0.0.1
    assert_error_json(get(gh, "deny.test", headers=via), 403)
    assert echo(gh, "deny.test", headers=[("X-Forwarded-For", "198.51.100.1")])[0].status == 200
    lines = gh.log_lines(min_count=5)
    ok = [ln for ln in lines if ln["host"] == "allow.test" and ln["status"] == 200]
    assert [ln["client"] for ln in ok] == ["203.0.113.7"], lines
    # A client outside trusted_proxies is not believed even with a trusted config.
    assert_error_json(get(gh, "allow.test", headers=via, source="127.0.0.2"), 403)


def test_spoofed_x_forwarded_for_from_untrusted_client_is_ignored(gatehouse, aio):
    cfg = {"trusted_proxies": [],
           "plugins": {"docs_net": {"type": "ip_filter", "allow": ["203.0.113.0/24"]},
                       "local": {"type": "ip_filter", "allow": ["127.0.0.0/8"]},
                       "no_ten": {"type": "ip_filter", "deny": ["10.0.0.0/8"]},
                       "per_ip": {"type": "rate_limit", "rate": "1/m", "burst": 2}},
           "routes": [{"host": "docs.test", "upstream": aio.url, "plugins": ["docs_net"]},
                      {"host": "local.test", "upstream": aio.url, "plugins": ["local"]},
                      {"host": "noten.test", "upstream": aio.url, "plugins": ["no_ten"]},
                      {"host": "limited.test", "upstream": aio.url, "plugins": ["per_ip"]}]}
    gh = gatehouse(cfg)
    assert_error_json(get(gh, "docs.test", headers=[("X-Forwarded-For", "203.0.113.7")]), 403)
    for host in ("local.test", "noten.test"):
        _, doc = echo(gh, host, headers=[("X-Forwarded-For", "10.1.2.3"),
                                         ("X-Real-IP", "10.1.2.3")])
        assert hdr(doc, "x-real-ip") == ["127.0.0.1"], doc["headers"]
        assert xff(doc)[-1:] == ["127.0.0.1"], doc["headers"]
    # Nor does a made-up address buy a fresh rate-limit bucket.
    codes = [get(gh, "limited.test", headers=[("X-Forwarded-For", f"198.51.100.{i}")]).status
             for i in range(1, 4)]
    assert codes == [200, 200, 429], codes
    assert all(ln["client"] == "127.0.0.1" for ln in gh.log_lines(min_count=6)), gh.stdout()


# ---------------------------------------------------------------- headers

def test_headers_plugin_request_and_response_edits(gatehouse, aio, keys):
    cfg = {"plugins": {
        "edits": {"type": "headers",
                  "request_set": {"X-Env": "prod", "X-Overwritten": "new"},
                  "request_remove": ["X-Debug", "X-Internal-Token"],
                  "response_set": {"Strict-Transport-Security": "max-age=31536000",
                                   "X-Frame-Options": "DENY"},
                  "response_remove": ["X-Server"]},
        "rename_server": {"type": "headers", "response_set": {"X-Server": "edge"}},
        "require_key": {"type": "api_key",
                        "keys": [{"id": "openwebui", "hash": keys["openwebui"][1]}]}},
        "routes": [{"host": "app.test", "upstream": aio.url, "plugins": ["edits"]},
                   {"host": "renamed.test", "upstream": aio.url, "plugins": ["rename_server"]},
                   {"host": "locked.test", "upstream": aio.url,
                    "plugins": ["edits", "require_key"]}]}
    gh = gatehouse(cfg)
    r = get(gh, "app.test", headers=[("X-Debug", "1"), ("x-internal-token", "t0k"),
                                     ("X-Overwritten", "old"), ("X-Keep", "yes")])
    assert r.status == 200, r
    doc = r.json()
    assert doc["server"] == "A"
    assert hdr(doc, "X-Env") == ["prod"], doc["headers"]
    assert hdr(doc, "X-Overwritten") == ["new"], doc["headers"]
    assert hdr(doc, "X-Debug") == [] and hdr(doc, "X-Internal-Token") == [], doc["headers"]
    assert hdr(doc, "X-Keep") == ["yes"], doc["headers"]
    assert r.header_all("Strict-Transport-Security") == ["max-age=31536000"], r
    assert r.header_all("X-Frame-Options") == ["DENY"], r
    assert r.header("X-Server") is None, r

    r = get(gh, "renamed.test")
    assert r.status == 200 and r.header_all("X-Server") == ["edge"], r

    # Response edits apply to answers gatehouse makes itself (plugin.h).
    r = get(gh, "locked.test")
    assert_error_json(r, 401)
    assert r.header_all("Strict-Transport-Security") == ["max-age=31536000"], r
    r, doc = echo_through(gh, "locked.test", keys["openwebui"][0])
    assert hdr(doc, "X-Env") == ["prod"]
    assert r.header("Strict-Transport-Security") == "max-age=31536000"


def echo_through(gh, host, key):
    r = get(gh, host, headers=[("X-API-Key", key)])
    assert r.status == 200, r
    return r, r.json()


def test_headers_plugin_edits_on_a_keep_alive_connection_and_sse(gatehouse, aio):
    cfg = {"plugins": {"edits": {"type": "headers", "request_set": {"X-Env": "prod"},
                                 "response_set": {"X-Frame-Options": "DENY"},
                                 "response_remove": ["Cache-Control"]}},
           "routes": [{"host": "*", "upstream": aio.url, "plugins": ["edits"]}]}
    gh = gatehouse(cfg)
    with Conn(gh.port) as c:
        for i in range(3):
            c.send(build_request("GET", f"/echo/{i}", host="app.test",
                                 headers=[("X-Env", "dev")]))
            r = c.read_response()
            assert r.status == 200 and r.header("X-Frame-Options") == "DENY", r
            assert hdr(r.json(), "X-Env") == ["prod"], r
        c.send(build_request("GET", "/sse?n=2&delay=0.05", host="app.test"))
        r = c.read_response()
        assert r.status == 200 and r.body.count(b"data: ") == 2, r
        assert r.header("Cache-Control") is None and r.header("X-Frame-Options") == "DENY", r
