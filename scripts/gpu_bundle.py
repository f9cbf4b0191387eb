"""The GPU bundle (docs/gpu.md): cp312 manylinux wheels of every package fedsim needs that the
lent GPU machine's image lacks (requirements/gpu_image.txt), at requirements/lock.txt's
versions, and fedsim's own wheel; that machine reaches no registry and a call carries 64 MiB.

    python scripts/gpu_bundle.py build DIR   # download and build into DIR, then `check`
    python scripts/gpu_bundle.py check DIR   # tags, versions, requirements, install, size
    python scripts/gpu_bundle.py image       # the image's share of fedsim's needs (rehearsal)
    python scripts/gpu_bundle.py verify DIR  # where it is installed: versions, unmet needs

`build`, `check` and `image` read fedsim's dependency graph from this interpreter's installed
packages (the project's venv, built from the lock).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
CARRY_LIMIT = 64 * 2**20  # what one device call carries: working tree and wheels together
PLATFORMS = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"] + [
    f"manylinux_2_{n}_x86_64"
    for n in range(5, 40)  # the image's glibc is 2.39 (Ubuntu 24.04)
]
TARGET = default_environment() | {  # the image's interpreter, for environment markers
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
LEFT_OUT = {  # needed by some path of fedsim, not by the GPU tier or the benchmarks
    "ray": "Flower's Simulation Engine (flwr[simulation]): its cp312 wheel alone is 74 MB, over"
    " a call's 64 MiB, so the tier's num_gpus test skips there",
    "uv": "a program Flower's deployment engine runs to install a Flower App's dependencies;"
    " nothing imports it (17 MB)",
}
PIP_TARGET = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
PIP_TARGET += [arg for p in PLATFORMS for arg in ("--platform", p)]


def image() -> dict[str, str | None]:
    """The image's packages: name -> version where it is known, else None."""
    out = {}
    for line in (REPO / "requirements/gpu_image.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            out[canonicalize_name(name)] = version or None
    return out


def locked() -> dict[str, str]:
    """requirements/lock.txt's pins (local version labels such as +cpu dropped)."""
    pins = re.findall(
        r"^([A-Za-z0-9_.-]+)==([^\s+]+)", (REPO / "requirements/lock.txt").read_text(), re.M
    )
    return {canonicalize_name(n): v for n, v in pins}


def wanted(req: Requirement, extras: set[str]) -> bool:
    """Whether a requirement applies on the image's interpreter with these extras asked for."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate(TARGET | {"extra": e}) for e in extras | {""})


def needs() -> tuple[list[str], list[str]]:
    """(bundled, from the image): the packages fedsim's dependency graph reaches, walked through
    the installed metadata, stopping at the image's packages and at LEFT_OUT."""
    have, bundled, from_image = image(), set(), set()
    todo = [(canonicalize_name(PROJECT["name"]), frozenset())]
    done: set[tuple[str, frozenset]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in done or name in LEFT_OUT:
            continue
        done.add((name, extras))
        if name in have:
            from_image.add(name)
            continue
        bundled.add(name)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if wanted(req, set(extras)):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    bundled.discard(canonicalize_name(PROJECT["name"]))
    return sorted(bundled), sorted(from_image)


def build(out: Path) -> None:
    """Download the bundle's wheels at the lock's versions, and build fedsim's."""
    pins = locked()
    names, _ = needs()
    missing = [n for n in names if n not in pins]
    if missing:
        sys.exit(f"not in requirements/lock.txt: {missing}")
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "download", "--no-deps", *PIP_TARGET, "-d", str(out)]
        + [f"{n}=={pins[n]}" for n in names],
        check=True,
    )
    wheel = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)]
    subprocess.run(wheel, check=True)


