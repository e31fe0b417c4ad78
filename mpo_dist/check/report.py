"""What a pre-flight found: errors (the run would fail), warnings (it would run, perhaps not as meant) and summary lines."""
from __future__ import annotations

from dataclasses import dataclass, field

from mpo_dist.errors import UserError


class CheckFailed(UserError):
    """The pre-flight found at least one error; the message is the first, with how many more there are."""


class CheckReportFailed(UserError):
    """`mpo-dist check` found at least one error; the message is the whole rendered report, which mpo_dist.cli.main
    prints as it is, on stdout where a passing report goes too, before it exits 2."""


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def line(self, text: str) -> None:
        self.summary.append(text)

    def raise_if_failed(self) -> None:
        """For `train`: one line, the first error; `mpo-dist check` lists them all."""
        if self.errors:
            more = len(self.errors) - 1
            suffix = f" (and {more} more problem{'s' * (more > 1)}: run `mpo-dist check` with the same --config/--set)" if more else ""
            raise CheckFailed(self.errors[0] + suffix)

    def raise_report_if_failed(self) -> None:
        """For `mpo-dist check`: every finding at once, as the report it prints."""
        if self.errors:
            raise CheckReportFailed(self.render())

    def render(self) -> str:
        lines = list(self.summary)
        lines += [f"warning: {message}" for message in self.warnings]
        lines += [f"error: {message}" for message in self.errors]
        verdict = (f"{len(self.errors)} error(s), {len(self.warnings)} warning(s): the run would fail" if self.errors
                   else f"OK ({len(self.warnings)} warning(s))")
        return "\n".join(lines + [verdict])
