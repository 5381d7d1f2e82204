"""Helpers for the gatehouse integration tests.

Everything here is bounded: sockets carry timeouts, every wait has a
deadline, every loop a count. Ports come from binding port 0; readiness is
polled, never slept for.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BACKENDS = HERE / "backends"
# The backends need Debian's aiohttp, FastAPI and uvicorn.
BACKEND_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
BIN = os.path.abspath(os.environ.get("GATEHOUSE_BIN", str(REPO / "build" / "gatehouse")))

# GH_TEST_WORKERS=N runs every gatehouse of the suite with `workers: N`
# (unless its config names workers itself): the whole suite once more with
# several event-loop threads.
TEST_WORKERS = os.environ.get("GH_TEST_WORKERS", "")


def suite_workers():
    """How many workers each gatehouse of the suite runs (1 unless
    GH_TEST_WORKERS says otherwise); pools and connections are per worker."""
    return int(TEST_WORKERS) if TEST_WORKERS.isdigit() else 1


def with_workers(text):
    """The config text as the suite runs it: with `workers:` added when
    GH_TEST_WORKERS asks for it and the text has no top-level workers key."""
    if not TEST_WORKERS or re.search(r"(?m)^workers\s*:", text):
        return text
    return text.rstrip("\n") + f"\nworkers: {TEST_WORKERS}\n"


class ConfigPath(type(Path())):
    """The path of a running gatehouse's config: writes go through
    with_workers, so a reload test's new text keeps the suite's workers."""

    def write_text(self, data, *args, **kwargs):
        return super().write_text(with_workers(data), *args, **kwargs)


SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "UndefinedBehaviorSanitizer",
)


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()

    def expired(self):
        return self.left() <= 0


def free_port(host="127.0.0.1"):
    """A port that was free a moment ago (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port, seconds, proc=None, host="127.0.0.1"):
    """Polls until a TCP connect to port succeeds. Returns False when the
    deadline passes or proc (a Popen) exits first."""
    dl = Deadline(seconds)
    for _ in range(100000):
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            pass
        if dl.expired():
            return False
        time.sleep(0.02)
    return False


def wait_until(pred, seconds, interval=0.05):
    """Polls pred() until it returns a true value (returned) or the deadline."""
    dl = Deadline(seconds)
    for _ in range(1000000):
        v = pred()
        if v:
            return v
        if dl.expired():
            return v
        time.sleep(interval)
    return None


# ---------------------------------------------------------------- YAML

_PLAIN = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./:+-]*")


def _scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    if _PLAIN.fullmatch(s) and not s.endswith(":"):
        return s
    return json.dumps(s)


def to_yaml(obj, indent=0):
    """A small block-style YAML writer for dicts, lists and scalars."""
    pad = " " * indent
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:\n{to_yaml(v, indent + 2)}")
            elif isinstance(v, dict):
                out.append(f"{pad}{k}: {{}}\n")
            elif isinstance(v, list):
                out.append(f"{pad}{k}: []\n")
            else:
                out.append(f"{pad}{k}: {_scalar(v)}\n")
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, dict) and item:
                inner = to_yaml(item, indent + 2)
                out.append(pad + "- " + inner[indent + 2:])
            elif isinstance(item, list) and item:
                inner = to_yaml(item, indent + 2)
                out.append(pad + "-\n" + inner)
            else:
                out.append(f"{pad}- {_scalar(item)}\n")
    else:
        out.append(pad + _scalar(obj) + "\n")
    return "".join(out)


# ---------------------------------------------------------------- raw HTTP

class Closed(Exception):
    """The peer closed the connection (EOF or reset)."""


class Truncated(Exception):
    """The peer closed the connection before the declared end of a body."""


class ProtocolError(Exception):
    """The bytes on the wire do not parse as HTTP/1.1."""


