"""Print pip constraints pinning every direct dependency in pyproject.toml at its lower bound
(`make test-lowest`): the oldest end of the supported ranges, installed and tested on purpose."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml").read_text())
extras = project["project"]["optional-dependencies"]
deps = project["project"]["dependencies"] + [
    d for name in ("dev", "tensorboard", "mlflow") for d in extras[name]
]
for dep in deps:
    match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?.*>=\s*([^,;\s]+)", dep)
    if match is None:
        sys.exit(f"{dep!r} has no lower bound: give it one")
    print(f"{match[1]}=={match[3]}")
