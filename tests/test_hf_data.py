"""The `hf` dataset kind on local artifacts in the schemas of the datasets papers use (nothing
is downloaded): FEMNIST-like images with a writer id (a save_to_disk directory), Shakespeare-
like text with a speaking role (parquet files), CIFAR-like colour images (Dirichlet split),
SST-2 from ../shared/data (TSV); natural partitions give every example to its own writer or
role exactly once (without a test split, part of each client's examples is held out); the
encoded arrays are cached on disk until their source changes; a Hub name that cannot be
reached is exit 2 with one line; the CIFAR-10, FEMNIST and Shakespeare scenarios run on
local copies in their schemas."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from datasets import Dataset as HFDataset
from datasets import DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from fedsim.config import load_scenario
from fedsim.data import DataConfig, client_data, load_dataset, partition_indices
from fedsim.data.text import read_tsv
from fedsim.results import read_metrics, read_summary
from fedsim.runtime import launch

from .conftest import REPO, SHARED


def images(pixels: np.ndarray, mode: str) -> list:
    return [PILImage.fromarray(p.astype(np.uint8), mode=mode) for p in pixels]


def scenario(data: dict, **over):
    raw = {
        "rounds": 1,
        "data": data,
        "model": {"name": "mlp", "hidden": [16]},
        "algorithm": {"name": "fedavg", "batch_size": 8, "client_lr": 0.1},
    }
    return load_scenario(raw | over)


def test_femnist_like_writers_from_a_save_to_disk_directory(tmp_path):
    rng = np.random.default_rng(0)
    writers = [f"f{w:04d}_{w}" for w in range(5)]

    def split(per_writer: int) -> HFDataset:
        rows = [(w, k) for w, _ in enumerate(writers) for k in range(per_writer)]
        pixels = rng.integers(0, 256, size=(len(rows), 28, 28))
        pixels[:, 0, 0] = [w for w, _ in rows]  # the writer, readable back from the features
        return HFDataset.from_dict(
            {
                "image": images(pixels, "L"),
                "writer_id": [writers[w] for w, _ in rows],
                "character": [int(rng.integers(0, 62)) for _ in rows],
            },
            features=Features(
                {"image": Image(), "writer_id": Value("string"), "character": Value("int64")}
            ),
        )

    DatasetDict({"train": split(7), "test": split(2)}).save_to_disk(tmp_path / "femnist")
    options = {
        "name": str(tmp_path / "femnist"),
        "test_split": "test",
        "label_column": "character",
        "client_column": "writer_id",
    }
    data = {"dataset": "hf", "num_clients": 5, "partitioner": "natural", "options": options}
    s = scenario(data)
    ds = load_dataset(s.data, s.seed)
    assert ds.x_train.shape == (35, 784) and ds.meta["image_shape"] == [1, 28, 28]
    assert ds.x_test.shape == (10, 784) and ds.x_train.max() <= 1.0
    parts = partition_indices(s.data, s.seed)
    assert sorted(np.concatenate(parts).tolist()) == list(range(35))  # each example once
    owners = [set(np.rint(ds.x_train[p, 0] * 255).astype(int).tolist()) for p in parts]
    assert all(len(o) == 1 for o in owners) and sorted(o.pop() for o in owners) == [0, 1, 2, 3, 4]
    assert all(len(p) == 7 for p in parts)  # all of a writer's examples with that writer
    three = scenario({**data, "num_clients": 3})  # a seeded sample of the writers
    assert [len(p) for p in partition_indices(three.data, three.seed)] == [7, 7, 7]
    with pytest.raises(ValueError, match="6 is more than the 5 natural clients"):
        scenario({**data, "num_clients": 6})
    # the FedAvg paper's CNN trains on it: a round moves the model and the loss is finite
    cnn = scenario(data, model={"name": "fedavg_cnn"}, rounds=2)
    launch(cnn, tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) for r in rows)
    # conv 1x32x5x5, conv 32x64x5x5, 3136x512, 512xK, with biases (K = 62 on FEMNIST: 1,690,046)
    assert read_summary(tmp_path / "run")["d"] == 1_658_240 + 513 * ds.num_classes


def test_shakespeare_like_roles_from_parquet_files(tmp_path):
    lines = ["to be or not to be", "all the world's a stage", "now is the winter"]
    roles = ["HAMLET", "JAQUES", "GLOUCESTER", "OPHELIA"]

    def table(n: int, name: str) -> None:
        rows = []
        for i in range(n):
            text = lines[i % 3][: 5 + i % 7]
            rows.append({"x": text, "y": lines[i % 3][len(text)], "character_id": roles[i % 4]})
        HFDataset.from_list(rows).to_parquet(tmp_path / "shakespeare" / f"{name}.parquet")

    (tmp_path / "shakespeare").mkdir()
    table(40, "train")
    table(12, "test")
    options = {
        "name": str(tmp_path / "shakespeare"),
        "test_split": "test",
        "input_column": "x",
        "label_column": "y",
        "client_column": "character_id",
        "text": "chars",
        "max_len": 20,
    }
    data = {"dataset": "hf", "num_clients": 4, "partitioner": "natural", "options": options}
    cfg = DataConfig.model_validate(data)
    ds = load_dataset(cfg, 0)
    vocab = ds.meta["vocab"]
    decoded = ["".join(vocab[i] for i in row if i) for row in ds.x_train]
    expected = [lines[i % 3][: 5 + i % 7] for i in range(40)]
    assert decoded == expected and ds.x_train.dtype == np.int64
    assert ds.num_classes == len(ds.meta["labels"]) and set(ds.meta["labels"]) <= set(
        "".join(lines)
    )
    parts = partition_indices(cfg, 0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(40))
    for p in parts:  # one role per client: rows i, i+4, i+8, ...
        assert len({i % 4 for i in p.tolist()}) == 1 and len(p) == 10
    x, y, _ = client_data(cfg, 0, 2)
    assert x.shape == (10, 20) and y.shape == (10,)
    with pytest.raises(ValueError, match=r"cannot read what data.dataset 'hf' holds \(int64"):
        scenario(data)  # an MLP would read ids as numbers: refused at load
    bow = scenario(data, model={"name": "text_bow", "embedding": 8, "hidden": [8]}, rounds=2)
    launch(bow, tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) for r in rows)


def test_cifar_like_colour_images_normalised_and_split_by_dirichlet(tmp_path):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(60, 32, 32, 3))
    train = HFDataset.from_dict(
        {"img": images(pixels[:48], "RGB"), "label": rng.integers(0, 10, 48).tolist()},
        features=Features({"img": Image(), "label": Value("int64")}),
    )
    test = HFDataset.from_dict(
        {"img": images(pixels[48:], "RGB"), "label": list(range(10)) + [0, 1]},
        features=Features({"img": Image(), "label": Value("int64")}),
    )
    DatasetDict({"train": train, "test": test}).save_to_disk(tmp_path / "cifar")
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    options = {"name": str(tmp_path / "cifar"), "input_column": "img", "test_split": "test"}
    data = {"dataset": "hf", "num_clients": 3, "partitioner": "dirichlet", "alpha": 1.0}
    s = scenario({**data, "options": options | {"mean": mean, "std": std}})
    ds = load_dataset(s.data, s.seed)
    assert ds.meta["image_shape"] == [3, 32, 32] and ds.num_classes == 10
    chw = ds.x_train.reshape(48, 3, 32, 32)
    want = (pixels[:48].transpose(0, 3, 1, 2) / 255 - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(
        std, (1, 3, 1, 1)
    )
    np.testing.assert_allclose(chw, want, rtol=1e-5, atol=1e-5)
    parts = partition_indices(s.data, s.seed)
    assert sorted(np.concatenate(parts).tolist()) == list(range(48))
    with pytest.raises(ValueError, match="partitioner 'natural' needs options.client_column"):
        scenario({**data, "partitioner": "natural", "options": options})
    with pytest.raises(ValueError, match="mean: 1 values for 3 channels"):
        scenario({**data, "options": options | {"mean": [0.5], "std": [0.2]}})


def test_sst2_tsv_files_through_the_hf_kind_match_the_tsv_reader():
    sst2 = SHARED / "data" / "sst2"
    options = {"name": str(sst2), "input_column": "sentence", "test_split": "test"}
    data = {"dataset": "hf", "num_clients": 4, "partitioner": "iid"}
    ds = load_dataset(
        DataConfig.model_validate(data | {"options": options | {"max_examples": 2000}}), 0
    )
    sentences, labels = read_tsv(sst2 / "test.tsv", "sentence", "label")
    assert ds.x_test.shape == (872, 64) and ds.num_classes == 2
    np.testing.assert_array_equal(ds.y_test, labels)
    vocab = ds.meta["vocab"]
    for row, text in zip(ds.x_test[:50], sentences[:50], strict=True):
        words = [w for w in text.split() if w in vocab][:64]
        assert [vocab[i] for i in row if i] == words
    assert ds.x_train.shape == (2000, 64)


def test_the_sst2_scenario_runs_from_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # its data path is ../shared/data/sst2, as the README runs it
    s = load_scenario(REPO / "scenarios" / "sst2_fedavg.toml", ["rounds=1"])
    assert s.model.name == "text_bow" and s.data.options["name"] == "../shared/data/sst2"
    launch(s, tmp_path / "run")
    (row,) = read_metrics(tmp_path / "run")
    assert row["clients"] == 10 and 0.4 < row["eval_accuracy"] < 1.0


def writer_images(path, writers: int, per_writer: int) -> None:
    """A FEMNIST-like save_to_disk directory without a test split; pixel (0, 0) holds the
    writer and pixel (0, 1) the example's number within its writer."""
    rows = [(w, k) for w in range(writers) for k in range(per_writer)]
    pixels = np.zeros((len(rows), 28, 28))
    pixels[:, 0, 0], pixels[:, 0, 1] = [w for w, _ in rows], [k for _, k in rows]
    HFDataset.from_dict(
        {
            "image": images(pixels, "L"),
            "writer_id": [f"w{w}" for w, _ in rows],
            "character": [k % 3 for _, k in rows],
        },
        features=Features(
            {"image": Image(), "writer_id": Value("string"), "character": Value("int64")}
        ),
    ).save_to_disk(path)


