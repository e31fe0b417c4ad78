"""The run directory (`train.output_dir`) and its rules, in one place: who owns it (engine/run_lock.py), which line of
checkpoint tags a run follows and where a requeue continues, what a fresh start does with earlier tags, the bounded
space of set-aside lines, log lines of steps that will run again, and COMPLETED.

Every method that changes the directory runs on rank 0 only (the trainer calls them there, under the lock); the
decisions are pure functions of what rank 0 read (engine/tag_lifecycle.py) so they are tested without a run. See
docs/checkpoints.md, "The run directory".
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from mpo_dist.atomic_write import atomic_write_text, fsync_directory
from mpo_dist.engine.checkpoint_layout import COMPLETE_MARKER, LATEST_FILE, is_complete, read_marker, step_of, tag_dirs
from mpo_dist.errors import UserError
from mpo_dist.engine.tag_lifecycle import abandoned_by_resume, set_aside_entries_deleted
from mpo_dist.run_files import COMPLETED_FILE, EVAL_FILE, METRICS_FILE, SAMPLES_FILE

log = logging.getLogger("mpo_dist")

LINE_FILE = "line.json"  # checkpoints/line.json: where the current line of tags started
ABANDONED_DIR = "abandoned"  # checkpoints/abandoned/line_NNNN/: the tags of one line a run left behind
LINE_DIR = re.compile(r"line_(\d+)")
DELETING_PREFIX = ".deleting-"  # a tag or line renamed away before its files are removed


class RunDirectoryError(UserError):
    """The run directory does not allow what the run asks for (a fresh start over earlier tags, ...)."""


@dataclass(frozen=True)
class RunLine:
    """Where the current line of training started: the tag it resumed from (None: a fresh start) and its step, and
    the SLURM job that started it (so that job's requeue continues the line instead of repeating its --resume)."""
    origin: str | None
    origin_step: int
    job: str | None


def slurm_job() -> tuple[str | None, int]:
    """This process's SLURM job id (None outside SLURM) and how often SLURM has requeued the job."""
    return os.environ.get("SLURM_JOB_ID") or None, int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def completed_marker(steps: int, config_text: str) -> str:
    """COMPLETED's content: the steps done and the SHA-256 of the config.json text they were trained with. A COMPLETED
    counts only beside that config (slurm/train.sbatch compares the two), so one left by an earlier run, or a run
    refused before it rewrote config.json, never makes a job look finished (docs/checkpoints.md)."""
    return json.dumps({"steps": steps, "config_sha256": hashlib.sha256(config_text.encode()).hexdigest()}) + "\n"


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB"


def delete_tree(path: Path) -> None:
    """Remove a tag or set-aside line: renamed away first, so a crash midway leaves a folder that is no tag (removed
    at the next start), never a tag with a marker and missing files."""
    doomed = path.with_name(f"{DELETING_PREFIX}{path.name}-{os.getpid()}")
    os.replace(path, doomed)
    fsync_directory(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def delete_trees(paths: list[Path]) -> int:
    """`delete_tree` each of `paths`; the bytes they held, for the log line that says what was freed."""
    size = sum(tree_size(path) for path in paths)
    for path in paths:
        delete_tree(path)
    return size


def tag_step(tag_dir: Path) -> int:
    """A tag's step, from its marker: any directory name resumes (an exported copy, a set-aside tag, /scratch/best)."""
    return read_marker(tag_dir).step


class RunDirectory:
    def __init__(self, output_dir: Path, *, keep_abandoned: int):
        self.output_dir = output_dir
        self.checkpoints = output_dir / "checkpoints"
        self.keep_abandoned = keep_abandoned

    # ---- reading ------------------------------------------------------------------------------------------------
    def line(self) -> RunLine | None:
        try:
            payload = json.loads((self.checkpoints / LINE_FILE).read_text())
            return RunLine(payload["origin"], int(payload["origin_step"]), payload["job"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def completed(self) -> bool:
        return (self.output_dir / COMPLETED_FILE).is_file()

    def set_aside_entries(self) -> list[Path]:
        """Set-aside lines (and tags set aside one by one by earlier versions), oldest first."""
        root = self.checkpoints / ABANDONED_DIR
        if not root.is_dir():
            return []
        entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(entries, key=lambda p: (int(m.group(1)) if (m := LINE_DIR.fullmatch(p.name)) else -1, p.name))

    def earlier_tags(self) -> list[Path]:
        """Tags (complete or not) in checkpoints/ that a fresh start would have to put somewhere."""
        return tag_dirs(self.checkpoints)

    # ---- deciding where to resume ---------------------------------------------------------------------------------
    def resume_request(self, resume: str, *, job: str | None, restart_count: int, new_line: bool) -> str:
        """The resume value this start really means. An explicit tag (or `none`) applies to the first start of a line:
        when SLURM requeues the job that started the line, or a start names again the tag the unfinished line started
        from (a resubmission with the same arguments), the run continues its line (`auto`), with one line saying so.
        `new_line` (checkpoint.new_line) makes a named tag start a new line even then, except on a requeue."""
        line = self.line()
        if resume == "auto" or line is None or self.completed():
            return resume
        requeued = job is not None and line.job == job and restart_count > 0
        same_origin = resume not in ("none", "auto") and line.origin == str(Path(resume).resolve()) and not new_line
        if requeued or same_origin:
            why = f"SLURM requeued job {job}" if requeued else f"{resume} is where this run's line started"
            log.info("%s: continuing the line from its newest intact tag (checkpoint.resume=%s applies to the line's "
                     "first start only)", why, resume)
            return "auto"
        return resume

    def line_fallback(self) -> Path | None:
        """The tag an unfinished line started from when it lies outside checkpoints/ (a set-aside or copied tag): the
        place `auto` resumes from before the line has saved a tag of its own."""
        line = self.line()
        if line is None or line.origin is None or self.completed():
            return None
        origin = Path(line.origin)
        return None if origin.parent == self.checkpoints.resolve() else origin

    def refuse_fresh_start_over_tags(self, resume: str, on_existing: str) -> None:
        """A fresh start never silently buries earlier tags: unless checkpoint.on_existing says what to do, it is
        refused before anything in the directory changes."""
        tags = self.earlier_tags()
        if resume != "none" or on_existing != "refuse" or not tags:
            return
        raise RunDirectoryError(
            f"train.output_dir {self.output_dir} already holds checkpoints ({', '.join(d.name for d in tags)}): "
            "continue them with --resume auto, or start over with --set checkpoint.on_existing=set_aside (keep them "
            "under checkpoints/abandoned/) or =delete")

    # ---- changing (rank 0, under the lock) ----------------------------------------------------------------------
    def start_line(self, resume_dir: Path | None, *, on_existing: str, job: str | None) -> None:
        """Make the tags on disk the line this run follows, once its resume has loaded: leftovers of interrupted
        deletions and half-written tags go; tags newer than the one resumed from (every tag, on a fresh start with
        on_existing=set_aside) are set aside as one line; on_existing=delete removes every earlier tag and set-aside
        line instead; the set-aside budget is applied; `latest` and the line record are rewritten."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        resumed_step = tag_step(resume_dir) if resume_dir is not None else 0
        if resume_dir is None and on_existing == "delete":
            self._delete_everything()
        tags = tag_dirs(self.checkpoints)
        newer = set(abandoned_by_resume([step_of(d.name) for d in tags], resumed_step))
        origin = resume_dir.resolve() if resume_dir is not None else None
        self._set_aside([d for d in tags if step_of(d.name) in newer and d.resolve() != origin], resumed_step)
        self._apply_budget(protected=origin)
        current = tag_dirs(self.checkpoints)
        latest = self.checkpoints / LATEST_FILE
        if current:
            atomic_write_text(latest, current[-1].name)
        else:
            latest.unlink(missing_ok=True)
        record = RunLine(str(origin) if origin else None, resumed_step, job)
        atomic_write_text(self.checkpoints / LINE_FILE, json.dumps(asdict(record)) + "\n")

    def _remove_leftovers(self) -> None:
        for leftover in self.checkpoints.glob(f"{DELETING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in (self.checkpoints / ABANDONED_DIR).glob(f"{DELETING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        incomplete = [d for d in tag_dirs(self.checkpoints) if not is_complete(d)]
        if incomplete:
            size = delete_trees(incomplete)
            log.warning("removed %d half-written checkpoint tag(s) (%s, no %s marker), freeing %s", len(incomplete),
                        ", ".join(d.name for d in incomplete), COMPLETE_MARKER, gib(size))

    def _delete_everything(self) -> None:
        doomed = tag_dirs(self.checkpoints) + self.set_aside_entries()
        if not doomed:
            return
        size = delete_trees(doomed)
        log.warning("checkpoint.on_existing=delete: deleted %d earlier checkpoint tag(s) and set-aside line(s) (%s), "
                    "freeing %s", len(doomed), ", ".join(d.name for d in doomed), gib(size))

    def _set_aside(self, tags: list[Path], resumed_step: int) -> None:
        if not tags:
            return
        root = self.checkpoints / ABANDONED_DIR
        root.mkdir(exist_ok=True)
        numbers = [int(m.group(1)) for p in self.set_aside_entries() if (m := LINE_DIR.fullmatch(p.name))]
        line_dir = root / f"line_{max(numbers, default=0) + 1:04d}"
        line_dir.mkdir()
        for tag_dir in tags:
            tag_dir.rename(line_dir / tag_dir.name)
        fsync_directory(line_dir)
        fsync_directory(root)
        fsync_directory(self.checkpoints)
        log.warning("set aside %d checkpoint tag(s) newer than the one this run continues from (step %d): %s, as %s; "
                    "neither --resume auto nor pruning will use them; resume one with --resume %s/<tag>, or delete "
                    "them with `mpo-dist checkpoints prune %s`", len(tags), resumed_step,
                    ", ".join(d.name for d in tags), line_dir, line_dir, self.output_dir)

    def _apply_budget(self, protected: Path | None) -> None:
        """Keep the `keep_abandoned` newest set-aside lines (never the one the current line started from)."""
        doomed, size = self._delete_oldest_set_aside(self.keep_abandoned, protected)
        if doomed:
            log.warning("checkpoint.keep_abandoned=%d: deleted the older set-aside line(s) %s, freeing %s",
                        self.keep_abandoned, ", ".join(d.name for d in doomed), gib(size))

    def prune_set_aside(self, keep: int) -> tuple[list[Path], int]:
        """`mpo-dist checkpoints prune`: delete all but the `keep` newest set-aside lines; what went and its size."""
        line = self.line()
        return self._delete_oldest_set_aside(keep, Path(line.origin) if line is not None and line.origin else None)

    def _delete_oldest_set_aside(self, keep: int, origin: Path | None) -> tuple[list[Path], int]:
        """Delete all but the `keep` newest set-aside lines, never the one holding `origin` (where the current line
        started); what went and the bytes freed."""
        entries = self.set_aside_entries()
        protected = {i for i, entry in enumerate(entries) if origin is not None and origin.is_relative_to(entry.resolve())}
        doomed = [entries[i] for i in set_aside_entries_deleted(len(entries), keep, protected)]
        return doomed, delete_trees(doomed)

    def truncate_logs_after(self, step: int) -> None:
        """Steps after `step` will run (again): drop their earlier log lines so each step appears once (a fresh start
        drops every line)."""
        for name in (SAMPLES_FILE, EVAL_FILE, METRICS_FILE):
            path = self.output_dir / name
            if path.is_file():
                kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
                atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write_completed(self, steps: int, config_text: str) -> None:
        atomic_write_text(self.output_dir / COMPLETED_FILE, completed_marker(steps, config_text))
