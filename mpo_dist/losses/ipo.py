"""IPO (Azar et al., 2023): ((log-ratio_w − log-ratio_l) − 1/(2β))², log-ratios = log π_θ − log π_ref
averaged per response token. A squared loss towards a fixed margin, so it does not push the margin to infinity."""
from __future__ import annotations

from dataclasses import dataclass

from mpo_dist.option import option

from .base import LossOutput, PreferenceInputs, PreferenceLoss, require, reward_metrics


@dataclass
class IPOOptions:
    beta: float = option(0.1, "τ of IPO: the margin target is 1/(2τ), > 0")

    def __post_init__(self) -> None:
        require(self.beta > 0, f"IPO beta must be > 0, got {self.beta}")


class IPOLoss(PreferenceLoss):
    needs_reference = True

    def __init__(self, options: IPOOptions) -> None:
        self.options = options

    def compute(self, inputs: PreferenceInputs) -> LossOutput:
        beta = self.options.beta
        ratio = inputs.policy.log_ratio(inputs.reference)
        chosen_ratio, rejected_ratio = ratio.chosen_mean(), ratio.rejected_mean()
        losses = (chosen_ratio - rejected_ratio - 1 / (2 * beta)).pow(2)
        return LossOutput(loss=losses.mean(), metrics=reward_metrics(beta * chosen_ratio, beta * rejected_ratio))
