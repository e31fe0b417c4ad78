"""MPO: Multilingual reward gaP Optimization (Zhao et al., ACL 2025). Formulas: docs/methods/mpo.md.

L1 = mean_P (β·RG^t_θ − RG^d_ref)²   pulls the policy's target-language reward gap to the reference's
                                      dominant-language gap;
L2 = MSE(h̄^d_θ, h̄^d_ref)             keeps the dominant language's pooled final hidden states in place;
L  = L1 + α·L2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F

from mpo_dist.option import option

from .base import (LossOutput, PreferenceInputs, PreferenceLoss, SequenceLogps, as_loss_dtype, require,
                   reward_metrics)

GAP_TYPES = ("length_normalized", "dpo")
POOLING_TYPES = ("masked", "all_positions")


@dataclass
class MPOOptions:
    """MPO settings; defaults follow the paper / released code (β is 1.0 for Llama-3.1, 1.5 for Gemma-2 and
    Qwen2.5).

    gap: "length_normalized" (released default): RG = A(y_w) − A(y_l) of the policy itself, no reference.
         "dpo" (paper ablation): the target gap is built from log-ratios to the reference on the same
         target pair, RG^t_θ = [log π_θ(y_w) − log π_ref(y_w)] − [log π_θ(y_l) − log π_ref(y_l)]
         (per-token means if `length_normalize`, else sums); β is applied in L1 as in the default form, so
         β·RG^t_θ is the usual DPO implicit-reward margin. The dominant anchor RG^d_ref stays the
         reference's own gap A_ref(y_w^d) − A_ref(y_l^d) (a log-ratio of the reference to itself would be
         identically zero).
    length_normalize: A = per-token mean log-prob (True) or the sum (False, paper ablation). Applies to both
         the target gap and the anchor gap.
    pooling: how the model wrapper pools final hidden states for L2: "masked" averages non-padding tokens
         (mpo-dist default), "all_positions" includes right padding (the released code's quirk, for exact
         reproduction). The loss itself does not use it (it receives pooled vectors); it lives here because
         it is an MPO setting.
    alpha: weight of L2; 0 skips L2 and the hidden-state inputs are then not required.
    """

    beta: float = option(1.0, "β: scales the target language's reward gap in L1, > 0 (1.0 Llama-3.1, 1.5 Gemma-2/Qwen2.5)")
    alpha: float = option(1.0, "weight of L2 (dominant-language hidden states kept in place), >= 0; 0 skips L2")
    gap: Literal["length_normalized", "dpo"] = option("length_normalized", "target gap: the policy's own A(y_w) - A(y_l), or dpo: log-ratios to the reference")
    length_normalize: bool = option(True, "A = per-token mean log-prob (true) or the sum (false, paper ablation)")
    pooling: Literal["masked", "all_positions"] = option("masked", "L2's hidden-state mean: non-padding tokens, or all_positions (the release's quirk)")

    def __post_init__(self) -> None:
        require(self.beta > 0, f"MPO beta must be > 0, got {self.beta}")
        require(self.alpha >= 0, f"MPO alpha must be >= 0, got {self.alpha}")
        require(self.gap in GAP_TYPES, f"MPO gap must be one of {GAP_TYPES}, got {self.gap!r}")
        require(self.pooling in POOLING_TYPES, f"MPO pooling must be one of {POOLING_TYPES}, got {self.pooling!r}")


class MPOLoss(PreferenceLoss):
    needs_anchor = True

    def __init__(self, options: MPOOptions) -> None:
        self.options = options
        self.needs_reference = options.gap == "dpo"
        self.needs_anchor_hidden = options.alpha > 0
        self.pooling = options.pooling

    def _target_sequences(self, inputs: PreferenceInputs) -> SequenceLogps:
        """The per-response quantities whose difference is RG^t_θ: policy log-probs, or log-ratios for gap="dpo"."""
        if self.options.gap == "dpo":
            return inputs.policy.log_ratio(inputs.reference)
        return inputs.policy

    def compute(self, inputs: PreferenceInputs) -> LossOutput:
        beta, normalize = self.options.beta, self.options.length_normalize
        target_chosen, target_rejected = self._target_sequences(inputs).scores(normalize)
        target_gap = target_chosen - target_rejected
        anchor_chosen, anchor_rejected = inputs.anchor_reference.scores(normalize)
        anchor_gap = (anchor_chosen - anchor_rejected).detach()

        gap_error = beta * target_gap - anchor_gap
        l1 = gap_error.pow(2).mean()
        metrics = {"mpo/l1": l1.detach(), "mpo/target_gap": target_gap.detach().mean(),
                   "mpo/anchor_ref_gap": anchor_gap.mean(), "mpo/gap_distance": gap_error.detach().abs().mean(),
                   **reward_metrics(beta * target_chosen, beta * target_rejected)}
        loss = l1
        if self.options.alpha > 0:
            policy_hidden = as_loss_dtype(inputs.anchor_policy_hidden)
            reference_hidden = inputs.anchor_reference_hidden.detach().to(policy_hidden.dtype)
            l2 = F.mse_loss(policy_hidden, reference_hidden)
            metrics["mpo/l2"] = l2.detach()
            loss = l1 + self.options.alpha * l2
        return LossOutput(loss=loss, metrics=metrics)
