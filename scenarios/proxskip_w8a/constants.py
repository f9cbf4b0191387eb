"""L, lambda, kappa and gamma of the w8a problem of base.toml, and fedsim's own x0 and x*.

    .venv/bin/python scenarios/proxskip_w8a/constants.py [--partitioner shards]

Run from the repository root (base.toml reads ../shared/data/libsvm/w8a.gz). The clients
are exactly those of a fedsim run of base.toml: the scenario is loaded with fedsim's
`load_scenario` and the data split with its `load_dataset` and `partition_indices`.
Client i's loss is f_i(x) = (1/m_i) sum_j log(1 + exp(-b_j a_j^T x)) + (lambda/2)||x||^2
(no bias, b_j = +-1), so L_i = s_i + lambda with s_i = lambda_max(A_i^T A_i) / (4 m_i).
lambda is set as fedsim's logreg dataset sets it: lambda = max_i s_i / (kappa - 1), so that
L_max / lambda = kappa exactly; gamma = 1 / L_max (ProxSkip's theory: L = max_i L_i).
The script also prints fedsim's own L_i (`client_constants`, what client_lr = "1/L"
resolves to) to check the pinned data.l2 and client_lr of base.toml.
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.config import Scenario, load_scenario
from fedsim.data import load_dataset, partition_indices
from fedsim.models import build_model, flat_params
from fedsim.problems import client_constants, known_optimum

HERE = Path(__file__).resolve().parent
KAPPA = 1e4


@dataclass(frozen=True)
class Problem:
    """The clients' rows (float64, times the +-1 labels), lambda, x0 and x* of a scenario."""

    scenario: Scenario
    rows: list[np.ndarray]  # client i: m_i x d, row j = b_j a_j
    lam: float
    smooth: np.ndarray  # s_i = lambda_max(A_i^T A_i) / (4 m_i)
    x0: np.ndarray
    x_star: np.ndarray

    @property
    def L(self) -> np.ndarray:  # noqa: N802
        return self.smooth + self.lam

    @property
    def gamma(self) -> float:
        return float(1.0 / self.L.max())


def scenario(partitioner: str | None = None, l2: float | None = None) -> Scenario:
    """base.toml, with the partitioner and data.l2 overridden if given."""
    raw = tomllib.loads((HERE / "base.toml").read_text())
    if partitioner is not None:
        raw["data"]["partitioner"] = partitioner
    if l2 is not None:
        raw["data"]["l2"] = l2
    return load_scenario(raw)


def problem(seed: int = 0, partitioner: str | None = None, kappa: float = KAPPA) -> Problem:
    """lambda for `kappa` on this split, then x* from fedsim's Newton solver at that lambda."""
    sc = scenario(partitioner).model_copy(update={"seed": seed})
    ds = load_dataset(sc.data, seed)
    parts = partition_indices(sc.data, seed)
    signs = 2.0 * ds.y_train - 1.0
    rows = [ds.x_train[idx].astype(np.float64) * signs[idx, None] for idx in parts]
    smooth = np.array([np.linalg.eigvalsh(r.T @ r)[-1] / (4 * len(r)) for r in rows])
    lam = float(smooth.max() / (kappa - 1))
    sc = sc.model_copy(update={"data": sc.data.model_copy(update={"l2": lam})})
    x_star = known_optimum(sc)  # what fedsim's rel_dist_to_opt measures against
    x0 = flat_params(build_model(sc.model, ds.x_train.shape[1], 2, seed)).numpy()
    return Problem(sc, rows, lam, smooth, x0.astype(np.float64), x_star)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--partitioner", help="override base.toml's data.partitioner (e.g. shards)")
    args = ap.parse_args()
    pb = problem(partitioner=args.partitioner)
    full = np.concatenate(pb.rows)
    eig = np.linalg.eigvalsh(full.T @ full / len(full))
    sizes = sorted({len(r) for r in pb.rows})
    print(
        f"partitioner: {pb.scenario.data.partitioner}, clients: {len(pb.rows)}, "
        f"rows per client: {sizes}, features: {full.shape[1]}"
    )
    print("s_i = lambda_max(A_i^T A_i)/(4 m_i):", np.array2string(pb.smooth, precision=4))
    print(f"lambda        = {pb.lam!r}   (data.l2 = max_i s_i / (kappa - 1))")
    print(f"L_max         = {float(pb.L.max())!r}   (min_i L_i = {float(pb.L.min()):.4f})")
    print(f"L, all rows   = {float(eig[-1] / 4 + pb.lam)!r}   (one client holding every row)")
    print(f"kappa         = {float(pb.L.max() / pb.lam)!r}")
    print(f"gamma         = {pb.gamma!r}   (algorithm.client_lr = 1 / L_max)")
    print(f"1/sqrt(kappa) = {float(pb.lam / pb.L.max()) ** 0.5!r}")
    print(
        f"A^T A / m: {(eig < 1e-10).sum()} of {len(eig)} eigenvalues below 1e-10 "
        "(directions whose only curvature is lambda)"
    )
    dist0 = float(np.sum((pb.x0 - pb.x_star) ** 2))
    print(f"||x0 - x*||^2 = {dist0!r}, ||x*||^2 = {float(pb.x_star @ pb.x_star)!r}")
    fedsim_l, _ = client_constants(pb.scenario)
    print(
        f"fedsim's client_constants: L_max = {float(max(fedsim_l))!r} (client_lr '1/L' = "
        f"{float(1 / max(fedsim_l))!r})"
    )
    ds = load_dataset(pb.scenario.data, pb.scenario.seed)
    positives = [
        int(ds.y_train[idx].sum()) for idx in partition_indices(pb.scenario.data, pb.scenario.seed)
    ]
    print(f"positive labels per client: {positives}")
    pinned = scenario()
    if args.partitioner in (None, pinned.data.partitioner):
        print(
            f"base.toml pins data.l2 = {pinned.data.l2!r}, "
            f"client_lr = {pinned.algorithm.client_lr!r}"
        )


if __name__ == "__main__":
    main()
