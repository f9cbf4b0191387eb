"""Progress as a user sees it in a terminal: `fedsim run` draws a bar with rounds, the latest
loss and accuracy and an ETA; `-q` draws nothing; the follower delivers every round once."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

from fedsim.cli import main
from fedsim.progress import Follow
from tests.conftest import small_scenario


def in_a_terminal(args: list[str]) -> str:
    """Run a command with stdout and stderr on a pseudo-terminal; return what it drew."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # 160 columns
    proc = subprocess.Popen(args, stdout=child, stderr=child, stdin=subprocess.DEVNULL)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=300) == 0, out.decode(errors="replace")
    os.close(main)
    return out.decode(errors="replace")


def test_run_draws_a_bar_with_loss_accuracy_and_eta(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(small_scenario(rounds=4).to_toml())
    cmd = [sys.executable, "-m", "fedsim", "run", str(path), "--overwrite"]
    shown = in_a_terminal([*cmd, "--out", str(tmp_path / "a")])
    final = json.loads((tmp_path / "a" / "summary.json").read_text())["final"]
    assert re.search(r"small: 100%\|.*\| 4/4 \[\d\d:\d\d<00:00", shown), shown
    assert (
        f"loss={final['train_loss']:.4g}" in shown and f"acc={final['eval_accuracy']:.4g}" in shown
    )
    assert re.search(r"small:\s+\d+%\|.*\| [123]/4 \[", shown)  # drawn while it ran, too


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_quiet_draws_nothing_on_a_terminal(tmp_path, monkeypatch, capsys):
    path = tmp_path / "s.toml"
    path.write_text(small_scenario(rounds=2).to_toml())
    for flag, drawn in (("-q", False), (None, True)):
        terminal = Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        args = ["run", str(path), "--out", str(tmp_path / str(flag)), *([flag] if flag else [])]
        assert main(args) == 0
        assert ("2/2 [" in terminal.getvalue()) == drawn, terminal.getvalue()


def test_the_follower_delivers_each_round_once_across_torn_lines_and_a_rewrite(tmp_path):
    seen = []
    follow = Follow(tmp_path, lambda row: seen.append(row["round"]), after=1)
    metrics = tmp_path / "metrics.jsonl"
    follow.poll()  # no file yet
    metrics.write_text('{"round": 1}\n{"round": 2}\n{"rou')
    follow.poll()
    assert seen == [2]  # round 1 was done before; the torn line waits
    with open(metrics, "a") as f:
        f.write('nd": 3}\n')
    follow.poll()
    assert seen == [2, 3]
    metrics.write_text('{"round": 1}\n')  # a resume rewrote the file: shorter, same rounds
    follow.poll()
    metrics.write_text('{"round": 1}\n{"round": 2}\n{"round": 3}\n{"round": 4}\n')
    follow.poll()
    assert seen == [2, 3, 4]
