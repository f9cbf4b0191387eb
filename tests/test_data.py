"""fedsim.data: datasets, config validation, and partitioning, each against an independent check."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.datasets import load_svmlight_file
from sklearn.linear_model import LogisticRegression

from fedsim.data import (
    DataConfig,
    client_data,
    load_dataset,
    logreg_loss_grad,
    logreg_optimum,
    partition_indices,
    read_libsvm,
)

W8A = Path(__file__).resolve().parents[2] / "shared" / "data" / "libsvm" / "w8a.gz"
SEED = 3


def logreg_config(**options) -> DataConfig:
    return DataConfig(dataset="logreg", partitioner="natural", num_clients=8, options=options)


def synthetic_config(**options) -> DataConfig:
    return DataConfig(dataset="synthetic", partitioner="natural", num_clients=10, options=options)


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "shards"])
def test_partition_assigns_every_example_exactly_once(partitioner):
    cfg = DataConfig(dataset="digits", num_clients=20, partitioner=partitioner)
    parts = partition_indices(cfg, SEED)
    assert len(parts) == 20
    assert all(len(p) > 0 and p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    every = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(every, np.arange(len(load_dataset(cfg, SEED).y_train)))


def test_digits_split_is_stratified_and_scaled():
    ds = load_dataset(DataConfig(test_fraction=0.25), SEED)
    assert len(ds.y_train) + len(ds.y_test) == 1797  # sklearn's digits
    assert ds.x_train.shape[1] == 64 and ds.x_train.dtype == np.float32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert len(ds.y_test) == pytest.approx(0.25 * 1797, abs=1)
    share_train = np.bincount(ds.y_train) / len(ds.y_train)
    share_test = np.bincount(ds.y_test) / len(ds.y_test)
    np.testing.assert_allclose(share_train, share_test, atol=0.01)


def test_iid_partition_has_near_equal_sizes():
    parts = partition_indices(DataConfig(num_clients=20, partitioner="iid"), SEED)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_shards_give_each_client_few_labels():
    # Two label-sorted shards of ~36 rows, each within or across one class boundary
    # (every digit class has > 100 rows): at most 4 labels per client.
    cfg = DataConfig(num_clients=20, partitioner="shards", shards_per_client=2)
    y = load_dataset(cfg, SEED).y_train
    assert max(len(np.unique(y[p])) for p in partition_indices(cfg, SEED)) <= 4


def test_dirichlet_label_skew_grows_as_alpha_shrinks():
    def mean_tv(alpha: float) -> float:
        cfg = DataConfig(num_clients=20, partitioner="dirichlet", alpha=alpha)
        y = load_dataset(cfg, SEED).y_train
        overall = np.bincount(y, minlength=10) / len(y)
        return np.mean(
            [
                0.5 * np.abs(np.bincount(y[p], minlength=10) / len(p) - overall).sum()
                for p in partition_indices(cfg, SEED)
            ]
        )

    skew = [mean_tv(alpha) for alpha in (100.0, 1.0, 0.1)]
    assert skew[0] < skew[1] < skew[2]


def test_too_many_clients_is_a_clear_error():
    with pytest.raises(ValueError, match="2000 clients"):
        partition_indices(DataConfig(num_clients=2000, partitioner="shards"), SEED)


def independent_kappas(cfg: DataConfig) -> np.ndarray:
    """L_i / mu_i recomputed from the raw rows and client_l2."""
    ds = load_dataset(cfg, SEED)
    kappas = []
    for idx, l2 in zip(ds.client_splits, ds.client_l2, strict=True):
        a = ds.x_train[idx].astype(np.float64)
        smooth = np.linalg.eigvalsh(a.T @ a).max() / (4 * len(idx))
        kappas.append((smooth + l2) / l2)
    return np.array(kappas)


def test_logreg_clients_have_the_requested_condition_number():
    cfg = logreg_config(kappa=50.0)
    np.testing.assert_allclose(independent_kappas(cfg), 50.0, rtol=1e-9)
    ds = load_dataset(cfg, SEED)
    assert ds.num_classes == 2 and set(np.unique(ds.y_train)) == {0, 1}
    assert all(len(idx) == 100 for idx in ds.client_splits)


def test_logreg_kappa_list_sets_each_client():
    kappas = [2.0, 5.0, 10.0, 30.0, 100.0, 300.0, 1e3, 1e4]
    np.testing.assert_allclose(independent_kappas(logreg_config(kappa=kappas)), kappas, rtol=1e-9)


def test_logreg_common_mu_sets_kappa_through_smoothness():
    kappas = [1e4, 2.0, 5.0, 20.0]
    cfg = DataConfig(
        dataset="logreg",
        partitioner="natural",
        num_clients=4,
        options={"common_mu": True, "kappa": kappas, "dim": 6, "samples_per_client": 40},
    )
    ds = load_dataset(cfg, SEED)
    assert len(set(ds.client_l2.tolist())) == 1  # one mu for everyone
    mu = float(ds.client_l2[0])
    for idx, k in zip(ds.client_splits, kappas, strict=True):
        a = ds.x_train[idx].astype(np.float64)
        smooth = np.linalg.eigvalsh(a.T @ a)[-1] / (4 * len(idx))
        assert (smooth + mu) / mu == pytest.approx(k, rel=1e-5)  # L_i = kappa_i mu


def test_logreg_optimum_matches_lbfgs():
    ds = load_dataset(logreg_config(kappa=20.0, dim=10), SEED)
    x_star = logreg_optimum(ds)
    assert np.linalg.norm(logreg_loss_grad(ds, x_star)[1]) <= 1e-10

    # Same objective written over the pooled rows (every client holds 100 of them).
    a = ds.x_train.astype(np.float64) * (2.0 * ds.y_train - 1.0)[:, None]
    l2 = ds.client_l2.mean()

    def objective(x):
        margin = a @ x
        loss = np.logaddexp(0, -margin).mean() + 0.5 * l2 * x @ x
        return loss, -a.T @ expit(-margin) / len(a) + l2 * x

    result = minimize(
        objective,
        np.zeros(a.shape[1]),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-13, "ftol": 0.0, "maxiter": 10_000},
    )
    np.testing.assert_allclose(x_star, result.x, atol=1e-6)
    assert logreg_loss_grad(ds, x_star)[0] == pytest.approx(objective(x_star)[0], rel=1e-12)


def test_client_data_is_the_clients_rows_and_l2():
    cfg = logreg_config(kappa=[2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    ds = load_dataset(cfg, SEED)
    x, y, l2 = client_data(cfg, SEED, 5)
    rows = partition_indices(cfg, SEED)[5]
    np.testing.assert_array_equal(x, ds.x_train[rows])
    np.testing.assert_array_equal(y, ds.y_train[rows])
    assert l2 == ds.client_l2[5] > 0
    assert client_data(DataConfig(), SEED, 0)[2] == 0.0


def synthetic_clients(cfg: DataConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    return [client_data(cfg, SEED, k)[:2] for k in range(cfg.num_clients)]


def test_synthetic_shapes_and_held_out_share():
    cfg = synthetic_config(dim=30, num_classes=5)
    ds, clients = load_dataset(cfg, SEED), synthetic_clients(cfg)
    assert ds.x_test.shape[1] == 30 and ds.num_classes == 5
    for x, y in clients:
        assert x.shape[1] == 30 and x.dtype == np.float32 and y.dtype == np.int64
        assert len(y) >= 0.8 * 50 - 1 and y.max() < 5  # min_samples minus the held-out part
    train = sum(len(y) for _, y in clients)
    assert len(ds.y_test) / (len(ds.y_test) + train) == pytest.approx(0.2, abs=0.02)


def test_synthetic_clients_are_generated_on_demand():
    cfg = DataConfig(
        dataset="synthetic", partitioner="natural", num_clients=10_000, options={"test_clients": 5}
    )
    ds = load_dataset(cfg, SEED)
    assert len(ds.y_train) == 0 and len(ds.y_test) < 5 * 2000  # only 5 clients were made
    x, y, _ = client_data(cfg, SEED, 9_999)
    assert len(x) == len(y) > 0
    np.testing.assert_array_equal(client_data(cfg, SEED, 9_999)[0], x)


def test_synthetic_labels_are_linear_per_client_and_clients_differ():
    clients = synthetic_clients(synthetic_config(max_samples=300))  # small clients: fast fits
    means = [x.mean(axis=0) for x, _ in clients]
    assert min(np.linalg.norm(means[0] - m) for m in means[1:]) > 1.0
    # y = argmax(W_k x + b_k): a near-hard-margin linear classifier fits each client exactly.
    for x, y in clients:
        if len(np.unique(y)) > 1:
            clf = LogisticRegression(C=1e6, max_iter=10_000).fit(x, y)
            assert clf.score(x, y) == 1.0


@pytest.mark.parametrize(
    "cfg",
    [
        DataConfig(partitioner="dirichlet", alpha=0.3),
        logreg_config(),
    ],
    ids=["digits", "logreg"],
)
def test_loading_and_partitioning_are_deterministic(cfg):
    uncached_load, uncached_partition = load_dataset.__wrapped__, partition_indices.__wrapped__
    first, again = uncached_load(cfg, SEED), uncached_load(cfg, SEED)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    for p, q in zip(uncached_partition(cfg, SEED), uncached_partition(cfg, SEED), strict=True):
        np.testing.assert_array_equal(p, q)
    other = uncached_load(cfg, SEED + 1)
    if cfg.dataset == "digits":  # same images, different split and partition
        assert not np.array_equal(first.y_train, other.y_train)
        assert not np.array_equal(partition_indices(cfg, SEED)[0], partition_indices(cfg, 99)[0])
    else:
        assert not np.array_equal(first.x_train, other.x_train)


def test_synthetic_is_deterministic_per_seed():
    cfg = synthetic_config()
    first, again = load_dataset.__wrapped__(cfg, SEED), load_dataset.__wrapped__(cfg, SEED)
    other = load_dataset.__wrapped__(cfg, SEED + 1)
    np.testing.assert_array_equal(first.x_test, again.x_test)
    for k in (0, 7):
        np.testing.assert_array_equal(first.client(k)[0], again.client(k)[0])
        assert not np.array_equal(first.client(k)[0], other.client(k)[0])


def test_read_libsvm_matches_sklearn_on_w8a():
    x, y = read_libsvm(W8A)
    x_ref, y_ref = load_svmlight_file(str(W8A))
    assert x.shape == (49749, 300) and x.dtype == np.float32
    np.testing.assert_array_equal(x, x_ref.toarray().astype(np.float32))
    assert set(y_ref) == {-1.0, 1.0}
    np.testing.assert_array_equal(y, (y_ref == 1.0).astype(np.int64))


SMALL = """# a comment line
3 1:0.5 3:2
-1 2:1.5  # trailing comment