def test_natural_clients_without_a_test_split_hold_out_part_of_each(tmp_path):
    # LEAF's split: test_fraction of each chosen writer's examples; the other writers' rows
    # are not encoded at all
    writer_images(tmp_path / "femnist", writers=6, per_writer=7)
    options = {"name": str(tmp_path / "femnist"), "label_column": "character"}
    options |= {"client_column": "writer_id"}
    data = {"dataset": "hf", "num_clients": 3, "partitioner": "natural", "test_fraction": 0.3}
    cfg = DataConfig.model_validate(data | {"options": options})
    ds = load_dataset(cfg, 5)
    writer = lambda x: np.rint(x[:, 0] * 255).astype(int)  # noqa: E731
    chosen = set(writer(ds.x_train).tolist())
    assert len(chosen) == 3 and set(writer(ds.x_test).tolist()) == chosen
    assert ds.x_train.shape == (3 * 5, 784) and ds.x_test.shape == (3 * 2, 784)  # round(2.1)
    parts = partition_indices(cfg, 5)
    assert sorted(np.concatenate(parts).tolist()) == list(range(15))
    for p in parts:  # one writer each, its five training examples
        assert len(set(writer(ds.x_train[p]).tolist())) == 1 and len(p) == 5
    seen = {(w, k) for w, k in np.rint(np.vstack([ds.x_train, ds.x_test])[:, :2] * 255)}
    assert len(seen) == 21  # no example in both splits
    one_each = DataConfig.model_validate(data | {"test_fraction": 0.01, "options": options})
    with pytest.raises(ValueError, match="test_fraction: 0.01 of these clients' examples"):
        load_dataset(one_each, 5)


