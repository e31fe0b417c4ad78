"""The one exception type for a user's mistake (bad config key, data row, path, checkpoint): the CLI prints its message
on one line and exits 2, with no traceback. Anything else that escapes is our bug and keeps its traceback.

Every module's own error class (ConfigError, DataError, CheckpointError, ...) derives from UserError, so the CLI needs
no list of them. See docs/configuration.md ("Errors").
"""
from __future__ import annotations

EXIT_USER_ERROR = 2
DEBUG_ENV = "MPO_DIST_DEBUG"  # set to 1 to see the traceback of a user error too
# Set by launch/train.sh and slurm/train.sbatch: ranks append their user error there instead of printing it, and the
# launcher prints each distinct line once and exits 2 (torchrun itself turns any failed rank into exit 1).
ERROR_FILE_ENV = "MPO_DIST_ERROR_FILE"


class UserError(ValueError):
    """Something the user can fix; the message names the key, file, row or field and what was expected."""
