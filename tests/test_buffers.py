"""Models with buffers: an MLP with BatchNorm, registered here. Its running statistics travel
in the flat vector after the parameters and are averaged with them: one FedAvg round equals
plain PyTorch (an SGD step per client, the clients' state dicts averaged); a vectorized run
falls back to the loop, says so once and equals the sequential one; evaluation runs in eval
mode on the averaged statistics; DP-SGD on it is refused with a line that names GroupNorm.
With `model.buffers = "local"` (FedBN) the vector is the parameters only and each client's
statistics, kept in its Context.state, equal a plain-PyTorch client that keeps its module
across rounds, sequential and vectorized alike; the server evaluates on the initial ones."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

import fedsim
from fedsim.checkpoint import load_checkpoint
from fedsim.clients.app import BUFFERS
from fedsim.clients.objective import Cohort, Shard, say_no_vmap
from fedsim.config import ScenarioError, load_scenario
from fedsim.data import client_data, load_dataset
from fedsim.models import (
    MODELS,
    bind,
    build_model,
    flat_buffers,
    flat_params,
    float_buffers,
    loss_fn,
    n_params,
    register_model,
)

from .conftest import small_scenario
from .test_vectorized import assert_same, run

BN = "bn_mlp"


class BNOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = 16


def bn_mlp(options: BNOptions, in_features: int, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_features, options.hidden),
        nn.BatchNorm1d(options.hidden),
        nn.ReLU(),
        nn.Linear(options.hidden, num_classes),
    )


@pytest.fixture(scope="module", autouse=True)
def registered():
    """bn_mlp in the model registry for this module's tests only (`fedsim list` stays)."""
    register_model(BN, BNOptions, "an MLP with BatchNorm (tests)")(bn_mlp)
    yield
    MODELS._entries.pop(BN)


def scenario(**over):
    """Digits on 3 clients, the BatchNorm MLP, one full-batch FedAvg step a round."""
    raw = {
        "name": "bn",
        "seed": 5,
        "rounds": 1,
        "data": {"dataset": "digits", "num_clients": 3, "partitioner": "dirichlet", "alpha": 1.0},
        "model": {"name": BN},
        "algorithm": {"name": "fedavg", "local_steps": 1, "batch_size": 0, "client_lr": 0.5},
    }
    return load_scenario(raw | over)


def test_the_vector_is_the_parameters_then_the_running_statistics():
    model = bn_mlp(BNOptions(), 64, 10)
    x = flat_params(model)
    assert n_params(model) == sum(p.numel() for p in model.parameters())
    assert x.numel() == n_params(model) + 2 * 16  # running_mean and running_var, not the count
    y = torch.arange(x.numel(), dtype=torch.float32)
    bind(model, y)
    model(torch.randn(8, 64))  # train mode: the statistics are written into y
    bn = model[1]
    assert bn.running_mean.data_ptr() == y[n_params(model) :].data_ptr()
    assert not torch.equal(y[n_params(model) :], torch.arange(n_params(model), x.numel()).float())
    assert int(bn.num_batches_tracked) == 1


def reference(s) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """FedAvg in plain PyTorch: each client keeps its own copy of the module; every round it
    loads the server's tensors (parameters and float buffers; under buffers = "local" the
    parameters only, its statistics continuing from its last round), takes local_steps
    torch.optim.SGD steps on all its examples, and the server averages the shared entries of
    the clients' state dicts weighted by their example counts. The server's vector and each
    client's float buffers after `s.rounds` rounds."""
    ds = load_dataset(s.data, s.seed)
    start = build_model(s.model, ds.x_train.shape[1], ds.num_classes, s.seed)
    names = [n for n, _ in start.named_parameters()]
    if s.model.buffers == "average":
        names += [n for n, b in start.named_buffers() if b.is_floating_point()]
    server = {n: start.state_dict()[n] for n in names}
    clients = [copy.deepcopy(start).train() for _ in range(s.data.num_clients)]
    data = [client_data(s.data, s.seed, pid) for pid in range(s.data.num_clients)]
    assert all(l2 == 0 for _, _, l2 in data)
    w = torch.tensor([len(y) for _, y, _ in data], dtype=torch.float64)
    w /= w.sum()
    for _ in range(s.rounds):
        for client, (x, y, _) in zip(clients, data, strict=True):
            client.load_state_dict(server, strict=False)
            opt = torch.optim.SGD(client.parameters(), lr=s.algorithm.client_lr)
            for _ in range(s.algorithm.local_steps):
                opt.zero_grad()
                out = client(torch.as_tensor(x))
                nn.functional.cross_entropy(out, torch.as_tensor(y)).backward()
                opt.step()
        states = [c.state_dict() for c in clients]
        server = {
            n: sum(wi * st[n].double() for wi, st in zip(w, states, strict=True)).float()
            for n in names
        }
    x = torch.cat([server[n].reshape(-1) for n in names])
    return x, [flat_buffers(c) for c in clients]


