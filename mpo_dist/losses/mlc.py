"""MLC: Multi-Lingual Consistency auxiliary loss (Bu et al., ICLR 2026). Formulas: docs/methods/mlc.md.

The representations of one prompt in L languages are projected, normalised, stacked into an L × D matrix
and pushed towards rank 1: a cross-entropy over its (top-normalised) singular values with the top one as
the target shrinks the energy outside the top singular direction.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpo_dist.option import option

from .base import LossOutput, require


@dataclass
class MLCOptions:
    """MLC settings; defaults from the released configs except `languages` (the MPO language set plus
    English; the MLC release used en, zh, ru, ja, ar, bn, sw, ur, ps, ku).

    weight: λ in L = L_base + λ·L_MLC.   every: apply on every `every`-th optimiser step (see mlc_applies).
    tau: softmax temperature.   layer: hidden-state layer to read (HF `hidden_states` index, −1 = final).
    dim: projection width.   eps: the normalisation epsilon of the paper."""

    weight: float = option(0.8, "λ in L = L_base + λ·L_MLC, >= 0")
    every: int = option(2, "apply MLC on every N-th optimiser step, >= 1")
    tau: float = option(0.2, "softmax temperature, > 0")
    layer: int = option(-1, "hidden-state layer read (HF hidden_states index: 0 embeddings, -1 the final)")
    dim: int = option(512, "width of the trained projection, >= 1")
    languages: list[str] = option(["en", "zh", "ja", "ko", "ar", "bn", "sw"], "languages of each prompt made collinear, at least 2")
    eps: float = option(1e-12, "the paper's normalisation epsilon, >= 0")

    def __post_init__(self) -> None:
        require(self.weight >= 0, f"MLC weight must be >= 0, got {self.weight}")
        require(isinstance(self.every, int) and self.every >= 1, f"MLC every must be an int >= 1, got {self.every}")
        require(self.tau > 0, f"MLC tau must be > 0, got {self.tau}")
        require(self.dim >= 1, f"MLC dim must be >= 1, got {self.dim}")
        require(self.eps >= 0, f"MLC eps must be >= 0, got {self.eps}")
        require(len(self.languages) >= 2, f"MLC needs at least 2 languages, got {self.languages}")
        require(len(set(self.languages)) == len(self.languages), f"MLC languages repeat: {self.languages}")


class MLCProjection(nn.Module):
    """z = W h + c, the trainable projection to `dim` dimensions. It is a submodule of the policy so ZeRO-3
    shards, trains and checkpoints it with the model (it is dropped at export: unused at inference)."""

    def __init__(self, hidden_size: int, dim: int = 512) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, dim, bias=True)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden)


def mlc_applies(optimizer_step: int, every: int) -> bool:
    """Whether MLC is added on this optimiser step. `optimizer_step` is the 0-based index of the step being
    accumulated (= optimiser steps completed so far); MLC applies on steps 0, every, 2·every, … and on all
    micro-batches of such a step, so gradient accumulation never mixes steps with and without it."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if optimizer_step < 0:
        raise ValueError(f"optimizer_step must be >= 0, got {optimizer_step}")
    return optimizer_step % every == 0


def _singular_values(matrices: Tensor) -> Tensor:
    """Singular values of a batch of matrices, [B, L, D] -> [B, min(L, D)], descending, with a gradient
    that stays finite when singular values coincide.

    Why: an SVD's backward is unstable at (near-)equal singular values only through the singular-VECTOR
    gradients, which carry 1/(σ_i² − σ_j²) factors. The singular values alone need none: to first order
    dσ_i = u_iᵀ dZ v_i. So σ_i is computed as the bilinear form u_iᵀ Z v_i with u_i, v_i taken from an
    SVD of the detached matrix: the value equals σ_i up to rounding, the gradient is exactly u_i v_iᵀ
    (‖u_i v_iᵀ‖ = 1, bounded whatever the spacing), which is the true gradient for distinct values and a
    valid choice within the degenerate subspace when values coincide."""
    with torch.no_grad():
        left, _, right_h = torch.linalg.svd(matrices.detach(), full_matrices=False)
    return torch.einsum("blk,bld,bkd->bk", left, matrices, right_h)


def mlc_loss(z: Tensor, tau: float, eps: float = 1e-12) -> LossOutput:
    """L_MLC for projected prompt vectors z [B, L, D] (B prompts, L languages), computed in float32 (float64
    inputs stay float64) with autocast off:
    ẑ = z/(‖z‖+eps) (no centring); σ = singular values of each L × D ẑ stack; s = σ/(stopgrad(σ_1)+eps);
    loss = mean_b CrossEntropy(s/τ, target 0). Floor log(1+(r−1)e^{−1/τ}) for identical rows, log r for
    orthogonal rows, r = min(L, D)."""
    if z.dim() != 3:
        raise ValueError(f"mlc_loss expects z of shape [B, L, D] (prompts, languages, dim), got {tuple(z.shape)}")
    if z.shape[0] < 1 or z.shape[1] < 2:
        raise ValueError(f"mlc_loss needs B >= 1 prompts and L >= 2 languages, got z of shape {tuple(z.shape)}")
    if tau <= 0:
        raise ValueError(f"mlc_loss tau must be > 0, got {tau}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        unit = z / (torch.linalg.vector_norm(z, dim=-1, keepdim=True) + eps)
        sigma = _singular_values(unit)
        scaled = sigma / (sigma[:, :1].detach() + eps)
        target = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        loss = F.cross_entropy(scaled / tau, target)

        num_languages = z.shape[1]
        cosines = unit.detach() @ unit.detach().transpose(1, 2)
        off_diagonal = ~torch.eye(num_languages, dtype=torch.bool, device=z.device)
        metrics = {"mlc/loss": loss.detach(),
                   "mlc/top_energy": (sigma[:, 0].detach().pow(2) / num_languages).mean(),
                   "mlc/mean_cosine": cosines[:, off_diagonal].mean()}
    return LossOutput(loss=loss, metrics=metrics)
