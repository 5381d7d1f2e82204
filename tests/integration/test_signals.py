"""SPEC section 1 signals and section 3 "Reload": graceful stop, -s, SIGHUP."""
import json
import signal
import socket
import time

from harness import (Conn, Deadline, Truncated, build_request, free_port, request,
                     run_cli, to_yaml, wait_port, wait_until)


def sse_events(body):
    return [json.loads(ln[6:]) for ln in body.decode().splitlines() if ln.startswith("data: ")]


def refused(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_sigterm_finishes_in_flight_then_exits_0(gatehouse, aio):
    gh = gatehouse({"timeouts": {"shutdown": "20s"},
                    "routes": [{"host": "*", "upstream": aio.url}]})
    with Conn(gh.port, timeout=20) as c:
        c.send(build_request("GET", "/sse?n=4&delay=1.0", host="app.test"))
        head = c.read_head()
        assert head.status == 200
        gh.signal(signal.SIGTERM)
        # It stops accepting while the stream is still being served.
        saw_refusal_while_alive = wait_until(lambda: refused(gh.port) and gh.alive(), 3, 0.02)
        body = bytearray()
        for piece in c.iter_body(head, timeout=20):
            body += piece
    assert [e["i"] for e in sse_events(bytes(body))] == [0, 1, 2, 3]
    rc = gh.stop(timeout=15)
    assert rc == 0, f"exit status {rc} after SIGTERM"
    assert saw_refusal_while_alive, "new connections were still accepted during the drain"


def test_sigterm_gives_up_after_shutdown_timeout(gatehouse, aio):
    gh = gatehouse({"timeouts": {"shutdown": "1s"},
                    "routes": [{"host": "*", "upstream": aio.url}]})
    with Conn(gh.port, timeout=20) as c:
        c.send(build_request("GET", "/sse?n=20&delay=1.0", host="app.test"))
        head = c.read_head()
        assert head.status == 200
        t0 = time.monotonic()
        gh.signal(signal.SIGTERM)
        exited = wait_until(lambda: not gh.alive(), 10, 0.05)
        took = time.monotonic() - t0
        assert exited, "still running 10s after SIGTERM with timeouts.shutdown 1s"
        # The stream (19 s long) was cut, not completed.
        resp_body = bytearray()
        complete = True
        try:
            for piece in c.iter_body(head, timeout=5):
                resp_body += piece
        except Truncated:
            complete = False
        assert not complete
    rc = gh.stop()
    assert rc == 0, f"exit status {rc} (SPEC: 0 after the drain)"
    assert took < 8, took


def test_second_sigterm_stops_at_once(gatehouse, aio):
    gh = gatehouse({"timeouts": {"shutdown": "30s"},
                    "routes": [{"host": "*", "upstream": aio.url}]})
    with Conn(gh.port, timeout=20) as c:
        c.send(build_request("GET", "/sse?n=30&delay=1.0", host="app.test"))
        assert c.read_head().status == 200
        gh.signal(signal.SIGTERM)
        # Two signals sent back to back may merge into one; send the second
        # once the first has visibly been acted on (the listener closed).
        assert wait_until(lambda: refused(gh.port), 5), "SIGTERM did not close the listener"
        assert gh.alive()
        gh.signal(signal.SIGTERM)
        assert wait_until(lambda: not gh.alive(), 10, 0.05), \
            "a second SIGTERM did not stop gatehouse (a 30 s stream was in flight)"
    gh.stop()


def _pid_config(tmp_path, port, body, extra=""):
    return f"""listen:
  - address: "127.0.0.1:{port}"
pid_file: {tmp_path / 'gatehouse.pid'}
timeouts: {{ shutdown: 3s }}
{extra}routes:
  - host: "*"
    respond: {{ status: 200, body: "{body}" }}
"""


def test_dash_s_stop_and_reload(gatehouse, tmp_path):
    gh = gatehouse(_pid_config(tmp_path, "@PORT@", "one"))
    pid_file = tmp_path / "gatehouse.pid"
    assert wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 10), \
        "pid_file was not written"
    assert int(pid_file.read_text().strip()) == gh.pid
    assert request(gh.port, host="x.test").body == b"one"

    gh.config_path.write_text(_pid_config(tmp_path, gh.port, "two"))
    r = run_cli(["-s", "reload", "-c", str(gh.config_path)])
    assert r.returncode == 0, r
    assert wait_until(lambda: request(gh.port, host="x.test").body == b"two", 10), \
        "the reloaded config was not used"

    r = run_cli(["-s", "stop", "-c", str(gh.config_path)])
    assert r.returncode == 0, r
    assert wait_until(lambda: not gh.alive(), 15)
    assert gh.stop() == 0


def test_sighup_bad_config_keeps_old_one_and_logs_position(gatehouse):
    cfg = {"routes": [{"host": "*", "respond": {"status": 200, "body": "old"}}]}
    gh = gatehouse(cfg)
    assert request(gh.port, host="x.test").body == b"old"
    good = gh.config_path.read_text()
    gh.config_path.write_text(good.replace("routes:", "timeouts_typo:\n  header: 1s\nroutes:")
                              .replace('"old"', '"new"').replace("body: old", "body: new"))
    gh.signal(signal.SIGHUP)
    assert wait_until(lambda: f"{gh.config_path}:" in gh.stderr(), 10), \
        f"no FILE:LINE:COL error logged:\n{gh.stderr()}"
    assert gh.alive()
    r = request(gh.port, host="x.test")
    assert r.status == 200 and r.body == b"old", r


def test_sighup_keeps_streams_and_moves_listeners(gatehouse, aio):
    cfg = {"timeouts": {"shutdown": "3s"},
           "routes": [{"host": "*", "upstream": aio.url}]}
    gh = gatehouse(cfg)
    new_port = free_port()
    with Conn(gh.port, timeout=20) as c:
        c.send(build_request("GET", "/sse?n=4&delay=0.7", host="app.test"))
        head = c.read_head()
        assert head.status == 200
        text = {"listen": [{"address": f"127.0.0.1:{new_port}"}],
                "timeouts": {"shutdown": "3s"},
                "access_log": {"path": "stdout", "format": "json"},
                "routes": [{"host": "*", "respond": {"status": 200, "body": "reloaded"}}]}
        gh.config_path.write_text(to_yaml(text))
        gh.signal(signal.SIGHUP)
        assert wait_port(new_port, 10), "the new listener did not open"
        r = request(new_port, host="x.test")
        assert r.body == b"reloaded", r
        assert wait_until(lambda: refused(gh.port), 10), "the removed listener stayed open"
        body = bytearray()
        for piece in c.iter_body(head, timeout=20):
            body += piece
    assert [e["i"] for e in sse_events(bytes(body))] == [0, 1, 2, 3], \
        "a stream in flight did not survive the reload"
    assert gh.alive()


def test_reload_refuses_no_connection(gatehouse):
    """Connections made while reloads happen are all answered."""
    cfg = {"routes": [{"host": "*", "respond": {"status": 200, "body": "x"}}]}
    gh = gatehouse(cfg)
    statuses = []
    dl = Deadline(20)
    for i in range(40):
        if dl.expired():
            break
        if i % 5 == 0:
            gh.signal(signal.SIGHUP)
        try:
            statuses.append(request(gh.port, host="x.test", timeout=5).status)
        except OSError as e:
            statuses.append(repr(e))
    assert statuses and all(s == 200 for s in statuses), statuses

