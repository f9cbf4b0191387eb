"""Wire bytes: what each codec and method puts on the wire, measured from encoded messages.

A ~115k-parameter MLP on digits (d >= 1e5). For every codec: `count_bytes()` of the
ArrayRecord encoding a d-vector, its ratio to float32, and encode+decode milliseconds per
MB of float32 input (fastest of several repeats). For every method: bytes per client per
round up and down from a real two-round run (the second round: after the first, the sign
methods' clients hold the model and are sent only the compressed step), against FedAvg's
float32. The issue's acceptance keys are `sign_uplink_ratio` (>= 31) and
`sign_downlink_ratio` (>= 15) for signSGD-MV.

    python benchmarks/wire_bytes.py
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from fedsim.codecs import codec, codec_names
from fedsim.config import load_scenario
from fedsim.results import read_metrics
from fedsim.runtime import launch

RESULTS = Path(__file__).parent / "results"
CLIENTS = 5
SPECS = ["fp32", "fp16", "bf16", "sign", "ternary", "scaled_sign", "topk:0.01", "randk:0.01"]
SPECS += ["qsgd:16", "qsgd:256"]
METHODS = {
    "fedavg_fp32": {"name": "fedavg"},
    "fedavg_fp16": {"name": "fedavg", "uplink": "fp16", "downlink": "fp16"},
    "local_sgd_topk1%_ef": {"name": "local_sgd", "uplink": "topk:0.01", "error_feedback": True},
    "local_sgd_randk1%": {"name": "local_sgd", "uplink": "randk:0.01"},
    "local_sgd_qsgd16": {"name": "local_sgd", "uplink": "qsgd:16"},
    "signsgd_mv": {"name": "signsgd_mv"},
    "signum_mv": {"name": "signum_mv"},
    "ef_signsgd": {"name": "ef_signsgd"},
    "ef_signsgd_dense_down": {"name": "ef_signsgd", "server_memory": False},
}


def scenario(algorithm: dict):
    return load_scenario(
        {
            "name": "wire",
            "rounds": 2,
            "data": {"dataset": "digits", "num_clients": CLIENTS},
            "model": {"name": "mlp", "hidden": [1536]},  # 64*1536+1536+1536*10+10 = 115,210
            "algorithm": {"batch_size": 32, **algorithm}
            | ({"local_steps": 1} if algorithm["name"] == "local_sgd" else {}),
        }
    )


def codec_figures(d: int, repeats: int = 7) -> dict[str, dict]:
    x = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    rng = np.random.default_rng(1)
    out = {}
    for spec in SPECS:
        c = codec(spec)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            c.decode(c.encode(x, rng))
            best = min(best, time.perf_counter() - t)
        nbytes = c.encode(x, rng).count_bytes()
        assert nbytes == c.nbytes(d)
        out[spec] = {
            "bytes": nbytes,
            "vs_fp32": codec("fp32").nbytes(d) / nbytes,
            "encode_decode_ms_per_mb": 1e3 * best / (4 * d / 1e6),
        }
    return out


def method_figures() -> tuple[int, dict[str, dict]]:
    out, d = {}, 0
    with tempfile.TemporaryDirectory() as tmp:
        for label, alg in METHODS.items():
            run = Path(tmp) / label
            launch(scenario(alg), run)
            d = int(np.load(run / "final_model.npy").size)
            last = read_metrics(run)[-1]  # round 2
            out[label] = {
                "up_per_client": last["bytes_up"] / last["clients"],
                "down_per_client": last["bytes_down"] / last["invited"],
            }
    base = out["fedavg_fp32"]
    for row in out.values():
        row["up_vs_fp32"] = base["up_per_client"] / row["up_per_client"]
        row["down_vs_fp32"] = base["down_per_client"] / row["down_per_client"]
    return d, out


def main() -> None:
    d, methods = method_figures()
    assert d >= 100_000, d
    codecs = codec_figures(d)
    sign = methods["signsgd_mv"]
    figures = {
        "d": d,
        "sign_uplink_ratio": round(sign["up_vs_fp32"], 3),
        "sign_downlink_ratio": round(sign["down_vs_fp32"], 3),
        "methods": methods,
        "codecs": codecs,
        "machine": platform.machine(),
        "codec_names": codec_names(),
    }
    print(f"d = {d}; bytes per client per round, round 2 (ratio to FedAvg float32)")
    print(f"{'method':24s} {'up':>9s} {'x':>6s} {'down':>9s} {'x':>6s}")
    for label, m in methods.items():
        up, down = m["up_per_client"], m["down_per_client"]
        print(f"{label:24s} {up:9.0f} {m['up_vs_fp32']:6.1f} {down:9.0f} {m['down_vs_fp32']:6.1f}")
    print(f"\n{'codec':12s} {'bytes':>9s} {'x fp32':>7s} {'ms/MB':>7s}")
    for spec, c in codecs.items():
        print(f"{spec:12s} {c['bytes']:9d} {c['vs_fp32']:7.1f} {c['encode_decode_ms_per_mb']:7.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "wire_bytes.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: figures[k] for k in ("d", "sign_uplink_ratio", "sign_downlink_ratio")}))


if __name__ == "__main__":
    main()
