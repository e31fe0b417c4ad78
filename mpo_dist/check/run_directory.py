"""`check`'s look at the run directory: another live job owning it, or a fresh start that would be refused over
earlier tags, is an error here, seconds before the job would start (engine/run_directory.py holds the rules)."""
from __future__ import annotations

from mpo_dist.check.report import CheckReport
from mpo_dist.config import Config
from mpo_dist.engine.run_directory import RunDirectory, gib, slurm_job, tree_size
from mpo_dist.engine.run_lock import live_holder
from mpo_dist.errors import UserError


def check_run_directory(config: Config, report: CheckReport) -> str | None:
    """The resume value the run would really use (a requeue or resubmission continues its line), or None after an
    error."""
    run_dir = RunDirectory(config.output_dir, keep_abandoned=config.checkpoint.keep_abandoned)
    holder = live_holder(config.output_dir)
    if holder is not None:
        report.error(f"train.output_dir {config.output_dir} is in use by {holder.describe()}; one job owns a run "
                     "directory: wait for that job, cancel it, or set another train.output_dir")
        return None
    job, restart_count = slurm_job()
    resume = run_dir.resume_request(config.checkpoint.resume, job=job, restart_count=restart_count,
                                    new_line=config.checkpoint.new_line)
    try:
        run_dir.refuse_fresh_start_over_tags(resume, config.checkpoint.on_existing)
    except UserError as error:
        report.error(str(error))
        return None
    tags, set_aside = run_dir.earlier_tags(), run_dir.set_aside_entries()
    if tags or set_aside:
        report.line(f"run dir    {config.output_dir}: {len(tags)} tag(s), {gib(sum(tree_size(t) for t in tags))}; "
                    f"{len(set_aside)} set-aside line(s), {gib(sum(tree_size(e) for e in set_aside))} "
                    f"(checkpoint.keep_abandoned={config.checkpoint.keep_abandoned})")
    return resume