def test_encoded_arrays_are_cached_on_disk_until_their_source_changes(tmp_path, monkeypatch):
    from fedsim.data import hf
    from fedsim.data.cache import cache_dir

    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "cache"))
    writer_images(tmp_path / "femnist", writers=4, per_writer=6)
    options = hf.HFOptions(
        name=str(tmp_path / "femnist"), label_column="character", client_column="writer_id"
    )
    data = {"dataset": "hf", "num_clients": 4, "partitioner": "natural"}
    cfg = DataConfig.model_validate(data | {"options": options.model_dump()})
    built = hf.load(options, cfg, 0)
    entries = lambda: sorted((cache_dir() / "datasets").glob("*.npz"))  # noqa: E731
    (entry,) = entries()  # the natural split's
    # what the arrays do not depend on shares an entry: how label-split clients are drawn
    hf.load(options, cfg.model_copy(update={"partitioner": "iid", "num_clients": 2}), 0)
    hf.load(options, cfg.model_copy(update={"partitioner": "dirichlet", "alpha": 0.3}), 0)
    assert len(entries()) == 2

    def not_again(*_):
        raise AssertionError("encoded again")

    monkeypatch.setattr(hf, "features", not_again)
    again = hf.load(options, cfg, 0)  # from the cache: nothing is encoded
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, name), getattr(built, name))
    assert again.meta == built.meta and again.num_classes == built.num_classes
    for a, b in zip(again.client_splits, built.client_splits, strict=True):
        np.testing.assert_array_equal(a, b)
    # anything the arrays depend on is a new entry: the seed, an option, the split, the data
    for changed in (
        lambda: hf.load(options, cfg, 1),
        lambda: hf.load(options.model_copy(update={"image_scale": 0.5}), cfg, 0),
        lambda: hf.load(options, cfg.model_copy(update={"test_fraction": 0.5}), 0),
    ):
        with pytest.raises(AssertionError, match="encoded again"):
            changed()
    writer_images(tmp_path / "femnist2", writers=4, per_writer=5)
    with pytest.raises(AssertionError, match="encoded again"):
        hf.load(options.model_copy(update={"name": str(tmp_path / "femnist2")}), cfg, 0)
    monkeypatch.undo()
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "cache"))
    entry.write_bytes(b"half an entry")  # unreadable: rebuilt, and written whole again
    np.testing.assert_array_equal(hf.load(options, cfg, 0).x_train, built.x_train)
    assert entry in entries() and entry.stat().st_size > 1000
    assert not list((cache_dir() / "datasets").glob("*.tmp"))
    # a data file rewritten in place has a new fingerprint
    (tmp_path / "text").mkdir()
    rows = lambda word: {"sentence": ["a b", f"c {word}"] * 5, "label": [0, 1] * 5}  # noqa: E731
    HFDataset.from_dict(rows("d")).to_parquet(tmp_path / "text" / "train.parquet")
    text = hf.HFOptions(name=str(tmp_path / "text"), input_column="sentence")
    iid = DataConfig.model_validate(
        {"dataset": "hf", "num_clients": 2, "options": text.model_dump()}
    )
    before = hf.load(text, iid, 0)
    HFDataset.from_dict(rows("e")).to_parquet(tmp_path / "text" / "train.parquet")
    later = os.stat(tmp_path / "text" / "train.parquet").st_mtime + 10
    os.utime(tmp_path / "text" / "train.parquet", (later, later))
    after = hf.load(text, iid, 0)
    assert "d" in before.meta["vocab"] and "e" not in before.meta["vocab"]
    assert "e" in after.meta["vocab"] and "d" not in after.meta["vocab"]