def test_one_fedavg_round_averages_parameters_and_running_statistics_as_pytorch(tmp_path):
    s = scenario()
    result = fedsim.run(s, out=tmp_path / "r", quiet=True)
    ref, _ = reference(s)
    got = result.model()
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    stats = got[n_params(result.module()) :]
    assert not torch.equal(stats[:16], torch.zeros(16))  # running_mean moved from 0


def test_a_vectorized_run_falls_back_says_so_once_and_equals_the_sequential(tmp_path, capfd):
    over = {"model": {"name": BN}, "algorithm": {"name": "fedavg", "batch_size": 16}}
    seq = run(tmp_path, "seq", execution="sequential", **over)
    capfd.readouterr()
    say_no_vmap.cache_clear()
    vec = run(tmp_path, "vec", execution="vectorized", **over)
    again = run(tmp_path, "again", execution="vectorized", **over)
    assert capfd.readouterr().err.count("running statistics (BatchNorm buffers)") == 1
    assert_same(seq, vec, BN)
    assert_same(vec, again, BN)


def test_a_run_learns_and_evaluates_in_eval_mode_on_the_averaged_statistics(tmp_path):
    s = small_scenario(rounds=4, model={"name": BN})
    result = fedsim.run(s, out=tmp_path / "r", quiet=True)
    rows = result.rows
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["eval_accuracy"] > 0.8
    ds = load_dataset(s.data, s.seed)
    module = result.module().eval()
    with torch.no_grad():
        out = module(torch.as_tensor(ds.x_test))
    loss = float(loss_fn(ds.num_classes)(out, torch.as_tensor(ds.y_test)))
    assert rows[-1]["eval_loss"] == pytest.approx(loss, rel=1e-5)
    with torch.no_grad():  # batch statistics instead: not what was reported
        batch_stats = float(
            loss_fn(ds.num_classes)(
                module.train()(torch.as_tensor(ds.x_test)), torch.as_tensor(ds.y_test)
            )
        )
    assert rows[-1]["eval_loss"] != pytest.approx(batch_stats, rel=1e-5)


def test_a_loop_gradient_covers_the_parameters_and_each_row_keeps_its_own_statistics():
    model = build_model(scenario().model, 64, 10, seed=0)
    model.flat_buffer, model.private = flat_params(model), None
    ds = load_dataset(scenario().data, 0)
    shards = [
        Shard(
            torch.from_numpy(ds.x_train[a : a + 20]), torch.from_numpy(ds.y_train[a : a + 20]), 0.1
        )
        for a in (0, 20)
    ]
    cohort = Cohort(model, shards, 10, vectorize=True)
    assert not cohort.vmap
    p = n_params(model)
    x = model.flat_buffer.repeat(2, 1)
    x[:, p:] += torch.rand(2, x.shape[1] - p)  # running statistics of the clients' own
    before = x.clone()
    cohort.bind(x)
    _, g = cohort.loss_grad(cohort.all())
    assert torch.equal(g[:, p:], torch.zeros_like(g[:, p:]))
    for c, s in enumerate(shards):
        alone = build_model(scenario().model, 64, 10, seed=0)
        xc = before[c].clone()
        params = bind(alone, xc)
        loss = loss_fn(10)(alone(s.inputs), s.targets)
        ref = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)])
        torch.testing.assert_close(g[c, :p], ref + 0.1 * xc[:p], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x[c, p:], xc[p:])  # this client's statistics, updated
        assert not torch.equal(x[c, p:], before[c, p:])
    v = torch.randn_like(x)
    hv = cohort.hessian_vector(cohort.all(), v)
    assert torch.equal(hv[:, p:], torch.zeros_like(hv[:, p:]))


def test_dp_sgd_on_a_batchnorm_model_is_refused_with_groupnorm_named():
    with pytest.raises(ScenarioError) as err:
        scenario(privacy={"mechanism": "dp_sgd", "noise_multiplier": 1.0})
    line = str(err.value)
    assert "model.name: 'bn_mlp'" in line and "BatchNorm1d" in line and "GroupNorm" in line
    assert "\n" not in line


LOCAL = {"name": BN, "buffers": "local"}


