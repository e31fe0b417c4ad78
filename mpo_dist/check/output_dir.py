"""train.output_dir: the run must be able to create it (or find it as a directory) and write in it.

Otherwise the model loads first and every rank fails minutes later with its own traceback: a regular file in the
directory's place, a read-only mount, a directory of another user. The check creates nothing that stays: it never makes
output_dir itself, only an empty probe directory in output_dir or in its nearest existing ancestor, removed at once.
"""
from __future__ import annotations

import os
from pathlib import Path

from mpo_dist.check.report import CheckReport
from mpo_dist.file_access import create_problem


def _nearest_existing(path: Path) -> Path:
    """`path` itself or its closest ancestor that exists (a broken symbolic link counts as existing: mkdir fails on it)."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_output_dir(output_dir: Path, report: CheckReport) -> None:
    """Record an error naming train.output_dir when the run could not create it or write in it."""
    existing = _nearest_existing(output_dir.absolute())
    if existing == output_dir.absolute():
        if not output_dir.is_dir():
            report.error(f"train.output_dir: {output_dir} exists and is not a directory")
            return
        problem = create_problem(output_dir)
        if problem:
            report.error(f"train.output_dir: {output_dir} {problem}")
        return
    if not existing.is_dir():
        report.error(f"train.output_dir: {output_dir} cannot be created: {existing} is not a directory")
        return
    problem = create_problem(existing)
    if problem:
        report.error(f"train.output_dir: {output_dir} cannot be created: {existing} {problem}")