def cifar_images(path) -> None:
    rng = np.random.default_rng(4)
    split = lambda n: HFDataset.from_dict(  # noqa: E731
        {
            "img": images(rng.integers(0, 256, (n, 32, 32, 3)), "RGB"),
            "label": [*range(10)] * (n // 10),
        },
        features=Features({"img": Image(), "label": Value("int64")}),
    )
    DatasetDict({"train": split(40), "test": split(10)}).save_to_disk(path)


def role_lines(path) -> None:
    text = "to be or not to be that is the question whether tis nobler in the mind to suffer " * 3
    rows = [
        {"x": text[i : i + 80], "y": text[i + 80], "character_id": f"ROLE{i % 3}"}
        for i in range(60)
    ]
    path.mkdir()
    HFDataset.from_list(rows).to_parquet(path / "train.parquet")


PAPERS = {  # scenario -> (a local copy in its dataset's schema, the model it trains)
    "cifar10_dirichlet.toml": (cifar_images, "resnet"),
    "femnist_natural.toml": (lambda p: writer_images(p, 3, 10), "fedavg_cnn"),
    "shakespeare_natural.toml": (role_lines, "char_lstm"),
}


@pytest.mark.parametrize("scenario_file", sorted(PAPERS))
def test_the_paper_scenarios_run_on_a_local_copy_and_need_network_for_the_hub(
    tmp_path, scenario_file
):
    path = REPO / "scenarios" / scenario_file
    build, model = PAPERS[scenario_file]
    build(tmp_path / "copy")
    local = [f"data.options.name='{tmp_path / 'copy'}'", "data.num_clients=3", "rounds=1"]
    s = load_scenario(path, [*local, "algorithm.fraction=1.0"])
    assert s.model.name == model
    launch(s, tmp_path / "run")
    (row,) = read_metrics(tmp_path / "run")
    assert row["clients"] == 3 and np.isfinite(row["train_loss"]) and row["eval_accuracy"] >= 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # as shipped: the Hub name, unreachable here
    done = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", str(path), "--out", str(tmp_path / "hub")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    hub_name = tomllib.loads(path.read_text())["data"]["options"]["name"]
    assert line.startswith(f"fedsim: error: scenario.data: name: {hub_name!r} cannot be loaded")
    assert "needs network access; give a local path" in line
    assert not (tmp_path / "hub").exists()
