"""Data as it comes: a CSV table through the `hf` kind (every column but the label, or the
`feature_columns` named, optionally standardized on the training rows), NumPy arrays
through the `arrays` kind (.npz or .npy, client ids for a natural split), each checked
against the wine data it was written from; every partitioner on arrays, the same indices
as the old per-row reads of flwr-datasets' partitions, the on-disk cache, and one clear
line for bad inputs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_wine

import fedsim
from fedsim.config import ScenarioError, load_scenario
from fedsim.data import DataConfig, load_dataset, partition_indices
from fedsim.data import arrays as arrays_kind
from fedsim.data.partition import _partitioner, natural_clients, partition_labels

from .conftest import REPO

WINE = load_wine(as_frame=True)
X = WINE.data.to_numpy(np.float32)  # 178 x 13, every row distinct
Y = WINE.target.to_numpy()  # 0, 1, 2
COLUMNS = list(WINE.data.columns)
CLIENTS = np.array([f"c{i % 5}" for i in range(len(X))])  # five natural clients


def source_rows(x: np.ndarray) -> np.ndarray:
    """The wine row each row of `x` is (features as written)."""
    index = {row.tobytes(): i for i, row in enumerate(X)}
    return np.array([index[row.tobytes()] for row in x.astype(np.float32)])


@pytest.fixture
def wine_csv(tmp_path):
    path = tmp_path / "wine.csv"
    WINE.frame.to_csv(path, index=False)  # 13 feature columns and "target"
    return path


@pytest.fixture
def wine_npz(tmp_path):
    path = tmp_path / "wine.npz"
    np.savez(path, x=X, y=Y, clients=CLIENTS)
    return path


def csv_data(path, **options) -> dict:
    opts = {"name": str(path), "label_column": "target"} | options
    return {"dataset": "hf", "num_clients": 4, "partitioner": "dirichlet", "options": opts}


def npz_data(path, partitioner="natural", **options) -> dict:
    opts = {"path": str(path), "clients_key": "clients"} | options
    return {"dataset": "arrays", "num_clients": 5, "partitioner": partitioner, "options": opts}


def run(data: dict, out, model: str = "logreg"):
    raw = {
        "seed": 1,
        "rounds": 2,
        "data": data,
        "model": {"name": model},
        "algorithm": {"name": "fedavg", "batch_size": 16, "client_lr": 0.1},
    }
    return fedsim.run(raw, out=out, quiet=True)


def test_a_wine_csv_trains_on_every_column_but_the_label(tmp_path, wine_csv):
    cfg = DataConfig.model_validate(csv_data(wine_csv))
    ds = load_dataset(cfg, 0)
    assert ds.x_train.shape == (142, 13) and ds.x_test.shape == (36, 13)  # round(178 * 0.2)
    assert ds.num_classes == 3 and ds.meta["labels"] == [0, 1, 2]
    train, test = source_rows(ds.x_train), source_rows(ds.x_test)
    assert sorted([*train, *test]) == list(range(178))  # each row once, features as written
    np.testing.assert_array_equal(ds.y_train, Y[train])
    np.testing.assert_array_equal(ds.y_test, Y[test])
    parts = partition_indices(cfg, 0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(142))
    result = run(csv_data(wine_csv, standardize=True), tmp_path / "run")
    assert len(result.rows) == 2 and all(np.isfinite(r["train_loss"]) for r in result.rows)
    assert result.rows[-1]["eval_accuracy"] > 0.8  # standardized wine is nearly separable


def test_the_csv_and_an_npz_of_the_same_table_give_the_same_dataset(wine_csv, wine_npz):
    # both take the rows to hold out, and label values to numbers, the same way
    hf = load_dataset(DataConfig.model_validate(csv_data(wine_csv)), 3)
    npz = load_dataset(DataConfig.model_validate(npz_data(wine_npz, "iid")), 3)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(hf, name), getattr(npz, name))


@pytest.mark.parametrize("kind", ["hf", "arrays"])
def test_standardize_uses_the_training_rows_only(tmp_path, kind):
    frame = WINE.frame.assign(constant=5.0)  # a constant column: scale 1, not 0
    frame.to_csv(tmp_path / "wine.csv", index=False)
    features = frame.drop(columns="target").to_numpy(np.float32)
    np.savez(tmp_path / "wine.npz", x=features, y=Y)
    source = csv_data(tmp_path / "wine.csv")
    if kind == "arrays":
        source = npz_data(tmp_path / "wine.npz", "dirichlet", clients_key=None)
    raw = load_dataset(DataConfig.model_validate(source), 2)
    scaled_source = source | {"options": source["options"] | {"standardize": True}}
    scaled = load_dataset(DataConfig.model_validate(scaled_source), 2)
    mean, std = raw.x_train.astype(np.float64).mean(0), raw.x_train.astype(np.float64).std(0)
    assert std[-1] == 0
    std[-1] = 1.0
    for split in ("x_train", "x_test"):
        want = (getattr(raw, split) - mean) / std
        np.testing.assert_allclose(getattr(scaled, split), want, rtol=1e-5, atol=1e-5)
    assert abs(scaled.x_test.mean(0)).max() > 1e-3  # the test rows did not set the mean
    np.testing.assert_array_equal(scaled.y_train, raw.y_train)


def test_feature_columns_take_those_columns_in_their_order(wine_csv):
    picked = ["proline", "alcohol", "hue"]
    every = load_dataset(DataConfig.model_validate(csv_data(wine_csv)), 0)
    some = load_dataset(DataConfig.model_validate(csv_data(wine_csv, feature_columns=picked)), 0)
    columns = [COLUMNS.index(c) for c in picked]
    np.testing.assert_array_equal(some.x_train, every.x_train[:, columns])
    np.testing.assert_array_equal(some.x_test, every.x_test[:, columns])
    one = load_dataset(DataConfig.model_validate(csv_data(wine_csv, input_column="hue")), 0)
    np.testing.assert_array_equal(one.x_train, every.x_train[:, [COLUMNS.index("hue")]])


def test_an_npz_with_client_ids_runs_with_a_natural_split(tmp_path, wine_npz):
    cfg = DataConfig.model_validate(npz_data(wine_npz))
    ds = load_dataset(cfg, 0)
    parts = partition_indices(cfg, 0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(ds.x_train)))
    counts = {c: int(np.count_nonzero(np.equal(CLIENTS, c))) for c in set(CLIENTS)}
    for p in parts:  # one id each, all its rows but LEAF's held-out 20%
        (client,) = set(CLIENTS[source_rows(ds.x_train[p])])
        assert len(p) == counts[client] - round(counts[client] * 0.2)
    assert set(CLIENTS[source_rows(ds.x_test)]) == set(CLIENTS)  # every client holds out
    result = run(npz_data(wine_npz, standardize=True), tmp_path / "run", model="mlp")
    assert len(result.rows) == 2 and result.rows[-1]["clients"] == 5


def test_npy_files_of_x_labels_and_client_ids(tmp_path):
    for name, array in {"x": X.reshape(-1, 13, 1), "y": Y.astype(str), "c": CLIENTS}.items():
        np.save(tmp_path / f"{name}.npy", np.asarray(array))
    opts = {"path": str(tmp_path / "x.npy"), "y_path": str(tmp_path / "y.npy")}
    opts["clients_path"] = str(tmp_path / "c.npy")
    data = {"dataset": "arrays", "num_clients": 3, "partitioner": "natural", "options": opts}
    ds = load_dataset(DataConfig.model_validate(data), 0)
    assert ds.x_train.shape[1] == 13 and ds.meta["labels"] == ["0", "1", "2"]
    np.testing.assert_array_equal(ds.y_train, Y[source_rows(ds.x_train)])
    assert len(partition_indices(DataConfig.model_validate(data), 0)) == 3


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "shards", "natural"])
def test_every_partitioner_splits_arrays(wine_npz, partitioner):
    cfg = DataConfig.model_validate(npz_data(wine_npz, partitioner))
    ds = load_dataset(cfg, 0)
    parts = partition_indices(cfg, 0)
    assert len(parts) == 5 and all(len(p) for p in parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(ds.y_train)))


def slow_partition(labels: np.ndarray, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """The old reads: each partition's index column row by row through `datasets`."""
    from datasets import Dataset as HFDataset

    order = np.random.default_rng(seed).permutation(len(labels))
    partitioner = _partitioner(cfg, len(labels), seed)
    partitioner.dataset = HFDataset.from_dict({"label": labels[order], "idx": order})
    parts = [partitioner.load_partition(i) for i in range(cfg.num_clients)]
    return [np.sort(part.with_format("numpy")["idx"]).astype(np.int64) for part in parts]


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "shards"])
def test_partitions_are_the_old_slow_paths(partitioner):
    labels = np.random.default_rng(0).integers(0, 6, 500)
    cfg = DataConfig(num_clients=7, partitioner=partitioner, alpha=0.3, shards_per_client=3)
    for seed in (0, 5):
        fast, slow = partition_labels(labels, cfg, seed), slow_partition(labels, cfg, seed)
        assert [p.tolist() for p in fast] == [p.tolist() for p in slow]


