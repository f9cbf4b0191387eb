"""A long-lived ClientApp process for a SuperNode in `--isolation process` mode.

Flower 1.42's SuperExec starts a fresh `flwr-clientapp` process for every message; each one
imports torch and the app and rebuilds the client's partition and model. This process takes
the SuperNode's tasks itself, one after another, over the same Runtime API calls that
`flwr-clientapp` makes, and keeps the app loaded: what the app caches (fedsim's client
partitions and models) lives from one message to the next. A task of another app bundle
(FAB: a resubmitted or edited app) re-executes the process first, so no module loaded for
the previous app is reused.

    python -m fedsim.runtime.clientapp_worker --runtime-api-address HOST:PORT
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import time
from logging import ERROR, INFO

from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore import log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from fedsim.runtime import compat

FALLBACK_S = 1.0  # AcquireTask at least this often, woken or not
RETRY_S, RETRIES = 0.005, 20  # after a wake-up, until the task is listed


def runtime_client(address: str, token: str | None = None) -> RuntimeHttpClient:
    """A client of the SuperNode's Runtime API (plain HTTP on the node's own host)."""
    interceptors = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp")]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


def load_app(fab, run) -> ClientApp:
    """Install the FAB under FLWR_HOME and import its ClientApp (once per process)."""
    install_from_fab(fab.content, skip_prompt=True)
    load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
    return load(run.fab_id, run.fab_version, fab.hash_str)


def run_task(address: str, token: str, apps: dict[str, ClientApp]) -> None:
    """One task: pull the message, run the ClientApp, push its reply and the task's status,
    as `flwr-clientapp` does; an exception becomes an error reply, not a dead process."""
    client = runtime_client(address, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        message, context, run, fab = pull_task_input(client)
        if fab.hash_str not in apps:
            apps[fab.hash_str] = load_app(fab, run)
        reply = apps[fab.hash_str](message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as ex:  # noqa: BLE001  (reported to the server, as flwr-clientapp does)
        code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        details = f"{type(ex)}:<'{ex}'>"
        if isinstance(ex, LoadClientAppError):
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
        log(ERROR, "ClientApp raised an exception", exc_info=ex)
        if message is not None:
            reply = Message(Error(code=code, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        finally:
            push_task_output(client, context, status, details)
            heartbeat.stop()
            client.close()


class Wakes:
    """Wait for the SuperNode's wake-up byte on stdin (a message arrived), retrying shortly
    after one in case the task is not yet listed; without a stdin, poll every FALLBACK_S."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno() if sys.stdin is not None and not sys.stdin.isatty() else None
        self.retries = 0

    def wait(self) -> None:
        if self.retries:
            self.retries -= 1
            time.sleep(RETRY_S)
            return
        if self.fd is None:
            time.sleep(FALLBACK_S)
            return
        ready, _, _ = select.select([self.fd], [], [], FALLBACK_S)
        if ready:
            if os.read(self.fd, 4096):
                self.retries = RETRIES
            else:  # the SuperNode closed the pipe
                self.fd = None

    def found(self) -> None:
        self.retries = 0


def serve(address: str, argv: list[str], token: str | None = None) -> None:
    """Take the SuperNode's ClientApp tasks one by one, for as long as the process lives."""
    apps: dict[str, ClientApp] = {}
    if token is not None:
        run_task(address, token, apps)
    client = runtime_client(address)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    wakes = Wakes()
    while True:
        res = client.AcquireTask(request)
        if not (res.HasField("task") and res.token):
            wakes.wait()
            continue
        wakes.found()
        if apps and res.task.fab_hash not in apps:  # another app: start afresh, then run it
            log(INFO, "A new app bundle: restarting the ClientApp process")
            client.close()
            again = [sys.executable, "-m", __spec__.name, *argv, "--token", res.token]
            os.execv(sys.executable, again)
        run_task(address, res.token, apps)


def main() -> None:
    p = argparse.ArgumentParser(description="A long-lived Flower ClientApp process")
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API")
    p.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) does")
    p.add_argument("--token", help="run this task first (after a restart for a new app)")
    args = p.parse_args()
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    compat.short_object_pulls()
    argv = ["--runtime-api-address", args.runtime_api_address]
    if args.parent_pid is not None:
        argv += ["--parent-pid", str(args.parent_pid)]
    log(INFO, "Long-lived ClientApp process on %s", args.runtime_api_address)
    with contextlib.suppress(KeyboardInterrupt):  # the SuperNode is gone (the monitor's SIGINT)
        serve(args.runtime_api_address, argv, args.token)


if __name__ == "__main__":
    main()