class HTTPResponse:
    def __init__(self, version, status, reason, headers):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers      # [(name, value)] in wire order
        self.body = b""
        self.complete = False       # the body ended where its framing said
        self.head_bytes = 0         # length of the head on the wire
        self.wire_bytes = 0         # head plus body as framed on the wire

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def has(self, name):
        return self.header(name) is not None

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return (f"<HTTP {self.status} {self.reason!r} headers={self.headers!r} "
                f"body={self.body[:300]!r}{'...' if len(self.body) > 300 else ''}>")


def build_request(method="GET", target="/", host="app.test", headers=(), body=None,
                  version="HTTP/1.1", content_length=True):
    """Bytes of one request. headers: [(name, value)]; host None sends no Host."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    for k, v in headers:
        lines.append(f"{k}: {v}")
    if body is not None and content_length:
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if body is not None:
        raw += body
    return raw


def chunk_encode(pieces, trailers=()):
    out = bytearray()
    for p in pieces:
        if p:
            out += b"%x\r\n" % len(p) + p + b"\r\n"
    out += b"0\r\n"
    for k, v in trailers:
        out += f"{k}: {v}\r\n".encode("latin-1")
    out += b"\r\n"
    return bytes(out)


class Conn:
    """One client TCP connection with a read buffer and deadlines."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0, source=None):
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                  socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buf = bytearray()
        self.eof = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    @property
    def local_port(self):
        return self.sock.getsockname()[1]

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, dl, size=262144):
        """Reads more into buf. Returns False at EOF; raises TimeoutError when
        the deadline passes."""
        if self.eof:
            return False
        left = dl.left()
        if left <= 0:
            raise TimeoutError("read deadline passed")
        self.sock.settimeout(min(left, self.timeout))
        try:
            data = self.sock.recv(size)
        except socket.timeout:
            raise TimeoutError("read deadline passed") from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_line(self, dl, limit=65536):
        for _ in range(1000000):
            i = self.buf.find(b"\n")
            if i >= 0:
                return self._take(i + 1)
            if len(self.buf) > limit:
                raise ProtocolError("line too long")
            if not self._fill(dl):
                raise Closed(bytes(self.buf))
        raise ProtocolError("unreachable")

    def read_head(self, timeout=None):
        """Reads one response head; returns HTTPResponse without a body."""
        dl = Deadline(timeout or self.timeout)
        for _ in range(1000000):
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            if len(self.buf) > 1 << 20:
                raise ProtocolError("response head over 1 MiB")
            if not self._fill(dl):
                raise Closed(bytes(self.buf))
        head = self._take(i + 4)
        lines = head[:-4].split(b"\r\n")
        m = re.fullmatch(rb"(HTTP/\d\.\d) (\d{3})(?: (.*))?", lines[0])
        if not m:
            raise ProtocolError(f"bad status line {lines[0]!r}")
        headers = []
        for ln in lines[1:]:
            if b":" not in ln or ln[:1] in (b" ", b"\t"):
                raise ProtocolError(f"bad header line {ln!r}")
            k, v = ln.split(b":", 1)
            if k != k.strip():
                raise ProtocolError(f"whitespace around header name {ln!r}")
            headers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
        r = HTTPResponse(m.group(1).decode(), int(m.group(2)),
                         (m.group(3) or b"").decode("latin-1"), headers)
        r.head_bytes = len(head)
        return r

    def body_framing(self, resp, method):
        """('none' | 'length' | 'chunked' | 'close', length)"""
        if method == "HEAD" or resp.status < 200 or resp.status in (204, 304):
            return "none", 0
        te = resp.header("transfer-encoding")
        if te is not None:
            if te.lower().split(",")[-1].strip() != "chunked":
                raise ProtocolError(f"response Transfer-Encoding {te!r}")
            if resp.has("content-length"):
                raise ProtocolError("response has both Content-Length and Transfer-Encoding")
            return "chunked", 0
        cls = resp.header_all("content-length")
        if cls:
            if len(set(cls)) != 1 or not cls[0].isdigit():
                raise ProtocolError(f"response Content-Length {cls!r}")
            return "length", int(cls[0])
        return "close", 0

    def iter_body(self, resp, method="GET", timeout=None):
        """Yields the decoded body of resp in pieces as they arrive. Raises
        Truncated when the connection ends before the framing says it should.
        Adds the framed length to resp.wire_bytes."""
        dl = Deadline(timeout or self.timeout)
        kind, length = self.body_framing(resp, method)
        resp.wire_bytes = resp.head_bytes
        if kind == "none":
            return
        if kind == "length":
            left = length
            while left > 0:
                if not self.buf and not self._fill(dl):
                    raise Truncated(f"{left} of {length} bytes missing")
                piece = self._take(min(left, len(self.buf)))
                left -= len(piece)
                resp.wire_bytes += len(piece)
                yield piece
            return
        if kind == "close":
            for _ in range(100000000):
                if not self.buf and not self._fill(dl):
                    return
                piece = self._take(len(self.buf))
                resp.wire_bytes += len(piece)
                yield piece
            return
        # chunked
        for _ in range(100000000):
            try:
                line = self.read_line(dl)
            except Closed:
                raise Truncated("connection closed before a chunk-size line") from None
            resp.wire_bytes += len(line)
            if not line.endswith(b"\r\n"):
                raise ProtocolError(f"chunk-size line without CRLF {line!r}")
            size_s = line[:-2].split(b";")[0].strip()
            if not re.fullmatch(rb"[0-9A-Fa-f]+", size_s):
                raise ProtocolError(f"bad chunk-size line {line!r}")
            size = int(size_s, 16)
            if size == 0:
                for _ in range(1000):
                    try:
                        t = self.read_line(dl)
                    except Closed:
                        raise Truncated("connection closed inside the trailer") from None
                    resp.wire_bytes += len(t)
                    if t == b"\r\n":
                        return
                raise ProtocolError("too many trailer lines")
            left = size
            while left > 0:
                if not self.buf and not self._fill(dl):
                    raise Truncated("connection closed inside a chunk")
                piece = self._take(min(left, len(self.buf)))
                left -= len(piece)
                resp.wire_bytes += len(piece)
                yield piece
            while len(self.buf) < 2:
                if not self._fill(dl):
                    raise Truncated("connection closed after chunk data")
            if self._take(2) != b"\r\n":
                raise ProtocolError("chunk data not followed by CRLF")
            resp.wire_bytes += 2

    def read_response(self, method="GET", timeout=None, skip_interim=True):
        """Reads one whole response. A body cut short by the peer closing
        leaves resp.complete False (it is never raised)."""
        dl = Deadline(timeout or self.timeout)
        for _ in range(100):
            resp = self.read_head(max(dl.left(), 0.001))
            if not (skip_interim and 100 <= resp.status < 200 and resp.status != 101):
                break
        body = bytearray()
        try:
            for piece in self.iter_body(resp, method, max(dl.left(), 0.001)):
                body += piece
            resp.complete = True
        except Truncated:
            resp.complete = False
        resp.body = bytes(body)
        return resp

    def wait_closed(self, timeout=5.0):
        """True when the peer closes (EOF or reset) within timeout. Bytes that
        arrive meanwhile are kept in buf."""
        dl = Deadline(timeout)
        for _ in range(1000000):
            try:
                if not self._fill(dl):
                    return True
            except TimeoutError:
                return False
        return False

    def read_until_close(self, timeout=10.0):
        dl = Deadline(timeout)
        for _ in range(10000000):
            if not self._fill(dl):
                break
        return self._take(len(self.buf))


