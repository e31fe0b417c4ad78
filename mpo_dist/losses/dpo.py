"""DPO (Rafailov et al., 2023): −log σ(r_w − r_l), r = β·(log π_θ − log π_ref) summed over response tokens.

With label smoothing ε > 0 it is the conservative-DPO form, which assumes a fraction ε of the preference
labels are flipped: −(1−ε)·log σ(z) − ε·log σ(−z).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from mpo_dist.option import option

from .base import LossOutput, PreferenceInputs, PreferenceLoss, require, reward_metrics


@dataclass
class DPOOptions:
    beta: float = option(0.1, "β: scale of the implicit reward β·log(π/π_ref) (summed over tokens), > 0")
    label_smoothing: float = option(0.0, "conservative DPO: assumed fraction of flipped preference labels, in [0, 0.5)")

    def __post_init__(self) -> None:
        require(self.beta > 0, f"DPO beta must be > 0, got {self.beta}")
        require(0 <= self.label_smoothing < 0.5, f"DPO label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


class DPOLoss(PreferenceLoss):
    needs_reference = True

    def __init__(self, options: DPOOptions) -> None:
        self.options = options

    def compute(self, inputs: PreferenceInputs) -> LossOutput:
        ratio = inputs.policy.log_ratio(inputs.reference)
        chosen_reward = self.options.beta * ratio.chosen_sum
        rejected_reward = self.options.beta * ratio.rejected_sum
        margin = chosen_reward - rejected_reward
        smoothing = self.options.label_smoothing
        losses = -(1 - smoothing) * F.logsigmoid(margin) - smoothing * F.logsigmoid(-margin)
        return LossOutput(loss=losses.mean(), metrics=reward_metrics(chosen_reward, rejected_reward))
