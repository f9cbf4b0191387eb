"""The model zoo's paper models: parameter counts against closed forms (as `fedsim list` prints
them), the CIFAR ResNet with GroupNorm (parameters only, learns; a cohort as one vmap gives
each client its float64 gradient), LEAF's character LSTM (reads each sequence up to its
padding, as the LSTM equations on the unpadded sequence; a vectorized run equals the
sequential one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.clients.objective import Cohort, Shard
from fedsim.config import ScenarioError
from fedsim.data import DataConfig, load_dataset
from fedsim.models import (
    ModelConfig,
    bind,
    build_model,
    example_parameters,
    flat_params,
    loss_fn,
    predict,
)
from fedsim.results import read_metrics
from fedsim.runtime import launch
from fedsim.runtime.cohorts import cohort_chunk

from .conftest import small_scenario
from .test_runs import fedsim_cli
from .test_vectorized import assert_same, run


def conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k


def resnet_count(depth: int, channels: int, classes: int) -> int:
    """He et al.'s CIFAR ResNet with a GroupNorm (2 numbers a channel) after every
    convolution and 1x1 convolutions on the shortcuts that change shape."""
    n = (depth - 2) // 6
    total = conv(channels, 16, 3) + 2 * 16
    width = 16
    for out in (16, 32, 64):
        for _ in range(n):
            total += conv(width, out, 3) + conv(out, out, 3) + 4 * out
            if width != out:
                total += conv(width, out, 1) + 2 * out
            width = out
    return total + 64 * classes + classes


def lstm_count(sizes: list[int]) -> int:
    return sum(4 * b * (a + b) + 8 * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def test_fedsim_list_prints_each_models_parameter_count():
    listed = {}
    out = fedsim_cli("list").stdout
    section = out[out.index("models:") : out.index("datasets:")]
    for line in section.splitlines()[1:]:
        name, count = line.split()[:2]
        listed[name] = int(count.replace(",", ""))
    assert listed["resnet"] == resnet_count(20, 3, 10) == 272_474  # ResNet-20, CIFAR-10
    assert listed["char_lstm"] == 80 * 8 + lstm_count([8, 256, 256]) + 257 * 80  # LEAF's
    assert listed["fedavg_cnn"] == 1_690_046  # McMahan et al.'s figure for FEMNIST
    assert listed["text_bow"] == 16384 * 64 + 65
    assert set(listed) == {"char_lstm", "cnn", "fedavg_cnn", "logreg", "mlp", "resnet", "text_bow"}
    assert all(count == example_parameters(name)[0] for name, count in listed.items())


@pytest.mark.parametrize("depth,shape", [(8, (1, 28, 28)), (14, (3, 32, 32)), (20, (3, 32, 32))])
def test_the_resnet_is_parameters_only_with_he_et_al_s_shape(depth, shape):
    model = build_model(ModelConfig(name="resnet", depth=depth), int(np.prod(shape)), 10, seed=0)
    assert sum(p.numel() for p in model.parameters()) == resnet_count(depth, shape[0], 10)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == depth - 1 + 2  # + shortcuts
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert model(torch.zeros(3, int(np.prod(shape)))).shape == (3, 10)


def test_the_resnet_learns_digits():
    ds = load_dataset(DataConfig(), 0)
    x, y = torch.from_numpy(ds.x_train[:256]), torch.from_numpy(ds.y_train[:256])
    model = build_model(ModelConfig(name="resnet", depth=8), 64, 10, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        opt.zero_grad()
        loss_fn(10)(model(x), y).backward()
        opt.step()
    assert (predict(model(x)) == y).float().mean() > 0.95


LOGREG = {"dataset": "logreg", "partitioner": "natural", "num_clients": 3, "options": {"dim": 10}}


def test_resnet_depth_and_input_are_checked_at_load():
    with pytest.raises(ScenarioError, match=r"scenario.model.depth: .*21 is not 6n\+2"):
        small_scenario(model={"name": "resnet", "depth": 21})
    with pytest.raises(ScenarioError, match="'resnet' needs images"):
        small_scenario(data=LOGREG, model={"name": "resnet"})


def lstm_by_hand(lstm: nn.LSTM, seq: torch.Tensor) -> torch.Tensor:
    """The LSTM equations step by step (PyTorch's gate order i, f, g, o)."""
    h = c = torch.zeros(lstm.hidden_size)
    outs = []
    for x_t in seq:
        gates = lstm.weight_ih_l0 @ x_t + lstm.bias_ih_l0 + lstm.weight_hh_l0 @ h + lstm.bias_hh_l0
        i, f, g, o = gates.chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs)