@pytest.fixture(scope="module")
def fedbn_runs(tmp_path_factory, registered):
    """Two FedBN rounds of two full-batch steps, sequential and vectorized, checkpointed at
    the end (so each client's Context.state is on disk)."""
    tmp = tmp_path_factory.mktemp("fedbn")
    s = scenario(rounds=2, checkpoint_every=2, model=LOCAL)
    s = s.model_copy(update={"algorithm": s.algorithm.model_copy(update={"local_steps": 2})})
    return s, {
        ex: fedsim.run(s, out=tmp / ex, quiet=True, execution=ex)
        for ex in ("sequential", "vectorized")
    }


def client_buffers(result) -> dict[int, torch.Tensor]:
    """Each client's own float buffers, read from the Context.state its checkpoint kept."""
    meta, arrays = load_checkpoint(result.run_dir, result.scenario.to_json())
    return {
        int(pid): torch.from_numpy(arrays[f"client/{pid}/{BUFFERS}/{BUFFERS}"])
        for pid in meta["clients"]
    }


@pytest.mark.parametrize("execution", ["sequential", "vectorized"])
def test_local_buffers_stay_on_each_client_as_in_pytorch(fedbn_runs, execution):
    s, runs = fedbn_runs
    result = runs[execution]
    ref_x, ref_buffers = reference(s)
    got = result.model()
    assert got.numel() == n_params(result.module()) == ref_x.numel()
    torch.testing.assert_close(got, ref_x, rtol=1e-5, atol=1e-6)
    mine = client_buffers(result)
    assert sorted(mine) == list(range(s.data.num_clients))
    for pid, ref in enumerate(ref_buffers):
        torch.testing.assert_close(mine[pid], ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(mine[0], mine[1])  # each its own statistics


def test_local_buffers_sequential_and_vectorized_agree(fedbn_runs):
    _, runs = fedbn_runs
    seq, vec = runs["sequential"], runs["vectorized"]
    torch.testing.assert_close(vec.model(), seq.model(), rtol=1e-5, atol=1e-6)
    a, b = client_buffers(seq), client_buffers(vec)
    for pid in a:
        torch.testing.assert_close(b[pid], a[pid], rtol=1e-5, atol=1e-6)
    for ra, rb in zip(seq.rows, vec.rows, strict=True):
        for k in ("train_loss", "eval_loss", "eval_accuracy"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-5), k


def test_the_server_evaluates_local_buffers_on_the_initial_statistics(fedbn_runs):
    s, runs = fedbn_runs
    result = runs["sequential"]
    module = result.module()
    initial = build_model(s.model, 64, 10, s.seed)
    torch.testing.assert_close(flat_buffers(module), flat_buffers(initial))
    ds = load_dataset(s.data, s.seed)
    with torch.no_grad():
        out = module(torch.as_tensor(ds.x_test))
    loss = float(loss_fn(ds.num_classes)(out, torch.as_tensor(ds.y_test)))
    assert result.rows[-1]["eval_loss"] == pytest.approx(loss, rel=1e-5)
    assert "initial" in result.summary["eval_buffers"]


def test_fedavg_with_local_buffers_learns_on_digits(tmp_path):
    s = small_scenario(rounds=4, model=LOCAL)
    rows = fedsim.run(s, out=tmp_path / "r", quiet=True).rows
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["eval_accuracy"] > rows[0]["eval_accuracy"]


@pytest.mark.parametrize(
    "over, named",
    [
        ({"model": {"name": "mlp", "buffers": "local"}}, "model.name 'mlp' has none"),
        ({"model": {"name": BN, "buffers": "shared"}}, "scenario.model.buffers: 'shared'"),
        (
            {
                "data": {"dataset": "sentences", "options": {"train_size": 200, "test_size": 50}},
                "model": LOCAL,
                "algorithm": {"name": "split_lora", "rank": 4, "lora_alpha": 8},
            },
            "'split_lora' does not train the [model]",
        ),
    ],
)
def test_local_buffers_with_nothing_to_keep_or_an_unknown_value_are_refused(over, named):
    with pytest.raises(ScenarioError) as err:
        scenario(**over)
    line = str(err.value)
    assert "model.buffers" in line and named in line and "\n" not in line


def test_an_unknown_model_key_lists_buffers_among_the_allowed():
    with pytest.raises(ScenarioError, match=r"allowed: \['buffers', 'hidden', 'name'\]"):
        scenario(model={"name": BN, "buffer": "local"})


def test_the_model_vector_leaves_local_buffers_out_and_binds_them_apart():
    model = build_model(scenario(model=LOCAL).model, 64, 10, seed=0)
    x = flat_params(model)
    assert x.numel() == n_params(model)
    own = torch.zeros(2 * 16)
    bind(model, x, own)
    model(torch.randn(8, 64))  # train mode: the statistics are written into `own`
    assert float_buffers(model)[0].data_ptr() == own.data_ptr()
    assert not torch.equal(own, torch.zeros(2 * 16))
