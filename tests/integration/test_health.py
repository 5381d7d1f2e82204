"""Active upstream health checks (SPEC section 2 `health_check:`, section 3
"every server down 503"): servers whose checks fail `fall` times in a row are
skipped, they come back after `rise` passes, a group with every server down
answers 503, refused connections and timeouts count as failures, and a
reload keeps what the checks found."""
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import Deadline, assert_error_json, request, wait_until

INTERVAL = "200ms"
TIMEOUT = "150ms"
WAIT = 15  # seconds any state change may take (ASan builds are slow)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _send(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Backend", self.server.backend.name)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        b = self.server.backend
        if self.path != "/health":
            self._send(200, f"served by {b.name}\n")
            return
        with b.lock:
            mode = b.mode
            b.health_requests.append((mode, self.headers.get("Host"),
                                      self.headers.get("User-Agent")))
        if mode == "hang":
            # Accept, read the request, never answer (until the test ends).
            b.stopping.wait(30)
            self.close_connection = True
            return
        self._send(200 if mode == "ok" else 500, mode + "\n")


class Backend:
    """An HTTP server on a thread; /health answers 200 ("ok"), 500 ("fail")
    or nothing at all ("hang"); every other path says which backend it is,
    in the body and in X-Backend."""

    def __init__(self, name):
        self.name = name
        self.mode = "ok"
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.health_requests = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.backend = self
        self.port = self.httpd.server_address[1]
        self.authority = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.authority}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def set(self, mode):
        with self.lock:
            self.mode = mode
            self.mark = len(self.health_requests)

    def checks_since_set(self, mode):
        with self.lock:
            return sum(1 for m, _, _ in self.health_requests[self.mark:] if m == mode)

    def stop(self):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def backends():
    made = []

    def make(name):
        b = Backend(name)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def start(gatehouse, servers, rise=2, fall=3, interval=INTERVAL, timeout=TIMEOUT):
    return gatehouse({
        "log_level": "info",
        "upstreams": {"pool": {
            "servers": servers,
            "health_check": {"path": "/health", "interval": interval, "timeout": timeout,
                             "rise": rise, "fall": fall},
        }},
        "routes": [{"host": "*", "upstream": "pool"}],
    })


def wait_log(gh, text, seconds=WAIT, after=0):
    """Waits for text in gatehouse's stderr (past offset after); returns the
    offset just past it."""
    def seen():
        i = gh.stderr().find(text, after)
        return i + len(text) if i >= 0 else None
    at = wait_until(seen, seconds, interval=0.02)
    assert at, f"no {text!r} in the log within {seconds}s:\n{gh.stderr()[-3000:]}"
    return at


def who(gh):
    r = request(gh.port, target="/", timeout=10)
    assert r.status == 200, r
    return r.header("x-backend")


def down_line(b, reason=""):
    return f"upstream pool server {b.authority} is down: {reason}"


def up_line(b):
    return f"upstream pool server {b.authority} is up"


def test_failing_server_is_taken_out_after_fall_and_back_after_rise(gatehouse, backends):
    a, b = backends("A"), backends("B")
    gh = start(gatehouse, [a.url, b.url], rise=2, fall=3)
    # Both take traffic while healthy (round robin).
    assert wait_until(lambda: {who(gh) for _ in range(4)} == {"A", "B"}, WAIT)
    assert wait_until(lambda: len(a.health_requests) >= 2, WAIT), "no checks arrive"
    mode, host, ua = a.health_requests[0]
    assert host == a.authority and ua == "gatehouse-health"

    a.set("fail")
    at = wait_log(gh, down_line(a, "status 500"))
    assert a.checks_since_set("fail") >= 3, "marked down before `fall` failed checks"
    assert {who(gh) for _ in range(10)} == {"B"}

    a.set("ok")
    wait_log(gh, up_line(a), after=at)
    assert a.checks_since_set("ok") >= 2, "marked up before `rise` passed checks"
    assert wait_until(lambda: "A" in {who(gh) for _ in range(4)}, WAIT)


def test_every_server_down_is_503_json(gatehouse, backends):
    a, b = backends("A"), backends("B")
    a.set("fail")
    b.set("fail")
    gh = start(gatehouse, [a.url, b.url], rise=1, fall=1)
    wait_log(gh, down_line(a, "status 500"))
    wait_log(gh, down_line(b, "status 500"))
    for _ in range(3):
        r = request(gh.port, target="/x")
        doc = assert_error_json(r, 503)
        assert doc["request_id"]
    # One coming back is enough to serve again.
    b.set("ok")
    wait_log(gh, up_line(b))
    assert {who(gh) for _ in range(4)} == {"B"}


