"""What the frozen reference contributes to one micro-batch's loss inputs.

One type for both sources, the online reference forward (mpo_dist.train.step.reference_terms) and the precomputed cache
(mpo_dist.engine.reference_cache), so the loss cannot tell them apart. It lives in the engine layer, which owns the
reference, so that train imports engine and never the reverse.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mpo_dist.losses.base import SequenceLogps


@dataclass
class ReferenceTerms:
    """The reference's terms for the P pairs of a micro-batch, in batch order; None where the loss reads no such term."""

    reference: SequenceLogps | None = None  # the training-language pair (DPO family, MPO gap="dpo")
    anchor_reference: SequenceLogps | None = None  # the dominant-language pair (MPO)
    anchor_reference_hidden: torch.Tensor | None = None  # [P, 2, H] pooled dominant chosen / rejected (MPO L2)
