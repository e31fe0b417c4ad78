"""ORPO (Hong et al., 2024): NLL(y_w) − λ·log σ(log-odds(y_w) − log-odds(y_l)); no reference.

log-odds(y) = log(p / (1 − p)) with log p = A(y), the per-token mean log-prob, i.e. A − log(1 − e^A).
The rewards/* metrics report A itself (ORPO has no implicit reward; A is what the odds are built from).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mpo_dist.option import option

from .base import LossOutput, PreferenceInputs, PreferenceLoss, require, reward_metrics

_LOG_HALF = -math.log(2.0)


def log1m_exp(x: Tensor) -> Tensor:
    """log(1 − e^x) for x < 0, accurate everywhere (Mächler 2012): log(−expm1(x)) near 0, log1p(−e^x) far
    from it. Each branch sees inputs clamped to its own range so the branch torch.where discards cannot
    produce inf/nan gradients. x is clamped to ≤ −eps(dtype): p = 1 exactly (A = 0) gives a large finite
    log-odds and a bounded gradient instead of inf."""
    x = x.clamp(max=-torch.finfo(x.dtype).eps)
    near_zero = torch.log(-torch.expm1(x.clamp(min=_LOG_HALF)))
    far = torch.log1p(-torch.exp(x.clamp(max=_LOG_HALF)))
    return torch.where(x > _LOG_HALF, near_zero, far)


def log_odds(mean_logp: Tensor) -> Tensor:
    return mean_logp - log1m_exp(mean_logp)


@dataclass
class ORPOOptions:
    lam: float = option(0.1, "λ: weight of the odds-ratio term added to the chosen response's NLL, >= 0")

    def __post_init__(self) -> None:
        require(self.lam >= 0, f"ORPO lam must be >= 0, got {self.lam}")


class ORPOLoss(PreferenceLoss):
    def __init__(self, options: ORPOOptions) -> None:
        self.options = options

    def compute(self, inputs: PreferenceInputs) -> LossOutput:
        chosen_mean, rejected_mean = inputs.policy.chosen_mean(), inputs.policy.rejected_mean()
        log_odds_ratio = log_odds(chosen_mean) - log_odds(rejected_mean)
        odds_term = -F.logsigmoid(log_odds_ratio)
        nll = -chosen_mean
        losses = nll + self.options.lam * odds_term
        metrics = {"orpo/nll": nll.detach().mean(), "orpo/log_odds_ratio": log_odds_ratio.detach().mean(),
                   **reward_metrics(chosen_mean, rejected_mean)}
        return LossOutput(loss=losses.mean(), metrics=metrics)