def test_natural_clients_are_natural_id_partitioners_split():
    from datasets import Dataset as HFDataset
    from flwr_datasets.partitioner import NaturalIdPartitioner

    ids = np.random.default_rng(1).choice(["w7", "w1", "a3", "z0", "b2"], 300)
    partitioner = NaturalIdPartitioner(partition_by="client")
    partitioner.dataset = HFDataset.from_dict({"client": ids.tolist(), "idx": np.arange(300)})
    want = [sorted(partitioner.load_partition(p)["idx"]) for p in range(partitioner.num_partitions)]
    assert [p.tolist() for p in natural_clients(ids, 5, 0)] == want
    chosen = np.random.default_rng(4).choice(5, 3, replace=False)
    assert [p.tolist() for p in natural_clients(ids, 3, 4)] == [want[p] for p in sorted(chosen)]


def test_the_cache_returns_the_same_arrays_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "cache"))
    np.savez(tmp_path / "wine.npz", x=X, y=Y, clients=CLIENTS)
    cfg = DataConfig.model_validate(npz_data(tmp_path / "wine.npz"))
    options = arrays_kind.ArraysOptions.model_validate(cfg.options)
    built = arrays_kind.load(options, cfg, 0)

    def not_again(*_, **__):
        raise AssertionError("built again")

    monkeypatch.setattr(arrays_kind, "dataset_from_arrays", not_again)
    again = arrays_kind.load(options, cfg, 0)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, name), getattr(built, name))
    assert again.meta == built.meta and again.num_classes == built.num_classes
    for a, b in zip(again.client_splits, built.client_splits, strict=True):
        np.testing.assert_array_equal(a, b)
    np.savez(tmp_path / "wine.npz", x=X[::-1], y=Y[::-1], clients=CLIENTS)  # new content
    with pytest.raises(AssertionError, match="built again"):
        arrays_kind.load(options, cfg, 0)


