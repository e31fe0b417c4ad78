"""`check --resume`: the tag the run would resume from, verified as `train` verifies it (engine/checkpoint_resume.py),
in this one process with parallel readers, and written by as many ranks as the planned run has."""
from __future__ import annotations

import os

from mpo_dist.check.report import CheckReport
from mpo_dist.config import Config
from mpo_dist.engine.checkpoint_resume import resolve_resume
from mpo_dist.errors import UserError


def check_resume(config: Config, report: CheckReport, *, world_size: int) -> None:
    try:
        resume_dir = resolve_resume(config.checkpoint.resume, config.checkpoints_dir, world_size=world_size,
                                    readers=os.cpu_count() or 1)
    except UserError as error:
        report.error(str(error))
        return
    report.line(f"resume     {resume_dir if resume_dir is not None else 'no (fresh start)'} "
                f"(checkpoint.resume={config.checkpoint.resume})")
