"""fedsim's SuperNode: Flower's `flower-supernode` in `--isolation process` mode with a
long-lived ClientApp process beside it (`clientapp_worker`), woken when a message arrives.

    python -m fedsim.runtime.supernode [flower-supernode options]

Flower 1.42's SuperNode sleeps 3 s between polls of the SuperLink while it has no message and
0.5 s between checks for its ClientApp's reply (constants inside
`flwr.supernode.start_client_internal`), and its SuperExec polls for tasks every second: a
round waits for all of them on every node. Here the same SuperNode code polls the SuperLink
every IDLE_POLL_S[0] after a message or a reply, growing to IDLE_POLL_S[1], and every
QUIET_POLL_S once no message came for QUIET_AFTER_S (a poll costs the SuperNode and the
SuperLink ~15 ms of CPU over TLS: a fixed short interval would eat the cores the clients
train on); it checks for its ClientApp's reply every LOCAL_POLL_S (an in-memory lookup) and
writes a byte to the ClientApp process's stdin as soon as a message is stored; objects of a
message not yet stored are asked for again within milliseconds (`compat.short_object_pulls`),
not after Flower's 1 s. It heartbeats every 10 s, Flower's minimum, instead of 30 s, so the
SuperLink gives up on a lost node after 20 s instead of a minute. The ClientApp process is
started again if it dies: a crash inside a client does not take the node down.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import threading
import time

import flwr.supercore.heartbeat as heartbeat
import flwr.supernode.fleet_http_connection as fleet
import flwr.supernode.start_client_internal as node
from flwr.common.constant import HEARTBEAT_MIN_INTERVAL
from flwr.supernode.cli import flower_supernode

from fedsim.runtime import compat

IDLE_POLL_S = (0.02, 0.25)  # first and longest wait between polls of the SuperLink in a run
GROWTH = 1.5
QUIET_AFTER_S, QUIET_POLL_S = 30.0, 2.0  # no message for this long: poll this rarely
LOCAL_POLL_S = 0.01
FLOWER_IDLE_S = 3  # the SuperNode loop's sleep after a poll that brought no message
RUNTIME_API = ("127.0.0.1", 9094)  # flower-supernode's --host and --port defaults


class Waits:
    """The `time` module as the SuperNode's loop sees it: the idle poll backs off from
    IDLE_POLL_S[0] and starts again short after every message and every reply (a round's
    next message follows the node's reply closely); local waits are short."""

    def __init__(self) -> None:
        self.busy()

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if seconds >= FLOWER_IDLE_S:
            time.sleep(self.idle)
            quiet = time.monotonic() - self.last > QUIET_AFTER_S
            self.idle = QUIET_POLL_S if quiet else min(self.idle * GROWTH, IDLE_POLL_S[1])
        else:
            time.sleep(min(seconds, LOCAL_POLL_S))

    def busy(self) -> None:
        self.idle, self.last = IDLE_POLL_S[0], time.monotonic()


class Worker:
    """The long-lived ClientApp process: kept running, and woken through its stdin."""

    def __init__(self, runtime_api: str) -> None:
        self.cmd = [sys.executable, "-m", "fedsim.runtime.clientapp_worker"]
        self.cmd += ["--runtime-api-address", runtime_api, "--parent-pid", str(os.getpid())]
        self.proc: subprocess.Popen | None = None

    def keep_running(self) -> None:
        while True:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE)
            code = self.proc.wait()
            print(f"fedsim: the ClientApp process exited ({code}); starting it again", flush=True)
            time.sleep(1.0)

    def wake(self) -> None:
        proc = self.proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):  # exiting or restarting
                proc.stdin.write(b"\n")
                proc.stdin.flush()


def runtime_api_address(argv: list[str]) -> str:
    """HOST:PORT of the node's Runtime API, from flower-supernode's `--host`/`--port`."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--host", default=RUNTIME_API[0])
    p.add_argument("--port", type=int, default=RUNTIME_API[1])
    args, _ = p.parse_known_args(argv)
    host = f"[{args.host}]" if ":" in args.host else args.host
    return f"{host}:{args.port}"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--isolation" in argv:
        sys.exit("fedsim.runtime.supernode sets --isolation process itself")
    worker, waits = Worker(runtime_api_address(argv)), Waits()
    threading.Thread(target=worker.keep_running, daemon=True).start()
    pull, push = node._pull_and_store_message, node._push_messages

    def pull_and_wake(*args, **kwargs):
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            waits.busy()
            worker.wake()
        return run_id

    def push_and_listen(*args, **kwargs):
        push(*args, **kwargs)
        waits.busy()

    node.time = waits
    compat.short_object_pulls()
    node._pull_and_store_message = pull_and_wake
    node._push_messages = push_and_listen
    fleet.HEARTBEAT_DEFAULT_INTERVAL = heartbeat.HEARTBEAT_DEFAULT_INTERVAL = HEARTBEAT_MIN_INTERVAL
    sys.argv = ["flower-supernode", *argv, "--isolation", "process"]
    flower_supernode()


if __name__ == "__main__":
    main()
