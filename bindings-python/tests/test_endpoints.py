"""Extension endpoints answered by Python handlers: called on one member's control socket and
forwarded to another over mTLS (``?target=``), trust, async handlers, errors and their statuses,
and malformed descriptions."""

import builtins
import http.client
import json
import ssl
from typing import Any

import pytest

import microcluster
from conftest import free_address


def greet(request: microcluster.Request) -> dict[str, Any]:
    if request.vars["who"] == "nobody":
        raise microcluster.NotFoundError("nobody is not here")
    if request.vars["who"] == "bad":
        raise microcluster.InvalidArgumentError("bad is not a name")
    if request.vars["who"] == "oops":
        raise ValueError("oops went wrong")
    return {
        "hello": request.vars["who"],
        "served_by": request.state.name,
        "caller": request.caller,
        "trusted": request.trusted,
        "shout": request.param("shout"),
    }


async def store(request: microcluster.Request) -> int:
    key, value = request.body["key"], request.body["value"]
    request.state.transaction(lambda tx: tx.execute("INSERT INTO kv VALUES (?, ?)", (key, value)))
    return request.state.transaction(lambda tx: tx.query("SELECT count(*) FROM kv"))[0][0]


def public(request: microcluster.Request) -> dict[str, Any]:
    return {"caller": request.caller["kind"], "trusted": request.trusted}


SERVERS = [
    microcluster.ExtensionServer(
        name="greeter.example.com",
        serve_unix=True,
        endpoints=[
            microcluster.Endpoint(path="greet/{who}", methods={"GET": greet}, proxy_target=True),
            microcluster.Endpoint(
                path="kv",
                name="store",
                methods={"POST": microcluster.Action(store, proxy_target=True)},
            ),
            microcluster.Endpoint(
                path="public",
                methods={"GET": microcluster.Action(public, allow_untrusted=True), "PUT": public},
            ),
        ],
    )
]


