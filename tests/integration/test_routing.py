"""SPEC section 3 "Routing": hosts, paths, fall-through, redirect, respond,
path normalisation."""
import pytest

from harness import Conn, assert_error_json, build_request, request


def respond(host, body, path=None, status=200):
    r = {"host": host}
    if path is not None:
        r["path"] = path
    r["respond"] = {"status": status, "body": body}
    return r


HOST_ROUTES = [
    respond("app.test", "exact"),
    respond("*.app.test", "wild-app"),
    respond("*.deep.app.test", "wild-deep"),
    respond("*", "catch-all"),
]


@pytest.fixture
def hosts_gh(gatehouse):
    return gatehouse({"routes": HOST_ROUTES})


@pytest.mark.parametrize("host,want", [
    ("app.test", "exact"),
    ("x.app.test", "wild-app"),
    ("a.b.c.app.test", "wild-app"),
    ("x.deep.app.test", "wild-deep"),
    ("a.b.deep.app.test", "wild-deep"),
    ("deep.app.test", "wild-app"),
    ("other.test", "catch-all"),
    ("xapp.test", "catch-all"),
    ("app.test.evil", "catch-all"),
    ("APP.Test", "exact"),
    ("app.test:8080", "exact"),
    ("app.test.", "exact"),
    ("App.TEST.:1234", "exact"),
    ("X.Deep.App.Test:80", "wild-deep"),
])
def test_host_matching(hosts_gh, host, want):
    r = request(hosts_gh.port, target="/", host=host)
    assert r.status == 200, r
    assert r.body.decode() == want, f"Host {host!r}: {r!r}"


PATH_ROUTES = [
    respond("api.test", "v1", path="/v1"),
    respond("api.test", "models", path="/v1/models"),
    respond("api.test", "api-root", path="/"),
    respond("only.test", "only-v1", path="/v1/"),
    respond("x.chain.test", "exact-a", path="/a"),
    respond("*.chain.test", "wild-b", path="/b"),
    respond("*", "catch-all"),
]


@pytest.fixture
def paths_gh(gatehouse):
    return gatehouse({"routes": PATH_ROUTES})


@pytest.mark.parametrize("host,target,want", [
    ("api.test", "/v1", "v1"),
    ("api.test", "/v1/", "v1"),
    ("api.test", "/v1/chat/completions", "v1"),
    ("api.test", "/v1?x=/v1/models", "v1"),
    ("api.test", "/v1/models", "models"),
    ("api.test", "/v1/models/", "models"),
    ("api.test", "/v1/models/llama", "models"),
    ("api.test", "/v1/modelsx", "v1"),
    ("api.test", "/v10", "api-root"),
    ("api.test", "/v10/models", "api-root"),
    ("api.test", "/v", "api-root"),
    ("api.test", "/", "api-root"),
    ("only.test", "/v1/", "only-v1"),
    ("only.test", "/v1/x", "only-v1"),
    ("only.test", "/v10", "catch-all"),
    ("only.test", "/v2", "catch-all"),
    ("only.test", "/", "catch-all"),
    ("x.chain.test", "/a/1", "exact-a"),
    ("x.chain.test", "/b/1", "wild-b"),
    ("x.chain.test", "/c", "catch-all"),
    ("y.chain.test", "/a", "catch-all"),
])
def test_path_prefix_and_fall_through(paths_gh, host, target, want):
    r = request(paths_gh.port, target=target, host=host)
    assert r.status == 200, r
    assert r.body.decode() == want, f"{host}{target}: {r!r}"


def test_no_route_is_404_json(gatehouse):
    gh = gatehouse({"routes": [respond("a.test", "a"), respond("b.test", "b", path="/only")]})
    for host, target in (("nope.test", "/"), ("b.test", "/other"), ("sub.a.test", "/")):
        r = request(gh.port, target=target, host=host)
        assert_error_json(r, 404)
        assert len(r.body) < 1024, "error bodies are small"


