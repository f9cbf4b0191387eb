"""A property over the scenario schema itself: generated scenarios (every enum value, extreme
and non-finite numbers, wrong-length lists, unknown keys, keys of the wrong method) either
run (exit 0, every row written with no NaN, or a divergence reported as such) or are refused
(exit 2, one line naming the key, no run directory). Nothing else may happen. A second
property draws only values each key allows, so that most scenarios combine several options
and run: each that runs runs again to the same metrics and final model."""

from __future__ import annotations

import contextlib
import io
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.cli import main
from fedsim.config import load_plugins
from fedsim.method import METHODS
from fedsim.results import METRICS, MODEL, SUMMARY, read_metrics

from .conftest import without_wall_clock

load_plugins()

NUMBERS = st.one_of(
    st.sampled_from([0.0, -1.0, 1e-300, 1e300, math.inf, -math.inf, math.nan, 0.5, 1.0, 2.0]),
    st.floats(min_value=-2, max_value=3),
)
SMALL_INTS = st.integers(min_value=-2, max_value=6)
PROBABILITIES = st.one_of(st.floats(0, 1), st.sampled_from([math.nan, 1.5, -0.1]))

# key -> values to try (scalars, lists of the wrong length, dicts, wrong types)
KEYS: dict[str, st.SearchStrategy] = {
    "rounds": st.integers(min_value=-1, max_value=3),
    "seed": st.integers(min_value=-1, max_value=4),
    "runtime": st.sampled_from(["inprocess", "bogus"]),
    "device": st.sampled_from(["cpu", "cuda", "tpu"]),
    "checkpoint_every": SMALL_INTS,
    "data.dataset": st.sampled_from(["digits", "logreg", "synthetic", "sentences", "nope"]),
    "data.num_clients": st.integers(min_value=0, max_value=8),
    "data.partitioner": st.sampled_from(["iid", "dirichlet", "shards", "natural", "bogus"]),
    "data.alpha": NUMBERS,
    "data.shards_per_client": SMALL_INTS,
    "data.test_fraction": st.one_of(PROBABILITIES, st.just(0.999)),
    "data.l2": NUMBERS,
    "model.name": st.sampled_from(["logreg", "mlp", "cnn", "resnet"]),
    "model.hidden": st.lists(st.integers(min_value=-1, max_value=16), max_size=3),
    "model.bias": st.booleans(),
    "algorithm.name": st.sampled_from([*METHODS.names(), "nope"]),
    "algorithm.fraction": PROBABILITIES,
    "algorithm.min_clients": SMALL_INTS,
    "algorithm.aggregation": st.sampled_from(["mean", "median", "trimmed_mean", "max"]),
    "algorithm.trim": PROBABILITIES,
    "algorithm.client_lr": NUMBERS,
    "algorithm.server_lr": NUMBERS,
    "algorithm.local_steps": SMALL_INTS,
    "algorithm.local_epochs": st.integers(min_value=-1, max_value=2),
    "algorithm.batch_size": st.sampled_from([-1, 0, 1, 8, 10_000]),
    "algorithm.p": PROBABILITIES,
    "algorithm.q": st.one_of(PROBABILITIES, st.lists(st.floats(0.1, 1), max_size=7)),
    "algorithm.uplink": st.sampled_from(["fp32", "sign", "topk:0.1", "topk:2", "qsgd:0", "x"]),
    "algorithm.error_feedback": st.booleans(),
    "algorithm.momentum": PROBABILITIES,
    "algorithm.mu": NUMBERS,
    "algorithm.option": st.sampled_from(["I", "II", "III"]),
    "algorithm.preconditioner": st.sampled_from(["none", "adam", "rmsprop", "oasis", "lbfgs"]),
    "system.policy": st.sampled_from(["wait_all", "deadline", "overcommit", "fedbuff", "x"]),
    "system.deadline_s": NUMBERS,
    "system.overcommit": NUMBERS,
    "system.buffer_k": SMALL_INTS,
    "system.speed": st.one_of(NUMBERS, st.lists(NUMBERS, max_size=7)),
    "system.latency_s": NUMBERS,
    "system.timeout_s": NUMBERS,
    "system.failures": st.fixed_dictionaries({"raise_p": PROBABILITIES, "vanish_p": PROBABILITIES}),
    "system.availability": st.sampled_from(
        [{"kind": "always"}, {"kind": "bernoulli", "p": 0.5}, {"kind": "trace"}]
    ),
    "system.adversaries": st.fixed_dictionaries(
        {"fraction": PROBABILITIES, "kind": st.sampled_from(["sign_flip", "nan", "evil"])}
    ),
    "privacy.mechanism": st.sampled_from(["none", "dp_sgd", "dp_fedavg", "local", "magic"]),
    "privacy.epsilon": NUMBERS,
    "privacy.noise_multiplier": NUMBERS,
    "privacy.max_grad_norm": NUMBERS,
    "privacy.delta": PROBABILITIES,
    "colour": st.just("blue"),  # an unknown key
}

