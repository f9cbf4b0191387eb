"""Plug-ins: a user's model, dataset and method reach every process of a run, travel with it,
and are checked as fedsim's own; each bad input is one line before any run directory exists.
The methods are checked against independent references (FedAvg itself, float64 NumPy)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tomli_w

import fedsim
from fedsim import deploy
from fedsim.cli import main
from fedsim.clients.objective import RoundSpec
from fedsim.config import ScenarioError, load_scenario
from fedsim.method import METHODS, RUNTIMES
from fedsim.plugins import Plugin, PluginError, activate, digest
from fedsim.servers.evaluate import Evaluator

from .conftest import REPO, logreg_grad, logreg_parts, logreg_scenario, small_scenario

PLUGINS = REPO / "tests" / "plugins"
DEMO = PLUGINS / "demo_plugins"
FEDAVGM = {"name": "fedavgm", "local_epochs": 1, "batch_size": 16, "client_lr": 0.2}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`fedsim ...` in a fresh process (nothing imported before it)."""
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_a_plugin_file_runs_from_the_cli_and_travels_in_the_run_directory(tmp_path):
    """A scenario file and a .py beside it: the run directory keeps the source and its
    hash, and is read back from them after the original file is gone."""
    source = write(
        tmp_path / "exp" / "server_opt.py",
        """
        import fedsim
        from fedsim.methods.fedavg import FedAvg

        @fedsim.register_method
        class Halved(FedAvg):
            "FedAvg whose server takes half steps"
            name = "fedavg_halved"

            def server_step(self, p, s, agg, rnd):
                half = p.model_copy(update={"server_lr": p.server_lr / 2})
                return super().server_step(half, s, agg, rnd)
        """,
    )
    raw = small_scenario(rounds=2).to_dict()
    raw |= {"plugins": ["server_opt.py"], "algorithm": FEDAVGM | {"name": "fedavg_halved"}}
    toml = tmp_path / "exp" / "s.toml"
    toml.write_text(tomli_w.dumps(raw))
    done = cli("run", str(toml), "--out", str(tmp_path / "run"), "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = load_scenario(tmp_path / "run" / "config.toml")
    (plugin,) = saved.plugins
    assert plugin.module == "server_opt"
    assert plugin.files == {"server_opt.py": source.read_text()}
    assert plugin.sha256 == digest(plugin.files)

    # read back in a fresh process after the original file is gone: from the run alone
    (tmp_path / "exp" / "server_opt.py").unlink()
    code = textwrap.dedent(
        f"""
        import fedsim, torch
        result = fedsim.RunResult.read({str(tmp_path / "run")!r})
        flat = torch.cat([t.reshape(-1) for t in result.module().state_dict().values()])
        print(result.scenario.algorithm.name, float((flat - result.model()).abs().max()))
        """
    )
    env = {**os.environ, "FEDSIM_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["fedavg_halved", "0.0"]
    assert (tmp_path / "cache" / "plugins" / plugin.sha256[:32] / "server_opt.py").is_file()


def test_fedavgm_with_beta_zero_is_fedavg_exactly(tmp_path):
    base = small_scenario(rounds=3).to_dict()
    fedavg = fedsim.run(base, out=tmp_path / "fedavg", quiet=True)
    momentum = fedsim.run(
        base | {"algorithm": FEDAVGM | {"beta": 0.0}},
        out=tmp_path / "fedavgm",
        quiet=True,
        plugins=[str(DEMO)],
    )
    assert np.array_equal(fedavg.model().numpy(), momentum.model().numpy())
    assert fedavg.metrics["eval_loss"].tolist() == momentum.metrics["eval_loss"].tolist()
    moving = fedsim.run(
        base | {"algorithm": FEDAVGM | {"beta": 0.9}}, out=tmp_path / "m9", quiet=True
    )
    assert not np.array_equal(fedavg.model().numpy(), moving.model().numpy())


def test_fedadam_equals_a_float64_numpy_reference(tmp_path):
    """Reddi et al.'s Algorithm 2 written out: full-batch local steps on logistic regression,
    the example-weighted mean of x - x_i, then m, v and the step, in float64."""
    activate([Plugin(module="demo_plugins", **_bundle(DEMO))])
    algorithm = {
        "name": "fedadam",
        "local_steps": 3,
        "batch_size": 0,
        "client_lr": 0.5,
        "server_lr": 0.05,
        "beta1": 0.8,
        "beta2": 0.95,
        "tau": 1e-2,
    }
    s = logreg_scenario(0, 8, 40, [2.0, 10.0, 30.0], algorithm, rounds=5)
    result = fedsim.run(s, out=tmp_path / "run", quiet=True)
    parts = logreg_parts(s)
    x = Evaluator(s).initial_params().astype(np.float64)
    m, v = np.zeros_like(x), np.full_like(x, algorithm["tau"] ** 2)
    for _ in range(s.rounds):
        deltas, weights = [], []
        for part in parts:
            xi = x.copy()
            for _ in range(algorithm["local_steps"]):
                xi -= algorithm["client_lr"] * logreg_grad(part, xi)
            deltas.append(x - xi)
            weights.append(len(part[1]))
        g = np.average(deltas, axis=0, weights=weights)
        m = algorithm["beta1"] * m + (1 - algorithm["beta1"]) * g
        v = algorithm["beta2"] * v + (1 - algorithm["beta2"]) * g * g
        x = x - algorithm["server_lr"] * m / (np.sqrt(v) + algorithm["tau"])
    np.testing.assert_allclose(result.model().numpy(), x, rtol=1e-4, atol=1e-5)


def _bundle(path: Path) -> dict:
    from fedsim.plugins import from_path

    return from_path(path).model_dump(exclude={"module"})


def test_a_plugin_is_imported_from_its_carried_source_where_its_files_are_not(tmp_path):
    """A worker that never saw the file (its path is not there): the source is written
    under the cache directory and imported from there; a changed source is refused."""
    src = write(tmp_path / "elsewhere" / "carried_plugin.py", "VALUE = 41 + 1\n")
    plugin = Plugin.model_validate(_bundle(src) | {"module": "carried_plugin"})
    moved = plugin.model_copy(update={"path": str(tmp_path / "gone" / "carried_plugin.py")})
    code = textwrap.dedent(
        f"""
        import json, sys
        from fedsim.plugins import Plugin, activate
        plugin = Plugin.model_validate_json({moved.model_dump_json()!r})
        activate([plugin])
        module = sys.modules["carried_plugin"]
        print(json.dumps([module.VALUE, module.__file__]))
        """
    )
    env = {**os.environ, "FEDSIM_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    value, where = json.loads(done.stdout)
    assert value == 42 and where.startswith(str(tmp_path / "cache" / "plugins"))

    tampered = moved.model_copy(update={"files": {"carried_plugin.py": "VALUE = 0\n"}})
    with pytest.raises(PluginError, match=r"^plugins: 'carried_plugin': its files do not match"):
        activate([tampered])


def test_an_installed_plugin_missing_on_a_worker_stops_it_naming_the_plugin_and_host():
    spec = json.loads(json.dumps({"plugins": [{"module": "fedsim_no_such_plugin"}]}))
    with pytest.raises(PluginError) as err:
        RoundSpec.parse(json.dumps(spec))
    message = str(err.value)
    assert message.startswith("plugins: 'fedsim_no_such_plugin' is not installed on host '")
    assert "give the plug-in as a file or folder, which travels" in message


def test_plugins_are_listed_beside_builtins_and_marked(tmp_path):
    done = cli("list", "--plugin", str(DEMO))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name in ("fedavgm", "fedadam", "normed_mlp", "wine"):
        (line,) = [x for x in lines if x.split()[:1] == [name]]
        assert line.endswith("[plug-in demo_plugins]"), line
    (fedavg,) = [x for x in lines if x.split()[:1] == ["fedavg"]]
    assert "plug-in" not in fedavg


def test_an_installed_package_declares_itself_as_an_entry_point(tmp_path):
    """A package with a `fedsim.plugins` entry point (a real dist-info on sys.path) is loaded
    in every process that reads a scenario, without being named."""
    site = tmp_path / "site"
    write(
        site / "ep_plugin.py",
        """
        import fedsim
        from fedsim.methods.fedavg import FedAvg

        @fedsim.register_method
        class Averaged(FedAvg):
            "FedAvg under another name, from an entry point"
            name = "ep_fedavg"
        """,
    )
    write(site / "ep_plugin-1.0.dist-info" / "METADATA", "Name: ep-plugin\nVersion: 1.0\n")
    write(
        site / "ep_plugin-1.0.dist-info" / "entry_points.txt", "[fedsim.plugins]\nep = ep_plugin\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-m", "fedsim", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stdout.splitlines() if x.split()[:1] == ["ep_fedavg"]]
    assert line.endswith("[plug-in ep_plugin]")


# ---------------------------------------------------------------- bad input: one line, exit 2

BAD = {
    "unknown": (
        ["no_such_module_xyz"],
        None,
        "scenario.plugins: 'no_such_module_xyz' is not an installed module, nor a file or"
        " folder in {dir}",
    ),
    "missing file": (
        ["missing.py"],
        None,
        "scenario.plugins: 'missing.py' is not a file or folder (looked in {dir})",
    ),
    "raises": (
        ["boom.py"],
        "import math\nraise RuntimeError('no GPU found')\n",
        "scenario.plugins: 'boom' raised on import: RuntimeError: no GPU found",
    ),
    "clashes with a builtin": (
        ["clash.py"],
        """
        import fedsim
        from fedsim.methods.fedavg import FedAvg

        @fedsim.register_method
        class Mine(FedAvg):
            name = "fedavg"
        """,
        "scenario.plugins: 'clash': algorithm 'fedavg' is already registered by fedsim",
    ),
    "misses a step": (
        ["halfdone.py"],
        """
        import fedsim

        @fedsim.register_method
        class Half(fedsim.FederatedMethod):
            name = "half"
            params = fedsim.Params

            def server_init(self, p, x0, num_clients, seed):
                return None
        """,
        "scenario.plugins: 'halfdone': method class 'Half' does not define the steps"
        " ['client_round', 'server_step']",
    ),
    "declares no name": (
        ["noname.py"],
        """
        import fedsim
        from fedsim.methods.fedavg import FedAvg

        @fedsim.register_method
        class Nameless(FedAvg):
            pass
        """,
        "scenario.plugins: 'noname': method class 'Nameless' declares no name of its own"
        " (name: ClassVar[str])",
    ),
    "shadows a module": (
        ["json.py"],
        "X = 1\n",
        "scenario.plugins: 'json' clashes with a module of that name already imported here",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_plugin_is_one_line_and_exit_2_before_any_run_directory(case, tmp_path, capsys):
    refs, source, line = BAD[case]
    if source is not None:
        write(tmp_path / refs[0], source)
    scenario = small_scenario().to_dict() | {"plugins": refs}
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(scenario))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fedsim: error: " + line.format(dir=tmp_path)), err[-1]
    assert not out.exists()
    if case == "raises":  # the plug-in's traceback first, ending at its line
        assert f'File "{tmp_path / "boom.py"}", line 2' in "\n".join(err)
    with pytest.raises(ScenarioError):
        load_scenario(scenario | {"plugins": [str(tmp_path / r) for r in refs]})


def test_two_plugins_registering_one_name_are_refused(tmp_path):
    for name in ("first_models", "second_models"):
        write(
            tmp_path / f"{name}.py",
            """
            import fedsim
            from torch import nn

            @fedsim.register_model("twin")
            def twin(options, in_features, num_classes):
                "a linear model"
                return nn.Linear(in_features, num_classes)
            """,
        )
    refs = [str(tmp_path / "first_models.py"), str(tmp_path / "second_models.py")]
    with pytest.raises(ScenarioError) as err:
        load_scenario(small_scenario().to_dict() | {"plugins": refs})
    assert str(err.value) == (
        "scenario.plugins: 'second_models': model 'twin' is already registered by plug-in"
        " 'first_models'"
    )


def test_a_plugin_options_model_refuses_unknown_keys_even_if_it_would_ignore_them(tmp_path):
    write(
        tmp_path / "loose_model.py",
        """
        from pydantic import BaseModel
        from torch import nn
        import fedsim

        class Loose(BaseModel):  # pydantic's default ignores unknown keys
            width: int = 8

        @fedsim.register_model("loose", options=Loose)
        def loose(options, in_features, num_classes):
            "two layers"
            hidden = nn.Linear(in_features, options.width)
            return nn.Sequential(hidden, nn.Linear(options.width, num_classes))
        """,
    )
    base = small_scenario().to_dict() | {"plugins": [str(tmp_path / "loose_model.py")]}
    ok = load_scenario(base | {"model": {"name": "loose", "width": 4}})
    model = {"name": "loose", "buffers": "average", "width": 4}
    assert ok.model.options.width == 4 and ok.to_dict()["model"] == model
    with pytest.raises(ScenarioError) as err:
        load_scenario(base | {"model": {"name": "loose", "widht": 4}})
    allowed = "['buffers', 'name', 'width']"
    assert str(err.value) == f"scenario.model.widht: unknown key (allowed: {allowed})"


def test_plugin_methods_are_in_the_registry_with_their_declarations():
    activate([Plugin(module="demo_plugins", **_bundle(DEMO))])
    fedavgm = METHODS.entry("fedavgm")
    assert fedavgm.origin == "demo_plugins"
    assert fedavgm.doc.startswith("FedAvgM: FedAvg with server momentum")
    assert METHODS.get("fedavgm").supports == METHODS.get("fedavg").supports


@pytest.mark.slow
def test_the_plugin_package_runs_from_the_cli_on_every_runtime_to_the_same_model(tmp_path):
    """Nothing but a scenario file naming the package: in-process, on Flower's Simulation
    Engine (a local Ray) and on a loopback deployment (TLS, authenticated SuperNodes)."""
    dep = deploy.up(2, tmp_path / "deploy")
    try:
        env = {**os.environ, "FLWR_HOME": str(deploy.Layout(dep.root).flwr_home)}
        for runtime in RUNTIMES:
            args = ["run", str(PLUGINS / "demo.toml"), "--out", str(tmp_path / runtime), "-q"]
            args += ["--runtime", runtime, "--set", "data.num_clients=2"]
            if runtime == "deployment":
                args += ["--federation", dep.connection]
            done = subprocess.run(
                [sys.executable, "-m", "fedsim", *args],
                capture_output=True,
                text=True,
                timeout=600,
                cwd=tmp_path,
                env=env,
            )
            assert done.returncode == 0, f"{runtime}: {done.stderr[-3000:]}"
    finally:
        deploy.down(dep.root, grace_s=3.0)
    models = {r: np.load(tmp_path / r / "final_model.npy") for r in RUNTIMES}
    for runtime in RUNTIMES[1:]:
        np.testing.assert_allclose(models[runtime], models["inprocess"], rtol=0, atol=1e-5)
    assert load_scenario(tmp_path / "deployment" / "config.toml").model.name == "normed_mlp"


def test_the_extending_guide_shows_the_plugin_package_as_it_is():
    """docs/extending.md's code blocks are the files this suite runs, word for word."""
    text = (REPO / "docs" / "extending.md").read_text()
    blocks = dict(re.findall(r"```python\n# (tests/plugins/\S+)\n(.*?)```", text, re.S))
    files = {str(p.relative_to(REPO)) for p in DEMO.glob("*.py")}
    assert set(blocks) == files
    for path, body in blocks.items():
        assert body == (REPO / path).read_text(), path
    assert (PLUGINS / "demo.toml").read_text() in text


@pytest.mark.slow
def test_a_sweep_over_a_plugin_method_runs_in_worker_processes(tmp_path):
    """`fedsim sweep --jobs 2`: each spawned worker imports the plug-in the base scenario
    names (relative to the base file), and the points differ as their settings say."""
    write(tmp_path / "study" / "opt.py", (DEMO / "methods.py").read_text())
    base = small_scenario(rounds=2).to_dict() | {"plugins": ["opt.py"]}
    base["algorithm"] = FEDAVGM
    (tmp_path / "study" / "base.toml").write_text(tomli_w.dumps(base))
    sweep = write(
        tmp_path / "study" / "sweep.toml",
        """
        name = "momentum"
        base = "base.toml"
        seeds = [0]

        [[axes]]
        keys = ["algorithm.beta"]
        values = [[0.0], [0.9]]
        """,
    )
    done = cli("sweep", str(sweep), "--jobs", "2", "--out", str(tmp_path / "out"), "-q")
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "out" / "sweep.csv").read_text().splitlines()) == 3
    models = [np.load(p) for p in sorted((tmp_path / "out").glob("points/*/*/final_model.npy"))]
    assert len(models) == 2 and not np.array_equal(*models)


def test_a_plugin_edited_after_this_process_imported_it_asks_for_a_new_process(tmp_path):
    """Python cannot unload the first version's classes (cached models, pickled state): a
    notebook that edits its plug-in is told to restart, not run the old code silently."""
    from fedsim.plugins import from_path

    path = write(tmp_path / "edited_plugin.py", "VERSION = 1\n")
    activate([from_path(path)])
    activate([from_path(path)])  # the same source again: nothing to do
    path.write_text("VERSION = 2\n")
    with pytest.raises(PluginError) as err:
        activate([from_path(path)])
    assert str(err.value) == (
        "plugins: 'edited_plugin' changed since this process imported it: start a new process"
        " (a notebook: restart its kernel) to run the new version"
    )