def request(port, method="GET", target="/", host="app.test", headers=(), body=None,
            timeout=10.0, source=None):
    """One request on a fresh connection; returns the HTTPResponse."""
    with Conn(port, timeout=timeout, source=source) as c:
        c.send(build_request(method, target, host, headers, body))
        return c.read_response(method)


def assert_error_json(resp, status):
    """The shape SPEC section 3 gives every error gatehouse itself produces."""
    assert resp.status == status, resp
    try:
        doc = resp.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {resp!r}") from None
    assert isinstance(doc, dict), resp
    assert isinstance(doc.get("error"), str) and doc["error"], resp
    assert isinstance(doc.get("request_id"), str) and doc["request_id"], resp
    assert resp.header("x-request-id") == doc["request_id"], resp
    return doc


# ---------------------------------------------------------------- processes

def proc_status(pid, key):
    """A field of /proc/PID/status in kB (VmRSS, VmHWM), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith(key + ":"):
                    return int(ln.split()[1])
    except OSError:
        return None
    return None


def binary_has_asan(path=BIN):
    try:
        out = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=10).stdout
        if "libasan" in out:
            return True
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except (OSError, subprocess.SubprocessError):
        return False


def sanitizer_report(text):
    return [m for m in SANITIZER_MARKERS if m in text]


def run_cli(args, stdin=None, timeout=20, env=None, unset=()):
    """Runs the gatehouse binary to completion; returns CompletedProcess
    (bytes). env adds variables, unset removes them."""
    e = dict(os.environ)
    if env:
        e.update(env)
    for k in unset:
        e.pop(k, None)
    return subprocess.run([BIN] + list(args), input=stdin, capture_output=True,
                          timeout=timeout, env=e)


class StartError(Exception):
    pass


class Gatehouse:
    """A running gatehouse with its config, port and captured output."""

    def __init__(self, workdir, config_text, port, env=None, extra_args=()):
        self.workdir = Path(workdir)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.config_path = ConfigPath(self.workdir / "gatehouse.yaml")
        self.config_path.write_text(config_text)
        self.stdout_path = self.workdir / "gatehouse.stdout"
        self.stderr_path = self.workdir / "gatehouse.stderr"
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.extra_args = list(extra_args)
        self.proc = None
        self.stopped_by_test = False
        self.returncode = None

    @property
    def pid(self):
        return self.proc.pid

    def start(self, ready_seconds=15):
        if not os.path.exists(BIN):
            raise StartError(f"gatehouse binary not found at {BIN} (set GATEHOUSE_BIN)")
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([BIN, "-c", str(self.config_path)] + self.extra_args,
                                     stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=self._err, env=self.env, cwd=self.workdir)
        if not wait_port(self.port, ready_seconds, self.proc):
            rc = self.proc.poll()
            if rc is None:
                self.proc.kill()
                self.proc.wait(10)
                raise StartError(f"gatehouse did not accept on port {self.port} "
                                 f"within {ready_seconds}s; stderr:\n{self.stderr()}")
            self.returncode = rc
            raise StartError(f"gatehouse exited with {rc} at start-up; stderr:\n{self.stderr()}")
        # The port accepts as soon as the first listener is open; the start-up
        # line comes once every worker thread is running.
        wait_until(lambda: "started with" in self.stderr() or self.proc.poll() is not None,
                   ready_seconds)
        return self

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stdout(self):
        try:
            return self.stdout_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_lines(self, min_count=0, timeout=5.0):
        """The JSON access-log lines written to stdout so far; waits up to
        timeout for at least min_count of them."""
        def parse():
            out = []
            for ln in self.stdout().splitlines():
                ln = ln.strip()
                if not ln.startswith("{"):
                    continue
                try:
                    doc = json.loads(ln)
                except ValueError:
                    continue
                if isinstance(doc, dict):
                    out.append(doc)
            return out
        lines = parse()
        dl = Deadline(timeout)
        for _ in range(100000):
            if len(lines) >= min_count or dl.expired():
                break
            time.sleep(0.05)
            lines = parse()
        return lines

    def rss_kb(self):
        return proc_status(self.pid, "VmRSS")

    def hwm_kb(self):
        return proc_status(self.pid, "VmHWM")

    def signal(self, sig):
        """Sends sig. SIGTERM and SIGINT make the exit the test's business."""
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stopped_by_test = True
        self.proc.send_signal(sig)

    def stop(self, sig=None, timeout=15.0):
        """Sends sig (default SIGTERM) and waits for the exit; SIGKILL after
        timeout. Returns the exit status (negative for a signal), or None if
        it had to be killed."""
        self.stopped_by_test = True
        return self._stop(sig or signal.SIGTERM, timeout)

    def _stop(self, sig, timeout):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                self.returncode = None
                self._close_files()
                return None
        self.returncode = self.proc.returncode
        self._close_files()
        return self.returncode

    def _close_files(self):
        for f in (getattr(self, "_out", None), getattr(self, "_err", None)):
            if f and not f.closed:
                f.close()

    def finish(self):
        """Teardown: stops the process and returns a list of problems found."""
        problems = []
        if self.proc is None:
            return problems
        rc_before = self.proc.poll()
        if rc_before is not None and not self.stopped_by_test:
            how = f"signal {-rc_before}" if rc_before < 0 else f"status {rc_before}"
            problems.append(f"gatehouse exited by itself during the test ({how})")
        if rc_before is None:
            rc = self._stop(signal.SIGTERM, 15.0)
            if rc is None:
                problems.append("gatehouse did not exit within 15s of SIGTERM (killed)")
            elif rc != 0:
                problems.append(f"gatehouse exited with status {rc} after SIGTERM (SPEC: 0)")
        else:
            self._close_files()
        err = self.stderr()
        found = sanitizer_report(err)
        if found:
            problems.append(f"sanitizer report in stderr ({', '.join(found)}):\n{err[-6000:]}")
        if problems:
            problems.append(f"stderr tail:\n{err[-3000:]}")
        return problems


