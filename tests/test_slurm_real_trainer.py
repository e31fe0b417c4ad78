"""The real trainer under the real sbatch template on the 2-node local SLURM cluster (one rank per node, gloo):
a node lost mid-run, after which SLURM requeues the job (NODE_FAIL, the template's --requeue) and it resumes from the
newest complete checkpoint; and one line of jobs that covers the plain run, USR1 preemption and an explicit --resume:
a plain run that checkpoints, then a job started with --resume of one of its older tags, preempted by USR1 and
requeued, which continues its own line instead of starting again from that tag. Both end with exactly the planned
optimiser steps, every step once and no sample trained twice or skipped within an epoch. Each job start costs tens of
seconds (the check, then torchrun on both nodes), so the plain run and the preemption share the jobs of that line."""
from __future__ import annotations

import hashlib
import json
import re

import sys
from pathlib import Path

import pytest

from conftest import read_jsonl
from slurm_cluster import FINISHED_STATES, SlurmCluster, wait_for

pytestmark = pytest.mark.slurm

JOB_TIMEOUT_S = 420
EXAMPLES_PER_EPOCH = 64  # English-only SimPO on sample:train: one example per record
STEPS_PER_EPOCH = EXAMPLES_PER_EPOCH // 4  # a global batch of 4: world size 2 x micro-batch 2


def submit(cluster: SlurmCluster, tmp_path: Path, model: Path, steps: int, *trainer_args: str) -> tuple[int, Path]:
    run_dir = tmp_path / "run"
    overrides = [f"model.path={model}", f"train.max_steps={steps}", "train.micro_batch_size=2", "data.max_length=96",
                 "data.max_prompt_length=48", "data.eval_files=[]", "checkpoint.every_steps=5", "checkpoint.keep_last=2",
                 "logging.progress_bar=false"]
    env = {"CONFIG": "configs/demo_warmup.yaml", "RUN_DIR": str(run_dir), "PYTHON": sys.executable,
           "MPO_DIST_ARGS": " ".join(f"--set {o}" for o in overrides)}
    job_id = cluster.submit("--nodes=2", f"--output={tmp_path}/slurm-%j.out", "slurm/train.sbatch", *trainer_args,
                            env=env)
    return job_id, run_dir


def logs(tmp_path: Path) -> str:
    files = sorted(tmp_path.glob("slurm-*.out")) + sorted((tmp_path / "run" / "logs").rglob("*.log"))
    return "\n".join(f"==> {p} <==\n{p.read_text()[-3000:]}" for p in files)


def wait_for_steps(cluster: SlurmCluster, job_id: int, tmp_path: Path, steps: int) -> None:
    """Until the running job has logged `steps` trained steps; fails at once if the job ends first."""
    samples = tmp_path / "run" / "samples.jsonl"

    def trained() -> bool:
        if cluster.job(job_id).get("JobState") in FINISHED_STATES:
            raise AssertionError(f"the job ended before step {steps}\n" + logs(tmp_path))
        return samples.is_file() and len(samples.read_text().splitlines()) >= steps

    wait_for(trained, JOB_TIMEOUT_S, f"{steps} trained steps")


