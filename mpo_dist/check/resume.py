"""`check --resume`: the tag the run would resume from, decided as `train` decides it (the run directory's line:
engine/run_directory.py) and verified as `train` verifies it (engine/checkpoint_resume.py), in this one process with
parallel readers, and written by as many ranks as the planned run has."""
from __future__ import annotations

import os

from mpo_dist.check.report import CheckReport
from mpo_dist.check.run_directory import check_run_directory
from mpo_dist.config import Config
from mpo_dist.engine.checkpoint_resume import resolve_resume
from mpo_dist.engine.run_directory import RunDirectory
from mpo_dist.errors import UserError


def check_resume(config: Config, report: CheckReport, *, world_size: int, checksums: bool = True) -> None:
    """`checksums=False` (`--skip-tag-checksums`): read the tag's marker and world size only."""
    resume = check_run_directory(config, report)
    if resume is None:
        return
    run_dir = RunDirectory(config.output_dir, keep_abandoned=config.checkpoint.keep_abandoned)
    try:
        resume_dir = resolve_resume(resume, config.checkpoints_dir, world_size=world_size,
                                    readers=os.cpu_count() or 1, line_origin=run_dir.line_fallback(),
                                    checksums=checksums)
    except UserError as error:
        report.error(str(error))
        return
    report.line(f"resume     {resume_dir if resume_dir is not None else 'no (fresh start)'} "
                f"(checkpoint.resume={config.checkpoint.resume}{'' if checksums else ', checksums left to the run'})")
