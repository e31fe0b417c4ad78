"""`check`'s versions line: the installed versions of the libraries that have broken us, and a warning for each
outside setup.py's tested range (a run may still work; its numbers are not the ones we tested)."""
from __future__ import annotations

from mpo_dist.check.report import CheckReport
from mpo_dist.versions import installed_versions, outside_tested_range, tested_ranges, versions_line


def check_versions(report: CheckReport) -> None:
    installed = installed_versions()
    report.line(f"versions   {versions_line(installed)}")
    for message in outside_tested_range(installed, tested_ranges()):
        report.warn(message)
