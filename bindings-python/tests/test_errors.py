"""Each exception class raised by the matching bad input, and exceptions of transaction
functions reaching the caller unchanged."""

import builtins

import pytest

import microcluster
from conftest import free_address


def test_classes_derive_from_builtins():
    assert issubclass(microcluster.InvalidArgumentError, ValueError)
    assert issubclass(microcluster.NotFoundError, LookupError)
    assert issubclass(microcluster.ForbiddenError, PermissionError)
    assert issubclass(microcluster.UnavailableError, ConnectionError)
    assert issubclass(microcluster.TimeoutError, builtins.TimeoutError)
    for cls in (microcluster.ConflictError, microcluster.WouldBlockError,
                microcluster.HookError, microcluster.InternalError):
        assert issubclass(cls, microcluster.Error)


def test_not_started(tmp_path):
    app = microcluster.App(tmp_path / "m")
    with pytest.raises(microcluster.UnavailableError) as err:
        app.transaction(lambda tx: None)
    assert err.value.code == "UNAVAILABLE"
    with pytest.raises(microcluster.TimeoutError) as err:
        app.ready(timeout=0.3)
    assert err.value.code == "TIMEOUT"
    with pytest.raises(microcluster.InvalidArgumentError):
        app.wait()
    app.stop()  # nothing to stop: no error
    with pytest.raises(microcluster.InvalidArgumentError):
        app.new_join_token("x", -1.0)


def test_bad_input_on_a_running_member(make_member):
    would_block = []

    apps = []

    def post_bootstrap(state, config):
        try:
            apps[0].status()
        except microcluster.WouldBlockError as err:
            would_block.append(err.code)

    member = make_member("m1", post_bootstrap=post_bootstrap)
    apps.append(member.app)
    with pytest.raises(microcluster.ConflictError):
        member.app.start("1.0")
    with pytest.raises(microcluster.InvalidArgumentError):
        member.app.new_cluster("bad name!", member.address)
    member.app.new_cluster("m1", member.address)
    assert would_block == ["WOULD_BLOCK"]
    with pytest.raises(microcluster.NotFoundError) as err:
        member.app.revoke_join_token("nobody")
    assert err.value.code == "NOT_FOUND"
    with pytest.raises(microcluster.NotFoundError):
        member.app.remove_cluster_member("nobody")
    with pytest.raises(microcluster.InvalidArgumentError):
        member.app.transaction(lambda tx: tx.query("SELECT ?", [object()]))
    with pytest.raises(microcluster.InvalidArgumentError):
        member.app.transaction(lambda tx: tx.query("SELEKT"))

    # The function's own exception comes back unchanged and nothing is written.
    def failing(tx):
        tx.execute("INSERT INTO kv VALUES ('x', 1)")
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError, match="boom"):
        member.app.transaction(failing)
    assert member.app.transaction(lambda tx: tx.query("SELECT * FROM kv")) == []

    # A Tx is only valid inside its function.
    kept = member.app.transaction(lambda tx: tx)
    with pytest.raises(microcluster.InvalidArgumentError):
        kept.query("SELECT 1")

    # Values round-trip, bools become integers.
    row = member.app.transaction(
        lambda tx: tx.query("SELECT ?, ?, ?, ?, ?, ?", (1, 2.5, "s", b"b", None, True))
    )
    assert row == [(1, 2.5, "s", b"b", None, 1)]


def test_join_with_a_bad_token(make_member):
    member = make_member("m1")
    with pytest.raises(microcluster.Error):
        member.app.join_cluster("m1", free_address(), "not-a-token")
