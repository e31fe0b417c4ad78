"""Set-up on a machine that is not ours (launch/setup_env.sh, launch/install_torch.sh; docs/quickstart.md, "Install").
torch comes only from requirements/torch-cpu.lock, its hash checked, from PyTorch's CPU index: here a PEP 503 index
served on 127.0.0.1 from a temporary folder, with pip's own configuration switched off, so that index is the only place
a wheel can come from. A set-up killed mid-install is rebuilt by the next command. Sourcing setup_env.sh leaves the
caller's shell options alone, so test.sh's handling of "pytest collected no tests" runs. No network: the locked wheel
is the one this machine's pip configuration already offers (a find-links folder). Synchronisation is by polling files,
never sleeps."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import pytest
import typing_extensions

from conftest import REPO_ROOT

TORCH_LOCK = REPO_ROOT / "requirements/torch-cpu.lock"
INSTALL_TORCH = REPO_ROOT / "launch/install_torch.sh"
LOCKED_NAME = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
GUARD_S = 600  # only stops a broken test from polling forever; nothing is asserted about durations


def locked_hash() -> str:
    [digest] = re.findall(r"--hash=sha256:([0-9a-f]{64})", TORCH_LOCK.read_text())
    return digest


@pytest.fixture(scope="module")
def locked_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file with the locked hash that this machine's pip configuration offers without any index."""
    report = tmp_path_factory.mktemp("locked_wheel") / "report.json"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index",
                             "--no-deps", "--require-hashes", "--quiet", "--report", str(report), "-r", str(TORCH_LOCK)],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.skip("no local torch wheel with the locked hash (a find-links folder in pip's configuration)")
    wheel = Path(unquote(urlparse(json.loads(report.read_text())["install"][0]["download_info"]["url"]).path))
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == locked_hash()  # independent of pip's own check
    return wheel


def impostor_wheel(folder: Path, version: str) -> Path:
    """An installable wheel of a `torch` at `version` whose bytes are not the locked file's: pip installs it unless
    it checks the hash (2.13.0+cpu) or the version's label (2.13.0, the package index's CUDA build)."""
    dist_info = f"torch-{version}.dist-info"
    files = {"torch/__init__.py": f"__version__ = {version!r}\n",
             f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
             f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test_setup_env\nRoot-Is-Purelib: false\n"
                                   "Tag: cp311-cp311-manylinux_2_28_x86_64\n"}
    files[f"{dist_info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{dist_info}/RECORD"])
    wheel = folder / f"torch-{version}-cp311-cp311-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


@contextmanager
def torch_index(root: Path, wheel: Path, name: str) -> Iterator[tuple[str, list[str]]]:
    """A PEP 503 simple index on 127.0.0.1 whose one project, torch, holds `wheel` under the file name `name`; yields
    its URL and the paths requested from it."""
    project = root / "simple/torch"
    project.mkdir(parents=True)
    (project / name).symlink_to(wheel)
    (project / "index.html").write_text(f'<!DOCTYPE html><html><body><a href="{quote(name)}">{name}</a></body></html>\n')
    requested: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: object) -> None:
            requested.append(unquote(self.path))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def isolated_pip(index: str) -> dict[str, str]:
    """This environment with no pip configuration (file or PIP_* variable) and the torch index set as a user would.
    pip's cache is off, so no test run leaves a copy of the wheel behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return env | {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_CACHE_DIR": "1", "MPO_DIST_TORCH_INDEX": index}


def fresh_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True, timeout=300)
    return path


def installed_torch(venv: Path) -> list[Path]:
    return sorted((venv / "lib").glob("python3*/site-packages/torch*"))


def distributions(venv: Path) -> set[str]:
    return {path.name for path in (venv / "lib").glob("python3*/site-packages/*.dist-info")}


def test_set_up_installs_exactly_the_locked_torch_from_the_torch_index(locked_wheel: Path, tmp_path: Path) -> None:
    venv = fresh_venv(tmp_path / "venv")
    before = distributions(venv)
    with torch_index(tmp_path / "index", locked_wheel, LOCKED_NAME) as (index, requested):
        result = subprocess.run(["bash", str(INSTALL_TORCH), str(venv)], env=isolated_pip(index), capture_output=True,
                                text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"/simple/torch/{LOCKED_NAME}" in requested  # from the index: pip had no other source
    assert distributions(venv) - before == {"torch-2.13.0+cpu.dist-info"}  # and nothing else (--no-deps)
    # --no-deps: torch alone. `import torch` needs one module of its dependencies, typing_extensions, taken from here.
    support = tmp_path / "support"
    support.mkdir()
    (support / "typing_extensions.py").symlink_to(typing_extensions.__file__)
    probe = subprocess.run([str(venv / "bin/python"), "-c", "import torch; print(torch.__version__, torch.__file__)"],
                           env=dict(os.environ, PYTHONPATH=str(support)), capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    version, location = probe.stdout.split()
    assert version == "2.13.0+cpu" and Path(location).is_relative_to(venv)
    # The installed distribution is the locked wheel's: its RECORD holds every row (path, sha256, size) of the wheel's.
    with zipfile.ZipFile(locked_wheel) as archive:
        wheel_record = set(archive.read("torch-2.13.0+cpu.dist-info/RECORD").decode().splitlines())
    [dist_info] = [path for path in installed_torch(venv) if path.name.endswith(".dist-info")]
    assert wheel_record <= set((dist_info / "RECORD").read_text().splitlines())
    shutil.rmtree(venv)  # 1 GB; a failed test's stays for a look


@pytest.mark.parametrize("version, refusal", [
    ("2.13.0+cpu", "DO NOT MATCH THE HASHES"),  # the locked name, other bytes
    ("2.13.0", "No matching distribution found for torch==2.13.0+cpu"),  # as the package index names its CUDA build
])
def test_set_up_refuses_any_other_torch_wheel(version: str, refusal: str, tmp_path: Path) -> None:
    venv = fresh_venv(tmp_path / "venv")
    impostor = impostor_wheel(tmp_path, version)
    with torch_index(tmp_path / "index", impostor, impostor.name) as (index, requested):
        result = subprocess.run(["bash", str(INSTALL_TORCH), str(venv)], env=isolated_pip(index), capture_output=True,
                                text=True, timeout=600)
    assert result.returncode != 0
    assert refusal in result.stderr, result.stderr[-3000:]
    if version == "2.13.0+cpu":
        assert f"/simple/torch/{impostor.name}" in requested and locked_hash() in result.stderr
    assert installed_torch(venv) == []


def own_venv(path: Path) -> Path:
    """A venv of the user's own (no stamp, no marker) that runs this interpreter: setup_env.sh uses it as it is."""
    (path / "bin").mkdir(parents=True)
    (path / "bin/python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (path / "bin/python").chmod(0o755)
    return path


@pytest.mark.parametrize("caller_options", ["", "set -euo pipefail"])
def test_sourcing_set_up_leaves_the_callers_options_alone(caller_options: str, tmp_path: Path) -> None:
    script = (f'{caller_options}\nbefore="$(set +o)"\n'
              'source launch/setup_env.sh\n'
              'echo "status $?"\n'
              '[ "$(set +o)" = "$before" ] && echo "options kept"\n')
    used = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MPO_DIST_VENV=str(own_venv(tmp_path / "own"))))
    assert used.returncode == 0, used.stderr[-3000:]
    assert used.stdout.splitlines() == [f"[setup] using {tmp_path / 'own'} as it is (not built by setup_env.sh, so not "
                                        "from the lock)", "status 0", "options kept"]
    if caller_options:
        return
    # A set-up that fails returns its status to a caller without -e, whose options are still its own.
    failed = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, MPO_DIST_VENV=str(tmp_path / "new"), PYTHON="false"))
    assert failed.stdout.splitlines() == ["status 2", "options kept"]
    assert failed.stderr.strip() == "[setup] cannot run false: set PYTHON=python3.11"
    assert not (tmp_path / "new").exists()


