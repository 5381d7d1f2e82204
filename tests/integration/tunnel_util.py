"""Helpers for the tunnel tests (test_tunnel.py): tokens, gatehouse processes
that need no listen port (connectors) or run inside a network namespace,
log polling, and the network namespace pair used to cut a link silently.

Everything is bounded: waits have deadlines, loops have counts."""
import os
import re
import shutil
import signal
import subprocess
import time

from harness import (BACKENDS, BACKEND_PYTHON, BIN, Deadline, Gatehouse, StartError, run_cli,
                     stop_process)

READY_MARK = re.compile(r"gatehouse \S+ started with ")


def keygen():
    """(token, 'sha256:...') from `gatehouse keygen`."""
    r = run_cli(["keygen"])
    assert r.returncode == 0, r
    lines = r.stdout.decode().strip().splitlines()
    assert len(lines) == 2, f"keygen printed {lines!r} (SPEC: token, then its hash)"
    token, digest = lines[0].strip(), lines[1].strip()
    assert digest.startswith("sha256:") and len(digest) == 7 + 64, lines
    return token, digest


class Process(Gatehouse):
    """A gatehouse whose readiness is its 'started with' log line rather than
    an accepting port: a connector has no listener, and a process inside a
    network namespace cannot be reached from here. prefix runs before the
    binary (`ip netns exec NS`, which execs, so the pid is gatehouse's)."""

    def __init__(self, workdir, config_text, prefix=(), env=None):
        super().__init__(workdir, config_text, 0, env=env)
        self.prefix = list(prefix)

    def start(self, ready_seconds=15):
        if not os.path.exists(BIN):
            raise StartError(f"gatehouse binary not found at {BIN} (set GATEHOUSE_BIN)")
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.prefix + [BIN, "-c", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=self._err, env=self.env, cwd=self.workdir)
        dl = Deadline(ready_seconds)
        for _ in range(100000):
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                raise StartError(f"gatehouse exited with {self.returncode} at start-up; "
                                 f"stderr:\n{self.stderr()}")
            if READY_MARK.search(self.stderr()):
                return self
            if dl.expired():
                break
            time.sleep(0.02)
        self.proc.kill()
        self.proc.wait(10)
        raise StartError(f"gatehouse did not log its start within {ready_seconds}s; "
                         f"stderr:\n{self.stderr()}")

    def kill(self):
        """SIGKILL, as a crash or a pulled plug; the exit is the test's doing."""
        self.stopped_by_test = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.returncode = self.proc.returncode
        self._close_files()


def kill_hard(gh):
    """SIGKILL a harness Gatehouse (or Process) and reap it."""
    gh.stopped_by_test = True
    gh.proc.send_signal(signal.SIGKILL)
    gh.proc.wait(10)
    gh.returncode = gh.proc.returncode
    gh._close_files()


def count(gh, pattern):
    """How many stderr lines of gh match the regex."""
    rx = re.compile(pattern)
    return sum(1 for ln in gh.stderr().splitlines() if rx.search(ln))


def wait_count(gh, pattern, n, seconds, interval=0.02):
    """Polls gh's stderr until at least n lines match; returns the seconds
    it took, or None when the deadline passed first."""
    t0 = time.monotonic()
    dl = Deadline(seconds)
    for _ in range(10000000):
        if count(gh, pattern) >= n:
            return time.monotonic() - t0
        if dl.expired():
            return None
        time.sleep(interval)
    return None


def matching(gh, pattern):
    rx = re.compile(pattern)
    return [ln for ln in gh.stderr().splitlines() if rx.search(ln)]


# ---------------------------------------------------------------- namespaces

