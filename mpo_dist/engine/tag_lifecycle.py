"""Which checkpoint tags a run keeps, sets aside or deletes: pure decisions on step numbers, applied by
train/checkpoint.py and train/run_directory.py. One rule: the newest intact tag of the current line of training is never deleted.

- A run that resumes from a tag that is not the newest (a fallback past a damaged tag, or an explicit older tag) starts
  a new line: the newer tags belong to the abandoned one and are set aside (`checkpoints/abandoned/`), so neither
  `--resume auto` nor pruning mistakes them for the current line.
- After a save, pruning deletes only tags older than the one just written, keeping the `keep_last - 1` newest among
  them. A damaged tag never counts towards `keep_last`: the resume verifies tags newest first, so every damaged tag it
  found is newer than the one it resumed from, and is set aside with the abandoned line.
- Set-aside lines are bounded: only the `checkpoint.keep_abandoned` newest are kept.
See docs/checkpoints.md, "Which tags are kept".
"""
from __future__ import annotations


def abandoned_by_resume(steps: list[int], resumed_step: int) -> list[int]:
    """The tags of the line a resume from `resumed_step` abandons: every tag newer than it."""
    return sorted(step for step in steps if step > resumed_step)


def pruned_after_save(steps: list[int], saved_step: int, keep_last: int) -> list[int]:
    """The tags to delete after `saved_step` was written: of the tags older than it, all but the `keep_last - 1`
    newest. Tags newer than `saved_step` are never touched (none is of the current line once abandoned ones are set
    aside at resume), and neither is `saved_step` itself, the newest intact tag."""
    older = sorted((step for step in steps if step < saved_step), reverse=True)
    return sorted(older[max(keep_last - 1, 0):])


def set_aside_entries_deleted(count: int, keep: int, protected: set[int]) -> list[int]:
    """Which of `count` set-aside lines (oldest first, by index) go to keep at most `keep` of them: the oldest ones,
    never a `protected` one (the line the current run resumed from). The budget bounds the disk set-aside tags take:
    each is as large as a live tag (about 100 GB at 8B)."""
    doomed = []
    for index in range(count):
        if count - len(doomed) <= keep:
            break
        if index not in protected:
            doomed.append(index)
    return doomed