def test_test_sh_fails_when_pytest_collects_no_tests(tmp_path: Path) -> None:
    env = dict(os.environ, MPO_DIST_VENV=str(own_venv(tmp_path / "own")))
    result = subprocess.run(["bash", "launch/test.sh", "-p", "no:cacheprovider", "-k", "no_such_test_zzz",
                             "tests/test_setup_env.py"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "deselected" in result.stdout  # pytest itself ran, and exited 5
    assert result.stderr.strip().splitlines()[-1] == "pytest collected no tests: treating that as a failure"


def _start_set_up(venv: Path, log: Path) -> subprocess.Popen:
    """The whole set-up, as demo.sh sources it, into `venv`, in its own session (so it can be killed whole)."""
    with open(log, "w") as handle:
        return subprocess.Popen(["bash", "-c", "source launch/setup_env.sh"], cwd=REPO_ROOT,
                                env=dict(os.environ, MPO_DIST_VENV=str(venv)), stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _kill_once(process: subprocess.Popen, reached: Callable[[], bool], log: Path, what: str) -> None:
    """SIGKILL the set-up (no clean-up of any kind) as soon as `reached` holds."""
    try:
        deadline = time.monotonic() + GUARD_S
        while not reached():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"the set-up never reached {what}"
            time.sleep(0.05)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)


def test_a_set_up_killed_mid_install_is_rebuilt_from_scratch_by_the_next_command(tmp_path: Path) -> None:
    """Killed once pip runs, the venv is marked unfinished; the next command says so and starts over from an empty
    venv (checked up to its own pip run, then killed too: a full set-up costs minutes, and every suite run already
    completes one from scratch, whose stamp each launcher test relies on)."""
    venv = tmp_path / "venv"
    building, pip_log, stamp = venv / ".mpo-dist-building", venv / "pip-install.log", venv / ".mpo-dist-installed"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    _kill_once(_start_set_up(venv, first_log), lambda: building.exists() and pip_log.exists(), first_log, "pip")
    assert building.exists() and not stamp.exists()
    left_over = venv / "left-over-of-the-killed-build"
    left_over.write_text("")
    pip_log.unlink()  # so that the next pip log can only be the rebuild's
    _kill_once(_start_set_up(venv, second_log), lambda: pip_log.exists(), second_log, "its own pip run")
    lines = second_log.read_text().splitlines()
    assert lines[0] == f"[setup] {venv} is a set-up that failed or was interrupted: rebuilding it from scratch"
    assert "as it is" not in second_log.read_text()
    assert not left_over.exists() and building.exists() and not stamp.exists()  # emptied, and still marked unfinished
