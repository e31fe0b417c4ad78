"""Chunked plain-torch label log-probs: the CPU path and the readable twin of the Triton kernel.

Rows are processed `chunk_size` at a time; each chunk's logits exist only as a float32 [chunk, V] temporary, so
memory is O(chunk_size * V) instead of O(N * V). Forward keeps the per-row logsumexp; backward recomputes each
chunk's logits instead of storing them (the same trade the Triton kernel makes).
Gradient of log_softmax(z)[y] w.r.t. z is onehot(y) - softmax(z); through the soft-cap z = c*tanh(u/c) it is
multiplied by 1 - tanh(u/c)^2. The grad-logit matrix is cast to the input dtype before the two matmuls
(as tensor-core kernels do) and accumulated in float32.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _matmul_f32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b with a float32 result and float32 accumulation, without upcasting a large operand on CUDA."""
    if a.dtype == torch.float32:
        return a @ b
    if a.is_cuda and hasattr(torch.ops.aten.mm, "dtype"):
        return torch.mm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()


def _chunk_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None,
                  softcap: float | None) -> tuple[Tensor, Tensor | None]:
    """float32 logits of one row chunk, plus tanh(u/c) when soft-capped (needed for the backward slope)."""
    logits = _matmul_f32(hidden, weight.t())
    if bias is not None:
        logits = logits + bias.float()
    if softcap is None:
        return logits, None
    tanh = torch.tanh(logits / softcap)
    return softcap * tanh, tanh


class ChunkedLabelLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
                softcap: float | None, ignore_index: int, chunk_size: int) -> Tensor:
        n = hidden.shape[0]
        live = labels != ignore_index
        safe_labels = torch.where(live, labels, 0)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        label_logit = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_size):
            rows = slice(start, start + chunk_size)
            logits, _ = _chunk_logits(hidden[rows], weight, bias, softcap)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            label_logit[rows] = logits.gather(1, safe_labels[rows, None]).squeeze(1)
        ctx.save_for_backward(hidden, weight, bias, safe_labels, live, lse)
        ctx.softcap, ctx.chunk_size = softcap, chunk_size
        return torch.where(live, label_logit - lse, 0.0)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, bias, safe_labels, live, lse = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        row_scale = torch.where(live, grad_out.float(), 0.0)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_bias else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            logits, tanh = _chunk_logits(hidden[rows], weight, bias, ctx.softcap)
            # -softmax in the logits' own buffer: no second [chunk, V] temporary (each is fresh memory, page by page,
            # on a CPU rank with a fixed mmap threshold)
            grad_logits = logits.sub_(lse[rows, None]).exp_().neg_()
            grad_logits.scatter_add_(1, safe_labels[rows, None], torch.ones_like(lse[rows, None]))
            grad_logits.mul_(row_scale[rows, None])
            if tanh is not None:
                grad_logits.mul_(1.0 - tanh * tanh)
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = _matmul_f32(grad_logits, weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += _matmul_f32(grad_logits.t(), hidden[rows])
        grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
        grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def torch_label_logprobs(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None,
                         softcap: float | None, ignore_index: int, chunk_size: int) -> Tensor:
    """Inputs already validated by `mpo_dist.kernels.label_logprobs`."""
    return ChunkedLabelLogprobs.apply(hidden, weight, bias, labels, softcap, ignore_index, chunk_size)
