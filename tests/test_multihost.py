"""A deployment across hosts: the SuperLink, two SuperNodes and the machine that submits runs,
each in a Linux network namespace this test creates, joined by a bridge (10.77.0.0/24).

The commands of docs/deployment.md's walkthrough, read from the page and run as written
with `ip netns exec`, each host in a folder of its own (the page's copies of ca.crt and the
public keys are made here): the SuperLink's certificate is issued for its address 10.77.0.1
(loopback names only for its own SuperExec; the SuperNodes verify 10.77.0.1), SuperNode keys
are made with `fedsim deploy keygen` and registered on the SuperLink, the SuperNodes are
`fedsim supernode`, and the quickstart is submitted from a fourth namespace. Further runs
are submitted with a run directory that is not the ServerApp's: it comes back through the
run's log. A SuperNode's link is cut mid-run.
Everything, namespaces included, is removed at teardown, which checks that nothing is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from fedsim.runtime import launch

from .conftest import REPO, logreg_scenario, small_scenario

pytestmark = pytest.mark.slow
FEDSIM = str(Path(sys.executable).parent / "fedsim")
FLWR = str(Path(sys.executable).parent / "flwr")
SUBNET, LINK_IP, PORT = "10.77.0", "10.77.0.1", 9093
HOSTS = ("link", "node0", "node1", "submit")  # link: the SuperLink; submit: the user's machine
TOL = 1e-5
PAGE = REPO / "docs" / "deployment.md"
WHERE = {  # how a block of the page's walkthrough begins -> the hosts it runs on
    "# on the SuperLink machine, once per SuperNode": "link_each",
    "# on the SuperLink machine": "link",
    "# on each SuperNode machine": "node",
    "# on the submitting machine": "submit",
}


def walkthrough() -> list[tuple[str, str]]:
    """(where, script) of each shell block of the page's "Across machines", in order."""
    section = PAGE.read_text().split("## Across machines")[1].split("\n## ")[0]
    steps = []
    for body in re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M):
        where = next(w for start, w in WHERE.items() if body.startswith(start))
        steps.append((where, body))
    assert [w for w, _ in steps] == ["link", "node", "link_each", "node", "submit"]
    return steps


def sh(*cmd: str, ns: str | None = None, env=None, timeout: float = 120, cwd=None) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    res = subprocess.run(full, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return res.stdout


def root_links() -> set[str]:
    return {line.split(":")[1].strip() for line in sh("ip", "-o", "link", "show").splitlines()}


class Lab:
    """Namespaces named `<tag>-<host>`, a bridge in the SuperLink's, a veth to each other."""

    def __init__(self, tmp: Path) -> None:
        tag = f"fs{uuid.uuid4().hex[:6]}"
        self.ns = {h: f"{tag}-{h}" for h in HOSTS}
        self.ip = {h: f"{SUBNET}.{i + 1}" for i, h in enumerate(HOSTS)}
        self.tmp, self.procs = tmp, []
        self.env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def build(self) -> None:
        link = self.ns["link"]
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", link, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", link, "addr", "add", f"{LINK_IP}/24", "dev", "br0")
        sh("ip", "-n", link, "link", "set", "br0", "up")
        for i, host in enumerate(HOSTS[1:]):
            ns, port = self.ns[host], f"p{i}"
            sh("ip", "-n", link, "link", "add", port, "type", "veth", "peer", "eth0", "netns", ns)
            sh("ip", "-n", link, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip[host]}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def start(self, host: str, *cmd: str, env: dict, log: Path, cwd=None) -> subprocess.Popen:
        out = open(log, "ab")  # noqa: SIM115  (the child holds it)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[host], *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        out.close()
        self.procs.append(proc)
        return proc

    def teardown(self) -> list[str]:
        """Stop every process and delete the namespaces; returns what was left behind."""
        for proc in self.procs:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        left = []
        for ns in self.ns.values():
            if ns not in sh("ip", "netns", "list"):
                continue
            for pid in sh("ip", "netns", "pids", ns).split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.5)
            left += [f"process {p} in {ns}" for p in sh("ip", "netns", "pids", ns).split()]
            sh("ip", "netns", "del", ns)
        listed = sh("ip", "netns", "list")
        return left + [f"namespace {ns}" for ns in self.ns.values() if ns in listed]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The four hosts, a SuperLink on `link` and a SuperNode on `node0` and `node1`."""
    tmp = tmp_path_factory.mktemp("multihost")
    before = root_links()
    lab = Lab(tmp)
    try:
        try:
            lab.build()
        except RuntimeError as e:
            pytest.fail(f"cannot create network namespaces here (root and iproute2 needed): {e}")
        start_deployment(lab)
        yield lab
    finally:
        if (tmp / "link" / ".deploy" / "pids").is_dir():
            subprocess.run(
                [FEDSIM, "deploy", "down", "--dir", str(tmp / "link" / ".deploy")], timeout=60
            )
        left = lab.teardown()
        assert not left, f"left behind: {left}"
        assert root_links() == before, "interfaces left in the root namespace"


def start_deployment(lab: Lab) -> None:
    """docs/deployment.md's walkthrough, steps 1-4, as the page writes them."""
    tmp = lab.tmp
    dirs = {h: tmp / h for h in HOSTS}
    for d in dirs.values():
        d.mkdir()
    (dirs["submit"] / "scenarios").symlink_to(REPO / "scenarios")
    path = f"{Path(FEDSIM).parent}{os.pathsep}{os.environ['PATH']}"  # fedsim installed on each
    env = {h: {**lab.env, "FLWR_HOME": str(dirs[h] / "flwr"), "PATH": path} for h in HOSTS}
    ca = dirs["link"] / ".deploy" / "certs" / "ca.crt"
    nodes = ("node0", "node1")

    def bash(host: str, script: str, timeout: float = 180) -> None:
        sh("bash", "-ec", script, ns=lab.ns[host], env=env[host], cwd=dirs[host], timeout=timeout)

    for where, script in walkthrough():
        if where == "link":
            bash("link", script)
            cert = x509.load_pem_x509_certificate(ca.with_name("server.crt").read_bytes())
            assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == LINK_IP
            for host in (*nodes, "submit"):
                shutil.copy(ca, dirs[host])
        elif where == "link_each":
            for node in nodes:
                shutil.copy(dirs[node] / "supernode.key.pub", dirs["link"])
                bash("link", script)
        elif where == "node" and "fedsim supernode" not in script:
            for node in nodes:
                bash(node, script)
        elif where == "node":
            for i, node in enumerate(nodes):
                mine = script.replace("partition-id=0", f"partition-id={i}")
                lab.start(node, "bash", "-ec", mine, env=env[node], cwd=dirs[node],
                          log=dirs[node] / "supernode.log")  # fmt: skip
            wait_online(lab)
        else:
            bash("submit", script, timeout=600)
    summary = json.loads((dirs["submit"] / "runs" / "q2" / "summary.json").read_text())
    assert summary["rounds"] == 40 and summary["final"]["clients"] == 2


