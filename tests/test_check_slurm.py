"""The sbatch template runs `mpo-dist check` once on the batch host before srun: a job whose config would fail ends
with the check's message in its batch log and never starts a node task (2-node local SLURM cluster)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slurm

JOB_TIMEOUT_S = 300


def test_a_job_that_would_fail_stops_at_the_check(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    run_dir, missing = tmp_path / "run", tmp_path / "no-such-model"
    env = {"CONFIG": "configs/demo_warmup.yaml", "RUN_DIR": str(run_dir), "PYTHON": sys.executable,
           "MPO_DIST_ARGS": f"--set model.path={missing}"}
    job_id = slurm_cluster.submit("--nodes=2", f"--output={tmp_path}/slurm-%j.out", "slurm/train.sbatch", env=env)
    job = slurm_cluster.wait_until_finished(job_id, JOB_TIMEOUT_S)
    log_dir = run_dir / "logs" / str(job_id) / "restart-0"
    batch_log = (log_dir / "batch.log").read_text()
    assert job["JobState"] == "FAILED" and job["ExitCode"].startswith("2:"), batch_log
    assert f"error: model.path: {missing} does not exist" in batch_log
    assert "mpo-dist check failed (exit 2): not starting the run" in batch_log
    assert "srun step" not in batch_log and not list(log_dir.glob("node-*.log"))  # no node ever started
    assert not (run_dir / "checkpoints").exists()
