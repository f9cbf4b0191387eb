"""Every combination of options either runs correctly or is refused when the scenario loads:
a test generated from the methods' declarations, and the defects found by hand, by name."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedsim.checkpoint import load_checkpoint
from fedsim.cli import main
from fedsim.clients.app import STATE, STATE_VALUES, committed
from fedsim.codecs import pack
from fedsim.config import ScenarioError, load_plugins, load_scenario
from fedsim.method import METHODS, FederatedMethod
from fedsim.methods.fedavg import FedAvg
from fedsim.methods.scaled_sgd import ClientState
from fedsim.registry import Entry
from fedsim.results import read_metrics, read_summary
from fedsim.runtime import launch
from fedsim.servers.evaluate import Evaluator

from .conftest import REPO, small_scenario

DEMO = str(REPO / "tests" / "plugins" / "demo_plugins")  # FedAvgM and FedAdam, a plug-in's
load_plugins([DEMO])
FEDERATED = sorted(e.name for e in METHODS if isinstance(e.obj, FederatedMethod))
POLICIES = {
    "wait_all": {},
    "deadline": {"deadline_s": 0.2},
    "overcommit": {"overcommit": 0.5},
    "fedbuff": {"buffer_k": 2},
}
MECHANISMS = ("none", "dp_sgd", "dp_fedavg", "local")
AGGREGATIONS = ("mean", "median", "trimmed_mean")
SETTINGS = {  # a few steps of each method on the tiny problem
    "fedavg": {"local_epochs": 1, "batch_size": 8},
    "local_sgd": {"local_steps": 2, "batch_size": 8},
    "fedprox": {"local_epochs": 1, "batch_size": 8, "mu": 0.1},
    "scaffold": {"local_steps": 2, "batch_size": 8},
    "scaled_sgd": {"local_steps": 2, "batch_size": 8, "client_lr": 0.01, "alpha": 0.1},
    "proxskip": {"p": 0.5, "batch_size": 8},
    "gradskip": {"p": 0.5, "batch_size": 8, "q": 0.7},
    "gradskip_plus": {"p": 0.5, "batch_size": 8, "comm_density": 0.5, "skip_density": 0.5},
    "signsgd_mv": {"server_lr": 0.01},
    "signum_mv": {"server_lr": 0.01},
    "ef_signsgd": {"client_lr": 0.05},
    "fedavgm": {"local_epochs": 1, "batch_size": 8, "beta": 0.5},
    "fedadam": {"local_epochs": 1, "batch_size": 8, "server_lr": 0.05},
}


def tiny(method: str, policy: str, mechanism: str, aggregation: str, **over) -> dict:
    """Logistic regression, 5 clients of 24 examples, 2 rounds: a run takes a fraction of a
    second."""
    privacy = {} if mechanism == "none" else {"noise_multiplier": 0.5, "max_grad_norm": 1.0}
    return {
        "name": "combo",
        "seed": 1,
        "rounds": 2,
        "checkpoint_every": 1,
        "data": {
            "dataset": "logreg",
            "num_clients": 5,
            "partitioner": "natural",
            "options": {"dim": 4, "samples_per_client": 24, "kappa": 5.0},
        },
        "model": {"name": "logreg", "bias": False},
        "algorithm": {"name": method, "aggregation": aggregation, **SETTINGS[method]},
        "system": {"policy": policy, **POLICIES[policy], "speed": [50.0, 100, 200, 400, 800]},
        "privacy": {"mechanism": mechanism, **privacy},
        "plugins": [DEMO] if METHODS.entry(method).origin else [],
        **over,
    }


def declared(method: str, policy: str, mechanism: str, aggregation: str) -> bool:
    """What the declarations say about a combination (the test's own reading of them)."""
    sup = METHODS.get(method).supports
    ok = {"wait_all": True, "deadline": sup.deadline, "overcommit": sup.overcommit}
    ok["fedbuff"] = sup.fedbuff
    return (
        ok[policy]
        and (mechanism == "none" or mechanism in sup.privacy)
        and aggregation in sup.aggregation
        and not (
            mechanism == "dp_fedavg"
            and (aggregation != "mean" or policy in ("fedbuff", "overcommit"))
        )
    )


COMBINATIONS = list(itertools.product(FEDERATED, POLICIES, MECHANISMS, AGGREGATIONS))


@pytest.mark.slow
def test_every_method_policy_privacy_and_aggregation_runs_or_is_refused(tmp_path):
    ran, refused = 0, 0
    for method, policy, mechanism, aggregation in COMBINATIONS:
        raw = tiny(method, policy, mechanism, aggregation)
        label = f"{method}/{policy}/{mechanism}/{aggregation}"
        try:
            s = load_scenario(raw)
        except ScenarioError as e:
            refused += 1
            message = str(e)
            assert "\n" not in message and message.startswith("scenario."), label
            extra = method in ("scaled_sgd",) and mechanism in ("dp_fedavg", "local")
            assert not declared(method, policy, mechanism, aggregation) or extra, label
            continue
        assert declared(method, policy, mechanism, aggregation), f"{label} was not refused"
        out = tmp_path / label.replace("/", "-")
        launch(s, out)
        check_run(s, out, label)
        ran += 1
    assert ran >= 150 and refused >= 200, (ran, refused)


def check_run(s, out, label: str) -> None:
    """A run that was not refused changed the model, reported its privacy, and kept the
    method's invariants."""
    rows = read_metrics(out)
    assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) for r in rows), label
    x = np.load(out / "final_model.npy")
    assert np.abs(x - Evaluator(s).initial_params()).max() > 0, f"{label}: model never moved"
    if s.privacy.active:
        assert all("epsilon" in r for r in rows), label
        assert read_summary(out)["privacy"]["mechanism"] == s.privacy.mechanism, label
    if s.algorithm.name == "scaffold" and s.system.policy != "fedbuff":
        assert_scaffold_invariant(s, out, label)