def test_the_char_lstm_reads_each_sequence_up_to_its_padding():
    cfg = ModelConfig(name="char_lstm", embedding=6, hidden=[10, 7], buckets=30)
    model = build_model(cfg, 12, 5, seed=1)
    gen = torch.Generator().manual_seed(1)
    lengths = [12, 5, 1, 9]
    x = torch.zeros(4, 12, dtype=torch.int64)
    for row, n in enumerate(lengths):
        x[row, :n] = torch.randint(1, 30, (n,), generator=gen)
    x[1, 2] = 0  # a padding id inside the text is read like any id before the last
    x[3, 4] = 45  # ids beyond the table share its rows (45 mod 30)
    with torch.no_grad():
        batch = model(x)
        for row, n in enumerate(lengths):
            seq = model.embed(x[row, :n] % 30)
            for lstm in model.lstms:
                seq = lstm_by_hand(lstm, seq)
            torch.testing.assert_close(batch[row], model.head(seq[-1]), rtol=1e-5, atol=1e-6)


CHARS = {
    "data": {
        "dataset": "sentences",
        "num_clients": 5,
        "options": {"train_size": 300, "test_size": 60, "length": 10},
    },
    "model": {"name": "char_lstm", "embedding": 8, "hidden": [12], "buckets": 256},
}


def test_a_resnet_cohort_is_one_vmap_with_each_clients_own_gradient():
    # against each client alone through autograd in float64; a run-level comparison is no
    # test here: on digits, GroupNorm over the last stage's 2x2 maps can be so ill-conditioned
    # that 6e-8 in x moves a gradient by 1e-3 (measured in float64), and float32 runs part
    cfg = ModelConfig(name="resnet", depth=8)
    model = build_model(cfg, 64, 10, seed=0)
    model.flat_buffer, model.private = flat_params(model), None
    ds = load_dataset(DataConfig(), 0)
    sizes, start = (40, 17, 64, 9), np.cumsum([0, 40, 17, 64])
    shards = [
        Shard(torch.from_numpy(ds.x_train[a : a + n]), torch.from_numpy(ds.y_train[a : a + n]), 0.0)
        for a, n in zip(start, sizes, strict=True)
    ]
    cohort = Cohort(model, shards, 10, vectorize=True)
    assert cohort.vmap
    x = model.flat_buffer + 0.01 * torch.randn(len(shards), model.flat_buffer.numel())
    cohort.bind(x)
    gens = [torch.Generator().manual_seed(c) for c in range(len(shards))]
    (batch,) = cohort.batches(16, 1, gens)
    loss, g = cohort.loss_grad(batch)
    for c, s in enumerate(shards):
        alone = build_model(cfg, 64, 10, seed=0).double()
        params = bind(alone, x[c].double().clone())
        rows = slice(None) if batch.rows[c] is None else batch.rows[c]
        ref = loss_fn(10)(alone(s.inputs[rows].double()), s.targets[rows])
        ref_g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(ref, params)])
        assert float(loss[c]) == pytest.approx(float(ref.detach()), rel=1e-5)
        torch.testing.assert_close(g[c].double(), ref_g, rtol=1e-4, atol=1e-6)


def test_a_char_lstm_cohort_runs_side_by_side_with_the_sequential_result(tmp_path):
    # vmap has no rule for torch's fused LSTM (it would loop client by client): the cohort
    # takes the worker threads, as a large model does
    over = CHARS | {"algorithm": {"name": "fedavg", "batch_size": 16, "fraction": 0.7}}
    assert cohort_chunk(small_scenario(**over)) <= 2 * torch.get_num_threads()
    seq = run(tmp_path, "seq", execution="sequential", **over)
    vec = run(tmp_path, "vec", execution="vectorized", **over)
    assert np.isfinite(seq[0][-1]["eval_loss"]) and seq[0][-1]["round"] == 4
    assert_same(seq, vec, "char_lstm")


def test_the_resnet_trains_under_dp_sgd(tmp_path):
    # DP-SGD clips its convolutions and GroupNorms (tests/test_privacy.py holds the clipping
    # to a per-example loop and to Opacus); here a private run of it goes through
    privacy = {"mechanism": "dp_sgd", "noise_multiplier": 0.5, "max_grad_norm": 1.0}
    s = small_scenario(rounds=2, model={"name": "resnet", "depth": 8}, privacy=privacy)
    launch(s, tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) for r in rows)
    assert 0 < rows[0]["epsilon"] < rows[1]["epsilon"]
