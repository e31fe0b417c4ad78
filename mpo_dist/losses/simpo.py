"""SimPO (Meng et al., 2024): −log σ(β·(A(y_w) − A(y_l)) − γ), A = per-token mean log-prob; no reference.
γ is a target reward margin."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from mpo_dist.option import option

from .base import LossOutput, PreferenceInputs, PreferenceLoss, require, reward_metrics


@dataclass
class SimPOOptions:
    beta: float = option(2.0, "β: scale of the length-normalised reward, > 0")
    gamma: float = option(0.5, "γ: target margin between the β-scaled chosen and rejected rewards")

    def __post_init__(self) -> None:
        require(self.beta > 0, f"SimPO beta must be > 0, got {self.beta}")


class SimPOLoss(PreferenceLoss):
    def __init__(self, options: SimPOOptions) -> None:
        self.options = options

    def compute(self, inputs: PreferenceInputs) -> LossOutput:
        chosen_reward = self.options.beta * inputs.policy.chosen_mean()
        rejected_reward = self.options.beta * inputs.policy.rejected_mean()
        losses = -F.logsigmoid(chosen_reward - rejected_reward - self.options.gamma)
        return LossOutput(loss=losses.mean(), metrics=reward_metrics(chosen_reward, rejected_reward))
