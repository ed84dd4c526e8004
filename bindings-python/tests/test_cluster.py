"""A three-member cluster in one Python process: bootstrap, tokens, join, transactions,
concurrent counters, hooks in order, removal."""

import threading
from datetime import timedelta

import pytest

import microcluster
from conftest import wait_for


def test_three_members(make_member):
    c1 = make_member("c1")
    c1.app.new_cluster("c1", c1.address, {"k": "v"})
    assert c1.app.status()["name"] == "c1"
    assert c1.hook_names() == ["on_start", "pre_init", "post_bootstrap"]
    assert c1.calls[1][1] == {"bootstrap": True, "config": {"k": "v"}}

    token2 = c1.app.new_join_token("c2", timedelta(minutes=5))
    token3 = c1.app.new_join_token("c3", 300.0)
    assert sorted(t["name"] for t in c1.app.join_tokens()) == ["c2", "c3"]

    c2 = make_member("c2")
    c2.app.join_cluster("c2", c2.address, token2)
    c3 = make_member("c3")
    c3.app.join_cluster("c3", c3.address, token3)
    assert c1.app.join_tokens() == []
    assert c3.hook_names() == ["on_start", "pre_init", "pre_join", "post_join"]
    assert c2.hook_names() == ["on_start", "pre_init", "pre_join", "post_join", "on_new_member"]
    new_members = [args["new_member"]["name"] for hook, args in c1.calls if hook == "on_new_member"]
    assert new_members == ["c2", "c3"]
    members = {m["name"]: m for m in c3.app.cluster_members()}
    assert sorted(members) == ["c1", "c2", "c3"]

    # Transactions from two members, read back on the third.
    c1.app.transaction(lambda tx: tx.execute("INSERT INTO kv VALUES (?, ?)", ("a", 1)))
    c2.app.transaction(
        lambda tx: tx.execute("INSERT INTO kv VALUES (?, ?), (?, ?)", ["b", b"\x00\x01", "c", None])
    )
    rows = c3.app.transaction(lambda tx: tx.query("SELECT key, value FROM kv ORDER BY key"))
    assert rows == [("a", 1), ("b", b"\x00\x01"), ("c", None)]
    assert c3.app.sql("SELECT count(*) FROM kv")["Results"][0]["rows"] == [[3]]

    # Serializable increments from two members at once are all counted.
    c1.app.transaction(lambda tx: tx.execute("INSERT INTO counter VALUES (1, 0)"))

    def increment(member, times):
        for _ in range(times):
            member.app.transaction(lambda tx: tx.execute("UPDATE counter SET n = n + 1 WHERE id = 1"))

    threads = [threading.Thread(target=increment, args=(m, 15)) for m in (c1, c2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert c3.app.transaction(lambda tx: tx.query("SELECT n FROM counter"))[0][0] == 30

    # The leader's heartbeat rounds reach on_heartbeat.
    wait_for(lambda: any(hook == "on_heartbeat" for m in (c1, c2, c3) for hook, _ in m.calls),
             what="a heartbeat")

    # Removal: pre_remove on the victim, post_remove on the others, the victim reset.
    c1.app.remove_cluster_member("c3")
    assert sorted(m["name"] for m in c1.app.cluster_members()) == ["c1", "c2"]
    assert "pre_remove" in c3.hook_names()
    wait_for(lambda: "post_remove" in c1.hook_names() and "post_remove" in c2.hook_names(),
             what="post_remove")
    wait_for(lambda: ("on_reset", {"reason": "removed"}) in c3.calls, what="c3 reset")


def test_hooks_use_state_async_hooks_and_failing_pre_join(make_member):
    seen = {}

    async def on_start(state):
        seen["async"] = state.name

    def post_bootstrap(state, config):
        state.transaction(lambda tx: tx.execute("INSERT INTO kv VALUES ('boot', ?)", [state.address]))
        seen["members"] = [m["name"] for m in state.cluster_members()]

    c1 = make_member("c1", on_start=on_start, post_bootstrap=post_bootstrap)
    c1.app.new_cluster("c1", c1.address)
    assert seen["members"] == ["c1"]
    assert "async" in seen
    assert c1.app.transaction(lambda tx: tx.query("SELECT value FROM kv WHERE key = 'boot'")) == [
        (c1.address,)
    ]

    fail = {"pre_join": True}

    def pre_join(state, config):
        # Runs while this process's main thread waits in join_cluster: no deadlock, and the
        # database is usable.
        state.transaction(lambda tx: tx.query("SELECT count(*) FROM kv"))
        if fail["pre_join"]:
            raise ValueError("not today")

    c2 = make_member("c2", pre_join=pre_join)
    token = c1.app.new_join_token("c2")
    try:
        c2.app.join_cluster("c2", c2.address, token)
        raise AssertionError("the join should fail")
    except microcluster.HookError as err:
        assert "ValueError: not today" in str(err)
        assert isinstance(err.__cause__, ValueError)
        assert str(err.__cause__) == "not today"
    wait_for(lambda: [m["name"] for m in c1.app.cluster_members()] == ["c1"], what="rollback")

    fail["pre_join"] = False
    for record in c1.app.join_tokens():
        c1.app.revoke_join_token(record["name"])
    c2.app.ready(timeout=60)
    c2.app.join_cluster("c2", c2.address, c1.app.new_join_token("c2"))
    assert sorted(m["name"] for m in c2.app.cluster_members()) == ["c1", "c2"]


def test_local_view_and_recovery_with_the_daemons_stopped(make_member):
    """``local_members`` reads the Raft view with the daemon stopped; ``recover`` rewrites it
    and returns the tarball; bad lists are refused."""
    c1, c2 = make_member("c1"), make_member("c2")
    c1.app.new_cluster("c1", c1.address)
    c2.app.join_cluster("c2", c2.address, c1.app.new_join_token("c2"))
    c2.app.stop()
    c1.app.stop()
    view = c1.app.local_members()
    assert [(m["name"], m["role"]) for m in view] == [("c1", "voter"), ("c2", "voter")]
    with pytest.raises(microcluster.InvalidArgumentError, match="members cannot be added or removed"):
        c1.app.recover(view[:1])
    with pytest.raises(microcluster.InvalidArgumentError, match="Invalid members"):
        c1.app.recover([{"id": "x"}])
    view[1]["role"] = "spare"
    tarball = c1.app.recover(view)
    assert tarball.endswith("recovery_db.tar.gz")
    assert [m["role"] for m in c1.app.local_members()] == ["voter", "spare"]
