"""Fused label log-prob head and per-sequence reductions.

`label_logprobs` turns final hidden states and the LM head into per-token log p(label) without ever holding the
[N, V] logits: a Triton kernel on CUDA (or the CPU under TRITON_INTERPRET=1), a chunked torch twin elsewhere.
Triton is imported only when the Triton backend is used, so the torch path works without it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mpo_dist.kernels.logprob_torch import torch_label_logprobs
from mpo_dist.kernels.segment import segment_sums

__all__ = ["label_logprobs", "segment_sums"]

_FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_BACKENDS = ("auto", "triton", "torch")


def _validate(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None, softcap: float | None,
              backend: str, chunk_size: int) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [N, H] and weight [V, H] (flatten leading dims first); "
                         f"got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if hidden.dtype not in _FLOAT_DTYPES or weight.dtype != hidden.dtype:
        raise TypeError(f"hidden and weight must share one dtype out of bf16/fp16/fp32; "
                        f"got {hidden.dtype} and {weight.dtype}")
    if labels.shape != hidden.shape[:1] or labels.dtype != torch.int64:
        raise ValueError(f"labels must be int64 of shape [{hidden.shape[0]}], got {labels.dtype} {tuple(labels.shape)}")
    if bias is not None and (bias.shape != weight.shape[:1] or bias.dtype != hidden.dtype):
        raise ValueError(f"bias must be [{weight.shape[0]}] of dtype {hidden.dtype}, "
                         f"got {bias.dtype} {tuple(bias.shape)}")
    devices = {t.device for t in (hidden, weight, labels, bias) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"hidden, weight, labels and bias must be on one device, got {sorted(map(str, devices))}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be a positive float or None, got {softcap}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _check_labels(labels: Tensor, vocab: int, ignore_index: int) -> None:
    """An out-of-range label would silently read a wrong logit in the kernels; this costs one device sync."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        raise ValueError(f"labels must be in [0, {vocab}) or equal ignore_index={ignore_index}; "
                         f"found {labels[bad][:5].tolist()}")


def label_logprobs(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None = None,
                   softcap: float | None = None, ignore_index: int = -100,
                   backend: str = "auto", chunk_size: int = 1024) -> Tensor:
    """float32 [N]: log_softmax(z)[label], z = hidden @ weight.T (+ bias), then z = softcap * tanh(z / softcap).

    hidden [N, H], weight [V, H] (bf16/fp16/fp32, one dtype), labels [N] int64, bias [V] or None. Rows with
    label == ignore_index give 0.0 and no gradient. Differentiable w.r.t. hidden, weight and bias.
    backend: "triton" (CUDA, or CPU under TRITON_INTERPRET=1), "torch" (chunked plain torch, `chunk_size` rows at a
    time), "auto" = triton if hidden.is_cuda else torch.
    """
    _validate(hidden, weight, labels, bias, softcap, backend, chunk_size)
    _check_labels(labels, weight.shape[0], ignore_index)
    hidden, weight = hidden.contiguous(), weight.contiguous()
    if backend == "auto":
        backend = "triton" if hidden.is_cuda else "torch"
    if backend == "torch" or hidden.shape[0] == 0:  # an empty batch needs no kernel launch
        return torch_label_logprobs(hidden, weight, labels, bias, softcap, ignore_index, chunk_size)
    from mpo_dist.kernels.logprob_triton import triton_label_logprobs

    return triton_label_logprobs(hidden, weight, labels.contiguous(), bias.contiguous() if bias is not None else None,
                                 softcap, ignore_index)