3
7 4:-1e-1 1:1
"""
SMALL_X = [[0.5, 0, 2, 0], [0, 1.5, 0, 0], [0, 0, 0, 0], [1, 0, 0, -0.1]]
SMALL_Y = [1, 0, 1, 2]  # classes -1, 3, 7 in sorted order


@pytest.mark.parametrize("name", ["small.svm", "small.svm.gz"])
def test_read_libsvm_small_file(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(SMALL)
    else:
        path.write_text(SMALL)
    x, y = read_libsvm(path)
    np.testing.assert_array_equal(x, np.array(SMALL_X, dtype=np.float32))
    np.testing.assert_array_equal(y, SMALL_Y)
    assert read_libsvm(path, n_features=6)[0].shape == (4, 6)
    with pytest.raises(ValueError, match="n_features=3"):
        read_libsvm(path, n_features=3)


def test_libsvm_dataset_encodes_train_and_test_labels_together(tmp_path):
    (tmp_path / "train").write_text("5 1:1\n9 2:1\n5 1:2\n")
    (tmp_path / "test").write_text("9 3:1\n")  # wider than train, and only one class
    options = {"path": str(tmp_path / "train"), "test_path": str(tmp_path / "test")}
    ds = load_dataset(DataConfig(dataset="libsvm", num_clients=1, options=options), SEED)
    assert ds.num_classes == 2 and ds.x_train.shape == (3, 3) and ds.x_test.shape == (1, 3)
    np.testing.assert_array_equal(ds.y_train, [0, 1, 0])
    np.testing.assert_array_equal(ds.y_test, [1])


def test_libsvm_dataset_holds_out_test_fraction():
    options = {"path": str(W8A)}
    ds = load_dataset(DataConfig(dataset="libsvm", test_fraction=0.1, options=options), SEED)
    assert len(ds.y_train) + len(ds.y_test) == 49749
    assert len(ds.y_test) == pytest.approx(4975, abs=1)


def test_missing_libsvm_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.svm"
    with pytest.raises(FileNotFoundError, match="nope.svm"):
        read_libsvm(missing)
    cfg = DataConfig(dataset="libsvm", options={"path": str(missing)})
    with pytest.raises(FileNotFoundError, match="nope.svm"):
        load_dataset(cfg, SEED)


@pytest.mark.parametrize(
    ("fields", "offending"),
    [
        ({"dataset": "mnist-on-mars"}, "mnist-on-mars"),
        ({"alpha": -0.25}, "-0.25"),
        ({"alpha": 0}, "alpha"),
        ({"num_clients": 0}, "num_clients"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"options": {"bogus_key": 1}}, "bogus_key"),
        ({"partitioner": "natural"}, "'natural'"),
        ({"dataset": "logreg"}, "'iid'"),
        ({"dataset": "logreg", "partitioner": "natural", "options": {"kappa": 0.5}}, "0.5"),
        (
            {
                "dataset": "logreg",
                "partitioner": "natural",
                "num_clients": 3,
                "options": {"kappa": [2.0, 3.0]},
            },
            "2 kappa values given for 3 clients",
        ),
        ({"dataset": "libsvm"}, "path"),
    ],
)
def test_data_config_rejects(fields, offending):
    with pytest.raises(ValidationError) as err:
        DataConfig(**fields)
    assert offending in str(err.value)


def test_data_config_fills_dataset_option_defaults():
    cfg = DataConfig(dataset="logreg", partitioner="natural", options={"dim": 7})
    assert cfg.options["dim"] == 7 and cfg.options["kappa"] == 100.0
    assert cfg.options["samples_per_client"] == 100
    assert DataConfig().options == {}