def test_closed_port_counts_as_down(gatehouse, backends, dead_port):
    a = backends("A")
    dead = f"127.0.0.1:{dead_port}"
    gh = start(gatehouse, [f"http://{dead}", a.url], fall=2)
    wait_log(gh, f"upstream pool server {dead} is down: connect: connection refused")
    assert {who(gh) for _ in range(6)} == {"A"}


def test_closed_port_alone_gives_503_not_502(gatehouse, dead_port):
    gh = start(gatehouse, [f"http://127.0.0.1:{dead_port}"], fall=1)
    wait_log(gh, "is down: connect: connection refused")
    assert_error_json(request(gh.port, target="/"), 503)


def test_no_answer_within_timeout_counts_as_down(gatehouse, backends):
    a, b = backends("A"), backends("B")
    a.set("hang")
    gh = start(gatehouse, [a.url, b.url], fall=2)
    wait_log(gh, down_line(a, "timeout"))
    assert a.checks_since_set("hang") >= 2
    assert {who(gh) for _ in range(6)} == {"B"}


def test_silent_listener_counts_as_down(gatehouse, port_holder):
    # The kernel completes the handshake; nobody ever reads or answers.
    port = port_holder()
    gh = start(gatehouse, [f"http://127.0.0.1:{port}"], fall=2)
    wait_log(gh, f"server 127.0.0.1:{port} is down: timeout")
    assert_error_json(request(gh.port, target="/"), 503)


def _localhost_is_127():
    import socket
    try:
        return socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)[0][4][0] == "127.0.0.1"
    except OSError:
        return False


def test_named_server_is_resolved_and_checked(gatehouse, backends):
    if not _localhost_is_127():
        pytest.skip("localhost does not resolve to 127.0.0.1 first here")
    a, b = backends("A"), backends("B")
    named = f"localhost:{a.port}"
    gh = start(gatehouse, [f"http://{named}", b.url], rise=1, fall=2)
    assert wait_until(lambda: len(a.health_requests) >= 1, WAIT), "no checks arrive"
    assert a.health_requests[0][1] == named
    a.set("fail")
    at = wait_log(gh, f"upstream pool server {named} is down: status 500")
    assert {who(gh) for _ in range(6)} == {"B"}
    a.set("ok")
    wait_log(gh, f"upstream pool server {named} is up", after=at)


def test_unresolvable_name_counts_as_down(gatehouse):
    # Depending on the resolver this fails as "resolve: ..." or, when the
    # lookup outlasts the timeout, as "timeout"; either way it is down.
    gh = start(gatehouse, ["http://no-such-host.invalid:8080"], fall=1)
    wait_log(gh, "upstream pool server no-such-host.invalid:8080 is down: ")
    assert_error_json(request(gh.port, target="/"), 503)


def test_reload_keeps_health_state(gatehouse, backends):
    a, b = backends("A"), backends("B")
    # A long interval: after the reload, the only check that could change
    # anything before the requests below is the immediate first one, and one
    # success is not `rise`.
    gh = start(gatehouse, [a.url, b.url], rise=3, fall=1, interval="300ms", timeout="200ms")
    a.set("fail")
    wait_log(gh, down_line(a, "status 500"))
    a.set("ok")
    gh.signal(signal.SIGHUP)
    wait_log(gh, "configuration reloaded")
    # Carried over: still down right after the reload, not reset to up.
    assert {who(gh) for _ in range(6)} == {"B"}
    wait_log(gh, up_line(a))
    assert wait_until(lambda: "A" in {who(gh) for _ in range(4)}, WAIT)


def test_stop_with_checks_in_flight_is_clean(gatehouse, backends):
    # Probes hang at the moment of SIGTERM: the exit must still be prompt
    # and clean (the fixture fails on a hang, a non-zero status or a
    # sanitizer report).
    a = backends("A")
    a.set("hang")
    gh = start(gatehouse, [a.url], interval="1s", timeout="1s")
    assert wait_until(lambda: a.checks_since_set("hang") >= 1, WAIT)
    dl = Deadline(10)
    assert gh.stop() == 0
    assert not dl.expired()