def wait_online(lab: Lab) -> None:
    home = {**lab.env, "FLWR_HOME": str(lab.tmp / "link" / ".deploy" / "flwr_home")}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        out = sh(
            FLWR, "supernode", "ls", "fedsim-local", "--format", "json", ns=lab.ns["link"], env=home
        )
        nodes = json.loads(out).get("nodes", [])
        if sum(str(n.get("status", "")).lower() == "online" for n in nodes) == 2:
            return
        time.sleep(1.0)
    raise RuntimeError("the two SuperNodes did not come online")


def submit(lab: Lab, scenario, name: str, background: bool = False):
    """`fedsim run` from the submitting host; the ServerApp writes elsewhere (link/runs)."""
    tmp = lab.tmp
    toml = tmp / "submit" / f"{name}.toml"
    toml.write_text(scenario.to_toml())
    cmd = [FEDSIM, "run", str(toml), "--federation", "lab", "--out", str(tmp / "submit" / name),
           "--server-dir", str(tmp / "link" / "runs" / name)]  # fmt: skip
    env = {**lab.env, "FLWR_HOME": str(tmp / "submit" / "flwr")}
    if background:
        return lab.start("submit", *cmd, env=env, log=tmp / "submit" / f"{name}.log")
    return sh(*cmd, ns=lab.ns["submit"], env=env, timeout=600)


def check_parity(lab: Lab, scenario, name: str) -> None:
    launch(scenario, lab.tmp / "inprocess" / name)
    submit(lab, scenario, name)
    mine, theirs = lab.tmp / "submit" / name, lab.tmp / "link" / "runs" / name
    for f in ("metrics.jsonl", "summary.json", "final_model.npy", "clients.jsonl"):
        assert (mine / f).read_bytes() == (theirs / f).read_bytes(), f  # came back whole
    a = np.load(lab.tmp / "inprocess" / name / "final_model.npy")
    assert np.max(np.abs(a - np.load(mine / "final_model.npy"))) <= TOL


def test_fedavg_across_hosts_matches_inprocess_and_comes_back(lab):
    check_parity(lab, small_scenario(rounds=2, data__num_clients=2, model__hidden=[16]), "fedavg")


def test_proxskip_across_hosts_matches_inprocess(lab):
    s = logreg_scenario(5, 6, 30, [5.0, 20.0], {"name": "proxskip", "p": 0.5}, rounds=3)
    check_parity(lab, s, "proxskip")


def test_a_supernode_whose_link_is_cut_is_a_failure_the_run_survives(lab):
    s = small_scenario(rounds=3, data__num_clients=2, model__hidden=[16])
    proc = submit(lab, s, "cut", background=True)
    metrics = lab.tmp / "link" / "runs" / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text()):
        assert proc.poll() is None, (lab.tmp / "submit" / "cut.log").read_text()
        time.sleep(0.5)
    sh("ip", "-n", lab.ns["node1"], "link", "set", "eth0", "down")  # the cable, not the process
    assert proc.wait(timeout=400) == 0, (lab.tmp / "submit" / "cut.log").read_text()
    rows = [json.loads(line) for line in (lab.tmp / "submit" / "cut" / "metrics.jsonl").open()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[0]["clients"] == 2 and rows[-1]["clients"] == 1
    assert (lab.tmp / "submit" / "cut" / "final_model.npy").is_file()