def assert_scaffold_invariant(s, out, label: str) -> None:
    meta, arrays = load_checkpoint(out, s.to_json())
    last_used = {int(k): v for k, v in meta["server"]["last_used"].items()}
    total = np.zeros(arrays["server/c"].shape)
    for pid, records in meta["clients"].items():
        pending = records.get("method-pending-values", {}).get("config", {})
        key = (
            "method-pending" if pending.get("round") == last_used.get(int(pid)) else "method-state"
        )
        total += arrays.get(f"client/{pid}/{key}/c", 0.0)
    np.testing.assert_allclose(total, 5 * arrays["server/c"], rtol=1e-4, atol=1e-5, err_msg=label)


# ---------------------------------------------------------------- the defects, by name


def cli_refuses(tmp_path, capsys, *sets: str, scenario="scenarios/quickstart.toml") -> str:
    """Run the CLI with these overrides; it must exit 2 with one line and leave no directory."""
    out = tmp_path / "never"
    args = ["run", str(REPO / scenario), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fedsim: error: "), err
    assert not out.exists()
    return err


PROXSKIP = ('algorithm={name="proxskip", p=0.3}', "data.num_clients=20")


def test_defect_1_proxskip_with_partial_participation_or_overcommit_is_refused(tmp_path, capsys):
    err = cli_refuses(
        tmp_path,
        capsys,
        *PROXSKIP,
        "algorithm.fraction=0.5",
        'system.policy="overcommit"',
        "system.overcommit=0.3",
    )
    assert "algorithm.fraction: 0.5" in err and "algorithm.name = 'proxskip'" in err
    err = cli_refuses(
        tmp_path, capsys, *PROXSKIP, 'system.policy="overcommit"', "system.overcommit=0.3"
    )
    assert "system.policy: 'overcommit'" in err and "algorithm.name = 'proxskip'" in err


def test_defect_2_dp_fedavg_under_fedbuff_is_refused(tmp_path, capsys):
    err = cli_refuses(
        tmp_path,
        capsys,
        'system.policy="fedbuff"',
        'privacy={mechanism="dp_fedavg", noise_multiplier=1.0}',
    )
    assert "privacy.mechanism: 'dp_fedavg'" in err and "system.policy 'fedbuff'" in err


def test_defect_3_fedbuff_runs_the_method_or_refuses_it(tmp_path, capsys):
    err = cli_refuses(tmp_path, capsys, 'algorithm={name="signsgd_mv"}', 'system.policy="fedbuff"')
    assert "system.policy: 'fedbuff'" in err and "'signsgd_mv'" in err
    # FedProx under FedBuff: its own local steps and server step size are the ones that ran
    s = small_scenario(
        rounds=3,
        algorithm={"name": "fedprox", "mu": 0.5, "server_lr": 0.5},
        system__policy="fedbuff",
        system__buffer_k=2,
    )
    launch(s, tmp_path / "prox")
    t = small_scenario(
        rounds=3,
        algorithm={"name": "fedprox", "mu": 0.0, "server_lr": 0.5},
        system__policy="fedbuff",
        system__buffer_k=2,
    )
    launch(t, tmp_path / "avg")
    a, b = (np.load(tmp_path / k / "final_model.npy") for k in ("prox", "avg"))
    assert np.abs(a - b).max() > 1e-4


def test_defect_4_a_model_the_data_cannot_feed_is_refused(tmp_path, capsys):
    err = cli_refuses(
        tmp_path,
        capsys,
        'model={name="cnn"}',  # quickstart's `hidden` is the mlp's
        'data.dataset="synthetic"',
        'data.partitioner="natural"',
    )
    assert "model.name: 'cnn' needs square images" in err and "'synthetic'" in err


class Buggy(FedAvg):
    """FedAvg whose client half has a bug on partition 1 from round 2 (tests only)."""

    name = "buggy_fedavg"
    doc = "FedAvg with a client bug (tests)"

    def client_round(self, p, down, c, f, rngs):
        if 1 in down.partitions and down.round >= 2:
            return 1 / 0
        return super().client_round(p, down, c, f, rngs)


@pytest.fixture
def buggy(monkeypatch):
    """Buggy registered for one test (the in-process runtime shares this process)."""
    monkeypatch.setitem(METHODS._entries, Buggy.name, Entry(Buggy.name, Buggy.doc, Buggy()))


def test_defect_5_a_client_bug_stops_the_run_with_its_traceback(tmp_path, capsys, buggy):
    args = [
        "run",
        str(REPO / "scenarios/quickstart.toml"),
        "--out",
        str(tmp_path / "run"),
        "--set",
        'algorithm={name="buggy_fedavg"}',
        "--set",
        "rounds=3",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "client partition 1 raised" in err and "ZeroDivisionError" in err
    assert "return 1 / 0" in err  # the client's own traceback
    assert len(read_metrics(tmp_path / "run")) == 1  # round 2 never became a row
    # counted instead, loudly, when the scenario says so
    ok = args[:4] + ["--set", "system.tolerate_client_errors=true"] + args[4:]
    ok[3] = str(tmp_path / "tolerant")
    assert main(ok) == 0
    rows = read_metrics(tmp_path / "tolerant")
    assert [r["client_errors"] for r in rows] == [0, 1, 1]
    assert [r["failures"] for r in rows] == [0, 0, 0]  # not mistaken for injected failures


def test_defect_5_injected_failures_are_counted_apart_from_bugs(tmp_path):
    s = small_scenario(rounds=3, system__failures={"raise_p": 0.4})
    launch(s, tmp_path)
    rows = read_metrics(tmp_path)
    assert sum(r["failures"] for r in rows) > 0 and "client_errors" not in rows[0]


@pytest.mark.parametrize(
    "sets, key",
    [
        (("system.latency_s=nan",), "system.latency_s"),
        (("system.speed=nan",), "system.speed"),
        (("system.speed=[1.0, nan]",), "system.speed"),
        (('privacy={mechanism="dp_sgd", noise_multiplier=inf}',), "privacy.noise_multiplier"),
        (
            ('privacy={mechanism="dp_sgd", noise_multiplier=1.0, max_grad_norm=inf}',),
            "privacy.max_grad_norm",
        ),
        (("algorithm.client_lr=1e309",), "algorithm.client_lr"),
        (("algorithm.server_lr=inf",), "algorithm.server_lr"),
        (("data.alpha=inf", 'data.partitioner="dirichlet"'), "data.alpha"),
        (("data.test_fraction=0.999",), "data"),
        ((*PROXSKIP, "algorithm.q=[0.5, 0.5]"), "algorithm.q"),
        (('algorithm={name="gradskip", q=[0.5, 0.5]}', "data.num_clients=20"), "algorithm.q"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_defect_7_non_finite_and_inconsistent_values_are_refused(tmp_path, capsys, sets, key):
    err = cli_refuses(tmp_path, capsys, *sets)
    assert f"scenario.{key}" in err


def test_defect_7_cli_input_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    assert main(["run", str(bad)]) == 2
    assert "is not UTF-8" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["run", str(REPO / "scenarios/quickstart.toml"), "--runtime", "bogus"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'bogus'" in err


def test_defect_5_client_state_follows_the_client_device():
    """The adapter puts every restored state tensor on the objective's device (the `local`
    statistic of scaled SGD stayed on the CPU before); checked with the meta device."""
    state = RecordDict()
    state[STATE] = ArrayRecord({"v": pack(np.ones(3, np.float32))})
    state[STATE_VALUES] = ConfigRecord({"round": 1})
    restored = committed(state, ClientState, 1, torch.device("meta"))
    assert restored.v.device.type == "meta"
