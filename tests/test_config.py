"""Scenario validation: one-line errors naming key, value and what is allowed."""

from __future__ import annotations

import pytest

from fedsim.config import ScenarioError, apply_override, load_scenario, parse_scenario_json

BASE = {"algorithm": {"name": "fedavg"}}


def err(raw: dict, overrides=()) -> str:
    with pytest.raises(ScenarioError) as e:
        load_scenario(raw, overrides)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_overrides_parse_toml_values_and_create_tables():
    raw: dict = {}
    for item in [
        "rounds=5",
        "algorithm.client_lr=0.5",
        "model.hidden=[8, 4]",
        "name=plain text",
        "data.options.kappa=[1e2, 1e3]",
        'runtime="simulation"',
        "model.bias=false",
    ]:
        apply_override(raw, item)
    assert raw == {
        "rounds": 5,
        "algorithm": {"client_lr": 0.5},
        "model": {"hidden": [8, 4], "bias": False},
        "name": "plain text",
        "data": {"options": {"kappa": [100.0, 1000.0]}},
        "runtime": "simulation",
    }


def test_override_without_equals_is_an_error():
    assert err(BASE, ["rounds"]).startswith("--set: 'rounds'")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["rounds=0"],
            "scenario.rounds: 0 is invalid (input should be greater than or equal to 1)",
        ),
        (["algorithm.client_lr=-1"], "scenario.algorithm.client_lr: -1 is invalid"),
        (["algorithm.fraction=1.5"], "scenario.algorithm.fraction: 1.5 is invalid"),
        (
            ["algorithm.name=nope"],
            "scenario.algorithm.name: 'nope' is not one of ['ef_signsgd', ",  # plug-ins may follow
        ),
        (["data.alpha=0"], "scenario.data.alpha: 0"),
        (["data.dataset=mnist"], "scenario.data.dataset: 'mnist'"),
        (["model.name=resnet50"], "scenario.model.name: 'resnet50' is not one of"),
        (["runtime=ray"], "scenario.runtime: 'ray' is invalid"),
        (["device=tpu"], "scenario.device: 'tpu' is not 'cpu', 'cuda' or 'cuda:N'"),
        (
            ["colour=red"],
            "scenario.colour: unknown key (allowed: ['algorithm', 'checkpoint_every',",
        ),
        (
            ["algorithm.lr=1"],
            "scenario.algorithm.lr: unknown key (allowed: ['aggregation', 'batch_size'",
        ),
        (
            ["algorithm.local_steps=5", "algorithm.local_epochs=2"],
            "set exactly one of local_steps and local_epochs (got 5 and 2)",
        ),
        (
            ['simulation.address="auto"'],
            "scenario.simulation.address: 'auto' is only used by runtime 'simulation' (this"
            " scenario's runtime is 'inprocess')",
        ),
    ],
)
def test_bad_values_name_key_value_and_allowed(overrides, expected):
    assert expected in err(BASE, overrides)


def test_cuda_without_a_gpu_is_an_error():
    import torch

    if torch.cuda.is_available():
        assert load_scenario(BASE, ["device=cuda"]).device == "cuda"
    else:
        assert "scenario.device: 'cuda' is not available" in err(BASE, ["device=cuda"])


def test_giving_only_steps_switches_epochs_off():
    s = load_scenario(BASE, ["algorithm.local_steps=7"])
    assert (s.algorithm.local_steps, s.algorithm.local_epochs) == (7, 0)
    assert load_scenario(BASE).algorithm.local_epochs == 1  # FedAvg's default budget


def test_missing_algorithm_and_missing_file(tmp_path):
    assert err({}).startswith("scenario.algorithm.name: missing")
    assert "is not a file" in err(str(tmp_path / "nope.toml"))  # type: ignore[arg-type]
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = [")
    assert "is not valid TOML" in err(str(bad))  # type: ignore[arg-type]


def test_json_round_trip_is_lossless():
    s = load_scenario(BASE, ["algorithm.client_lr=0.25", "model.hidden=[3]", "seed=9"])
    again = parse_scenario_json(s.to_json())
    assert again == s and again.algorithm.client_lr == 0.25
