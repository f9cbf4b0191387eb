"""Watching a run from the process that launched it: metrics.jsonl is tailed while the
run writes it, and each new round goes to the progress bar and the trackers.

The run directory is the contract between a run and whoever watches it, so the same code
serves every runtime: in-process and Ray runs write it here as rounds complete, a
deployment's comes back when the run ends (then every round arrives at once).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fedsim.results import METRICS

Row = dict[str, Any]


class Follow(threading.Thread):
    """Calls `on_row` for every complete row of RUN_DIR/metrics.jsonl after round `after`,
    in round order, until `stop()` (which reads what is left first)."""

    def __init__(
        self, run_dir: Path, on_row: Callable[[Row], None], after: int = 0, every_s: float = 0.2
    ) -> None:
        super().__init__(daemon=True, name="fedsim-follow")
        self.file, self.on_row, self.last, self.every_s = run_dir / METRICS, on_row, after, every_s
        self.offset, self.inode = 0, None
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            try:
                self.poll()
            except BaseException as e:  # a tracker that fails is reported by stop()
                self.error = e
                return

    def stop(self) -> None:
        self.done.set()
        self.join()
        if self.error is not None:
            raise self.error
        self.poll()

    def poll(self) -> None:
        try:
            stat = self.file.stat()
        except FileNotFoundError:
            return
        if stat.st_ino != self.inode or stat.st_size < self.offset:  # replaced or rewritten
            self.inode, self.offset = stat.st_ino, 0
        with open(self.file, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a torn last line waits for its end
        try:
            rows = [json.loads(line) for line in complete.splitlines()]
        except json.JSONDecodeError:  # rewritten in place under us: read it whole next time
            self.offset = 0
            return
        self.offset += len(complete)
        for row in rows:
            if row["round"] > self.last:
                self.last = row["round"]
                self.on_row(row)


class RunBar:
    """`fedsim run`'s bar: rounds done, the latest loss and accuracy, an ETA."""

    def __init__(self, name: str, rounds: int, done: int, quiet: bool | None) -> None:
        # quiet=None: shown when stderr is a terminal
        self.bar = tqdm(total=rounds, initial=done, desc=name, unit="round", disable=quiet)

    def __call__(self, row: Row) -> None:
        self.bar.update(row["round"] - self.bar.n)
        shown = {"loss": row.get("train_loss"), "acc": row.get("eval_accuracy")}
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items() if v is not None})

    def close(self) -> None:
        self.bar.close()


class SweepBar:
    """`fedsim sweep`'s bar: runs done out of all, and the runs now running."""

    def __init__(self, name: str, total: int, done: int, quiet: bool | None) -> None:
        self.bar = tqdm(total=total, initial=done, desc=name, unit="run", disable=quiet)

    def running(self, labels: list[str]) -> None:
        self.bar.set_postfix_str("; ".join(labels))

    def finished(self, label: str, error: str | None) -> None:
        if error:
            self.bar.write(f"failed: {label}: {error}")
        self.bar.update()

    def close(self) -> None:
        self.bar.close()
