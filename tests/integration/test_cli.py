"""SPEC section 1: the command line, config checking, keygen and hash-key."""
import hashlib
import re
import subprocess

import pytest

from harness import free_port, request, run_cli

ERR_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")


def write(tmp_path, text, name="gatehouse.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def loc(text, needle, nth=1):
    """1-based (line, col) where the nth occurrence of needle starts."""
    idx = -1
    for _ in range(nth):
        idx = text.index(needle, idx + 1)
    line = text.count("\n", 0, idx) + 1
    col = idx - (text.rfind("\n", 0, idx) + 1) + 1
    return line, col


def error_lines(path, stderr):
    """The FILE:LINE:COL: message lines about path in stderr."""
    out = []
    for ln in stderr.splitlines():
        m = ERR_LINE.match(ln.strip())
        if m and m.group("file") == str(path):
            out.append((int(m.group("line")), int(m.group("col")), m.group("msg")))
    return out


def good_config(port):
    return f"""listen:
  - address: "127.0.0.1:{port}"
routes:
  - host: "*"
    respond: {{ status: 200, body: "hi" }}
"""


def test_version_prints_name_and_version():
    r = run_cli(["--version"])
    assert r.returncode == 0, r
    out = r.stdout.decode()
    assert "gatehouse" in out.lower(), out
    assert re.search(r"\d+\.\d+\.\d+", out), out


def test_help_lists_commands():
    r = run_cli(["--help"])
    assert r.returncode == 0, r
    out = r.stdout.decode()
    for word in ("-c", "-t", "-s", "keygen", "hash-key"):
        assert word in out, f"--help does not mention {word}:\n{out}"


@pytest.mark.parametrize("args", [
    ["--no-such-option"],
    ["-c"],
    ["frobnicate"],
    ["-s", "explode", "-c", "/dev/null"],
], ids=["unknown-option", "missing-argument", "unknown-command", "bad-signal-name"])
def test_bad_usage_exits_2(args):
    r = run_cli(args)
    assert r.returncode == 2, r
    assert r.stderr.strip(), "usage error without a message on stderr"


def test_check_good_config(tmp_path):
    p = write(tmp_path, good_config(free_port()))
    r = run_cli(["-t", "-c", str(p)])
    assert r.returncode == 0, r
    out = (r.stdout + r.stderr).decode()
    assert f"{p}: configuration OK" in [ln.strip() for ln in out.splitlines()], out


def test_check_the_full_example_of_spec_section_2_without_unbuilt_parts(tmp_path):
    """The routes, upstreams, timeouts and limits of SPEC section 2 (without
    TLS, admin, plugins and tunnels) pass the check as written there."""
    text = f"""listen:
  - address: "127.0.0.1:{free_port()}"
timeouts:
  header: 10s
  idle: 75s
  upstream_connect: 5s
  upstream_first_byte: 300s
  stream_idle: 300s
  shutdown: 30s
limits:
  max_header_bytes: 16k
  max_body_bytes: 10m
  max_connections: 10000
trusted_proxies: ["127.0.0.1/32"]
access_log: {{ path: stdout, format: json }}
log_level: info
workers: 1
upstreams:
  webui:
    servers: ["http://10.0.0.5:8080", "http://10.0.0.6:8080"]
    balance: round_robin
    keepalive: 32
routes:
  - host: chat.example.com
    upstream: webui
  - host: docs.example.com
    upstream: http://paperless:8000
    max_body_bytes: 200m
  - host: api.example.com
    path: /v1/
    upstream: http://127.0.0.1:8000
  - host: example.com
    redirect: "https://chat.example.com{{path}}"
  - host: "*"
    respond: {{ status: 404, body: "no such site\\n" }}
"""
    p = write(tmp_path, text)
    r = run_cli(["-t", "-c", str(p)])
    assert r.returncode == 0, r
    assert f"{p}: configuration OK" in (r.stdout + r.stderr).decode()


BAD_CONFIGS = {
    # name: (text, needle marking where the error is, words the message must hold)
    "unknown-top-level-key": ("""listen:
  - address: "127.0.0.1:1"
timeots:
  header: 1s
routes:
  - host: "*"
    respond: { status: 200, body: "x" }
""", "timeots", ["timeouts"]),
    "unknown-route-key": ("""listen:
  - address: "127.0.0.1:1"
routes:
  - host: "*"
    upstrem: http://127.0.0.1:9
""", "upstrem", ["upstream"]),
    "bad-duration": ("""listen:
  - address: "127.0.0.1:1"
timeouts:
  header: 10x
routes:
  - host: "*"
    respond: { status: 200, body: "x" }
""", "10x", []),
    "bad-size": ("""listen:
  - address: "127.0.0.1:1"
limits:
  max_body_bytes: 12q
routes:
  - host: "*"
    respond: { status: 200, body: "x" }
""", "12q", []),
    "undefined-upstream": ("""listen:
  - address: "127.0.0.1:1"
upstreams:
  backend:
    servers: ["http://127.0.0.1:9"]
routes:
  - host: "*"
    upstream: nosuchupstream
""", "nosuchupstream", ["nosuchupstream"]),
    "duplicate-route": ("""listen:
  - address: "127.0.0.1:1"
routes:
  - host: a.example.com
    path: /x
    respond: { status: 200, body: "one" }
  - host: a.example.com
    path: /x
    respond: { status: 200, body: "two" }
""", [("a.example.com", 2), ("/x", 2)], []),
    "unset-env-var": ("""listen:
  - address: "127.0.0.1:1"
routes:
  - host: "*"
    upstream: "http://127.0.0.1:${GH_IT_SURELY_UNSET_VAR}"
""", "\"http://127.0.0.1:${GH", ["GH_IT_SURELY_UNSET_VAR"]),
    "bad-balance": ("""listen:
  - address: "127.0.0.1:1"
upstreams:
  backend:
    servers: ["http://127.0.0.1:9"]
    balance: random
routes:
  - host: "*"
    upstream: backend
""", "random", []),
}


def expected_lines(text, needle):
    """Lines an error may be reported on: needle is a string, (string, nth),
    or a list of those (any of them)."""
    needles = needle if isinstance(needle, list) else [needle]
    out = set()
    for n in needles:
        out.add(loc(text, *n)[0] if isinstance(n, tuple) else loc(text, n)[0])
    return out


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_check_bad_config_reports_file_line_col(tmp_path, name):
    text, needle, words = BAD_CONFIGS[name]
    p = write(tmp_path, text)
    r = run_cli(["-t", "-c", str(p)], unset=["GH_IT_SURELY_UNSET_VAR"])
    assert r.returncode == 1, r
    stderr = r.stderr.decode()
    errs = error_lines(p, stderr)
    assert errs, f"no '{p}:LINE:COL: message' line on stderr:\n{stderr}"
    want = expected_lines(text, needle)
    hits = [e for e in errs if e[0] in want]
    assert hits, f"expected an error on line {sorted(want)}:\n{stderr}"
    lno, col, msg = hits[0]
    # The column points into that line (at the key, the value or the item).
    this_line = text.splitlines()[lno - 1]
    assert 1 <= col <= len(this_line) + 1, (col, this_line)
    for w in words:
        assert w in msg, f"message for line {lno} lacks {w!r}: {msg}"
    assert "configuration OK" not in (r.stdout + r.stderr).decode()


def test_check_unknown_key_column_is_the_key(tmp_path):
    text, needle, _ = BAD_CONFIGS["unknown-top-level-key"]
    p = write(tmp_path, text)
    r = run_cli(["-t", "-c", str(p)])
    assert r.returncode == 1, r
    line, col = loc(text, needle)
    assert (line, col) in [(e[0], e[1]) for e in error_lines(p, r.stderr.decode())], r.stderr


def test_check_reports_every_error_one_line_each(tmp_path):
    text = """listen:
  - address: "127.0.0.1:1"
timeots:
  header: 1s
limits:
  max_body_bytes: 12q
routes:
  - host: "*"
    respond: { status: 200, body: "x" }
"""
    p = write(tmp_path, text)
    r = run_cli(["-t", "-c", str(p)])
    assert r.returncode == 1, r
    lines = {e[0] for e in error_lines(p, r.stderr.decode())}
    assert {3, 6} <= lines, f"want errors on lines 3 and 6:\n{r.stderr.decode()}"


def test_check_yaml_syntax_error_has_position(tmp_path):
    text = """listen:
  - address: "127.0.0.1:1"
routes:
  - host: "*"
    respond: { status: 200, body: "x"
"""
    p = write(tmp_path, text)
    r = run_cli(["-t", "-c", str(p)])
    assert r.returncode == 1, r
    errs = error_lines(p, r.stderr.decode())
    assert errs and all(4 <= e[0] <= 6 for e in errs), r.stderr.decode()


def test_check_missing_file(tmp_path):
    p = tmp_path / "does-not-exist.yaml"
    r = run_cli(["-t", "-c", str(p)])
    assert r.returncode == 1, r
    assert str(p) in r.stderr.decode(), r.stderr


def test_env_var_substitution(gatehouse):
    text = """listen:
  - address: "127.0.0.1:@PORT@"
timeouts: { shutdown: 3s }
routes:
  - host: "*"
    respond: { status: 200, body: "hello ${GH_IT_WHO}!" }
"""
    gh = gatehouse(text, env={"GH_IT_WHO": "world"})
    r = request(gh.port, target="/", host="any.test")
    assert r.status == 200 and r.body == b"hello world!", r


def test_start_with_bad_config_exits_1_with_error(tmp_path):
    text, needle, _ = BAD_CONFIGS["bad-duration"]
    p = write(tmp_path, text)
    try:
        r = run_cli(["-c", str(p)], timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("gatehouse kept running on a bad config")
    assert r.returncode == 1, r
    want = expected_lines(text, needle)
    assert want & {e[0] for e in error_lines(p, r.stderr.decode())}, r.stderr.decode()


def test_start_on_a_port_in_use_exits_1(tmp_path, port_holder):
    port = port_holder()
    p = write(tmp_path, good_config(port))
    try:
        r = run_cli(["-c", str(p)], timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("gatehouse kept running although its listen port is taken")
    assert r.returncode == 1, r
    assert r.stderr.strip(), "start-up error without a message"


SHA256_TEST = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def test_keygen_prints_key_and_its_hash():
    r = run_cli(["keygen"])
    assert r.returncode == 0, r
    lines = [ln for ln in r.stdout.decode().splitlines() if ln.strip()]
    assert len(lines) == 2, r.stdout
    key, h = lines[0].strip(), lines[1].strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", h), h
    assert len(key) >= 20 and not re.search(r"\s", key), key
    assert h == "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    for stdin in (key.encode(), key.encode() + b"\n"):
        r2 = run_cli(["hash-key"], stdin=stdin)
        assert r2.returncode == 0, r2
        assert r2.stdout.decode().strip() == h, (stdin, r2.stdout)
    again = run_cli(["keygen"]).stdout.decode().split()
    assert again[0] != key, "keygen printed the same key twice"


@pytest.mark.parametrize("stdin,expected", [
    (b"test", SHA256_TEST),
    (b"test\n", SHA256_TEST),
    (b"test\n\n", "sha256:" + hashlib.sha256(b"test\n").hexdigest()),
], ids=["no-newline", "one-newline", "only-one-newline-dropped"])
def test_hash_key(stdin, expected):
    r = run_cli(["hash-key"], stdin=stdin)
    assert r.returncode == 0, r
    assert r.stdout.decode().strip() == expected