def test_lost_node_requeues_and_resumes_from_the_newest_checkpoint(slurm_cluster: SlurmCluster,
                                                                  tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """node2 (rank 1, not the batch host) vanishes after step 7: its slurmd, step daemon and trainer are SIGKILLed."""
    planned = STEPS_PER_EPOCH  # one epoch: every example exactly once
    job_id, run_dir = submit(slurm_cluster, tmp_path, tiny_models["llama"], steps=planned)
    samples = run_dir / "samples.jsonl"
    wait_for_steps(slurm_cluster, job_id, tmp_path, 7)
    try:
        slurm_cluster.lose_node("node2")
        wait_for(lambda: slurm_cluster.job(job_id)["Restarts"] == "1", JOB_TIMEOUT_S, "SLURM to requeue the job")
        newest = max(d.name for d in (run_dir / "checkpoints").glob("step_*") if (d / "COMPLETE").is_file())
    finally:
        slurm_cluster.restore_node("node2")
    job = slurm_cluster.wait_until_finished(job_id, JOB_TIMEOUT_S)
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", logs(tmp_path)
    resumed = "".join(path.read_text() for path in (run_dir / "logs" / str(job_id) / "restart-1").glob("node-*.log"))
    assert f"resumed from {run_dir / 'checkpoints' / newest} at step {int(newest.split('_')[1])}" in resumed, logs(tmp_path)
    steps = read_jsonl(samples)
    assert [s["step"] for s in steps] == list(range(1, planned + 1)), logs(tmp_path)
    trained = [i for s in steps for i in s["ids"]]
    assert len(trained) == len(set(trained)) == EXAMPLES_PER_EPOCH  # nothing repeated, nothing skipped


def test_a_requeue_after_an_explicit_resume_continues_its_own_line(slurm_cluster: SlurmCluster,
                                                                   tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """A plain 10-step run: tags 5 and 10, COMPLETED bound to its config. Then `sbatch slurm/train.sbatch --resume
    RUN/checkpoints/step_00000005` for two epochs, USR1 after step 18. The requeued job gets the same --resume again
    (SLURM replays the arguments); it must continue from the tag its first start saved at the stop, not go back to
    step 5 (pruned by then) or set aside its own line's tags; and across the explicit resume and the preemption each
    epoch trains every example exactly once."""
    job_id, run_dir = submit(slurm_cluster, tmp_path, tiny_models["llama"], steps=10)
    assert slurm_cluster.wait_until_finished(job_id, JOB_TIMEOUT_S)["JobState"] == "COMPLETED", logs(tmp_path)
    completed = json.loads((run_dir / "COMPLETED").read_text())  # bound to the config it was trained with
    assert completed == {"steps": 10, "config_sha256": hashlib.sha256((run_dir / "config.json").read_bytes()).hexdigest()}
    assert (run_dir / "checkpoints" / "step_00000010" / "COMPLETE").is_file()
    steps = read_jsonl(run_dir / "samples.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 11))
    assert all(len(s["ids"]) == 2 * 2 for s in steps)  # world size 2 (one rank per node) x micro-batch 2

    planned = 2 * STEPS_PER_EPOCH
    origin = run_dir / "checkpoints" / "step_00000005"
    job_id, _ = submit(slurm_cluster, tmp_path, tiny_models["llama"], planned, "--resume", str(origin))
    wait_for_steps(slurm_cluster, job_id, tmp_path, 18)
    slurm_cluster.command("scancel", "--signal=USR1", "--batch", str(job_id))
    job = slurm_cluster.wait_until_finished(job_id, JOB_TIMEOUT_S)
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", logs(tmp_path)

    def node_logs(restart: int) -> str:
        return "".join(p.read_text() for p in (run_dir / "logs" / str(job_id) / f"restart-{restart}").glob("node-*.log"))

    assert f"resumed from {origin} at step 5" in node_logs(0), logs(tmp_path)
    resumed = re.findall(rf"resumed from {re.escape(str(run_dir / 'checkpoints'))}/step_(\d+) at step (\d+)", node_logs(1))
    assert len(resumed) == 1 and 18 <= int(resumed[0][1]) < planned, logs(tmp_path)  # the stop's save, not step 5
    steps = read_jsonl(run_dir / "samples.jsonl")
    assert [s["step"] for s in steps] == list(range(1, planned + 1)), logs(tmp_path)  # no step twice after the requeue
    for epoch in range(2):  # the first crosses the explicit resume, the second the preemption
        trained = [i for s in steps[epoch * STEPS_PER_EPOCH: (epoch + 1) * STEPS_PER_EPOCH] for i in s["ids"]]
        assert len(trained) == len(set(trained)) == EXAMPLES_PER_EPOCH, epoch  # nothing repeated, nothing skipped
    losses = [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in row]
    assert losses == list(range(1, planned + 1))
    abandoned = run_dir / "checkpoints" / "abandoned"
    assert {p.relative_to(abandoned).as_posix() for p in abandoned.glob("*/step_*")} == {"line_0001/step_00000010"}
