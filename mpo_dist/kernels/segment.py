"""Per-sequence sums of per-token values with one scatter, for padded and packed batches alike.

A segment is one sequence (a padded row, or one of several sequences packed into a row); the caller flattens its
[B, T] tensors and gives each token the id of its segment, or -1 for tokens that belong to none (prompt, padding).
Tokens with id -1 are scattered into an extra slot that is dropped, which keeps it to one launch with no mask copy.
"""
from __future__ import annotations

import torch
from torch import Tensor


def segment_sums(values: Tensor, segment_ids: Tensor, num_segments: int) -> tuple[Tensor, Tensor]:
    """(sums [num_segments] float32, counts [num_segments] float32); differentiable w.r.t. `values`.

    On CUDA index_add uses atomics, so the float summation order (and the last bits) can vary between runs unless
    torch.use_deterministic_algorithms(True) is set; on the CPU it is sequential and deterministic."""
    if values.dim() != 1 or segment_ids.shape != values.shape:
        raise ValueError(f"values and segment_ids must both be 1-D of the same length (flatten [B, T] first); "
                         f"got {tuple(values.shape)} and {tuple(segment_ids.shape)}")
    if values.dtype != torch.float32:
        raise TypeError(f"values must be float32, got {values.dtype}")
    if segment_ids.dtype != torch.int64:
        raise TypeError(f"segment_ids must be int64, got {segment_ids.dtype}")
    if num_segments < 0:
        raise ValueError(f"num_segments must be >= 0, got {num_segments}")
    if segment_ids.numel():
        lowest, highest = (int(x) for x in torch.aminmax(segment_ids))  # one device sync, for a clear error
        if lowest < -1 or highest >= num_segments:
            raise ValueError(f"segment_ids must lie in [-1, {num_segments - 1}] (-1 = no segment), "
                             f"got range [{lowest}, {highest}]")
    slots = torch.where(segment_ids < 0, num_segments, segment_ids)
    sums_and_counts = values.new_zeros(num_segments + 1, 2).index_add(
        0, slots, torch.stack([values, torch.ones_like(values)], dim=1))
    return sums_and_counts[:num_segments, 0], sums_and_counts[:num_segments, 1]


def row_segment_ids(mask: Tensor) -> Tensor:
    """Segment ids [B*T] for a padded [B, T] batch: the row index where `mask` is true, -1 elsewhere."""
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a [B, T] bool tensor, got shape {tuple(mask.shape)} dtype {mask.dtype}")
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)
    return torch.where(mask, rows, -1).reshape(-1)
