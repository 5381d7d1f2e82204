"""gatehouse's admin /metrics scraped by a real Prometheus server.

gatehouse runs with an admin listener and one route to the aio backend. A
Prometheus (Debian's package, /usr/bin/prometheus) is started in the
foreground with a config written to the test's tmp dir that scrapes the
admin address every second. The test then asks Prometheus' HTTP API what it
stored: the per-route, per-code request counters must equal the requests
sent, `up` must be 1, and a histogram_quantile over the request-duration
buckets must give a number.

Requests are sent in two batches with at least one scrape in between, so
rate() over the duration buckets has two different samples to work with.

Prometheus 2.42 has no usage reporting or update check; the config names no
alertmanager, remote_write or remote_read, and the server listens on
127.0.0.1 only, so nothing leaves the machine."""
import json
import math
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from harness import Deadline, StartError, free_port, request, to_yaml, wait_port

PROMETHEUS = "/usr/bin/prometheus"
JOB = "gatehouse"
ROUTE = "app.test/"            # how gatehouse labels a host-only route
TARGET_UP_SECONDS = 30         # the brief's deadline for the target to be "up"
SCRAPE_WAIT = 15               # a scrape happens every second; generous for ASan
STOP_SECONDS = 10              # SIGTERM grace before SIGKILL

# Requests per batch: status code -> how many.
BATCH1 = {200: 4, 404: 2}
BATCH2 = {200: 3, 404: 1}

# No proxy for 127.0.0.1, whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------- Prometheus

def _ensure_prometheus():
    """The path of the prometheus binary, installing Debian's package when it
    is missing; skips the test when it cannot be had."""
    if os.access(PROMETHEUS, os.X_OK):
        return PROMETHEUS
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip("prometheus is not installed and apt-get is not available")
    if os.geteuid() != 0:
        pytest.skip("prometheus is not installed and installing it needs root "
                    "(apt-get install -y prometheus)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        r = subprocess.run([apt, "install", "-y", "--no-install-recommends", "prometheus"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=300, env=env)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"prometheus is not installed and apt-get install failed: {e!r}")
    if r.returncode != 0 or not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("prometheus is not installed and `apt-get install -y prometheus` "
                    f"failed (status {r.returncode}):\n{(r.stdout + r.stderr)[-2000:]}")
    return PROMETHEUS


class Prometheus:
    """One Prometheus server in the foreground, with its data in workdir."""

    def __init__(self, binary, workdir, scrape_target):
        self.binary = binary
        self.workdir = workdir
        self.data = workdir / "data"
        self.config_path = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        self.scrape_target = scrape_target
        self.proc = None
        self.port = None
        self._log = None

    def _config(self):
        return {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": JOB,
                "metrics_path": "/metrics",
                "scheme": "http",
                "static_configs": [{"targets": [self.scrape_target]}],
            }],
        }

    def start(self, seconds=20):
        self.config_path.write_text(to_yaml(self._config()))
        last = ""
        for attempt in range(3):
            self.stop()
            shutil.rmtree(self.data, ignore_errors=True)
            self.data.mkdir(parents=True)
            port = free_port()
            self._log = open(self.log_path, "wb")
            self.proc = subprocess.Popen(
                [self.binary,
                 f"--config.file={self.config_path}",
                 f"--storage.tsdb.path={self.data}",
                 f"--web.listen-address=127.0.0.1:{port}",
                 # the console dirs default to /etc/prometheus; nothing is
                 # read from outside the tmp dir
                 f"--web.console.templates={self.workdir}",
                 f"--web.console.libraries={self.workdir}",
                 "--storage.tsdb.retention.time=1h",
                 "--log.level=info"],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                cwd=self.workdir)
            if wait_port(port, seconds, self.proc) and self._ready(port, seconds):
                self.port = port
                return self
            last = self.log_text()
            if self.proc.poll() is None or "address already in use" not in last:
                break
        self.stop()
        raise StartError(f"prometheus did not start:\n{last[-4000:]}")

    def _ready(self, port, seconds):
        dl = Deadline(seconds)
        for _ in range(10000):
            if self.proc.poll() is not None:
                return False
            try:
                with _OPENER.open(f"http://127.0.0.1:{port}/-/ready",
                                  timeout=2) as r:
                    if r.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            if dl.expired():
                return False
            time.sleep(0.1)
        return False

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def api(self, path, **params):
        """GET /api/v1/<path>; returns the decoded `data` of a success reply."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with _OPENER.open(url, timeout=5) as r:
                doc = json.loads(r.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace")
            raise AssertionError(f"GET {url}: HTTP {e.code}: {body}") from None
        assert doc.get("status") == "success", (url, doc)
        return doc["data"]

    def query(self, expr):
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def stop(self):
        """SIGTERM, then SIGKILL when it has not exited within STOP_SECONDS."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None and not self._log.closed:
            self._log.close()


@pytest.fixture
def prometheus(tmp_path):
    """Factory: prometheus(target) -> a started Prometheus scraping target.
    Stopped at teardown and its data dir removed."""
    binary = _ensure_prometheus()
    started = []

    def start(target):
        workdir = tmp_path / f"prom{len(started)}"
        workdir.mkdir()
        p = Prometheus(binary, workdir, target)
        started.append(p)
        return p.start()

    yield start
    for p in started:
        p.stop()
        shutil.rmtree(p.data, ignore_errors=True)


# ---------------------------------------------------------------- gatehouse

