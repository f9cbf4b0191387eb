"""The run directory's way back from a deployment: framed lines in the run's log."""

from __future__ import annotations

import io

import numpy as np
import pytest

from fedsim.runtime.outputs import MARK, Receiver, emit


def run_dir(tmp_path):
    d = tmp_path / "server"
    (d / "checkpoints").mkdir(parents=True)
    np.save(d / "final_model.npy", np.random.default_rng(0).normal(size=70_000))  # > 1 line
    (d / "metrics.jsonl").write_text('{"round": 1}\n')
    (d / "checkpoints" / "round-1.npz").write_bytes(b"\x00\x01" * 1000)
    return d


def lines_of(d) -> list[str]:
    buf = io.StringIO()
    emit(d, buf.write)
    return buf.getvalue().splitlines(keepends=True)


def test_a_run_directory_comes_back_byte_for_byte_among_other_log_lines(tmp_path):
    src = run_dir(tmp_path)
    log = ["INFO round 1\n", *lines_of(src), "INFO done\n"]
    assert sum(line.startswith(MARK) for line in log) > 3  # begin, several chunks, end
    got = Receiver()
    shown = [line for line in log if not got.feed(line)]
    assert shown == ["INFO round 1\n", "INFO done\n"]
    out = tmp_path / "local"
    written = got.write_to(out)
    assert sorted(written) == ["checkpoints/round-1.npz", "final_model.npy", "metrics.jsonl"]
    for rel in written:
        assert (out / rel).read_bytes() == (src / rel).read_bytes()
    assert got.write_to(out) == []  # the same files again: nothing rewritten
    assert not [p for p in out.iterdir() if p.name.startswith(".incoming")]


@pytest.mark.parametrize("damage", ["drop a chunk", "flip a byte", "no end"])
def test_an_incomplete_or_corrupted_archive_is_an_error_and_writes_nothing(tmp_path, damage):
    lines = lines_of(run_dir(tmp_path))
    if damage == "drop a chunk":
        del lines[2]
    elif damage == "flip a byte":
        body = lines[1][len(MARK) + 1 :]
        lines[1] = f"{MARK} {'A' if body[0] != 'A' else 'B'}{body[1:]}"
    else:
        lines = lines[:-1]
    got = Receiver()
    for line in lines:
        got.feed(line)
    out = tmp_path / "local"
    with pytest.raises(ValueError, match="incomplete|corrupted"):
        got.write_to(out)
    assert not out.exists()
