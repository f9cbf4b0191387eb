"""The commands a manual page shows, read from the page itself: ```bash blocks run as shell
commands, ```console blocks are transcripts (`$ command`, then its exact output), and
```toml title="NAME" blocks are the files the commands use."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


@dataclass
class Page:
    files: dict[str, str] = field(default_factory=dict)  # file name -> content
    steps: list[tuple[str, str | None]] = field(default_factory=list)  # (command, output)


def commands(script: str) -> list[str]:
    """A bash block's commands: continuation lines joined, comments and blanks dropped."""
    out, pending = [], ""
    for line in script.splitlines():
        line = pending + line
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line.strip())
    return out


def read_page(path: Path, section: str | None = None) -> Page:
    """The page's files and commands; only those under the heading `section` if given."""
    text = path.read_text()
    if section:
        text = text.split(f"\n## {section}\n")[1].split("\n## ")[0]
    page = Page()
    for lang, info, body in BLOCK.findall(text):
        title = re.search(r'title="([^"]+)"', info)
        if title:
            page.files[title.group(1)] = body
        elif lang == "bash":
            page.steps += [(c, None) for c in commands(body)]
        elif lang == "console":
            for chunk in re.split(r"^\$ ", body, flags=re.M)[1:]:
                command, _, output = chunk.partition("\n")
                page.steps.append((command.strip(), output.rstrip("\n")))
    return page
