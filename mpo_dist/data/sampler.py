"""A resumable distributed sampler whose position is counted in GLOBAL samples, so it resumes at any world size.

Epoch e uses a fixed permutation of the dataset (seed + e), wrapped to a whole number of global batches. Global batch k
is perm[k*G : (k+1)*G] with G = world_size * micro_batch_size; rank r takes its contiguous micro-batch slice of it. The
state is (epoch, consumed samples in the epoch): after a resume with another world size the next global batch starts
exactly where the last one ended, so no sample is skipped or repeated. The epoch's permutation is built once and kept,
so drawing a micro-batch is a slice, not O(dataset) work on every step.
"""
from __future__ import annotations

from typing import Iterator, TypeVar

import torch

from mpo_dist.errors import UserError

T = TypeVar("T")


class ResumableDistributedSampler:
    def __init__(self, dataset_size: int, *, rank: int, world_size: int, micro_batch_size: int, seed: int, shuffle: bool = True):
        if dataset_size <= 0:
            raise ValueError("the dataset is empty")
        self.dataset_size = dataset_size
        self.rank = rank
        self.world_size = world_size
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.consumed = 0  # global samples consumed in the current epoch
        self._order: list[int] = []
        self._order_epoch: int | None = None  # the epoch `_order` belongs to

    @property
    def global_batch(self) -> int:
        return self.world_size * self.micro_batch_size

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches each rank draws per epoch (the last global batch wraps around to stay full)."""
        return -(-self.dataset_size // self.global_batch)

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            order = list(range(self.dataset_size))
        else:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        padded = self.batches_per_epoch * self.global_batch
        return (order * (padded // len(order) + 1))[:padded]

    def next_batch(self) -> list[int]:
        """Indices of this rank's next micro-batch; advances the shared position by one global batch."""
        if self.consumed >= self.batches_per_epoch * self.global_batch:
            self.epoch += 1
            self.consumed = 0
        if self._order_epoch != self.epoch:
            self._order, self._order_epoch = self._permutation(self.epoch), self.epoch
        start = self.consumed + self.rank * self.micro_batch_size
        self.consumed += self.global_batch
        return self._order[start : start + self.micro_batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed, "dataset_size": self.dataset_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["dataset_size"] != self.dataset_size or state["seed"] != self.seed:
            raise UserError(
                f"checkpoint sampler state is for {state['dataset_size']} samples / seed {state['seed']}, "
                f"this run has {self.dataset_size} / {self.seed}: the data or seed changed"
            )
        if state["consumed"] % self.global_batch:
            raise UserError(
                f"checkpoint consumed {state['consumed']} samples, not a multiple of this run's global micro-batch "
                f"{self.global_batch}; choose a world size x micro-batch that divides it"
            )
        self.epoch = state["epoch"]
        self.consumed = state["consumed"]

    def restart_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first sample: a resume whose examples changed (data.allow_changed), where the saved
        position would index other examples."""
        self.epoch, self.consumed = epoch, 0


def batches_per_rank(num_items: int, *, world_size: int, batch_size: int) -> int:
    """How many batches `rank_batches` yields on every rank."""
    items_per_rank = -(-num_items // world_size)  # ceiling divisions
    return -(-items_per_rank // batch_size)


def rank_batches(items: list[T], *, rank: int, world_size: int, batch_size: int) -> Iterator[tuple[list[T], bool]]:
    """One pass over `items` split across ranks (evaluation, reference precompute): yields (batch, real).

    Every rank yields the same number of batches, because under ZeRO-3 a rank that stops calling forward leaves the
    others waiting for its share of each layer. A rank that has run out yields `items[:1]` with real=False: run the
    forward, drop the result.
    """
    mine = items[rank::world_size]
    for index in range(batches_per_rank(len(items), world_size=world_size, batch_size=batch_size)):
        batch = mine[index * batch_size : (index + 1) * batch_size]
        yield (batch, True) if batch else (items[:1], False)
