"""The GPU-cluster path of docs/quickstart.md ("Versions and the lock"), run as a cluster runs it: a fresh
`--system-site-packages` venv whose torch lies outside its own site-packages. Here the venv sees the packages of the
environment running the tests (torch 2.13.0+cpu and the lock) through a .pth file, as a cluster's venv sees its PyTorch
module or image; an older cluster torch is a torch-2.10.0.dist-info on PYTHONPATH, as a `module load` puts it. pip runs
with its configuration and index switched off, so everything it resolves comes from what is installed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from importlib import metadata
from pathlib import Path

import pytest

from conftest import REPO_ROOT

OFFLINE_PIP = ["--no-index", "--no-build-isolation"]  # what the docs' commands fetch from the index, taken from here


def venv_env(extra_path: Path | None = None) -> dict[str, str]:
    """The environment of a user's shell in the venv: no pip configuration (these machines point pip at local wheels),
    no user site, and the cluster module's folder on PYTHONPATH when given."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PIP_") and key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_CONFIG_FILE=os.devnull, PYTHONNOUSERSITE="1", DS_ACCELERATOR="cpu")
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    return env


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cluster_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh `--system-site-packages` venv over this environment's packages, after the docs' first step (mpo-dist
    and packaging, nothing else). Its own site-packages then holds mpo-dist alone: torch is found only elsewhere."""
    root = tmp_path_factory.mktemp("cluster") / "venv"
    venv.create(root, system_site_packages=True, with_pip=False, symlinks=True)
    own_site = Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
    outside = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (own_site / "cluster_module.pth").write_text("".join(f"{path}\n" for path in outside))
    python = str(root / "bin/python")
    first_step = ["pip", "install", "--no-deps", "-c", "requirements/constraints.txt", "-e", ".", "packaging"]
    step = run([python, "-m", *first_step, "--quiet", *OFFLINE_PIP], venv_env())
    assert step.returncode == 0, step.stdout[-3000:] + step.stderr[-3000:]
    assert not (own_site / "torch").exists() and (root / "bin/mpo-dist").is_file()
    return root


@pytest.fixture
def old_torch_module(tmp_path: Path) -> Path:
    """A cluster module's folder holding torch 2.10.0, below setup.py's `torch>=2.11,<3`: the metadata is what pip and
    the version checks read; `import torch` still finds the real one further down sys.path."""
    folder = tmp_path / "pytorch-2.10-module"
    (folder / "torch-2.10.0.dist-info").mkdir(parents=True)
    (folder / "torch-2.10.0.dist-info/METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.10.0\n")
    return folder


def test_check_reports_the_clusters_torch_and_warns_outside_the_range(
        cluster_venv: Path, old_torch_module: Path, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    check = [str(cluster_venv / "bin/mpo-dist"), "check", "--set", f"model.path={tiny_models['llama']}",
             "--set", f"train.output_dir={tmp_path / 'run'}", "--set", "loss.name=dpo"]
    inside = run(check, venv_env())
    assert inside.returncode == 0, inside.stdout[-3000:] + inside.stderr[-3000:]
    line = next(line for line in inside.stdout.splitlines() if line.startswith("versions"))
    assert f"torch {metadata.version('torch')}," in line and f"deepspeed {metadata.version('deepspeed')}," in line
    assert "outside the tested range" not in inside.stdout

    old = run(check, venv_env(old_torch_module))
    assert old.returncode == 0, old.stdout[-3000:] + old.stderr[-3000:]  # a warning: the run may still work
    assert "torch 2.10.0," in next(line for line in old.stdout.splitlines() if line.startswith("versions"))
    warnings = [line for line in old.stdout.splitlines() if "outside the tested range" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: torch 2.10.0 is outside the tested range")


def test_cluster_check_refuses_a_torch_pip_would_replace_with_one_line(cluster_venv: Path,
                                                                      old_torch_module: Path) -> None:
    cluster_check = [str(cluster_venv / "bin/python"), "-m", "mpo_dist.versions", "cluster-check"]
    kept = run(cluster_check, venv_env())
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.startswith(f"cluster-check: torch {metadata.version('torch')}")

    refused = run(cluster_check, venv_env(old_torch_module))
    assert refused.returncode == 1 and refused.stdout == ""
    assert len(refused.stderr.splitlines()) == 1, refused.stderr  # one line, no traceback
    assert refused.stderr.startswith("cluster-check: torch 2.10.0 (supported: ")
    assert ">=2.11" in refused.stderr and "<3" in refused.stderr


def test_applying_the_constraints_installs_nothing_but_mpo_dist(cluster_venv: Path, tmp_path: Path) -> None:
    # The docs' last step as written, with --dry-run: torch (here outside the venv, as on a cluster) and every other
    # visible package already at its constrained version are kept. Holds where the visible packages are the lock.
    if not (Path(sys.prefix) / ".mpo-dist-installed").is_file():
        pytest.skip("this environment was not built from the lock by launch/setup_env.sh")
    report = tmp_path / "report.json"
    result = run([str(cluster_venv / "bin/python"), "-m", "pip", "install", "-c", "requirements/constraints.txt", "-e",
                  ".[test]", "--dry-run", "--report", str(report), "--quiet", *OFFLINE_PIP], venv_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    planned = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert planned == ["mpo-dist"]
