"""The sbatch templates on a real two-node SLURM cluster (slurm/local-cluster.sh, brought up once per session),
with tests/fixtures/stub_trainer.py standing in for the trainer: multi-node launch, USR1 preemption with requeue and
resume, and the two ways a job must end without being requeued (scancel, the STOP file).

Needs root and apt access the first time (it installs slurmctld, slurmd, slurm-client and munge).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from slurm_cluster import REPO_ROOT, SlurmCluster, wait_for

pytestmark = pytest.mark.slurm

STUB_TRAINER = REPO_ROOT / "tests" / "fixtures" / "stub_trainer.py"
JOB_TIMEOUT_S = 180


def job_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The template's parameters for one test job: stub entry point, its own config file and run directory."""
    config = tmp_path / "stub-config.yaml"
    config.write_text("# the stub trainer only checks that --config names a file\n")
    return {
        "CONFIG": str(config),
        "RUN_DIR": str(tmp_path / "run"),
        "ENTRY": str(STUB_TRAINER),
        "PYTHON": sys.executable,
        **extra,
    }


def recorded_steps(run_dir: Path) -> list[dict]:
    steps_file = run_dir / "steps.jsonl"
    return [json.loads(line) for line in steps_file.read_text().splitlines()] if steps_file.exists() else []


def batch_log(run_dir: Path, job_id: int, restart: int) -> str:
    path = run_dir / "logs" / str(job_id) / f"restart-{restart}" / "batch.log"
    return path.read_text() if path.exists() else ""


def job_outputs(tmp_path: Path) -> str:
    """Every log the job left, for assertion messages."""
    files = sorted(tmp_path.glob("slurm-*.out")) + sorted((tmp_path / "run" / "logs").rglob("*.log"))
    return "\n".join(f"==> {path} <==\n{path.read_text()}" for path in files)


def submit_held_job(cluster: SlurmCluster, tmp_path: Path, steps: int) -> int:
    """A 2-node job whose step 2 waits for a stop request; returns once step 1 is done, so the job is mid-run."""
    run_dir = tmp_path / "run"
    job_id = cluster.submit(
        "--nodes=2", f"--output={tmp_path}/slurm-%j.out", "slurm/train.sbatch",
        "--set", f"steps={steps}", "--set", "hold_step=2",
        env=job_env(tmp_path),
    )
    wait_for(lambda: len(recorded_steps(run_dir)) >= 1, JOB_TIMEOUT_S, f"job {job_id} to finish step 1")
    return job_id


@pytest.mark.parametrize(
    ("template", "sbatch_overrides"),
    [
        ("slurm/train.sbatch", []),
        # The 70B template asks for 8 GPUs per node; the CPU test nodes have none.
        ("slurm/train-70b.sbatch", ["--gpus-per-node=0"]),
    ],
)
def test_two_node_job_runs_one_torchrun_per_node(
    slurm_cluster: SlurmCluster, tmp_path: Path, template: str, sbatch_overrides: list[str]
) -> None:
    run_dir = tmp_path / "run"
    job_id = slurm_cluster.submit(
        "--nodes=2", *sbatch_overrides, f"--output={tmp_path}/slurm-%j.out", template, "--set", "steps=3",
        env=job_env(tmp_path, MPO_DIST_ARGS="--set step_seconds=0"),
    )
    job = slurm_cluster.wait_until_finished(job_id, JOB_TIMEOUT_S)
    logs = job_outputs(tmp_path)
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "0", logs
    assert (run_dir / "COMPLETED").exists(), logs

    ranks = [json.loads(path.read_text()) for path in sorted((run_dir / "ranks").glob("restart-0.rank-*.json"))]
    assert [r["rank"] for r in ranks] == [0, 1], logs
    assert all(r["world_size"] == 2 for r in ranks), logs
    assert sorted((r["slurm_node_id"], r["node_name"]) for r in ranks) == [(0, "node1"), (1, "node2")], logs
    assert sorted(r["group_rank"] for r in ranks) == [0, 1], logs  # each torchrun joined as a different node
    if shutil.which("nvidia-smi") is None:
        assert all(r["ds_accelerator"] == "cpu" for r in ranks), logs

    # Script arguments (steps=3) and MPO_DIST_ARGS both reached the trainer; gloo summed rank+1 over 2 ranks: 1+2.
    assert recorded_steps(run_dir) == [{"step": s, "restart": 0, "all_reduced": 3.0} for s in (1, 2, 3)], logs
    for step in (1, 2, 3):
        assert (run_dir / "checkpoints" / f"step-{step:06d}" / "COMPLETE").exists(), logs
    node_logs = run_dir / "logs" / str(job_id) / "restart-0"
    assert "node node1 node_id=0/2" in (node_logs / "node-0.log").read_text(), logs
    assert "node node2 node_id=1/2" in (node_logs / "node-1.log").read_text(), logs


def test_usr1_checkpoints_requeues_and_resumes_every_step_once(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    total_steps = 5
    job_id = submit_held_job(slurm_cluster, tmp_path, total_steps)

    slurm_cluster.command("scancel", "--signal=USR1", "--batch", str(job_id))
    job = slurm_cluster.wait_until_finished(job_id, JOB_TIMEOUT_S)

    logs = job_outputs(tmp_path)
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", logs
    # The first run stopped after the held step 2, the requeued run resumed at step 3; no step ran twice.
    assert [(s["step"], s["restart"]) for s in recorded_steps(run_dir)] == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 1)], logs
    assert "got SIGUSR1" in batch_log(run_dir, job_id, 0), logs
    assert "requeueing" in batch_log(run_dir, job_id, 0), logs
    assert "training complete" in batch_log(run_dir, job_id, 1), logs
    assert (run_dir / "COMPLETED").exists() and not (run_dir / "STOP").exists(), logs


def test_scancel_is_not_undone_by_a_requeue(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job_id = submit_held_job(slurm_cluster, tmp_path, steps=4)

    slurm_cluster.command("scancel", str(job_id))
    wait_for(lambda: "not requeueing" in batch_log(run_dir, job_id, 0), JOB_TIMEOUT_S, "the batch script's decision")
    job = slurm_cluster.wait_until_finished(job_id, JOB_TIMEOUT_S)

    logs = job_outputs(tmp_path)
    assert job["JobState"] == "CANCELLED" and job["Restarts"] == "0", logs
    assert not (run_dir / "COMPLETED").exists(), logs


def test_stop_file_ends_the_job_after_a_checkpoint_without_requeue(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job_id = submit_held_job(slurm_cluster, tmp_path, steps=4)

    (run_dir / "STOP").touch()
    job = slurm_cluster.wait_until_finished(job_id, JOB_TIMEOUT_S)

    logs = job_outputs(tmp_path)
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "0", logs
    assert [s["step"] for s in recorded_steps(run_dir)] == [1, 2], logs
    assert (run_dir / "checkpoints" / "step-000002" / "COMPLETE").exists(), logs
    assert "stopped on request" in batch_log(run_dir, job_id, 0), logs
    assert not (run_dir / "COMPLETED").exists(), logs
