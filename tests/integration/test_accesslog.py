"""SPEC section 3 "Access log": one JSON object a line per request, with
ts, client, method, host, path, status, bytes_in, bytes_out, duration_ms,
route, upstream, request_id, key_id. Also `off`, a file, and `combined`."""
import json
import re
import time
from datetime import datetime, timezone

import pytest

from harness import Conn, build_request, request, wait_until

FIELDS = ["ts", "client", "method", "host", "path", "status", "bytes_in", "bytes_out",
          "duration_ms", "route", "upstream", "request_id", "key_id"]


def blank(v):
    return v in (None, "", "-")


def ts_seconds(v):
    """A log timestamp as UNIX seconds: a number (s or ms) or ISO 8601."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v / 1000.0 if v > 1e11 else float(v)
    if isinstance(v, str):
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    raise AssertionError(f"ts is neither a number nor ISO 8601: {v!r}")


def client_ip(v):
    assert isinstance(v, str), v
    return v if v.count(":") != 1 else v.split(":")[0]


@pytest.fixture
def log_gh(gatehouse, aio):
    return gatehouse({"routes": [
        {"host": "app.test", "upstream": aio.url},
        {"host": "old.test", "redirect": "https://new.test{path}"},
        {"host": "tea.test", "respond": {"status": 418, "body": "tea\n"}},
    ]})


CASES = [
    # method, target, host, body, kind
    ("GET", "/echo?x=1", "app.test", None, "upstream"),
    ("POST", "/upload", "app.test", b"z" * 123, "upstream"),
    ("GET", "/slow-head?delay=1", "app.test", None, "upstream"),
    ("GET", "/a", "old.test", None, "redirect"),
    ("GET", "/", "tea.test", None, "respond"),
    ("GET", "/", "nope.test", None, "none"),
]


def test_one_json_line_per_request_with_right_values(log_gh, aio):
    sent = []
    t_start = time.time()
    for method, target, host, body, kind in CASES:
        raw = build_request(method, target, host, body=body)
        with Conn(log_gh.port) as c:
            c.send(raw)
            r = c.read_response(method)
        sent.append((method, target, host, body, kind, raw, r))
    lines = log_gh.log_lines(min_count=len(CASES), timeout=10)
    assert len(lines) == len(CASES), f"{len(lines)} log lines for {len(CASES)} requests:\n" \
        + log_gh.stdout()[-3000:]
    by_id = {ln.get("request_id"): ln for ln in lines}
    t_end = time.time()
    logged = {}
    for method, target, host, body, kind, raw, r in sent:
        rid = r.header("x-request-id")
        if kind == "upstream" or kind == "none":
            assert rid, f"no X-Request-ID on a proxied or error response: {r!r}"
        if rid:
            assert rid in by_id, f"no log line with request_id {rid}: {lines}"
            ln = by_id[rid]
        else:
            mine = [x for x in lines if x.get("host") == host]
            assert len(mine) == 1, (host, lines)
            ln = mine[0]
        logged[host + target] = ln
        for f in FIELDS:
            assert f in ln, f"field {f} missing: {ln}"
        assert t_start - 5 <= ts_seconds(ln["ts"]) <= t_end + 5, ln
        assert client_ip(ln["client"]) == "127.0.0.1", ln
        assert ln["method"] == method
        assert ln["host"] == host
        assert ln["path"].split("?")[0] == target.split("?")[0], ln
        assert ln["status"] == r.status and isinstance(ln["status"], int), ln
        assert isinstance(ln["bytes_in"], int) and isinstance(ln["bytes_out"], int), ln
        assert len(body or b"") <= ln["bytes_in"] <= len(raw), (ln, len(raw))
        assert len(r.body) <= ln["bytes_out"] <= r.wire_bytes, (ln, r.wire_bytes)
        assert isinstance(ln["duration_ms"], (int, float)) and ln["duration_ms"] >= 0, ln
        assert blank(ln["key_id"]), ln
        if kind == "upstream":
            assert str(aio.port) in str(ln["upstream"]), ln
            assert host in str(ln["route"]), ln
        else:
            assert blank(ln["upstream"]), ln
        if kind in ("redirect", "respond"):
            assert host in str(ln["route"]), ln
        if kind == "none":
            assert r.status == 404
            assert blank(ln["route"]), ln
        if "slow-head" in target:
            assert ln["duration_ms"] >= 900, f"a 1 s request logged as {ln['duration_ms']} ms"
    routes = {str(logged[s[2] + s[1]]["route"]) for s in sent if s[4] != "none"}
    assert len(routes) == 3, f"three routes, logged as {routes}"


def test_pipelined_requests_each_get_a_line(log_gh):
    with Conn(log_gh.port) as c:
        c.send(b"".join(build_request("GET", f"/echo?p={i}", "app.test") for i in range(3)))
        ids = [c.read_response().header("x-request-id") for _ in range(3)]
    lines = log_gh.log_lines(min_count=3, timeout=10)
    assert len(lines) == 3, lines
    assert {ln["request_id"] for ln in lines} == set(ids)
    assert sorted(ln["path"].split("?")[0] for ln in lines) == ["/echo"] * 3


def test_access_log_off(gatehouse):
    gh = gatehouse({"access_log": "off",
                    "routes": [{"host": "*", "respond": {"status": 200, "body": "x"}}]})
    assert request(gh.port, host="a.test").status == 200
    assert gh.stop() == 0
    assert not any(ln.lstrip().startswith("{") for ln in gh.stdout().splitlines()), gh.stdout()


def test_access_log_to_a_file(gatehouse, tmp_path):
    path = tmp_path / "access.log"
    gh = gatehouse({"access_log": {"path": str(path), "format": "json"},
                    "routes": [{"host": "*", "respond": {"status": 200, "body": "x"}}]})
    r = request(gh.port, host="a.test", target="/to-file")

    def lines():
        try:
            return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        except (OSError, ValueError):
            return []
    got = wait_until(lines, 10)
    assert got and got[0]["path"] == "/to-file", got
    assert got[0]["request_id"] == r.header("x-request-id")


def test_combined_format(gatehouse):
    gh = gatehouse({"access_log": {"path": "stdout", "format": "combined"},
                    "routes": [{"host": "*", "respond": {"status": 200, "body": "hello"}}]})
    r = request(gh.port, target="/c?q=1", host="a.test",
                headers=[("User-Agent", "gh-test/1.0"), ("Referer", "http://ref.test/")])
    assert r.status == 200
    pat = re.compile(r'^127\.0\.0\.1 \S+ \S+ \[[^\]]+\] "GET /c\?q=1 HTTP/1\.1" 200 (\d+|-) '
                     r'"http://ref\.test/" "gh-test/1\.0"')
    assert wait_until(lambda: any(pat.match(ln) for ln in gh.stdout().splitlines()), 10), \
        gh.stdout()
