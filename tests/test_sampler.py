"""The resumable sampler keeps the epoch's permutation: same order as building it per batch, built once per epoch."""
import torch

from mpo_dist.data.sampler import ResumableDistributedSampler


def reference_order(size: int, seed: int, epoch: int, global_batch: int) -> list[int]:
    """The documented order, written out: randperm(seed + epoch), wrapped to whole global batches."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    padded = -(-size // global_batch) * global_batch
    return (order * 3)[:padded]


def test_order_over_epochs_matches_the_documented_permutation():
    size, seed, world, micro = 7, 11, 2, 2
    samplers = [ResumableDistributedSampler(size, rank=r, world_size=world, micro_batch_size=micro, seed=seed)
                for r in range(world)]
    drawn = {epoch: [] for epoch in range(3)}
    for _ in range(3 * 2):  # 2 global batches of 4 per epoch
        batch = [i for s in samplers for i in s.next_batch()]
        drawn[samplers[0].epoch] += batch  # the epoch the batch came from (next_batch advances it first)
    assert drawn == {epoch: reference_order(size, seed, epoch, world * micro) for epoch in range(3)}


def test_resume_at_another_world_size_mid_epoch_continues_the_same_order():
    size, seed = 12, 5
    first = ResumableDistributedSampler(size, rank=0, world_size=1, micro_batch_size=2, seed=seed)
    seen = first.next_batch() + first.next_batch()
    resumed = [ResumableDistributedSampler(size, rank=r, world_size=2, micro_batch_size=2, seed=seed) for r in range(2)]
    for sampler in resumed:
        sampler.next_batch()  # a stale cached epoch-0 order before the resume must not leak into the result
        sampler.load_state_dict(first.state_dict() | {"epoch": 1})
    seen_after = [i for _ in range(2) for s in resumed for i in s.next_batch()]
    assert seen == reference_order(size, seed, 0, 1)[:4]
    assert seen_after == reference_order(size, seed, 1, 4)[4:12]


def test_permutation_is_built_once_per_epoch(monkeypatch):
    calls = []
    randperm = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: calls.append(1) or randperm(*a, **k))
    sampler = ResumableDistributedSampler(100, rank=0, world_size=1, micro_batch_size=1, seed=0)
    for _ in range(250):  # epochs 0, 1 and half of 2
        sampler.next_batch()
    assert len(calls) == 3
