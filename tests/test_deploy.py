"""Flower's deployment engine on loopback: a real flower-superlink, fedsim's SuperNodes
(Flower's SuperNode with a long-lived ClientApp process) and once Flower's stock SuperNode,
TLS with a generated CA, SuperNode authentication with registered keys. ProxSkip's parity
and a SuperNode lost mid-run (its link cut: the SuperLink sees what a crash shows it, no
more heartbeats) are in test_multihost.py.

Every test that starts processes stops them in a `finally` (process groups and their
descendants), also when it fails.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from fedsim import deploy
from fedsim.results import create_run_dir
from fedsim.runtime import launch

from .conftest import small_scenario

pytestmark = pytest.mark.slow
TOL = 1e-5


@pytest.fixture
def layout(tmp_path):
    """A deployment directory whose processes are all stopped at teardown."""
    lay = deploy.Layout(tmp_path / "deploy")
    try:
        yield lay
    finally:
        deploy.down(lay.root, grace_s=3.0)


@pytest.fixture(scope="module")
def secure2(tmp_path_factory):
    """One TLS SuperLink with SuperNode authentication and two registered SuperNodes."""
    root = tmp_path_factory.mktemp("deploy2")
    try:
        yield deploy.up(2, root)
    finally:
        deploy.down(root, grace_s=3.0)


def _parity(dep, scenario, tmp_path, monkeypatch, server_dir=None):
    monkeypatch.setenv("FLWR_HOME", str(deploy.Layout(dep.root).flwr_home))
    ref, out = tmp_path / "inprocess", tmp_path / "deployment"
    launch(scenario, ref)
    dep_scenario = scenario.model_copy(update={"runtime": "deployment"})
    create_run_dir(out, dep_scenario.to_toml(), overwrite=False)
    launch(dep_scenario, out, federation=dep.connection, server_dir=server_dir)
    for name in ("config.toml", "metrics.jsonl", "summary.json", "final_model.npy"):
        assert (out / name).is_file(), name
    for name in ("metrics.jsonl", "summary.json", "final_model.npy") if server_dir else ():
        # written by the ServerApp in another directory, and sent back whole
        assert (out / name).read_bytes() == (server_dir / name).read_bytes(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, scenario.rounds + 1))
    a, b = np.load(ref / "final_model.npy"), np.load(out / "final_model.npy")
    assert a.shape == b.shape
    assert np.max(np.abs(a - b)) <= TOL


def test_fedavg_over_tls_with_authenticated_supernodes_matches_inprocess(
    secure2, tmp_path, monkeypatch
):
    assert not secure2.insecure and Path(secure2.root, "certs", "ca.crt").is_file()
    s = small_scenario(rounds=2, data__num_clients=2, model__hidden=[16])
    _parity(secure2, s, tmp_path, monkeypatch, server_dir=tmp_path / "on-the-superlink")


def _wait_exit(proc, timeout_s=60.0) -> int | None:
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return proc.poll()


@pytest.mark.parametrize(
    "node, kwargs, log, expected",
    [  # an unregistered key; a registered key but no root certificate
        (90, {"register": False}, "superlink.log", "No SuperNode found with the given public key"),
        (91, {"root_certificates": None}, "supernode-91.log", "CERTIFICATE_VERIFY_FAILED"),
    ],
    ids=["unregistered-key", "no-ca-certificate"],
)
def test_an_untrusted_supernode_is_refused(secure2, node, kwargs, log, expected):
    proc = deploy.start_supernode(secure2.root, node, 2, max_wait_s=20, **kwargs)
    try:
        assert _wait_exit(proc) not in (None, 0)
        assert expected in Path(secure2.root, "logs", log).read_text()
        assert deploy.online_nodes(secure2.root) == 2  # the run would not see it
    finally:
        deploy.stop_pid_file(Path(secure2.root, "pids", f"supernode-{node}.pid"))


def test_insecure_deployment_with_flowers_stock_supernode_warns_and_runs(
    layout, tmp_path, monkeypatch
):
    """Plain HTTP warns; a plain `flower-supernode` (a fresh flwr-clientapp process per
    message) runs fedsim's app too."""
    with pytest.warns(UserWarning, match="insecure"):
        dep = deploy.start_superlink(layout.root, insecure=True)
    assert dep.insecure and not layout.ca_cert.exists()
    assert "insecure = true" in (layout.flwr_home / "config.toml").read_text()
    deploy.start_supernode(layout.root, 0, 1, stock=True)
    deploy.wait_online(layout.root, 1, 60)
    assert "flower-supernode" in (layout.logs / "supernode-0.log").read_text().splitlines()[0]
    s = small_scenario(rounds=1, data__num_clients=1, model__hidden=[16])
    _parity(deploy.Deployment.load(layout.root), s, tmp_path, monkeypatch)


def _workers(node: psutil.Process) -> list[psutil.Process]:
    return [p for p in node.children() if "clientapp_worker" in " ".join(p.cmdline())]


def test_the_clientapp_process_restarts_when_killed_and_for_a_new_app_bundle(
    secure2, tmp_path, monkeypatch
):
    """A killed ClientApp process is started again; an edited app (another FAB hash) does
    not run in the process that loaded the last one: the process re-executes first."""
    node = psutil.Process(int(Path(secure2.root, "pids", "supernode-0.pid").read_text()))
    (worker,) = _workers(node)
    worker.kill()
    worker.wait(30)
    deadline = time.monotonic() + 120
    while not _workers(node):
        assert time.monotonic() < deadline, "the ClientApp process was not started again"
        time.sleep(0.5)
    s = small_scenario(rounds=1, data__num_clients=2, model__hidden=[16], seed=7)
    (tmp_path / "first").mkdir()
    _parity(secure2, s, tmp_path / "first", monkeypatch)  # this app is loaded on both nodes
    app = tmp_path / "app"
    for part in ("fedsim", "clients", "servers", "methods", "privacy", "scenarios"):
        shutil.copytree(deploy.app_dir() / part, app / part)
    for part in ("tests", "docs", "benchmarks"):  # fab-exclude's patterns must match a file
        (app / part).mkdir()
        (app / part / "x.md").write_text("")
    shutil.copy(deploy.app_dir() / ".gitignore", app / ".gitignore")
    pyproject = (deploy.app_dir() / "pyproject.toml").read_text()
    (app / "pyproject.toml").write_text(pyproject + "\n# an edit: another bundle\n")
    monkeypatch.setattr(deploy, "app_dir", lambda: app)
    logs = [Path(secure2.root, "logs", f"supernode-{i}.log") for i in (0, 1)]
    before = [log.read_text().count("A new app bundle") for log in logs]
    _parity(secure2, s, tmp_path, monkeypatch)
    assert [log.read_text().count("A new app bundle") for log in logs] == [n + 1 for n in before]
