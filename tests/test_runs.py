"""Whole runs through the CLI: results format, byte accounting, determinism, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from flwr.app import Array, ArrayRecord

from fedsim.cli import main
from fedsim.results import ROW_KEYS, read_metrics, read_summary
from fedsim.runtime import launch

from .conftest import REPO, small_scenario, without_wall_clock


def test_quickstart_reaches_90_percent(tmp_path):
    """The README's `make run`: FedAvg on digits, Dirichlet 0.5, 20 clients."""
    out = tmp_path / "q"
    assert main(["run", str(REPO / "scenarios/quickstart.toml"), "--out", str(out)]) == 0
    summary = read_summary(out)
    assert summary["final"]["eval_accuracy"] >= 0.90
    assert (out / "config.toml").is_file() and (out / "final_model.npy").is_file()
    assert main(["plot", str(out)]) == 0
    assert {p.name for p in (out / "plots").iterdir()} >= {"train_loss.png", "eval_accuracy.png"}


def test_rows_carry_the_documented_keys_and_actual_bytes(tmp_path):
    s = small_scenario(rounds=2, algorithm__fraction=0.5)
    launch(s, tmp_path)
    rows = read_metrics(tmp_path)
    d = 64 * 32 + 32 + 32 * 10 + 10  # MLP 64 -> 32 -> 10 with biases
    per_client = ArrayRecord({"x": Array(np.zeros(d, dtype=np.float32))}).count_bytes()
    assert per_client == 4 * d + 129  # 128-byte .npy header + the 1-byte key "x"
    for row in rows:
        assert set(ROW_KEYS) <= set(row)
        assert row["clients"] == 3  # int(6 * 0.5)
        assert row["bytes_up"] == row["bytes_down"] == 3 * per_client
    summary = read_summary(tmp_path)
    assert summary["d"] == d
    assert summary["total_bytes_up"] == sum(r["bytes_up"] for r in rows)


def test_same_scenario_and_seed_give_identical_metrics(tmp_path):
    s = small_scenario(rounds=3, algorithm__fraction=0.5)
    launch(s, tmp_path / "a")
    launch(s, tmp_path / "b")
    strip = without_wall_clock(read_metrics(tmp_path / "a"))
    again = without_wall_clock(read_metrics(tmp_path / "b"))
    assert strip == again
    np.testing.assert_array_equal(
        np.load(tmp_path / "a/final_model.npy"), np.load(tmp_path / "b/final_model.npy")
    )
    other = small_scenario(rounds=3, algorithm__fraction=0.5, seed=4)
    launch(other, tmp_path / "c")
    assert read_metrics(tmp_path / "c")[-1]["train_loss"] != strip[-1]["train_loss"]


def test_simulated_clock_follows_the_round_time_formula(tmp_path):
    s = small_scenario(
        rounds=1,
        system__speed=100.0,
        system__uplink=1e4,
        system__downlink=2e4,
        system__latency_s=0.5,
    )
    launch(s, tmp_path)
    row = read_metrics(tmp_path)[0]
    per_client = row["bytes_up"] / row["clients"]
    # every client processes its partition once (1 epoch); the slowest has the most examples
    from fedsim.data import partition_indices

    most = max(len(p) for p in partition_indices(s.data, s.seed))
    expected = 0.5 + per_client / 2e4 + most / 100.0 + per_client / 1e4
    assert abs(row["sim_time_s"] - expected) < 1e-9


def fedsim_cli(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    exe = [sys.executable, "-m", "fedsim", *args]
    return subprocess.run(exe, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_bad_input_exits_2_with_one_line_and_no_run_dir(tmp_path):
    out = tmp_path / "never"
    r = fedsim_cli("run", "scenarios/quickstart.toml", "--set", "data.alpha=-1", "--out", str(out))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [
        "fedsim: error: scenario.data.alpha: -1 is invalid (input should be greater than 0)"
    ]
    assert not out.exists()


def test_existing_run_dir_is_not_touched(tmp_path):
    out = tmp_path / "kept"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(["run", str(REPO / "scenarios/quickstart.toml"), "--out", str(out)]) == 2
    assert (out / "precious.txt").read_text() == "keep me"


def test_data_problems_are_caught_before_the_run(tmp_path, capsys):
    out = tmp_path / "x"
    args = [
        "run",
        str(REPO / "scenarios/quickstart.toml"),
        "--out",
        str(out),
        "--set",
        'data.dataset="libsvm"',
        "--set",
        'data.options.path="/nonexistent/w8a"',
    ]
    assert main(args) == 2
    assert "/nonexistent/w8a" in capsys.readouterr().err
    assert not out.exists()


def test_list_shows_every_registry():
    r = fedsim_cli("list")
    assert r.returncode == 0
    for name in (
        "fedavg",
        "local_sgd",
        "digits",
        "logreg",
        "synthetic",
        "libsvm",
        "mlp",
        "cnn",
        "fp32",
        "inprocess",
        "simulation",
    ):
        assert name in {line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ")}


def test_cnn_and_logreg_models_train_on_digits(tmp_path):
    for name in ("cnn", "logreg"):
        s = small_scenario(rounds=2, model__name=name)
        launch(s, tmp_path / name)
        rows = read_metrics(tmp_path / name)
        assert rows[-1]["eval_loss"] < rows[0]["eval_loss"] or rows[-1]["eval_accuracy"] > 0.3
        assert json.loads((tmp_path / name / "summary.json").read_text())["rounds"] == 2


def test_a_libsvm_run_with_default_options_and_flat_directions(tmp_path):
    """Unset options stay out of config.toml (TOML has no null); without l2 the problem has
    directions of zero curvature (feature 3 never occurs), so there is no x* to measure."""
    from fedsim.config import load_scenario
    from fedsim.results import read_metrics
    from fedsim.runtime import launch

    rng = np.random.default_rng(0)
    lines = [f"{rng.choice([-1, 1])} 1:{rng.normal():.3f} 2:{rng.normal():.3f}" for _ in range(80)]
    (tmp_path / "toy.svm").write_text("\n".join(lines) + "\n")
    raw = {
        "rounds": 2,
        "data": {
            "dataset": "libsvm",
            "num_clients": 2,
            "options": {"path": str(tmp_path / "toy.svm"), "n_features": 3},
        },
        "model": {"name": "logreg", "bias": False},
        "algorithm": {"name": "local_sgd", "local_steps": 1, "batch_size": 0},
    }
    scenario = load_scenario(raw)
    assert "test_path" not in scenario.to_toml()  # the run directory's config.toml
    launch(scenario, tmp_path / "run")
    assert "dist_to_opt" not in read_metrics(tmp_path / "run")[-1]
    launch(load_scenario(raw | {"data": raw["data"] | {"l2": 0.1}}), tmp_path / "l2")
    assert read_metrics(tmp_path / "l2")[-1]["rel_dist_to_opt"] < 1


def test_a_fedavg_run_imports_neither_transformers_nor_peft(tmp_path):
    """Split learning's heavy dependencies load only when a split run needs them."""
    code = (
        "import sys\n"
        "from fedsim.cli import main\n"
        f"assert main(['run', 'scenarios/quickstart.toml', '--set', 'rounds=1', '--out', "
        f"{str(tmp_path / 'q')!r}]) == 0\n"
        "print(sorted(m for m in ('transformers', 'peft', 'ray') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
