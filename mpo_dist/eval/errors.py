"""The eval command's user error: a bad option, model directory, judge or run directory. Its own class (a UserError)
so the CLI prints it on one line and exits 2, like every other input mistake, without a catch-all in the command."""
from __future__ import annotations

from mpo_dist.errors import UserError


class EvalError(UserError):
    """An `mpo-dist eval` input mistake; the message names the option or path and what was expected."""
