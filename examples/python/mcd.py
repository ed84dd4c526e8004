#!/usr/bin/env python3
"""mcd.py: a small cluster member in Python, the twin of examples/c/mcd.c.

    mcd.py <state_dir> bootstrap <name> <address>       start, bootstrap a new cluster, serve
    mcd.py <state_dir> join <name> <address> <token>    start, join a cluster, serve
    mcd.py <state_dir> run                              start an initialised member again, serve
    mcd.py <state_dir> token <name>                     print a join token (asks the running member)
    mcd.py <state_dir> query <method> <path>            call the REST API on the control socket
    mcd.py <state_dir> stop                             stop the running member

A serving member logs every hook, stores a greeting (its name and a sequence number) once it is
a member, prints "mcd: ready" and serves until SIGINT/SIGTERM or `mcd.py <dir> stop`. It serves
one extension endpoint, GET /1.0/greetings/{member} (404 for a member that has not greeted),
which forwards `?target=<member>` to that member over mTLS:

    mcd.py <state_dir> query GET '/1.0/greetings/c2?target=c3'
"""

import json
import signal
import sys
import threading
from typing import Any

import microcluster

SCHEMA = ["CREATE TABLE greetings (member TEXT PRIMARY KEY NOT NULL, seq INTEGER NOT NULL)"]


def log(message: str) -> None:
    print(f"mcd: {message}", flush=True)


def logging_hook(name: str) -> microcluster.Hook:
    def hook(state: microcluster.State, **args: Any) -> None:
        log(f"hook {name} member={state.name} args={json.dumps(args, sort_keys=True)}")

    return hook


HOOKS = microcluster.Hooks(
    **{
        name: logging_hook(name)
        for name in ("pre_init", "post_bootstrap", "pre_join", "post_join", "on_new_member",
                     "on_start", "pre_remove", "post_remove", "on_daemon_config_update")
    }
)


def greeting(request: microcluster.Request) -> dict[str, Any]:
    """GET /1.0/greetings/{member}: that member's greeting, read on this member."""
    member = request.vars["member"]
    rows = request.state.transaction(
        lambda tx: tx.query("SELECT seq FROM greetings WHERE member = ?", (member,))
    )
    if not rows:
        raise microcluster.NotFoundError(f"no greeting from {member}")
    log(f"endpoint greeting member={member} caller={request.caller['kind']}")
    return {"member": member, "seq": rows[0][0], "served_by": request.state.name}


SERVERS = [
    microcluster.ExtensionServer(
        name="mcd.example.com",
        serve_unix=True,
        endpoints=[
            microcluster.Endpoint(
                path="greetings/{member}", name="greeting", methods={"GET": greeting},
                proxy_target=True,
            )
        ],
    )
]


def greet(tx: microcluster.Tx, member: str) -> None:
    count = tx.query("SELECT count(*) FROM greetings")[0][0]
    tx.execute("INSERT INTO greetings (member, seq) VALUES (?, ?)", (member, count + 1))


def serve(app: microcluster.App, mode: str, args: list[str]) -> int:
    app.start("1.0", hooks=HOOKS, schema_updates=SCHEMA, extension_servers=SERVERS)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    app.ready(timeout=120)
    if mode == "bootstrap":
        app.new_cluster(args[0], args[1])
    elif mode == "join":
        app.join_cluster(args[0], args[1], args[2])
    if mode != "run":
        app.transaction(lambda tx: greet(tx, args[0]))
    log("ready")
    # The daemon ends on a signal (stop() here) or on a shutdown request (`mcd.py <dir> stop`).
    waiter = threading.Thread(target=lambda: (app.wait(), stop.set()), daemon=True)
    waiter.start()
    stop.wait()
    app.stop()
    log("stopped")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    state_dir, command, args = argv[1], argv[2], argv[3:]
    app = microcluster.App(state_dir)
    try:
        if command in ("bootstrap", "join", "run"):
            expected = {"bootstrap": 2, "join": 3, "run": 0}[command]
            if len(args) != expected:
                print(__doc__, file=sys.stderr)
                return 2
            return serve(app, command, args)
        if command == "token" and len(args) == 1:
            print(app.new_join_token(args[0]))
        elif command == "query" and len(args) == 2:
            print(json.dumps(app.query(args[0], args[1])))
        elif command == "stop" and not args:
            app.query("POST", "/core/control/shutdown")
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except microcluster.Error as err:
        print(f"mcd: {command} failed ({err.code}): {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
