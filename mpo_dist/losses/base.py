"""Inputs, outputs and the common interface of every preference loss.

Losses are pure tensor code: they receive per-sequence log-prob sums (from the fused log-prob head) and,
for MPO, pooled hidden states, and never see a model, a tokenizer or DeepSpeed.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

import torch
from torch import Tensor

from mpo_dist.data.packing import SequenceTensors, sequence_sums


def as_loss_dtype(tensor: Tensor) -> Tensor:
    """Promote half-precision tensors to float32 (float64 stays float64): sums of thousands of log-probs
    lose too much precision in bf16. `.float()` is differentiable, so gradients still flow."""
    if not tensor.is_floating_point():
        return tensor.float()
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


@dataclass
class SequenceLogps:
    """Per-sequence sums of response-token log-probs and response token counts, shape [P] each
    (P = preference pairs in the micro-batch). Token counts may be integer; they are converted to the
    dtype of the sums. Half-precision sums are promoted to float32."""

    chosen_sum: Tensor
    rejected_sum: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor

    def __post_init__(self) -> None:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in fields.items():
            if not isinstance(value, Tensor) or value.dim() != 1:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"SequenceLogps.{name} must be a 1-D tensor of shape [P], got {got}")
        shapes = {name: tuple(value.shape) for name, value in fields.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"SequenceLogps fields must all have the same shape [P], got {shapes}")
        self.chosen_sum = as_loss_dtype(self.chosen_sum)
        self.rejected_sum = as_loss_dtype(self.rejected_sum)
        self.chosen_tokens = self.chosen_tokens.to(self.chosen_sum.dtype)
        self.rejected_tokens = self.rejected_tokens.to(self.rejected_sum.dtype)
        for name in ("chosen_tokens", "rejected_tokens"):
            if bool((getattr(self, name) <= 0).any()):
                raise ValueError(f"SequenceLogps.{name} must be > 0 for every sequence (a response with no "
                                 f"tokens has no log-likelihood), got {getattr(self, name).tolist()}")

    @property
    def num_pairs(self) -> int:
        return self.chosen_sum.shape[0]

    def chosen_mean(self) -> Tensor:
        """A(y_w): per-token mean log-prob of the chosen response."""
        return self.chosen_sum / self.chosen_tokens

    def rejected_mean(self) -> Tensor:
        """A(y_l): per-token mean log-prob of the rejected response."""
        return self.rejected_sum / self.rejected_tokens

    def scores(self, length_normalize: bool) -> tuple[Tensor, Tensor]:
        """(chosen, rejected) per-sequence scores: per-token means if `length_normalize`, else sums."""
        if length_normalize:
            return self.chosen_mean(), self.rejected_mean()
        return self.chosen_sum, self.rejected_sum

    def log_ratio(self, reference: SequenceLogps) -> SequenceLogps:
        """log π_θ − log π_ref on the same sequences (same token counts, checked: a mismatch means the
        reference was computed on different data). The reference is frozen, so its sums are detached."""
        if reference.num_pairs != self.num_pairs:
            raise ValueError(f"reference has {reference.num_pairs} pairs, policy has {self.num_pairs}")
        if not (torch.equal(self.chosen_tokens, reference.chosen_tokens)
                and torch.equal(self.rejected_tokens, reference.rejected_tokens)):
            raise ValueError("reference token counts differ from the policy's: the reference must be computed "
                             "on exactly the same sequences as the policy")
        return SequenceLogps(self.chosen_sum - reference.chosen_sum.detach(),
                             self.rejected_sum - reference.rejected_sum.detach(),
                             self.chosen_tokens, self.rejected_tokens)


def pair_logps(token_logprobs: Tensor, tokens: SequenceTensors, chosen: slice, rejected: slice) -> SequenceLogps:
    """The chosen and rejected sequences' sums and token counts, from per-token log-probs in either token layout."""
    sums, counts = sequence_sums(token_logprobs, tokens)
    return SequenceLogps(sums[chosen], sums[rejected], counts[chosen], counts[rejected])