# key -> values it allows (each run is a few seconds at most): combinations, not edges
VALID: dict[str, st.SearchStrategy] = {
    "rounds": st.integers(min_value=1, max_value=3),
    "seed": st.integers(min_value=0, max_value=4),
    "checkpoint_every": st.integers(min_value=0, max_value=2),
    "data.dataset": st.sampled_from(["digits", "logreg", "synthetic"]),
    "data.num_clients": st.integers(min_value=1, max_value=8),
    "data.partitioner": st.sampled_from(["iid", "dirichlet", "shards"]),
    "data.alpha": st.sampled_from([0.1, 0.5, 10.0]),
    "data.l2": st.sampled_from([0.0, 1e-3]),
    "model.name": st.sampled_from(["logreg", "mlp", "cnn"]),
    "algorithm.name": st.sampled_from(METHODS.names()),
    "algorithm.fraction": st.sampled_from([0.3, 0.5, 1.0]),
    "algorithm.min_clients": st.integers(min_value=1, max_value=3),
    "algorithm.aggregation": st.sampled_from(["mean", "median", "trimmed_mean"]),
    "algorithm.client_lr": st.sampled_from([0.01, 0.1]),
    "algorithm.local_steps": st.integers(min_value=1, max_value=4),
    "algorithm.batch_size": st.sampled_from([0, 1, 8]),
    "algorithm.p": st.sampled_from([0.2, 1.0]),
    "algorithm.uplink": st.sampled_from(["fp32", "sign", "topk:0.1", "qsgd:4"]),
    "algorithm.error_feedback": st.booleans(),
    "algorithm.momentum": st.sampled_from([0.0, 0.9]),
    "algorithm.mu": st.sampled_from([0.0, 0.1]),
    "algorithm.preconditioner": st.sampled_from(["none", "adam", "rmsprop", "oasis"]),
    "system.policy": st.sampled_from(["wait_all", "deadline", "overcommit", "fedbuff"]),
    "system.deadline_s": st.sampled_from([0.5, 5.0]),
    "system.buffer_k": st.integers(min_value=1, max_value=3),
    "system.latency_s": st.sampled_from([0.0, 0.1]),
    "system.failures": st.fixed_dictionaries(
        {"raise_p": st.sampled_from([0.0, 0.3]), "vanish_p": st.sampled_from([0.0, 0.3])}
    ),
    "system.availability": st.sampled_from([{"kind": "always"}, {"kind": "bernoulli", "p": 0.5}]),
    "system.adversaries": st.fixed_dictionaries(
        {"fraction": st.sampled_from([0.0, 0.25]), "kind": st.sampled_from(["sign_flip", "nan"])}
    ),
    "privacy.mechanism": st.sampled_from(["none", "dp_sgd", "dp_fedavg", "local"]),
    "privacy.noise_multiplier": st.sampled_from([0.5, 1.0]),
    "privacy.epsilon": st.sampled_from([1.0, 8.0]),
}


def changes_of(keys: dict[str, st.SearchStrategy], least: int, most: int):
    """Scenarios that set `least` to `most` of these keys."""
    chosen = st.dictionaries(
        st.sampled_from(sorted(keys)), st.none(), min_size=least, max_size=most
    )
    return chosen.flatmap(lambda picked: st.fixed_dictionaries({k: keys[k] for k in picked}))


BASE = {
    "name": "fuzz",
    "rounds": 2,
    "checkpoint_every": 0,
    "data": {"dataset": "digits", "num_clients": 4},
    "model": {"name": "mlp", "hidden": [8]},
    "algorithm": {"name": "fedavg"},
}


def scenario_with(changes: dict) -> dict:
    raw = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return raw


def toml_text(raw: dict) -> str:
    """TOML of the scenario (TOML has nan and inf, so they reach the loader as numbers)."""
    return tomli_w.dumps(raw)


def run_or_refuse(tmp: Path, changes: dict) -> Path | None:
    """Run the scenario: its run directory, or None where it was refused as it must be."""
    path, out = tmp / "s.toml", tmp / "run"
    path.write_text(toml_text(scenario_with(changes)))
    assert tomllib.loads(path.read_text())  # the file itself is valid TOML
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["run", str(path), "--out", str(out)])
    text = err.getvalue().strip()
    if code == 2:
        lines = [line for line in text.splitlines() if not line.startswith("  warnings.warn")]
        assert len(lines) == 1 and lines[0].startswith("fedsim: error: "), (changes, text)
        assert not out.exists(), changes
        return None
    assert code == 0, (changes, text)
    summary = json.loads((out / SUMMARY).read_text())
    rows = read_metrics(out)
    assert "NaN" not in (out / METRICS).read_text(), changes
    for row in rows:  # an infinite epsilon (no noise) is the only infinity a row may hold
        assert all(k == "epsilon" for k, v in row.items() if v in (math.inf, -math.inf)), changes
    rounds = int(tomllib.loads(path.read_text())["rounds"])
    if "diverged_at" in summary:
        assert rows[-1]["round"] == summary["diverged_at"] and "diverged" in text, changes
    else:
        assert [r["round"] for r in rows] == list(range(1, rounds + 1)), changes
    return out


SETTINGS = settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.slow
@settings(SETTINGS, max_examples=300)
@given(changes_of(KEYS, 1, 3))
def test_a_generated_scenario_runs_or_is_refused_with_one_line(tmp_path_factory, changes):
    run_or_refuse(tmp_path_factory.mktemp("fuzz"), changes)


def outcome(run: Path) -> tuple[list[dict], np.ndarray]:
    """A run's metrics (wall-clock time left out) and final model."""
    return without_wall_clock(read_metrics(run)), np.load(run / MODEL)


@pytest.mark.slow
@settings(SETTINGS, max_examples=150)
@given(changes_of(VALID, 3, 7))
def test_a_scenario_of_allowed_values_is_refused_or_runs_the_same_twice(tmp_path_factory, changes):
    first = run_or_refuse(tmp_path_factory.mktemp("valid"), changes)
    if first is None:
        return
    second = run_or_refuse(tmp_path_factory.mktemp("again"), changes)
    assert second is not None, changes
    (rows, model), (rows2, model2) = outcome(first), outcome(second)
    assert rows == rows2, changes
    np.testing.assert_array_equal(model, model2, err_msg=str(changes))