def check(out: Path) -> None:
    """One cp312 manylinux wheel per needed package at its locked version, every requirement
    met by the bundle or the image (or left out on purpose), an install of all of them with
    --no-index --no-deps into an empty target, and the size a device call carries."""
    wheels = sorted(out.glob("*.whl"))
    ok_tags = set(cpython_tags((3, 12), ["cp312"], PLATFORMS))
    ok_tags |= set(compatible_tags((3, 12), "cp312", PLATFORMS))
    found: dict[str, Version] = {}
    errors = []
    for w in wheels:
        name, version, _, tags = parse_wheel_filename(w.name)
        if name in found:
            errors.append(f"two wheels of {name}: {found[name]} and {version}")
        found[name] = version
        if not tags & ok_tags:
            errors.append(f"{w.name}: not for CPython 3.12 on manylinux x86_64")
    names, _ = needs()
    pins = locked() | {canonicalize_name(PROJECT["name"]): PROJECT["version"]}
    expected = {n: Version(pins[n]) for n in [*names, canonicalize_name(PROJECT["name"])]}
    if found != expected:
        errors.append(f"bundle {found} is not the needed set at the lock's versions {expected}")
    errors += unmet(wheels, found)
    with tempfile.TemporaryDirectory() as target:
        install = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        install += ["--no-index", "--no-deps", "--target", target, *PIP_TARGET]
        if subprocess.run(install + [str(w) for w in wheels]).returncode:
            errors.append("the wheels do not install together (--no-index --no-deps)")
    size, tree = sum(w.stat().st_size for w in wheels), working_tree_bytes()
    for w in wheels:
        print(f"{w.stat().st_size / 2**20:8.2f} MiB  {w.name}")
    print(
        f"bundle: {len(wheels)} wheels, {size / 2**20:.1f} MiB; with the working tree"
        f" ({tree / 2**20:.1f} MiB): {(size + tree) / 2**20:.1f} MiB of a call's 64 MiB"
    )
    print("left out: " + "; ".join(f"{k}: {v}" for k, v in LEFT_OUT.items()))
    if size + tree > CARRY_LIMIT:
        errors.append("the bundle and the working tree exceed the 64 MiB a call carries")
    if errors:
        sys.exit("gpu bundle: " + "\n".join(errors))


def unmet(wheels: list[Path], bundled: dict[str, Version]) -> list[str]:
    """Each wheel's requirements that neither the bundle nor the image (where its version is
    known) meets, LEFT_OUT aside."""
    have, out = image(), []
    for w in wheels:
        for text in wheel_requires(w):
            req = Requirement(text)
            name = canonicalize_name(req.name)
            extras = {"simulation"} if name == "flwr" else set()  # fedsim asks flwr[simulation]
            if not wanted(req, extras) or name in LEFT_OUT:
                continue
            version = str(bundled.get(name) or have.get(name) or "")
            if name not in bundled and name not in have:
                out.append(f"{w.name} needs {req}: neither bundled nor in the image")
            elif version and not req.specifier.contains(version, prereleases=True):
                out.append(f"{w.name} needs {req}: {version} is there")
    return out


def wheel_requires(wheel: Path) -> list[str]:
    """A wheel's Requires-Dist lines."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return re.findall(r"^Requires-Dist: (.+)$", text, re.M)


def working_tree_bytes() -> int:
    """What a device call sends besides carried paths: tracked and not-ignored files."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    paths = [REPO / f.decode() for f in files if f]
    return sum(p.stat().st_size for p in paths if p.is_file())


def verify(site: Path) -> None:
    """Where the bundle is installed (on the device): each bundled package's version and each
    of its requirements that the installed packages do not meet (a warning: the tier tells)."""
    for dist in sorted(metadata.distributions(path=[str(site)]), key=lambda d: d.name.lower()):
        print(f"{dist.name} {dist.version}")
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(req.name) in LEFT_OUT:
                continue
            try:
                version = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                print(f"  WARNING: needs {req}: not installed")
                continue
            if not req.specifier.contains(version, prereleases=True):
                print(f"  WARNING: needs {req}: {version} is installed")


def main() -> None:
    command, *args = sys.argv[1:] or ["help"]
    if command == "build":
        build(Path(args[0]))
        check(Path(args[0]))
    elif command == "check":
        check(Path(args[0]))
    elif command == "image":
        pinned = image()
        print("\n".join(f"{n}=={pinned[n]}" if pinned[n] else n for n in needs()[1]))
    elif command == "verify":
        verify(Path(args[0]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
