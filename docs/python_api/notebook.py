# %% [markdown]
# # fedsim from Python
#
# A notebook in percent format (open it in Jupyter with jupytext, or in VS Code): each
# `# %%` is a cell. It runs from the repository root; the test suite executes it.

# %%
import fedsim

result = fedsim.run(
    "scenarios/quickstart.toml",
    out="runs/notebook/fedavg",
    overwrite=True,
    quiet=True,
    rounds=5,  # keyword overrides: top-level keys as they are ...
    algorithm__client_lr=0.2,  # ... nested keys with __ for .
)
result.metrics[["round", "train_loss", "eval_accuracy", "bytes_up"]]

# %% [markdown]
# The result holds the run directory, the rows, summary.json and the final model.

# %%
print(result.run_dir, result.summary["final"]["eval_accuracy"])
model = result.module()  # the scenario's torch model with the final parameters
print(sum(p.numel() for p in model.parameters()), "parameters")
result.clients.groupby("fate").size()

# %% [markdown]
# A dict or a `Scenario` works as well as a file; bad input raises `fedsim.ScenarioError`
# with the one line the CLI prints, before any run directory exists.

# %%
scenario = dict(result.scenario.to_dict(), name="prox", rounds=3)
scenario["algorithm"] = {"name": "fedprox", "mu": 0.01, "client_lr": 0.2, "batch_size": 16}
prox = fedsim.run(scenario, out="runs/notebook/fedprox", overwrite=True, quiet=True)
try:
    fedsim.run(scenario, out="runs/notebook/bad", quiet=True, data__alpha=-1.0)
except fedsim.ScenarioError as e:
    print("refused:", e)

# %% [markdown]
# Sweeps return their tables as DataFrames and can write a page to share.

# %%
from pathlib import Path  # noqa: E402

Path("runs/notebook").mkdir(parents=True, exist_ok=True)
Path("runs/notebook/lr.toml").write_text(
    """
name = "lr"
base = "../../scenarios/quickstart.toml"
seeds = [0, 1]
[[axes]]
key = "rounds"
values = [3]
[[axes]]
key = "algorithm.client_lr"
values = [0.1, 0.3]
"""
)
sweep = fedsim.sweep("runs/notebook/lr.toml", out="runs/notebook/lr", quiet=True)
print(sweep.mean_table.filter(regex="point|client_lr|seeds|final_eval_accuracy_mean"))

from fedsim.html_report import write_html  # noqa: E402

print(write_html(sweep.sweep_dir))