def https(address: str, method: str, path: str) -> tuple[int, dict[str, Any]]:
    """A request over TLS without a client certificate: an untrusted network caller."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
    try:
        connection.request(method, path, body=b"{}" if method != "GET" else None)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_endpoints_across_the_cluster(make_member):
    c1 = make_member("c1", extension_servers=SERVERS)
    c1.app.new_cluster("c1", c1.address)
    c2 = make_member("c2", extension_servers=SERVERS)
    c2.app.join_cluster("c2", c2.address, c1.app.new_join_token("c2"))

    # On c1's control socket: answered by c1 itself.
    local = c1.app.query("GET", "/1.0/greet/ann?shout=yes")
    assert local == {
        "hello": "ann",
        "served_by": "c1",
        "caller": {"kind": "control_socket"},
        "trusted": True,
        "shout": "yes",
    }
    # ?target=c2: c1 forwards it to c2 over mTLS, where c1 is a trusted member.
    remote = c1.app.query("GET", "/1.0/greet/bob?target=c2")
    assert remote["served_by"] == "c2"
    assert remote["trusted"] is True
    assert remote["caller"]["kind"] == "member"
    assert remote["caller"]["name"] == "c1"

    # An async handler with a body, running a transaction, on another member.
    assert c1.app.query("POST", "/1.0/kv?target=c2", {"key": "a", "value": 1}) == 1
    assert c2.app.query("post", "/1.0/kv", {"key": "b", "value": 2}) == 2
    assert c1.app.transaction(lambda tx: tx.query("SELECT key FROM kv ORDER BY key")) == [
        ("a",),
        ("b",),
    ]

    # Handler errors keep their status and message, also when forwarded.
    with pytest.raises(microcluster.NotFoundError, match="nobody is not here"):
        c1.app.query("GET", "/1.0/greet/nobody?target=c2")
    with pytest.raises(microcluster.InvalidArgumentError, match="bad is not a name"):
        c2.app.query("GET", "/1.0/greet/bad")
    with pytest.raises(microcluster.InternalError, match="raised ValueError: oops went wrong"):
        c1.app.query("GET", "/1.0/greet/oops?target=c2")
    # A method the endpoint does not serve (501), and an unknown path.
    with pytest.raises(microcluster.NotImplementedError, match="not implemented") as unserved:
        c1.app.query("GET", "/1.0/kv")
    assert unserved.value.code == "NOT_IMPLEMENTED"
    assert isinstance(unserved.value, builtins.NotImplementedError)
    # A body over the 8 MiB limit (413) is a kind of bad input.
    with pytest.raises(microcluster.PayloadTooLargeError) as too_large:
        c1.app.query("POST", "/1.0/kv", {"value": "x" * (9 * 1024 * 1024)})
    assert too_large.value.code == "PAYLOAD_TOO_LARGE"
    assert isinstance(too_large.value, microcluster.InvalidArgumentError)
    with pytest.raises(microcluster.NotFoundError):
        c1.app.query("GET", "/1.0/nothing-here")

    # Over the network without a client certificate: untrusted.
    status, answer = https(c2.address, "GET", "/1.0/public")
    assert status == 200, answer
    assert answer["metadata"] == {"caller": "unknown", "trusted": False}
    status, answer = https(c2.address, "PUT", "/1.0/public")
    assert status == 403, answer
    status, answer = https(c2.address, "GET", "/1.0/greet/eve")
    assert status == 403, answer


def test_async_app_query_as_a_client_of_a_running_member(make_member, tmp_path):
    import asyncio

    c1 = make_member("c1", extension_servers=SERVERS)
    c1.app.new_cluster("c1", c1.address)
    client = microcluster.AsyncApp(tmp_path / "c1")
    assert asyncio.run(client.query("GET", "/1.0/greet/zed"))["hello"] == "zed"


def endpoint(methods: dict[str, Any], path: str = "x") -> microcluster.Endpoint:
    return microcluster.Endpoint(path=path, methods=methods)


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        (
            [microcluster.ExtensionServer("e.example.com", [endpoint({"BREW": public})])],
            'Endpoint "x" has an unknown method "BREW"',
        ),
        (
            [microcluster.ExtensionServer("e.example.com", [endpoint({"GET": 42})])],
            "The GET handler of endpoint 'x' is not callable",
        ),
        ([{"name": "e.example.com"}], "Not an ExtensionServer"),
        (
            [
                microcluster.ExtensionServer(
                    "e.example.com",
                    [
                        endpoint({"GET": public}),
                        microcluster.Endpoint(path="y", name="x", methods={"GET": public}),
                    ],
                )
            ],
            'more than one endpoint named "x"',
        ),
    ],
)
def test_bad_descriptions_are_refused_at_start(tmp_path, servers, message):
    app = microcluster.App(tmp_path / "m")
    with pytest.raises(microcluster.InvalidArgumentError, match=message):
        app.start("1.0", extension_servers=servers)
    # Nothing was started.
    app.stop()


def test_servers_breaking_the_rules_fail_the_daemon(tmp_path):
    app = microcluster.App(tmp_path / "m")
    servers = [microcluster.ExtensionServer("core", [endpoint({"GET": public})])]
    app.start("1.0", extension_servers=servers)
    with pytest.raises(microcluster.Error, match='reserved server name "core"'):
        app.ready(timeout=30)
    with pytest.raises(microcluster.InvalidArgumentError, match='reserved server name "core"'):
        app.wait()


def test_plain_endpoints_are_served_under_1_0(tmp_path):
    """``endpoints=`` is the short form: a core-API server named ``app`` under ``/1.0/``,
    also on the control socket, next to any ``extension_servers``."""
    hello = microcluster.Endpoint("hello/{who}", {"GET": lambda request: f"hi {request.vars['who']}"})

    def refuse(request: microcluster.Request) -> None:
        raise microcluster.ForbiddenError("members only")

    secret = microcluster.Endpoint("secret", {"GET": refuse})
    other = microcluster.ExtensionServer(
        "other.example.com",
        [microcluster.Endpoint("ping", {"GET": lambda request: "pong"})],
        path_prefix="2.0",
        serve_unix=True,
    )
    with microcluster.App(tmp_path / "c1") as app:
        app.start("1.0", endpoints=[hello, secret], extension_servers=[other])
        app.ready(timeout=60)
        app.new_cluster("c1", free_address())
        assert app.query("GET", "/1.0/hello/ann") == "hi ann"
        assert app.query("GET", "/2.0/ping") == "pong"
        with pytest.raises(microcluster.ForbiddenError, match="members only") as refused:
            app.query("GET", "/1.0/secret")
        assert isinstance(refused.value, PermissionError)


def test_access_handlers_decide_before_the_handler(tmp_path):
    """An access handler runs before the handler: False answers 403 ``not authorized``, an
    exception answers like a handler's, True (also from ``async def``) lets the handler run;
    an Endpoint's access_handler applies to its plain handlers, not to its Actions."""
    ran: list[str] = []
    checked: list[tuple[str, bool]] = []

    def handler(request: microcluster.Request) -> str:
        ran.append(request.path)
        return "done"

    def by_param(request: microcluster.Request) -> Any:
        checked.append((request.state.name, request.trusted))
        answer = request.param("answer")
        if answer == "forbidden":
            raise microcluster.ForbiddenError("no")
        if answer == "invalid":
            raise microcluster.InvalidArgumentError("bad answer")
        if answer == "crash":
            raise KeyError("lost")
        if answer == "one":
            return 1
        return answer == "yes"

    async def async_yes(request: microcluster.Request) -> bool:
        return True

    def no(request: microcluster.Request) -> bool:
        return False

    action = microcluster.Action
    endpoints = [
        microcluster.Endpoint("checked", {"GET": action(handler, access_handler=by_param)}),
        microcluster.Endpoint("async", {"GET": action(handler, access_handler=async_yes)}),
        microcluster.Endpoint(
            "guarded", {"GET": handler, "PUT": action(handler)}, access_handler=no
        ),
    ]
    with microcluster.App(tmp_path / "c1") as app:
        app.start("1.0", endpoints=endpoints)
        app.ready(timeout=60)
        app.new_cluster("c1", free_address())

        with pytest.raises(microcluster.ForbiddenError, match="not authorized"):
            app.query("GET", "/1.0/checked?answer=no")
        assert ran == []
        assert checked == [("c1", True)]
        with pytest.raises(microcluster.ForbiddenError, match="^no$"):
            app.query("GET", "/1.0/checked?answer=forbidden")
        with pytest.raises(microcluster.InvalidArgumentError, match="bad answer"):
            app.query("GET", "/1.0/checked?answer=invalid")
        with pytest.raises(microcluster.InternalError, match="raised KeyError: 'lost'"):
            app.query("GET", "/1.0/checked?answer=crash")
        with pytest.raises(
            microcluster.InternalError,
            match="The GET access handler of endpoint 'checked' returned int, not a bool",
        ):
            app.query("GET", "/1.0/checked?answer=one")
        assert ran == []
        assert app.query("GET", "/1.0/checked?answer=yes") == "done"
        assert ran == ["/1.0/checked"]
        assert app.query("GET", "/1.0/async") == "done"
        assert ran == ["/1.0/checked", "/1.0/async"]

        # The Endpoint's access handler guards its plain GET handler, not its PUT Action.
        with pytest.raises(microcluster.ForbiddenError, match="not authorized"):
            app.query("GET", "/1.0/guarded")
        assert app.query("PUT", "/1.0/guarded") == "done"
        assert ran == ["/1.0/checked", "/1.0/async", "/1.0/guarded"]


