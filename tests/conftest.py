"""Shared fixtures: small scenarios that run in seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

# Under pytest-xdist, each worker's torch gets its share of the cores, not all of them: two
# workers with two threads each on a 2-core machine oversubscribe it (measured: a pair of
# tests ran 44 s with 2 threads each, 26 s with 1). Processes the tests start inherit it.
THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
os.environ["OMP_NUM_THREADS"] = str(THREADS)
# preprocessed datasets go to a cache of this session's own, not the user's (fedsim.data.cache)
os.environ["FEDSIM_CACHE"] = tempfile.mkdtemp(prefix="fedsim-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402

from fedsim.config import load_scenario  # noqa: E402

torch.set_num_threads(THREADS)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CUDA_ONLY = "needs CUDA"  # how a GPU-tier test skipped for want of a CUDA device says so


def without_wall_clock(rows: list[dict]) -> list[dict]:
    """Metric rows less their wall-clock seconds: what two runs of one scenario must share."""
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def small_scenario(**over: object):
    """Digits, 6 clients, Dirichlet, a small MLP, FedAvg: a few seconds per run."""
    raw = {
        "name": "small",
        "seed": 3,
        "rounds": 3,
        "data": {"dataset": "digits", "num_clients": 6, "partitioner": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "hidden": [32]},
        "algorithm": {"name": "fedavg", "local_epochs": 1, "batch_size": 16, "client_lr": 0.2},
    }
    if over.get("model__name", "mlp") != "mlp":
        raw["model"] = {}  # `hidden` is the mlp's option
    for key, value in over.items():
        node = raw
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return load_scenario(raw)


@pytest.fixture(autouse=True)
def keeps_torch_threads():
    """A test that leaves torch's thread count changed fails (and it is put back): the
    worker's later tests would otherwise oversubscribe the cores, 25x slower, unnoticed."""
    before = torch.get_num_threads()
    yield
    after = torch.get_num_threads()
    if after != before:
        torch.set_num_threads(before)
        pytest.fail(f"the test left torch's threads at {after} (it found {before})")


@pytest.fixture
def scenario_factory():
    return small_scenario


def logreg_scenario(
    seed: int, dim: int, samples: int, kappa: list[float], algorithm: dict, rounds: int, **over
):
    """A generated logistic-regression scenario (bias-free model, natural clients) with the
    algorithm's step size gamma = 1/L_max unless `algorithm` sets client_lr."""
    from fedsim.data import load_dataset

    raw = {
        "seed": seed,
        "rounds": rounds,
        "data": {
            "dataset": "logreg",
            "num_clients": len(kappa),
            "partitioner": "natural",
            "options": {"dim": dim, "samples_per_client": samples, "kappa": kappa},
        },
        "model": {"name": "logreg", "bias": False},
        "algorithm": algorithm,
        **over,
    }
    if "client_lr" in algorithm:
        return load_scenario(raw)
    gamma = 1.0 / max(load_dataset(load_scenario(raw).data, seed).meta["L"])
    return load_scenario(raw | {"algorithm": algorithm | {"client_lr": gamma}})


def logreg_parts(s) -> list[tuple]:
    """Each client's (rows in float64, labels as signs, l2), for the NumPy references."""
    from fedsim.data import client_data

    parts = []
    for i in range(s.data.num_clients):
        a, y, l2 = client_data(s.data, s.seed, i)
        parts.append((a.astype("float64"), 2.0 * y - 1.0, l2))
    return parts


def logreg_grad(part: tuple, x):
    """grad f_i(x) = -(1/m) A^T (s / (1 + exp(s * A x))) + l2 x, written out in NumPy."""
    import numpy as np

    a, sign, l2 = part
    return -(a.T @ (sign / (1.0 + np.exp(sign * (a @ x))))) / len(sign) + l2 * x


def used_client_states(meta: dict, arrays: dict, name: str) -> dict:
    """From a checkpoint: each client's method-state array `name` as of the last round whose
    update the server used (the pending state if the server used it; clients never used are
    absent)."""
    last_used = {int(k): v for k, v in meta["server"]["last_used"].items()}
    out = {}
    for pid, records in meta["clients"].items():
        pending = records.get("method-pending-values", {}).get("config", {})
        used = pending.get("round") == last_used.get(int(pid))
        key = f"client/{pid}/{'method-pending' if used else 'method-state'}/{name}"
        if key in arrays:
            out[int(pid)] = arrays[key]
    return out


@contextmanager
def ray_cluster(num_gpus: int = 0):
    """A running Ray cluster of one head node (`ray start --head --block`, in its own temp dir
    so that no other test's local Ray finds it), stopped with its process group at exit.
    `num_gpus` GPUs are declared to Ray (logical ones where the machine has none)."""
    from fedsim.deploy import free_port

    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths
    port = free_port()
    ray = Path(sys.executable).parent / "ray"
    cmd = [str(ray), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2"]
    cmd += ["--num-gpus", str(num_gpus)]
    cmd += ["--temp-dir", str(temp), "--include-dashboard", "false", "--disable-usage-stats"]
    # its workers and drivers bind above the 10002-19999 a local Ray (another test on the
    # other xdist worker) takes, in a range of this xdist worker's own: two clusters counting
    # up from one port made a driver's port clash and killed its pytest worker
    low = 20002 + 2000 * int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    cmd += ["--min-worker-port", str(low), "--max-worker-port", str(low + 1997)]
    log = open(temp / "head.log", "wb")  # noqa: SIM115  (closed at exit)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(temp.glob("session_*/logs/gcs_server.out")):
            assert proc.poll() is None and time.monotonic() < deadline, (
                temp / "head.log"
            ).read_text()
            time.sleep(0.5)
        time.sleep(3.0)  # the raylet registers with the GCS
        yield f"127.0.0.1:{port}", temp
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def pytest_terminal_summary(terminalreporter) -> None:
    """Say how the GPU tier ran: on which device, and how many of its tests were skipped as
    CUDA-only (none where a CUDA device exists)."""
    reports = [r for rs in terminalreporter.stats.values() for r in rs if hasattr(r, "when")]
    tier = [r for r in reports if "gpu" in r.keywords]
    if not tier:
        return
    skipped = {r.nodeid for r in tier if r.skipped and CUDA_ONLY in str(r.longrepr)}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    terminalreporter.write_line(
        f"GPU tier on {device}: {len(skipped)} CUDA-only test(s) skipped"
        + ("" if skipped else " (none)")
    )