def start_gatehouse(gatehouse, aio):
    """gatehouse with an admin listener and one route to aio; returns
    (gatehouse, admin port)."""
    last = ""
    for _ in range(3):
        aport = free_port()
        cfg = {
            "admin": {"address": f"127.0.0.1:{aport}"},
            "upstreams": {"live": {"servers": [aio.url]}},
            "routes": [{"host": "app.test", "upstream": "live"}],
        }
        try:
            gh = gatehouse(cfg)
        except StartError as e:
            if "in use" not in str(e).lower():
                raise
            last = str(e)        # the admin port was taken in the meantime
            continue
        if wait_port(aport, 15, gh.proc):
            return gh, aport
        last = gh.stderr()
        gh.stop()
    pytest.fail(f"the admin listener did not open:\n{last}")


def send_batch(port, batch):
    for code, n in batch.items():
        target = "/" if code == 200 else f"/status/{code}"
        for _ in range(n):
            r = request(port, "GET", target, host="app.test")
            assert r.status == code, r


# ---------------------------------------------------------------- helpers

def by_code(prom):
    """{code: value} from Prometheus for the route's request counter."""
    res = prom.query(f'sum by (code) (gatehouse_requests_total{{job="{JOB}",route="{ROUTE}"}})')
    return {int(s["metric"]["code"]): float(s["value"][1]) for s in res}


def expect_counts(prom, want, what):
    """Polls until Prometheus holds exactly `want` ({code: count}) for the
    route; fails with the last answer after SCRAPE_WAIT seconds."""
    want = {c: float(n) for c, n in want.items()}
    dl = Deadline(SCRAPE_WAIT)
    got = None
    for _ in range(1000):
        got = by_code(prom)
        if got == want or dl.expired():
            break
        time.sleep(0.2)
    assert got == want, (f"{what}: Prometheus has {got} for route {ROUTE!r}, "
                         f"expected {want}\nprometheus log:\n{prom.log_text()[-3000:]}")


def wait_target_up(prom, admin_target):
    dl = Deadline(TARGET_UP_SECONDS)
    last = None
    for _ in range(10000):
        data = prom.api("targets", state="active")
        ours = [t for t in data["activeTargets"]
                if t["labels"].get("job") == JOB and t["scrapeUrl"].startswith(
                    f"http://{admin_target}/metrics")]
        if ours:
            last = ours[0]
            if last["health"] == "up":
                return last
        if dl.expired():
            break
        time.sleep(0.2)
    pytest.fail(f"the scrape target did not become up within {TARGET_UP_SECONDS}s: "
                f"{last}\nprometheus log:\n{prom.log_text()[-3000:]}", pytrace=False)


def _sum(batch_a, batch_b):
    return {c: batch_a.get(c, 0) + batch_b.get(c, 0) for c in set(batch_a) | set(batch_b)}


# ---------------------------------------------------------------- test

def test_prometheus_scrapes_admin_metrics(gatehouse, aio, prometheus):
    started = time.monotonic()
    gh, aport = start_gatehouse(gatehouse, aio)
    admin_target = f"127.0.0.1:{aport}"

    send_batch(gh.port, BATCH1)

    prom = prometheus(admin_target)
    target = wait_target_up(prom, admin_target)
    assert target["lastError"] == "", target
    assert target["labels"]["instance"] == admin_target, target

    # a scrape after the first batch: the counters equal what was sent
    expect_counts(prom, BATCH1, "after the first batch")

    # the second batch lands between two scrapes, so rate() has an increase
    send_batch(gh.port, BATCH2)
    total = _sum(BATCH1, BATCH2)
    expect_counts(prom, total, "after the second batch")

    # the raw series carry the route and code labels plus the scrape's own
    series = prom.query("gatehouse_requests_total")
    ours = [s["metric"] for s in series if s["metric"].get("route") == ROUTE]
    assert {int(m["code"]) for m in ours} == set(total), series
    for m in ours:
        assert m["__name__"] == "gatehouse_requests_total", m
        assert m["job"] == JOB and m["instance"] == admin_target, m
        assert set(m) == {"__name__", "job", "instance", "route", "code"}, m
    for s in series:
        if s["metric"].get("route") == ROUTE:
            assert float(s["value"][1]) == total[int(s["metric"]["code"])], s

    # up{job="gatehouse"} == 1
    up = prom.query(f'up{{job="{JOB}"}}')
    assert len(up) == 1, up
    assert up[0]["metric"]["instance"] == admin_target, up
    assert float(up[0]["value"][1]) == 1.0, up

    # the histogram is scraped as one: buckets with le, _sum and _count
    buckets = prom.query(f'gatehouse_request_duration_seconds_bucket{{job="{JOB}"}}')
    les = {s["metric"]["le"] for s in buckets}
    assert "+Inf" in les and len(les) >= 2, buckets
    count = prom.query(f'gatehouse_request_duration_seconds_count{{job="{JOB}"}}')
    assert len(count) == 1 and float(count[0]["value"][1]) >= sum(total.values()), count

    # histogram_quantile over rate(): the second batch landed between two
    # scrapes, so the rate is defined and the quantile is a finite number
    expr = ("histogram_quantile(0.99, sum by (le) "
            "(rate(gatehouse_request_duration_seconds_bucket[1m])))")
    dl = Deadline(SCRAPE_WAIT)
    res = None
    for _ in range(1000):
        res = prom.query(expr)
        if res and not math.isnan(float(res[0]["value"][1])):
            break
        if dl.expired():
            break
        time.sleep(0.2)
    assert len(res) == 1, (expr, res)
    q = float(res[0]["value"][1])
    assert not math.isnan(q), (f"{expr} is NaN although requests were sent between "
                               f"scrapes: {res}")
    assert 0 < q <= 300, (expr, res)    # within the largest finite bucket bound

    # the requests were counted once: nothing moved while we looked
    assert by_code(prom) == {c: float(n) for c, n in total.items()}

    assert gh.alive(), gh.stderr()
    assert time.monotonic() - started < 60, "the test took over 60 s"