def test_respond(gatehouse):
    gh = gatehouse({"routes": [respond("tea.test", "short and stout\n", status=418),
                               respond("down.test", "maintenance\n", status=503)]})
    r = request(gh.port, host="tea.test", target="/anything")
    assert r.status == 418 and r.body == b"short and stout\n", r
    r = request(gh.port, host="down.test")
    assert r.status == 503 and r.body == b"maintenance\n", r


@pytest.mark.parametrize("status", [None, 301, 302, 307, 308])
def test_redirect(gatehouse, status):
    route = {"host": "old.test", "redirect": "https://new.test{path}"}
    if status:
        route["status"] = status
    gh = gatehouse({"routes": [route]})
    r = request(gh.port, host="old.test", target="/a/b")
    assert r.status == (status or 308), r
    assert r.header("location") == "https://new.test/a/b", r


def test_redirect_keeps_connection_usable(gatehouse):
    gh = gatehouse({"routes": [{"host": "old.test", "redirect": "https://new.test{path}"},
                               respond("*", "ok")]})
    with Conn(gh.port) as c:
        c.send(build_request("GET", "/x", "old.test") + build_request("GET", "/", "y.test"))
        r1 = c.read_response()
        r2 = c.read_response()
    assert r1.status == 308 and r1.header("location") == "https://new.test/x"
    assert r2.status == 200 and r2.body == b"ok"


@pytest.fixture
def norm_gh(gatehouse, aio):
    return gatehouse({"routes": [
        respond("norm.test", "public", path="/public"),
        {"host": "norm.test", "path": "/admin", "upstream": aio.url},
        respond("norm.test", "root", path="/"),
    ]})


def raw_get(port, target, host="norm.test"):
    """A request with the target exactly as written (no client-side cleanup)."""
    with Conn(port) as c:
        c.send(build_request("GET", target, host))
        return c.read_response()


@pytest.mark.parametrize("target,path", [
    ("/public/../admin", "/admin"),
    ("/public/../admin/x", "/admin/x"),
    ("/public/./../admin/x", "/admin/x"),
    ("/public/%2E%2E/admin/x", "/admin/x"),
    ("/public/%2e%2e/admin/x", "/admin/x"),
    ("/../../admin/x", "/admin/x"),
    ("/./admin/./x", "/admin/x"),
    ("/admin/x/../y", "/admin/y"),
    ("/%61dmin/x", "/admin/x"),
    ("/admin/x%41y", "/admin/xAy"),
    ("/admin/%7Euser", "/admin/~user"),
    ("/admin/a%2Db%5Fc%2E", "/admin/a-b_c."),
])
def test_normalised_path_routes_and_goes_upstream(norm_gh, target, path):
    r = raw_get(norm_gh.port, target)
    assert r.status == 200, r
    assert r.header("x-server") is not None, f"{target} did not reach the /admin upstream: {r!r}"
    assert r.json()["path"] == path


@pytest.mark.parametrize("target,path", [
    ("/admin/a%2Fb", "/admin/a%2fb"),
    ("/admin/a%2fb", "/admin/a%2fb"),
    ("/admin/%3Fq", "/admin/%3fq"),
    ("/admin/%25", "/admin/%25"),
])
def test_reserved_escapes_are_kept(norm_gh, target, path):
    r = raw_get(norm_gh.port, target)
    assert r.status == 200, r
    assert r.json()["path"].lower() == path


def test_escaped_slash_is_not_a_segment_boundary(norm_gh):
    r = raw_get(norm_gh.port, "/admin%2Fsecret")
    assert r.status == 200 and r.body == b"root", r


def test_dot_segments_cannot_reach_public_from_admin_or_back(norm_gh):
    r = raw_get(norm_gh.port, "/admin/../public/x")
    assert r.status == 200 and r.body == b"public", r


def test_query_is_not_normalised(norm_gh):
    r = raw_get(norm_gh.port, "/admin/q?x=%41&y=../z&%2F")
    assert r.status == 200, r
    doc = r.json()
    assert doc["path"] == "/admin/q"
    assert doc["query"] == "x=%41&y=../z&%2F"
