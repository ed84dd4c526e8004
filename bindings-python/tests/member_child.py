"""A cluster member in its own process, driven by test_multiprocess.py.

    python member_child.py <state_dir>

It starts an app (every hook reports itself; one extension endpoint, ``GET /1.0/whoami``, which
forwards ``?target=``), then reads one command per line on stdin, a JSON array
``[command, *args]``, and runs them one after the other. Everything it says is one JSON object
per line on stdout:

    {"event": "started"}                                     the app is ready for commands
    {"event": "hook", "hook": <name>, "member": <state.name>, "args": {...}}
    {"event": "reply", "command": <command>, "result": <JSON>}
    {"event": "error", "command": <command>, "code": <code>, "message": <message>}
    {"event": "stopped"}                                     the last line, before exit code 0

Commands: ``bootstrap <name> <address>``, ``join <name> <address> <token>``, ``token <name>``,
``execute <sql> <params>``, ``query <sql> <params>``, ``increment <times>`` (read-modify-write
of the row ``counter.id = 1``, one transaction per increment), ``request <method> <path>``,
``remove <name>``, ``members``, ``status`` and ``stop``. End of input also stops the member.
"""

import json
import sys
import threading
from typing import Any

import microcluster

SCHEMA = [
    "CREATE TABLE kv (key TEXT PRIMARY KEY NOT NULL, value)",
    "CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
]
HOOKS = (
    "pre_init",
    "post_bootstrap",
    "pre_join",
    "post_join",
    "on_new_member",
    "on_start",
    "pre_remove",
    "post_remove",
    "on_daemon_config_update",
    "on_reset",
)

_out = threading.Lock()


def say(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, **fields}, default=str)
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def reporting_hook(name: str) -> microcluster.Hook:
    def hook(state: microcluster.State, **args: Any) -> None:
        say("hook", hook=name, member=state.name, args=args)

    return hook


def whoami(request: microcluster.Request) -> dict[str, Any]:
    return {"served_by": request.state.name, "caller": request.caller}


SERVERS = [
    microcluster.ExtensionServer(
        name="child.example.com",
        serve_unix=True,
        endpoints=[
            microcluster.Endpoint(path="whoami", methods={"GET": whoami}, proxy_target=True)
        ],
    )
]


def increment(tx: microcluster.Tx) -> None:
    """A read-modify-write: only serializable transactions keep every increment."""
    (n,) = tx.query("SELECT n FROM counter WHERE id = 1")[0]
    assert isinstance(n, int)
    tx.execute("UPDATE counter SET n = ? WHERE id = 1", (n + 1,))


def run(app: microcluster.App, command: str, args: list[Any]) -> Any:
    if command == "bootstrap":
        return app.new_cluster(args[0], args[1])
    if command == "join":
        return app.join_cluster(args[0], args[1], args[2])
    if command == "token":
        return app.new_join_token(args[0], 300.0)
    if command == "execute":
        return app.transaction(lambda tx: tx.execute(args[0], args[1]))
    if command == "query":
        return app.transaction(lambda tx: tx.query(args[0], args[1]))
    if command == "increment":
        for _ in range(args[0]):
            app.transaction(increment)
        return args[0]
    if command == "request":
        return app.query(args[0], args[1])
    if command == "remove":
        return app.remove_cluster_member(args[0])
    if command == "members":
        return sorted(member["name"] for member in app.cluster_members())
    if command == "status":
        return app.status()
    raise ValueError(f"unknown command {command!r}")


def main(state_dir: str) -> int:
    app = microcluster.App(state_dir)
    hooks = microcluster.Hooks(**{name: reporting_hook(name) for name in HOOKS})
    app.start("1.0", hooks=hooks, schema_updates=SCHEMA, heartbeat=0.5, extension_servers=SERVERS)
    try:
        app.ready(timeout=60)
        say("started")
        for line in sys.stdin:
            command, *args = json.loads(line)
            if command == "stop":
                break
            try:
                say("reply", command=command, result=run(app, command, args))
            except microcluster.Error as err:
                say("error", command=command, code=err.code, message=str(err))
    finally:
        app.stop()
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