def test_a_change_of_l2_alone_reuses_the_loaded_data_and_split(wine_npz):
    cfg = DataConfig.model_validate(npz_data(wine_npz, "shards"))
    other = cfg.model_copy(update={"l2": 0.25})
    assert load_dataset(other, 0) is load_dataset(cfg, 0)
    assert partition_indices(other, 0) is partition_indices(cfg, 0)


def spoiled(x: np.ndarray, cells: list[tuple[int, int]]) -> np.ndarray:
    """`x` with NaN and infinity at `cells`."""
    x = x.copy()
    for k, cell in enumerate(cells):
        x[cell] = [np.nan, np.inf][k % 2]
    return x


def bad_npz(tmp_path, **arrays) -> dict:
    np.savez(tmp_path / "bad.npz", **({"x": X, "y": Y} | arrays))
    return npz_data(tmp_path / "bad.npz", "iid", clients_key=None)


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (
            lambda p, csv: csv_data(csv, input_column="hue", feature_columns=["alcohol"]),
            "input_column and feature_columns exclude each other: give one",
        ),
        (
            lambda p, csv: csv_data(csv, feature_columns=["alcohol", "colour"]),
            "scenario.data: column 'colour' is not in",
        ),
        (
            lambda p, csv: bad_npz(p) | {"partitioner": "natural"},
            "scenario.data: partitioner 'natural' needs options.clients_key (or clients_path)",
        ),
        (
            lambda p, csv: bad_npz(p) | {"options": {"path": str(p / "bad.npz"), "x_key": "X"}},
            "scenario.data: x_key: 'X' is not in",
        ),
        (lambda p, csv: bad_npz(p, y=Y[:170]), "scenario.data: y has 170 rows, x has 178"),
        (
            lambda p, csv: bad_npz(p, x=spoiled(X, [(3, 2), (7, 4)])),
            "scenario.data: x has 2 NaN or infinite values (the first in row 3, feature 2)",
        ),
        (
            lambda p, csv: bad_npz(p, x=X[:, 0]),
            "scenario.data: x must have a row of features per example, not shape (178,)",
        ),
        (
            lambda p, csv: npz_data(p / "wine.npy"),
            "scenario.data.options: bad options for dataset 'arrays'",
        ),
    ],
)
def test_bad_inputs_are_one_clear_line(tmp_path, wine_csv, data, line):
    raw = {"data": data(tmp_path, wine_csv), "model": {"name": "logreg"}}
    with pytest.raises(ScenarioError) as err:
        load_scenario(raw | {"algorithm": {"name": "fedavg"}})
    assert "\n" not in str(err.value)
    assert line in str(err.value), str(err.value)


def test_a_text_column_among_the_features_is_named(tmp_path):
    WINE.frame.assign(grower="x").to_csv(tmp_path / "wine.csv", index=False)
    with pytest.raises(ValueError, match="column 'grower' of .* does not hold numbers"):
        load_dataset(DataConfig.model_validate(csv_data(tmp_path / "wine.csv")), 0)


def test_the_docs_examples_load(tmp_path, monkeypatch):
    # docs/data.md's files, made from the wine data in the directory it runs from
    monkeypatch.chdir(tmp_path)
    WINE.frame.to_csv("wine.csv", index=False)
    Path("wine_parquet").mkdir()
    WINE.frame[:140].to_parquet("wine_parquet/train.parquet")
    WINE.frame[140:].to_parquet("wine_parquet/test.parquet")
    np.savez("wine.npz", x=X, y=Y, clients=CLIENTS)
    np.save("x.npy", X)
    np.save("y.npy", Y)
    text = (REPO / "docs" / "data.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5  # every example in the page
    for block in blocks:
        raw = {"model": {"name": "logreg"}, "algorithm": {"name": "fedavg"}} | tomllib.loads(block)
        s = load_scenario(raw)  # loads and splits the data
        assert len(partition_indices(s.data, s.seed)) == s.data.num_clients
