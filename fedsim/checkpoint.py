"""Checkpoints without pickle: one `.npz` file (loaded with allow_pickle=False) holding every
array and, under one key, a JSON document with the rest. Run directories are shared between
people, and resuming one must never execute code from it. A checkpoint names the scenario
it belongs to; a corrupted or foreign one is a CheckpointError with one line."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsim.codecs import pack, unpack

CHECKPOINT = "checkpoint.npz"
FORMAT = "fedsim-checkpoint/1"
META = "meta.json"  # the array holding the JSON document (utf-8 bytes)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (one line: what and why)."""


def digest(scenario_json: str) -> str:
    return hashlib.sha256(scenario_json.encode()).hexdigest()


def save_checkpoint(
    run_dir: Path | str, scenario_json: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    """Write the checkpoint atomically: a crash leaves the previous one or this one whole."""
    doc = {"format": FORMAT, "scenario": digest(scenario_json), **meta}
    final = Path(run_dir) / CHECKPOINT
    tmp = final.with_name(final.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **{META: np.frombuffer(json.dumps(doc).encode(), np.uint8)}, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)


def load_checkpoint(
    run_dir: Path | str, scenario_json: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """(meta, arrays) of the run's checkpoint, None if it has none."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop(META).tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise CheckpointError(f"resume: {str(path)!r} is not a readable checkpoint ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"resume: {str(path)!r} is not a {FORMAT} checkpoint")
    if meta.get("scenario") != digest(scenario_json):
        raise CheckpointError(
            f"resume: {str(path)!r} belongs to another scenario than the run's config.toml"
        )
    return meta, arrays


def records_to_parts(
    prefix: str, records: RecordDict
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A Context.state as JSON (numbers per record) and arrays under `prefix/record/key`."""
    doc, arrays = {}, {}
    for name, rec in records.items():
        if isinstance(rec, ArrayRecord):
            doc[name] = {"arrays": list(rec)}
            arrays.update({f"{prefix}/{name}/{k}": np.array(unpack(a)) for k, a in rec.items()})
        else:
            doc[name] = {"metrics" if isinstance(rec, MetricRecord) else "config": dict(rec)}
    return doc, arrays


def records_from_parts(prefix: str, doc: dict[str, Any], arrays: dict[str, np.ndarray]):
    """The inverse of records_to_parts."""
    out = RecordDict()
    for name, rec in doc.items():
        if "arrays" in rec:
            out[name] = ArrayRecord(
                {k: pack(arrays[f"{prefix}/{name}/{k}"]) for k in rec["arrays"]}
            )
        elif "metrics" in rec:
            out[name] = MetricRecord(rec["metrics"])
        else:
            out[name] = ConfigRecord(rec["config"])
    return out
