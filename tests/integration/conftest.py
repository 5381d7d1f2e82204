"""Fixtures for the gatehouse integration tests.

`gatehouse(config)` starts the real binary (GATEHOUSE_BIN, default
build/gatehouse) on a free port with a config written to the test's tmp dir;
the backends are started once per session on ports they pick themselves.
"""
import copy
import os
import socket
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (Gatehouse, Nginx, ScriptedServer, StartError, aio_backend,  # noqa: E402
                     free_port, llm_backend, to_yaml)
from pattern import MAX_SLICE, pattern  # noqa: E402

NGINX_FILE_BYTES = int(os.environ.get("GH_NGINX_FILE_BYTES", str(64 << 20)))


def _with_defaults(config, port):
    cfg = copy.deepcopy(config)
    cfg.setdefault("listen", [{"address": f"127.0.0.1:{port}"}])
    cfg.setdefault("access_log", {"path": "stdout", "format": "json"})
    timeouts = cfg.setdefault("timeouts", {})
    timeouts.setdefault("shutdown", "3s")
    # Keys first in the order a person would write them.
    order = ["listen", "timeouts", "limits", "trusted_proxies", "access_log"]
    out = {k: cfg[k] for k in order if k in cfg}
    out.update({k: v for k, v in cfg.items() if k not in out})
    return out


@pytest.fixture
def gatehouse(tmp_path):
    """Factory: gatehouse(config, env=None, args=()) -> running Gatehouse.

    config is a dict (listen, access_log and timeouts.shutdown are filled in
    when missing) or YAML text where @PORT@ stands for the listen port. On
    teardown the process gets SIGTERM; the test fails if it crashed, hung,
    exited non-zero or printed a sanitizer report."""
    started = []

    def start(config, env=None, args=(), port=None):
        last = None
        for attempt in range(3):
            p = port or free_port()
            d = tmp_path / f"gh{len(started)}-{attempt}"
            d.mkdir()
            if isinstance(config, str):
                text = config.replace("@PORT@", str(p))
            else:
                text = to_yaml(_with_defaults(config, p))
            gh = Gatehouse(d, text, p, env=env, extra_args=args)
            try:
                gh.start()
            except StartError as e:
                last = e
                if "in use" in gh.stderr().lower() and port is None:
                    continue
                raise
            started.append(gh)
            return gh
        raise last

    yield start

    problems = []
    for gh in started:
        for p in gh.finish():
            problems.append(f"[{gh.config_path}] {p}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def scripted():
    """Factory: scripted(handler) -> ScriptedServer, stopped at teardown."""
    servers = []

    def make(handler, max_conns=64):
        s = ScriptedServer(handler, max_conns)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def _session_backend(factory):
    b = factory()
    try:
        b.start()
    except StartError as e:
        pytest.fail(str(e), pytrace=False)
    return b


@pytest.fixture(scope="session")
def aio(tmp_path_factory):
    b = _session_backend(lambda: aio_backend("A", tmp_path_factory.mktemp("aio_a")))
    yield b
    b.stop()


@pytest.fixture(scope="session")
def aio_b(tmp_path_factory):
    b = _session_backend(lambda: aio_backend("B", tmp_path_factory.mktemp("aio_b")))
    yield b
    b.stop()


@pytest.fixture(scope="session")
def llm(tmp_path_factory):
    b = _session_backend(lambda: llm_backend(tmp_path_factory.mktemp("llm")))
    yield b
    b.stop()


@pytest.fixture(scope="session")
def nginx(tmp_path_factory):
    """nginx serving big.bin (NGINX_FILE_BYTES of the pattern)."""
    root = tmp_path_factory.mktemp("www")
    with open(root / "big.bin", "wb") as f:
        off = 0
        while off < NGINX_FILE_BYTES:
            n = min(MAX_SLICE, NGINX_FILE_BYTES - off)
            f.write(pattern(off, n))
            off += n
    (root / "hello.txt").write_text("hello from nginx\n")
    n = Nginx(root, tmp_path_factory.mktemp("nginx"))
    try:
        n.start()
    except StartError as e:
        pytest.fail(str(e), pytrace=False)
    n.file_bytes = NGINX_FILE_BYTES
    yield n
    n.stop()


@pytest.fixture
def dead_port():
    """A port on 127.0.0.1 where nothing listens (connect is refused)."""
    return free_port()


@pytest.fixture
def port_holder():
    """Factory: a listening socket on a free port that is never accepted from."""
    socks = []

    def make():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        socks.append(s)
        return s.getsockname()[1]

    yield make
    for s in socks:
        s.close()