# ---------------------------------------------------------------- backends

def stop_process(proc, log=None):
    """SIGTERM, SIGKILL after 10 s, then close the process's log file."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if log:
        log.close()


class Backend:
    """A backend program started as a subprocess on a port it picks itself
    (it binds port 0 and writes the number to a file)."""

    def __init__(self, name, argv, workdir, health_path="/health"):
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port_file = self.workdir / f"{name}.port"
        self.argv = list(argv) + ["--port-file", str(self.port_file)]
        self.health_path = health_path
        self.proc = None
        self.port = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, seconds=30):
        self.log = open(self.workdir / f"{self.name}.log", "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=self.workdir)
        dl = Deadline(seconds)

        def port_known():
            if self.proc.poll() is not None:
                return True
            try:
                txt = self.port_file.read_text().strip()
                return txt.isdigit() and int(txt)
            except OSError:
                return False
        wait_until(port_known, seconds)
        if self.proc.poll() is not None or not self.port_file.exists():
            self.stop()
            raise StartError(f"backend {self.name} did not start:\n{self.log_text()}")
        self.port = int(self.port_file.read_text().strip())

        def healthy():
            try:
                r = request(self.port, "GET", self.health_path, host="127.0.0.1", timeout=2)
                return r.status == 200
            except (OSError, Closed, ProtocolError, TimeoutError):
                return False
        if not wait_until(healthy, max(dl.left(), 1)):
            self.stop()
            raise StartError(f"backend {self.name} not healthy:\n{self.log_text()}")
        return self

    def log_text(self):
        try:
            return (self.workdir / f"{self.name}.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self):
        stop_process(self.proc, getattr(self, "log", None))


def aio_backend(name, workdir, port=None):
    argv = [BACKEND_PYTHON, str(BACKENDS / "aio_app.py"), "--name", name]
    if port:
        argv += ["--port", str(port)]
    return Backend(name, argv, workdir)


def llm_backend(workdir):
    return Backend("llm", [BACKEND_PYTHON, str(BACKENDS / "llm_app.py")], workdir)


class Nginx:
    """nginx serving root on 127.0.0.1 with its own prefix in workdir."""

    def __init__(self, root, workdir, binary="/usr/sbin/nginx"):
        self.root = Path(root)
        self.workdir = Path(workdir)
        self.binary = binary
        self.proc = None
        self.port = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def _conf(self, port):
        w = self.workdir
        return f"""
