"""The tag lifecycle's rule, on step numbers worked out by hand: the newest intact tag of the current line of
training is never deleted, a resume from an older tag sets the newer ones aside, and reads at resume are shared by
bytes (mpo_dist/engine/tag_lifecycle.py, engine/checkpoint_layout.shares_by_bytes)."""
from __future__ import annotations

from mpo_dist.engine.checkpoint_layout import shares_by_bytes
from mpo_dist.engine.tag_lifecycle import abandoned_by_resume, pruned_after_save, set_aside_entries_deleted


def test_a_fallback_past_a_damaged_tag_abandons_it_and_keep_last_1_keeps_the_new_save() -> None:
    # tags 3, 6, 9; 9 damaged, so the run falls back to 6 and is stopped at 7 (keep_last=1)
    assert abandoned_by_resume([3, 6, 9], resumed_step=6) == [9]
    assert pruned_after_save([3, 6, 7], saved_step=7, keep_last=1) == [3, 6]  # 7, the newest intact tag, stays


def test_resuming_an_older_tag_keeps_the_new_save() -> None:
    # complete tags 200/300/400, resumed from 200, saved 250 with keep_last=2: 300 and 400 belong to the abandoned line
    assert abandoned_by_resume([200, 300, 400], resumed_step=200) == [300, 400]
    assert pruned_after_save([200, 250], saved_step=250, keep_last=2) == []
    assert pruned_after_save([100, 200, 250], saved_step=250, keep_last=2) == [100]


def test_pruning_never_touches_the_tag_just_written_or_newer_ones() -> None:
    assert pruned_after_save([1, 2, 3, 4, 5], saved_step=3, keep_last=2) == [1]  # 4, 5: never older than the save
    assert pruned_after_save([5], saved_step=5, keep_last=1) == []
    assert pruned_after_save([2, 4], saved_step=5, keep_last=3) == []  # fewer than keep_last: all stay
    assert abandoned_by_resume([2, 4, 6], resumed_step=0) == [2, 4, 6]  # a fresh start abandons every earlier tag


def test_reads_are_shared_by_recorded_bytes() -> None:
    # an fp32 run: rank 0 also holds the small files; by name rank 0 would read 1000 + 10 + 1, rank 1 only 900
    sizes = {"a_optim.pt": 1000, "b_optim.pt": 900, "c_model.pt": 10, "d_rng.pt": 1, "e_rng.pt": 1}
    assert shares_by_bytes(sizes, 2) == [["a_optim.pt"], ["b_optim.pt", "c_model.pt", "d_rng.pt", "e_rng.pt"]]
    assert shares_by_bytes(sizes, 1) == [sorted(sizes)]
    assert shares_by_bytes({"x": 5}, 3) == [["x"], [], []]


def test_the_set_aside_budget_deletes_the_oldest_lines_but_never_the_current_origin() -> None:
    assert set_aside_entries_deleted(3, keep=1, protected=set()) == [0, 1]
    assert set_aside_entries_deleted(3, keep=1, protected={0}) == [1, 2]  # the line the run resumed from stays
    assert set_aside_entries_deleted(2, keep=2, protected=set()) == []
    assert set_aside_entries_deleted(2, keep=0, protected=set()) == [0, 1]
    assert set_aside_entries_deleted(2, keep=0, protected={1}) == [0]
