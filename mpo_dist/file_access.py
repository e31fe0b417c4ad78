"""Whether the user running mpo-dist can read a path, or create entries in a directory: asked of the kernel by doing
it (opening, listing, creating and removing at once), so ACLs, read-only mounts and NFS root squashing answer as they
will when the run itself reads the weights or writes its first checkpoint, minutes later. A module of the base layer:
the config loader and the pre-flight checks both ask it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROBE_PREFIX = ".mpo-dist-write-probe-"


def this_user() -> str:
    """How messages name the user whose permissions count: the run may go under another account than the editor's."""
    return f"this user (uid {os.geteuid()})"


def read_problem(path: Path) -> str | None:
    """None when this user can read `path` (open a file; list and enter a directory); else what follows the path in a
    message: "does not exist", "is not readable by this user (uid N)", or the system's reason."""
    unreadable = f"is not readable by {this_user()}"
    try:
        if not path.is_dir():
            with open(path, "rb"):
                return None
        os.listdir(path)
        return None if os.access(path, os.X_OK) else unreadable  # listable but not enterable: nothing inside opens
    except (FileNotFoundError, NotADirectoryError):
        return "does not exist"
    except PermissionError:
        return unreadable
    except OSError as error:
        return f"cannot be read ({error.strerror})"


def create_problem(directory: Path) -> str | None:
    """None when this user can create an entry in the existing `directory` (an empty directory is made and removed at
    once); else what follows the path in a message, e.g. "is not writable by this user (uid N)"."""
    try:
        probe = tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=directory)
    except PermissionError:
        return f"is not writable by {this_user()}"
    except OSError as error:  # a read-only file system, a full disk or quota
        return f"refuses new entries ({error.strerror})"
    os.rmdir(probe)
    return None
