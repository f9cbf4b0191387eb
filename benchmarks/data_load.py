"""Data at size: seconds to load and partition a dataset, cold cache.

An a9a-sized set (32,561 x 123 binary features, 2 classes) split by every label partitioner,
against the old per-row read of each flwr-datasets partition (`np.sort(part.with_format(
"numpy")["idx"])`, one `datasets` __getitem__ per example) run side by side: their ratio.
A 1,000,000 x 20 table (10 classes, 1,000 client ids) through the `arrays` kind (an .npz)
for iid, dirichlet, shards and natural, each with an empty cache (FEDSIM_CACHE in a
temporary directory) and again from the cache, and through the `hf` kind (a CSV: its iid
figure includes `datasets`' CSV parsing, which its natural run then reuses). The issue's
acceptance key is `load_s_1m_examples` (the worst partitioner, arrays, cold) < 5.

    python benchmarks/data_load.py
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.data import DATASETS, DataConfig, partition_indices
from fedsim.data.partition import _partitioner, partition_labels

RESULTS = Path(__file__).parent / "results"
LABEL_SPLITS = {"iid": {}, "dirichlet": {"alpha": 0.5}, "shards": {"shards_per_client": 2}}
CLIENTS = 100


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def old_partition(labels: np.ndarray, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """The old reads: each partition's index column row by row through `datasets`."""
    from datasets import Dataset as HFDataset

    order = np.random.default_rng(seed).permutation(len(labels))
    partitioner = _partitioner(cfg, len(labels), seed)
    partitioner.dataset = HFDataset.from_dict({"label": labels[order], "idx": order})
    parts = [partitioner.load_partition(i) for i in range(cfg.num_clients)]
    return [np.sort(part.with_format("numpy")["idx"]).astype(np.int64) for part in parts]


def a9a_figures() -> dict[str, dict]:
    """New and old partitioning of a9a-sized labels (8 clients, as the issue measured)."""
    labels = (np.random.default_rng(0).random(32_561) < 0.24).astype(np.int64)
    out = {}
    for name, extra in LABEL_SPLITS.items():
        cfg = DataConfig(num_clients=8, partitioner=name, **extra)
        new, old = partition_labels(labels, cfg, 0), old_partition(labels, cfg, 0)
        assert all(np.array_equal(a, b) for a, b in zip(new, old, strict=True))
        new_s = seconds(lambda cfg=cfg: partition_labels(labels, cfg, 0))
        old_s = seconds(lambda cfg=cfg: old_partition(labels, cfg, 0))
        out[name] = {"new_s": new_s, "old_s": old_s, "old_over_new": old_s / new_s}
    return out


def table(n: int, tmp: Path) -> dict[str, Path]:
    """An n x 20 table with labels and client ids, as an .npz and as a CSV."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 20)).astype(np.float32)
    y = rng.integers(0, 10, n)
    clients = rng.integers(0, 1000, n)
    np.savez(tmp / "table.npz", x=x, y=y, clients=clients)
    frame = pd.DataFrame(x, columns=[f"f{j}" for j in range(20)]).assign(label=y, client=clients)
    frame.to_csv(tmp / "table.csv", index=False, float_format="%.6g")
    return {"arrays": tmp / "table.npz", "hf": tmp / "table.csv"}


def config(kind: str, path: Path, partitioner: str) -> DataConfig:
    options = {"path": str(path), "clients_key": "clients"}
    if kind == "hf":
        options = {"name": str(path), "client_column": "client"}
    split = LABEL_SPLITS.get(partitioner, {})
    return DataConfig(
        dataset=kind, num_clients=CLIENTS, partitioner=partitioner, options=options, **split
    )


def cold(cfg: DataConfig, cache: Path) -> float:
    """Load and partition with an empty cache."""
    os.environ["FEDSIM_CACHE"] = str(cache)
    return seconds(lambda: partition_indices(cfg, 0))


def warm(cfg: DataConfig) -> float:
    """Load from the on-disk cache (the in-process one bypassed) and partition."""
    spec = DATASETS.get(cfg.dataset)
    options = spec.options.model_validate(cfg.options)
    return seconds(lambda: partition_labels(spec.load(options, cfg, 0).y_train, cfg, 0))


def million_figures(tmp: Path) -> dict[str, dict]:
    files = table(1_000_000, tmp)
    arrays, csv = {}, {}
    for name in [*LABEL_SPLITS, "natural"]:
        cfg = config("arrays", files["arrays"], name)
        arrays[name] = {"cold_s": cold(cfg, tmp / f"cache-{name}")}
        if name != "natural":
            arrays[name]["warm_s"] = warm(cfg)
    for name in ("iid", "natural"):
        csv[name] = {"cold_s": cold(config("hf", files["hf"], name), tmp / f"csv-{name}")}
    return {"arrays": arrays, "hf_csv": csv}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HF_DATASETS_CACHE"] = str(Path(tmp) / "hf")  # datasets' own CSV cache
        a9a = a9a_figures()
        million = million_figures(Path(tmp))
    figures = {
        "load_s_1m_examples": round(max(m["cold_s"] for m in million["arrays"].values()), 3),
        "a9a_shards_old_over_new": round(a9a["shards"]["old_over_new"], 1),
        "a9a": a9a,
        "million": million,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    print(f"{'a9a-sized, 8 clients':24s} {'new s':>8s} {'old s':>8s} {'old/new':>8s}")
    for name, f in a9a.items():
        print(f"{name:24s} {f['new_s']:8.3f} {f['old_s']:8.3f} {f['old_over_new']:8.1f}")
    print(f"\n1,000,000 x 20, {CLIENTS} clients: load + partition seconds")
    for kind, rows in million.items():
        for name, f in rows.items():
            print(f"{kind:8s} {name:10s} " + "  ".join(f"{k} {v:6.2f}" for k, v in f.items()))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data_load.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: figures[k] for k in ("load_s_1m_examples", "a9a_shards_old_over_new")}))


if __name__ == "__main__":
    main()
