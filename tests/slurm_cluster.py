"""A real two-node SLURM cluster for a pytest session (slurm/local-cluster.sh), plus small helpers to drive it.

The cluster gets its own state directory and ports, so it never collides with a cluster a developer already runs
with the script's defaults, and it is always torn down at the end of the session, whatever the tests did.
tests/conftest.py imports the `slurm_cluster` fixture once, so every module shares one cluster (a fixture imported into
two modules would be two session fixtures and two clusters on the same ports).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_CLUSTER_SCRIPT = REPO_ROOT / "slurm" / "local-cluster.sh"
# Away from SLURM's defaults (6817-6819) so a developer's own cluster can keep running.
TEST_CTLD_PORT = 16817
TEST_SLURMD_PORT = 16818
# A fresh machine first installs the Debian packages (apt-get update + install).
UP_TIMEOUT_S = 600
LAUNCHER_VARIABLES = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                      "ROLE_RANK", "TORCHELASTIC_RUN_ID"}
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    """Poll `condition` until it holds; a bounded wait on something observable, never a blind sleep."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)


class SlurmCluster:
    """Handle on the running test cluster: its environment and the client commands tests need."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.env = {
            # A test process that ran the trainer in-process holds a process group on MASTER_PORT; a job inheriting
            # these variables would rendezvous with that stale store instead of its own.
            **{k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES},
            "MPO_SLURM_DIR": str(state_dir),
            "MPO_SLURM_CTLD_PORT": str(TEST_CTLD_PORT),
            "MPO_SLURM_SLURMD_PORT": str(TEST_SLURMD_PORT),
            "SLURM_CONF": str(state_dir / "slurm.conf"),
        }

    def manage(self, action: str, timeout_s: float) -> None:
        """Run `local-cluster.sh up|down`, failing with its output when it does not succeed."""
        result = subprocess.run(
            [str(LOCAL_CLUSTER_SCRIPT), action], env=self.env, capture_output=True, text=True, timeout=timeout_s
        )
        if result.returncode != 0:
            raise RuntimeError(f"local-cluster.sh {action} failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def command(self, *args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> str:
        """Run a SLURM client command from the repository root (sbatch's submit directory) and return stdout."""
        result = subprocess.run(
            list(args), env={**self.env, **(env or {})}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited with {result.returncode}:\n{result.stdout}{result.stderr}")
        return result.stdout

    def submit(self, *sbatch_args: str, env: dict[str, str]) -> int:
        """sbatch from the repository root; returns the job id.

        Tests poll with wait_until_finished rather than `sbatch --wait`, which polls after 2, 10, 42, 74... seconds
        and so can add half a minute to a ten-second job.
        """
        output = self.command("sbatch", "--parsable", *sbatch_args, env=env)
        return int(output.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` fields (JobState, Restarts, ExitCode, ...) of a job the controller still remembers."""
        return dict(re.findall(r"(\w+)=(\S*)", self.command("scontrol", "show", "job", "--oneliner", str(job_id))))

    def wait_until_finished(self, job_id: int, timeout_s: float) -> dict[str, str]:
        """Wait until the job is in a final state (a requeued job passes through PENDING first) and return its fields."""
        wait_for(lambda: self.job(job_id)["JobState"] in FINISHED_STATES, timeout_s, f"job {job_id} to finish", poll_s=0.5)
        return self.job(job_id)

    def lose_node(self, node: str) -> None:
        """The node vanishes: SIGKILL its slurmd, the step daemons of its job steps and every process under them (the
        trainer ranks it ran), then mark it DOWN, which is what the controller does itself once the node has not
        answered for SlurmdTimeout (60 s in slurm/local-cluster.sh, 300 s by default); doing it at once keeps the test
        short without changing what follows."""
        slurmd = int((self.state_dir / "run" / f"slurmd-{node}.pid").read_text())
        tasks = [pid for pid in _pids() if f"SLURMD_NODENAME={node}".encode() in _environ(pid)]
        roots = {slurmd, *tasks, *(_parent(t) for t in tasks if b"slurmstepd" in _cmdline(_parent(t)))}
        for pid in _with_descendants(roots - {0, 1}):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.command("scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=lost node (test)")

    def restore_node(self, node: str) -> None:
        """Start the node's slurmd again and wait until it is back in service. ReturnToService=2 usually returns it as
        soon as it registers; if it is still DOWN, RESUME it (refused, harmlessly, once it is up)."""
        subprocess.run(["slurmd", "-N", node, "-f", self.env["SLURM_CONF"]], env=self.env, check=True, timeout=60)

        def back_in_service() -> bool:
            if self.node_in_service(node):
                return True
            subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], env=self.env, capture_output=True,
                           timeout=60)
            return False

        wait_for(back_in_service, 60, f"{node} to be back in service", poll_s=0.5)

    def node_in_service(self, node: str) -> bool:
        """Answering the controller (no `*` after the state) and not down, drained or failing."""
        state = self.command("sinfo", "-h", "-N", "-n", node, "-o", "%t").strip()
        return bool(state) and not state.endswith("*") and not state.startswith(("down", "drain", "fail"))


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _read_proc(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:  # the process ended meanwhile
        return b""


def _environ(pid: int) -> list[bytes]:
    return _read_proc(pid, "environ").split(b"\0")


def _cmdline(pid: int) -> bytes:
    return _read_proc(pid, "cmdline")


def _parent(pid: int) -> int:
    stat = _read_proc(pid, "stat")
    return int(stat.rsplit(b")", 1)[1].split()[1]) if stat else 0


def _with_descendants(roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in _pids():
        children.setdefault(_parent(pid), []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


@contextmanager
def running_cluster(state_dir: Path) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(state_dir)
    try:
        cluster.manage("up", timeout_s=UP_TIMEOUT_S)
        yield cluster
    finally:
        cluster.manage("down", timeout_s=120)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    with running_cluster(tmp_path_factory.mktemp("slurm-cluster")) as cluster:
        yield cluster
