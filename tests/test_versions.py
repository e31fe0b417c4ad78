"""What `mpo-dist check` and every run report about library versions: the tested ranges, one warning per library
outside them, the versions file beside a run's config, and the canary's differences against the lock."""
from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from mpo_dist import versions
from mpo_dist.cli import main
from mpo_dist.versions import constraints_text, lock_differences, outside_tested_range, read_lock

RANGES = {"torch": SpecifierSet(">=2.11,<3"), "transformers": SpecifierSet(">=5.17,<6"),
          "deepspeed": SpecifierSet(">=0.19.8,<0.20")}


def test_versions_outside_the_tested_range_get_one_line_each() -> None:
    installed = {"torch": "2.13.0+cpu", "transformers": "6.0.0", "deepspeed": "0.19.7", "datasets": "5.2.0"}
    lines = outside_tested_range(installed, RANGES)
    assert [line.split(" is outside")[0] for line in lines] == ["deepspeed 0.19.7", "transformers 6.0.0"]
    assert ">=5.17,<6" in lines[1] or "<6,>=5.17" in lines[1]
    assert outside_tested_range({"torch": "2.11.0", "transformers": "5.25.0rc1"}, RANGES) == []
    assert outside_tested_range({}, RANGES) == []  # not installed (triton on a CPU box): nothing to say


@pytest.mark.canary
def test_declared_ranges_come_from_setup_py() -> None:
    ranges = versions.tested_ranges()  # setup.py's ranges, as pip installed them
    for name in ("torch", "deepspeed", "transformers", "datasets", "triton"):
        assert not ranges[name].contains("0.0.1") and not ranges[name].contains("99.0"), name
    assert not ranges["transformers"].contains("6.0.0") and ranges["transformers"].contains("5.25.0")


def test_lock_parsing_constraints_and_differences(tmp_path: Path) -> None:
    lock = tmp_path / "cpu.lock"
    lock.write_text("# header\nPyYAML==6.0.4 \\\n    --hash=sha256:ab\n    # via mpo-dist\ntriton==3.9.0 \\\n"
                    "    --hash=sha256:cd\nnvidia-nccl-cu13==2.1 \\\n    --hash=sha256:ef\n")
    assert read_lock(lock) == {"pyyaml": "6.0.4", "triton": "3.9.0", "nvidia-nccl-cu13": "2.1"}
    body = [line for line in constraints_text(read_lock(lock), "cpu.lock").splitlines() if not line.startswith("#")]
    assert body == ["pyyaml==6.0.4"]
    installed = {"pyyaml": "6.0.5", "triton": "3.9.0", "kernels": "0.20.0", "torch": "2.13.0", "mpo-dist": "0.1.0"}
    assert lock_differences(read_lock(lock), installed) == [
        ("nvidia-nccl-cu13", "2.1", "missing"), ("pyyaml", "6.0.4", "6.0.5"), ("kernels", "-", "0.20.0")]


def test_check_prints_the_versions_and_warns_outside_the_ranges(tiny_models: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["check", "--set", f"model.path={tiny_models['llama']}", "--set", f"train.output_dir={tmp_path / 'run'}",
            "--set", "loss.name=dpo"]
    assert main(args) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("versions"))
    assert f"torch {metadata.version('torch')}" in line and f"transformers {metadata.version('transformers')}" in line
    assert "outside the tested range" not in out  # the locked venv is inside every range
    real = versions.installed_versions()
    monkeypatch.setattr("mpo_dist.check.versions.installed_versions", lambda: real | {"transformers": "4.46.0"})
    assert main(args) == 0  # a warning, not an error
    warnings = [line for line in capsys.readouterr().out.splitlines() if "outside the tested range" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: transformers 4.46.0 is outside")


def test_installed_versions_are_the_installs_not_setuptools_vendored_copies() -> None:
    import setuptools  # (puts setuptools/_vendor, with its own older packaging, jaraco.*, ..., at the end of sys.path)

    vendor = str(Path(setuptools.__file__).parent / "_vendor")
    assert vendor in sys.path
    vendored = {versions.canonical(d.metadata["Name"]) for d in metadata.distributions(path=[vendor])}
    installed = {versions.canonical(d.metadata["Name"]) for d in metadata.distributions(path=sys.path)
                 if vendor not in str(d.locate_file(""))}
    assert vendored - installed  # copies that only setuptools holds (jaraco.text, ...): they must not be reported
    found = versions.installed_versions()
    assert not (vendored - installed) & set(found)
    assert found["packaging"] == metadata.version("packaging")  # the first on sys.path: the installed one
    assert "mpo-dist" in found and "torch" in found


def test_installed_versions_read_all_of_sys_path_and_the_first_install_wins(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # A cluster module puts its torch on PYTHONPATH, outside the venv's site-packages and before it.
    module = tmp_path / "module"
    for name, version in (("torch", "2.10.0"), ("cluster-only", "1.2.3")):
        (module / f"{name.replace('-', '_')}-{version}.dist-info").mkdir(parents=True)
        (module / f"{name.replace('-', '_')}-{version}.dist-info/METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    monkeypatch.syspath_prepend(str(module))
    found = versions.installed_versions()
    assert found["torch"] == "2.10.0" and found["cluster-only"] == "1.2.3"
    assert found["transformers"] == metadata.version("transformers")


def test_the_cluster_path_stops_where_pip_would_replace_torch() -> None:
    ranges = {"torch": SpecifierSet(">=2.11,<3"), "triton": SpecifierSet(">=3.6,<4")}
    assert versions.cluster_refusal({"torch": "2.11.0", "triton": "3.6.0"}, ranges) is None
    assert versions.cluster_refusal({"torch": "2.13.0+cu130"}, ranges) is None  # no triton: pip installs one, fine
    below = versions.cluster_refusal({"torch": "2.10.0", "triton": "3.5.1"}, ranges)
    assert below.startswith("torch 2.10.0 (supported: ") and "triton 3.5.1 (supported: " in below
    assert "\n" not in below and ">=2.11" in below and "pip would replace" in below
    assert versions.cluster_refusal({"torch": "3.0.0", "triton": "3.6.0"}, ranges).startswith("torch 3.0.0 ")
    assert versions.cluster_refusal({"triton": "3.6.0"}, ranges).startswith("torch is not installed")
    assert versions.cluster_refusal({"torch": "2.13.0"}, {}).startswith("mpo-dist is not installed")