def test_access_handlers_see_untrusted_callers(tmp_path):
    """With allow_untrusted, the access handler still runs and decides for untrusted callers."""
    seen: list[bool] = []

    def members_or_yes(request: microcluster.Request) -> bool:
        seen.append(request.trusted)
        return request.trusted or request.param("answer") == "yes"

    guarded = microcluster.Action(public, allow_untrusted=True, access_handler=members_or_yes)
    with microcluster.App(tmp_path / "c1") as app:
        app.start("1.0", endpoints=[endpoint({"GET": guarded})])
        app.ready(timeout=60)
        address = free_address()
        app.new_cluster("c1", address)
        status, answer = https(address, "GET", "/1.0/x")
        assert status == 403, answer
        assert answer["error"] == "not authorized"
        status, answer = https(address, "GET", "/1.0/x?answer=yes")
        assert status == 200, answer
        assert answer["metadata"] == {"caller": "unknown", "trusted": False}
        assert seen == [False, False]


@pytest.mark.parametrize(
    "bad_endpoint",
    [
        endpoint({"GET": microcluster.Action(public, access_handler=True)}),
        microcluster.Endpoint("x", {"GET": public}, access_handler="yes"),
    ],
)
def test_a_non_callable_access_handler_is_refused_at_start(tmp_path, bad_endpoint):
    app = microcluster.App(tmp_path / "m")
    with pytest.raises(
        microcluster.InvalidArgumentError,
        match="The GET access handler of endpoint 'x' is not callable",
    ):
        app.start("1.0", endpoints=[bad_endpoint])
    app.stop()