daemon off;
master_process off;
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {w}/client_body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {self.root};
        location / {{ }}
    }}
}}
"""

    def start(self, seconds=15):
        if not os.path.exists(self.binary):
            raise StartError(f"nginx not found at {self.binary}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        last = ""
        for _ in range(3):
            port = free_port()
            conf = self.workdir / "nginx.conf"
            conf.write_text(self._conf(port))
            self.log = open(self.workdir / "nginx.out", "wb")
            self.proc = subprocess.Popen(
                [self.binary, "-p", str(self.workdir), "-c", str(conf),
                 "-e", str(self.workdir / "error.log")],
                stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
            if wait_port(port, seconds, self.proc):
                self.port = port
                return self
            self.stop()
            try:
                last = (self.workdir / "error.log").read_text(errors="replace")
            except OSError:
                last = ""
        raise StartError(f"nginx did not start:\n{last[-3000:]}")

    def stop(self):
        stop_process(self.proc, getattr(self, "log", None))


class ScriptedServer:
    """A TCP server in a thread that runs handler(sock, index) for every
    connection it accepts: a scripted backend for exact wire-level cases
    (malformed responses, a server that drops the request)."""

    def __init__(self, handler, max_conns=64):
        self.handler = handler
        self.max_conns = max_conns
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.accepted = 0
        self.requests = []          # request heads seen, as bytes
        self.errors = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def _loop(self):
        while not self.stopping.is_set() and self.accepted < self.max_conns:
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            idx = self.accepted
            self.accepted += 1
            s.settimeout(10)
            t = threading.Thread(target=self._run, args=(s, idx), daemon=True)
            self.threads.append(t)
            t.start()

    def _run(self, s, idx):
        try:
            self.handler(self, s, idx)
        except Exception as e:  # recorded for the test to see
            with self.lock:
                self.errors.append(repr(e))
        finally:
            try:
                s.close()
            except OSError:
                pass

    def read_head(self, s, limit=1 << 16):
        """Reads one request head (bytes) from s, or None at EOF."""
        buf = b""
        for _ in range(10000):
            if b"\r\n\r\n" in buf or len(buf) > limit:
                break
            try:
                d = s.recv(65536)
            except (socket.timeout, OSError):
                return None
            if not d:
                return None
            buf += d
        with self.lock:
            self.requests.append(buf)
        return buf

    def stop(self):
        self.stopping.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        self.thread.join(5)
        for t in self.threads:
            t.join(5)


# ---------------------------------------------------------------- streams

def read_events(conn, head, timeout):
    """Yields (arrival time, event text) for each server-sent event."""
    buf = b""
    for piece in conn.iter_body(head, timeout=timeout):
        t = time.time()
        buf += piece
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            yield t, ev.decode()


def data_of(event):
    return "\n".join(ln[5:].lstrip() for ln in event.splitlines() if ln.startswith("data:"))


async def websocket_echo_exchange(url, n_text, n_binary):
    """Text, binary, a message larger than one read and a burst of 200
    written before any echo is read, against an echoing WebSocket at url;
    every echo must come back equal. Returns the close code."""
    import asyncio
    import websockets
    from pattern import MAX_SLICE, pattern
    async with websockets.connect(url, open_timeout=10, close_timeout=5, max_size=None,
                                  ping_interval=None) as ws:
        for i in range(n_text):
            msg = f"text {i} " + "é✓" * (i % 7) + "x" * (i * 37)
            await ws.send(msg)
            assert await asyncio.wait_for(ws.recv(), 10) == msg
        for i in range(n_binary):
            data = pattern(i * 1000, (i * 7919) % 200000 + 1)
            await ws.send(data)
            assert await asyncio.wait_for(ws.recv(), 10) == data
        big = pattern(0, MAX_SLICE) + pattern(MAX_SLICE, MAX_SLICE)
        await ws.send(big)
        assert await asyncio.wait_for(ws.recv(), 30) == big
        # A burst: the client writes 200 messages before reading any echo.
        burst = [pattern(i, 4096 + i) if i % 2 else f"burst {i}" for i in range(200)]
        for m in burst:
            await ws.send(m)
        for m in burst:
            assert await asyncio.wait_for(ws.recv(), 10) == m
        await ws.close()
        return ws.close_code
