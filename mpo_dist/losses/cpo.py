"""CPO (Xu et al., 2024): −log σ(β·(log π_θ(y_w) − log π_θ(y_l))) with response-token sums, plus an NLL term
on the chosen response (per-token mean) that keeps the policy close to the preferred data without a reference."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from mpo_dist.option import option

from .base import LossOutput, PreferenceInputs, PreferenceLoss, require, reward_metrics


@dataclass
class CPOOptions:
    beta: float = option(0.1, "β: scale of the reference-free reward β·log π, > 0")
    nll_weight: float = option(1.0, "weight of the chosen response's NLL (behaviour cloning), >= 0")

    def __post_init__(self) -> None:
        require(self.beta > 0, f"CPO beta must be > 0, got {self.beta}")
        require(self.nll_weight >= 0, f"CPO nll_weight must be >= 0, got {self.nll_weight}")


class CPOLoss(PreferenceLoss):
    def __init__(self, options: CPOOptions) -> None:
        self.options = options

    def compute(self, inputs: PreferenceInputs) -> LossOutput:
        chosen_reward = self.options.beta * inputs.policy.chosen_sum
        rejected_reward = self.options.beta * inputs.policy.rejected_sum
        preference = -F.logsigmoid(chosen_reward - rejected_reward)
        nll = -inputs.policy.chosen_mean()
        losses = preference + self.options.nll_weight * nll
        metrics = {"cpo/nll": nll.detach().mean(), "cpo/preference": preference.detach().mean(),
                   **reward_metrics(chosen_reward, rejected_reward)}
        return LossOutput(loss=losses.mean(), metrics=metrics)
