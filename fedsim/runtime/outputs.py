"""A deployment's run directory back on the machine that submitted the run, through Flower's
own run log: at the end of the run the ServerApp prints the directory as a checksummed tar
archive in framed lines (`emit`); on the submitting side `Receiver` reads the output of
`flwr run --stream` line by line, keeps those lines out of the terminal and writes the files.

Flower 1.42 (open source) has no other channel from a ServerApp to the submitter: `flwr pull`
needs the enterprise artifact provider.
"""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import tempfile
from pathlib import Path

MARK = "fedsim-run-directory"
CHUNK = 48_000  # archive bytes per line: 64,000 base64 characters


def archive(run_dir: Path | str) -> bytes:
    """The run directory's files as a gzip'd tar, paths relative to the directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(Path(run_dir).rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(run_dir)))
    return buf.getvalue()


def emit(run_dir: Path | str, write=None) -> None:
    """Print the run directory as framed lines, each in one write (a log line from another
    thread cannot land inside one). `sys.stdout.write` is looked up now: Flower's ServerApp
    process replaces it to copy the output into the run's log."""
    write = write or sys.stdout.write
    data = archive(run_dir)
    write(f"{MARK} begin {len(data)} {hashlib.sha256(data).hexdigest()}\n")
    for i in range(0, len(data), CHUNK):
        write(f"{MARK} {base64.b64encode(data[i : i + CHUNK]).decode()}\n")
    write(f"{MARK} end\n")
    sys.stdout.flush()


class Receiver:
    """Collects the framed lines of one run's output; `feed` says which lines were its."""

    def __init__(self) -> None:
        self.size, self.digest = -1, ""
        self.parts: list[bytes] = []
        self.ended = False

    def feed(self, line: str) -> bool:
        if not line.startswith(MARK):
            return False
        body = line[len(MARK) :].strip()
        if body.startswith("begin "):
            _, size, digest = body.split()
            self.size, self.digest, self.parts, self.ended = int(size), digest, [], False
        elif body == "end":
            self.ended = True
        else:
            self.parts.append(base64.b64decode(body))
        return True

    def data(self) -> bytes:
        """The archive, checked against its size and sha256; ValueError if it is not whole."""
        data = b"".join(self.parts)
        if not self.ended or len(data) != self.size:
            raise ValueError(
                f"the run directory came back incomplete ({len(data)} of {self.size} bytes)"
            )
        if hashlib.sha256(data).hexdigest() != self.digest:
            raise ValueError("the run directory came back corrupted (sha256 mismatch)")
        return data

    def write_to(self, out_dir: Path | str) -> list[str]:
        """Write the received files under `out_dir` (each replaced whole, only if it differs:
        on the SuperLink's own machine the ServerApp wrote the same directory); returns the
        paths written."""
        data, out = self.data(), Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        with tempfile.TemporaryDirectory(dir=out, prefix=".incoming-") as tmp:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                tar.extractall(tmp, filter="data")  # no absolute paths, no `..`, no links out
            for src in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
                rel = src.relative_to(tmp)
                dst = out / rel
                if dst.is_file() and dst.read_bytes() == src.read_bytes():
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                src.replace(dst)  # the same filesystem (tmp is inside out): atomic
                written.append(str(rel))
        return written
