"""A property over the scenario schema itself: generated scenarios (every enum value, extreme
and non-finite numbers, wrong-length lists, unknown keys, keys of the wrong method) either
run (exit 0, every row written with no NaN, or a divergence reported as such) or are refused
(exit 2, one line naming the key, no run directory). Nothing else may happen."""

from __future__ import annotations

import contextlib
import io
import json
import math
import tomllib

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.cli import main
from fedsim.method import METHODS
from fedsim.registry import load_plugins
from fedsim.results import METRICS, SUMMARY, read_metrics

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


@pytest.mark.slow
@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.dictionaries(st.sampled_from(sorted(KEYS)), st.none(), min_size=1, max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries({k: KEYS[k] for k in keys})
    )
)
def test_a_generated_scenario_runs_or_is_refused_with_one_line(tmp_path_factory, changes):
    tmp = tmp_path_factory.mktemp("fuzz")
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
        return
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