@dataclass
class PreferenceInputs:
    """Everything a preference loss may need for one micro-batch; which fields are required depends on the
    loss (see `PreferenceLoss.needs_*`).

    policy: the training-language pair, WITH grad.
    reference: the frozen reference on the same sequences (DPO, IPO, MPO gap="dpo").
    anchor_reference: MPO: the reference on the DOMINANT-language pair (no grad).
    anchor_policy_hidden: MPO L2: [P, 2, H] pooled final hidden states of the dominant chosen / rejected
        sequences under the policy, with grad.
    anchor_reference_hidden: [P, 2, H] the same under the reference (no grad)."""

    policy: SequenceLogps
    reference: SequenceLogps | None = None
    anchor_reference: SequenceLogps | None = None
    anchor_policy_hidden: Tensor | None = None
    anchor_reference_hidden: Tensor | None = None

    def __post_init__(self) -> None:
        pairs = self.policy.num_pairs
        for name in ("reference", "anchor_reference"):
            other = getattr(self, name)
            if other is not None and other.num_pairs != pairs:
                raise ValueError(f"PreferenceInputs.{name} has {other.num_pairs} pairs, policy has {pairs}")
        for name in ("anchor_policy_hidden", "anchor_reference_hidden"):
            hidden = getattr(self, name)
            if hidden is not None and (hidden.dim() != 3 or hidden.shape[:2] != (pairs, 2)):
                raise ValueError(f"PreferenceInputs.{name} must have shape [P={pairs}, 2, H] "
                                 f"(dominant chosen, rejected), got {tuple(hidden.shape)}")
        if (self.anchor_policy_hidden is not None and self.anchor_reference_hidden is not None
                and self.anchor_policy_hidden.shape != self.anchor_reference_hidden.shape):
            raise ValueError(f"anchor_policy_hidden {tuple(self.anchor_policy_hidden.shape)} and "
                             f"anchor_reference_hidden {tuple(self.anchor_reference_hidden.shape)} differ in shape")


@dataclass
class LossOutput:
    loss: Tensor                  # scalar, with grad
    metrics: dict[str, Tensor]    # detached scalars for logging, e.g. "mpo/l1", "rewards/margin"


class PreferenceLoss(ABC):
    """A preference loss. Subclasses set the `needs_*` flags (the trainer reads them to decide which forward
    passes to run) and implement `compute`; `__call__` checks that required inputs are present."""

    needs_reference: bool = False        # needs `reference` (reference log-probs on the training pair)
    needs_anchor: bool = False           # needs `anchor_reference` (reference on the dominant-language pair)
    needs_anchor_hidden: bool = False    # needs `anchor_policy_hidden` and `anchor_reference_hidden`
    pooling: str = "masked"              # how those hidden states are averaged over tokens (see MPOOptions.pooling)

    def __call__(self, inputs: PreferenceInputs) -> LossOutput:
        required = {"reference": self.needs_reference, "anchor_reference": self.needs_anchor,
                    "anchor_policy_hidden": self.needs_anchor_hidden,
                    "anchor_reference_hidden": self.needs_anchor_hidden}
        missing = [name for name, needed in required.items() if needed and getattr(inputs, name) is None]
        if missing:
            raise ValueError(f"{type(self).__name__} needs PreferenceInputs fields {missing}, which are None")
        return self.compute(inputs)

    @abstractmethod
    def compute(self, inputs: PreferenceInputs) -> LossOutput:
        """The loss averaged over the P pairs, plus detached metrics."""


def reward_metrics(chosen: Tensor, rejected: Tensor) -> dict[str, Tensor]:
    """Standard implicit-reward logging: means over pairs of the chosen/rejected rewards, their margin, and
    the fraction of pairs where the chosen response wins."""
    chosen, rejected = chosen.detach(), rejected.detach()
    return {"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "rewards/margin": (chosen - rejected).mean(),
            "rewards/accuracy": (chosen > rejected).to(chosen.dtype).mean()}


OptionsT = TypeVar("OptionsT")


def options_from_mapping(options_type: type[OptionsT], values: Mapping[str, Any]) -> OptionsT:
    """Build an options dataclass from a plain mapping (YAML/CLI), naming any unknown key."""
    valid = [f.name for f in dataclasses.fields(options_type)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {options_type.__name__}; valid options: {valid}")
    return options_type(**values)


def require(condition: bool, message: str) -> None:
    """Raise ValueError(message) unless condition: keeps options validation one line per rule."""
    if not condition:
        raise ValueError(message)