def sh(args, check=True, timeout=20, ns=None):
    """Runs a command (in network namespace ns when given)."""
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class NetnsPair:
    """Two network namespaces joined by a veth pair: A (10.X.Y.1) and
    B (10.X.Y.2), loopback up in both. Created by this test, removed by
    close(), which is safe to call more than once."""

    def __init__(self, tag):
        self.a = f"ghA{tag}"
        self.b = f"ghB{tag}"
        self.if_a = f"gha{tag}"[:15]
        self.if_b = f"ghb{tag}"[:15]
        n = int(tag, 16) if re.fullmatch(r"[0-9a-f]+", tag) else os.getpid()
        self.addr_a = f"10.{200 + n % 50}.{(n >> 6) % 250 + 1}.1"
        self.addr_b = self.addr_a[:-1] + "2"
        self.created = []

    @staticmethod
    def permitted():
        """None when this process may create namespaces, else the reason."""
        if shutil.which("ip") is None:
            return "iproute2 (`ip`) is not installed"
        if os.geteuid() != 0:
            return "not root: `ip netns add` needs CAP_SYS_ADMIN and CAP_NET_ADMIN"
        probe = f"ghprobe{os.getpid()}"
        r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                           timeout=20)
        if r.returncode != 0:
            return f"`ip netns add` is not permitted here: {r.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20)
        return None

    def up(self):
        for ns in (self.a, self.b):
            sh(["ip", "netns", "add", ns])
            self.created.append(ns)
            sh(["ip", "link", "set", "lo", "up"], ns=ns)
        sh(["ip", "link", "add", self.if_a, "netns", self.a, "type", "veth",
            "peer", "name", self.if_b, "netns", self.b])
        sh(["ip", "addr", "add", f"{self.addr_a}/24", "dev", self.if_a], ns=self.a)
        sh(["ip", "addr", "add", f"{self.addr_b}/24", "dev", self.if_b], ns=self.b)
        sh(["ip", "link", "set", self.if_a, "up"], ns=self.a)
        sh(["ip", "link", "set", self.if_b, "up"], ns=self.b)
        return self

    # Dropping every packet both ways: iptables when it is there, else the
    # veth ends are taken down (neither sends a FIN or a RST either way).
    def drop(self):
        if shutil.which("iptables"):
            # Only the veth: each namespace's loopback keeps working, so the
            # edge can still be asked (and answer 502) while the link is cut.
            for ns, dev in ((self.a, self.if_a), (self.b, self.if_b)):
                sh(["iptables", "-A", "INPUT", "-i", dev, "-j", "DROP"], ns=ns)
                sh(["iptables", "-A", "OUTPUT", "-o", dev, "-j", "DROP"], ns=ns)
            return "iptables DROP on the veth"
        sh(["ip", "link", "set", self.if_a, "down"], ns=self.a)
        sh(["ip", "link", "set", self.if_b, "down"], ns=self.b)
        return "veth down"

    def undrop(self):
        if shutil.which("iptables"):
            for ns in (self.a, self.b):
                sh(["iptables", "-F", "INPUT"], ns=ns)
                sh(["iptables", "-F", "OUTPUT"], ns=ns)
            return
        sh(["ip", "link", "set", self.if_a, "up"], ns=self.a)
        sh(["ip", "link", "set", self.if_b, "up"], ns=self.b)

    def close(self):
        errs = []
        for ns in self.created:
            r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True,
                               timeout=20)
            if r.returncode != 0:
                errs.append(r.stderr.strip())
        self.created = []
        return errs


class NsBackend:
    """The aiohttp backend (backends/aio_app.py) inside a namespace, on its
    loopback; the port file tells the port."""

    def __init__(self, ns, workdir):
        self.ns = ns
        self.workdir = workdir
        self.port_file = workdir / "aio.port"
        self.proc = None
        self.port = None

    def start(self, seconds=30):
        self.log = open(self.workdir / "aio.log", "wb")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, BACKEND_PYTHON, str(BACKENDS / "aio_app.py"),
             "--name", "NS", "--port-file", str(self.port_file)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            cwd=self.workdir)
        dl = Deadline(seconds)
        for _ in range(100000):
            if self.proc.poll() is not None:
                break
            try:
                txt = self.port_file.read_text().strip()
                if txt.isdigit():
                    self.port = int(txt)
                    return self
            except OSError:
                pass
            if dl.expired():
                break
            time.sleep(0.05)
        self.stop()
        raise StartError("namespace backend did not start: "
                         + (self.workdir / "aio.log").read_text(errors="replace")[-2000:])

    def stop(self):
        stop_process(self.proc, getattr(self, "log", None))


def ns_curl(ns, url, host="app.test", max_time=10, extra=()):
    """curl inside namespace ns: (exit code, http code or None, seconds, body)."""
    marker = "\n@@GH@@%{http_code} %{time_total}"
    r = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "--max-time", str(max_time),
                        "-H", f"Host: {host}", "-w", marker] + list(extra) + [url],
                       capture_output=True, text=True, timeout=max_time + 20)
    out = r.stdout
    code, secs = None, None
    if "@@GH@@" in out:
        out, tail = out.rsplit("\n@@GH@@", 1)
        parts = tail.split()
        if len(parts) == 2:
            code = int(parts[0]) if parts[0].isdigit() and parts[0] != "000" else None
            secs = float(parts[1])
    return r.returncode, code, secs, out
