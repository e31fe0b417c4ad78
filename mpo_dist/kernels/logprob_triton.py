"""Triton label log-probs: log_softmax(hidden @ weight.T (+bias), soft-capped)[label] without an [N, V] logits tensor.

Design (H100 target: N=16384, H=4096, V=128256, bf16; deterministic; <= 0.25 GiB of temporaries):

Forward, one kernel (`_lse_partial_kernel`). A program owns BLOCK_M rows and a contiguous range ("split") of vocab
tiles; per vocab tile it computes the [BLOCK_M, BLOCK_N] logit tile with a K-loop over the hidden dim (tl.dot in the
input dtype, fp32 accumulation), applies bias and soft-cap, and folds the tile into a running max / sum-exp; the label
logit is picked from whichever tile holds it. Splitting the vocab gives enough programs when N is small; the few
partial (max, sum-exp, label logit) vectors of shape [splits, N] are merged by torch in a fixed order. Program ids run
split-fastest, so the programs resident at one time share a few weight tiles and a bounded set of hidden row
blocks in L2. Cost 2*N*H*V flops; only lse [N] (fp32) is saved for backward.

Backward. The gradient needs two reductions over different axes: grad_hidden = G @ W sums over the vocab and
grad_weight = G^T @ hidden sums over the rows, with G = g * (onehot - softmax) * softcap_slope the grad-logit matrix.
Doing both from one recomputed tile needs float atomics (non-deterministic order) or an fp32 [V, H] accumulator
(2 GiB). Recomputing twice costs 10*N*H*V flops instead of 8. So G is materialised one vocab chunk at a time:
  1. `_grad_logits_kernel` recomputes the logits of the chunk (a GEMM with a fused softmax-gradient epilogue) and
     stores G_chunk [N, chunk] in the input dtype, plus per-row-block partial bias sums (fp32, summed by torch).
  2. grad_weight[chunk] = G_chunk^T @ hidden, one cuBLAS GEMM whose reduction over all N rows is complete, so it is
     written once, directly into its slice of the bf16 output; no fp32 [V, H] buffer.
  3. `_grad_hidden_kernel`: grad_hidden += G_chunk @ W[chunk], a GEMM whose epilogue adds the running sum. For half
     dtypes the running sum is a (hi, lo) pair of half tensors: hi is the output itself, lo = x - hi holds the
     residual, so the carried sum has ~16 significant bits across chunks while costing N*H*2 bytes instead of an
     fp32 buffer's N*H*4 (this is what keeps N=16384 under 0.25 GiB). fp32 inputs accumulate in the output.
Every reduction has a fixed order (no atomics; tile configs are fixed, not autotuned, because a timing-dependent
config choice would change the summation order between processes), so results are bitwise reproducible on the same
GPU and software. Temporaries are held to 0.25 GiB (mpo_dist/kernels/backward_budget.py): lo takes N*H*2 bytes,
the small fp32 vectors a reserve, and G_chunk the rest (at least 64 MiB). Wider chunks mean fewer passes of step 3,
each of which reads and writes hi and lo (8*N*H bytes): at N=16384, H=4096, bf16 the chunk is 3840 columns (34
passes, 18 GB of epilogue traffic; a fixed 64 MiB G gave 63 passes and 34 GB), temporaries = 120 MiB (G) + 128 MiB
(lo) + ~1 MiB. Total work 8*N*H*V flops, all in large GEMM-shaped tiles.

Why 8*N*H*V and not the 6*N*H*V of Liger-style fused cross-entropy: those compute the gradients inside the forward
because a mean/sum loss fixes d loss / d logp before the forward runs. Here the upstream gradient is per token and
comes from the reward-gap loss over whole sequences, so it exists only after every log-prob does; without storing
[N, V] the backward must recompute the logits once (2*N*H*V) before its two gradient GEMMs.

Measured on an H100 (docs/benchmarks.md): 116.5 ms for the target shape (8*N*H*V = 6.9e13 flops, ~590 TFLOP/s).
With the earlier 128x128 tiles the profile read: forward 30 ms, grad-logits 29 ms, cuBLAS grad_weight 21 ms (800
TFLOP/s), grad-hidden 45 ms; the grad-hidden kernel's carried-sum traffic is what wider chunks reduce. Getting the
Triton GEMMs to cuBLAS's rate (TMA loads, warp specialisation) is what would be left to gain.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from mpo_dist.kernels.backward_budget import grad_logits_budget_bytes


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes of one kernel: rows x columns x reduction, plus launch options."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8


@dataclass(frozen=True)
class KernelConfigs:
    """One tile config per kernel, chosen once per (device, dtype); `benchmarks/logprob_kernel.py --sweep` passes
    others explicitly to find faster ones for a GPU (any valid config gives a correct result)."""

    forward: TileConfig  # rows x vocab x hidden
    grad_logits: TileConfig  # rows x vocab x hidden
    grad_hidden: TileConfig  # rows x hidden x vocab
    forward_programs_per_sm: int = 4  # vocab splits are chosen so the forward grid has this many programs per SM


def kernel_configs(device: torch.device, dtype: torch.dtype) -> KernelConfigs:
    """Fixed (deterministic) tile choices: Hopper-sized on CUDA, tiny ones for the CPU interpreter.

    Half dtypes: 128x256x64 tiles, 8 warps, 3 stages, one forward program per SM: the fastest combination of the
    `--sweep` on an H100 (N=16384, H=4096, V=128256, bf16: 118.5 ms against 132.0 ms for 128x128x64 w8 s4 with 4
    programs per SM; docs/benchmarks.md). An offline sm_90 compile showed register spills for this tile in the
    soft-cap and bias epilogues: those variants may run slower (not measured); results do not depend on the tile.
    fp32 uses ieee (non tensor-core) dots; its tiles are untimed."""
    if device.type != "cuda":
        tile, programs_per_sm = TileConfig(16, 32, 16, 1, 1, group_m=2), 4  # the interpreter ignores programs per SM
    elif dtype == torch.float32:
        tile, programs_per_sm = TileConfig(64, 128, 32, 8, 2), 4
    else:
        tile, programs_per_sm = TileConfig(128, 256, 64, 8, 3), 1
    return KernelConfigs(forward=tile, grad_logits=tile, grad_hidden=tile, forward_programs_per_sm=programs_per_sm)


def _dot_options(device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    """Constexprs for `_dot`. fp32 inputs get true fp32 dots (torch's default, no TF32; the precision flag is ignored
    for half inputs). The CPU interpreter cannot dot bf16 (it multiplies the raw bit patterns, triton issue #11584),
    so there the operands are upcast first: bf16 products are exact in fp32, so results match an fp32-accumulating
    tensor-core dot up to summation order."""
    upcast = device.type != "cuda" and dtype == torch.bfloat16
    return {"INPUT_PRECISION": "ieee" if dtype == torch.float32 or upcast else "tf32", "DOT_IN_FP32": upcast}


@triton.jit
def _tanh(x):
    """tanh via exp(-2|x|): no overflow for large |x|."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _dot(a, b, acc, INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    if DOT_IN_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def _grouped_tile(pid, num_row_blocks, num_col_blocks, GROUP: tl.constexpr):
    """Map a linear program id to (row block, col block) so GROUP row blocks walk the columns together (L2 reuse)."""
    width = GROUP * num_col_blocks
    first_row = (pid // width) * GROUP
    group_rows = tl.minimum(num_row_blocks - first_row, GROUP)
    return first_row + (pid % width) % group_rows, (pid % width) // group_rows


@triton.jit
def _logits_tile(h_ptr, w_ptr, b_ptr, row_start, col_start, num_rows, num_cols, H, stride_hn, stride_wv, softcap,
                 HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """fp32 [BLOCK_M, BLOCK_N] tile of softcap(hidden @ weight.T (+bias)) at (row_start, col_start); rows >= num_rows
    and cols >= num_cols read zeros. Block bases are 64-bit scalars and in-tile offsets 32-bit, which keeps large
    tensors addressable without 64-bit per-element offsets (they cost registers and cause spills)."""
    local_rows = tl.arange(0, BLOCK_M)
    local_cols = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    row_mask = local_rows < num_rows - row_start
    col_mask = local_cols < num_cols - col_start
    h_ptrs = h_ptr + row_start.to(tl.int64) * stride_hn + (local_rows[:, None] * stride_hn + offs_k[None, :])
    w_ptrs = w_ptr + col_start.to(tl.int64) * stride_wv + (local_cols[None, :] * stride_wv + offs_k[:, None])
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(H, BLOCK_K)):
        k_mask = offs_k < H - k * BLOCK_K
        h_tile = tl.load(h_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w_tile = tl.load(w_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        acc = _dot(h_tile, w_tile, acc, INPUT_PRECISION, DOT_IN_FP32)
        h_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(b_ptr + col_start + local_cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_SOFTCAP:
        acc = softcap * _tanh(acc / softcap)
    return acc


@triton.jit
def _lse_partial_kernel(h_ptr, w_ptr, b_ptr, labels_ptr, max_ptr, sumexp_ptr, label_logit_ptr,
                        N, V, H, stride_hn, stride_wv, tiles_per_split, num_splits, softcap,
                        HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                        DOT_IN_FP32: tl.constexpr):
    """Per (row block, vocab split): running max, sum of exp(z - max) and the label logit (0 if not in the split)."""
    pid = tl.program_id(0)
    split = pid % num_splits
    row_start = (pid // num_splits) * BLOCK_M
    rows = row_start + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    labels = tl.load(labels_ptr + rows, mask=row_mask, other=-1)
    running_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    sumexp = tl.zeros((BLOCK_M,), dtype=tl.float32)
    label_logit = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for t in range(0, tiles_per_split):
        col_start = (split * tiles_per_split + t) * BLOCK_N
        cols = col_start + tl.arange(0, BLOCK_N)
        z = _logits_tile(h_ptr, w_ptr, b_ptr, row_start, col_start, N, V, H, stride_hn, stride_wv, softcap,
                         HAS_BIAS, HAS_SOFTCAP, BLOCK_M, BLOCK_N, BLOCK_K, INPUT_PRECISION, DOT_IN_FP32)
        z = tl.where((cols < V)[None, :], z, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(z, axis=1))
        sumexp = sumexp * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        running_max = new_max
        label_logit += tl.sum(tl.where(cols[None, :] == labels[:, None], z, 0.0), axis=1)
    out = split * N + rows
    tl.store(max_ptr + out, running_max, mask=row_mask)
    tl.store(sumexp_ptr + out, sumexp, mask=row_mask)
    tl.store(label_logit_ptr + out, label_logit, mask=row_mask)


@triton.jit
def _grad_logits_kernel(h_ptr, w_ptr, b_ptr, labels_ptr, lse_ptr, grad_out_ptr, grad_logits_ptr, bias_partial_ptr,
                        N, H, vocab_start, chunk_len, stride_hn, stride_wv, stride_gl, stride_bp, softcap,
                        ignore_index, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                        WRITE_BIAS_PARTIAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                        DOT_IN_FP32: tl.constexpr):
    """G[rows, chunk cols] = g * (onehot(label) - exp(z - lse)) * softcap slope; 0 on ignored rows.
    w_ptr and b_ptr point at the chunk's first vocab row; vocab_start is only needed to recognise labels."""
    row_block, col_block = _grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_M), tl.cdiv(chunk_len, BLOCK_N), GROUP_M)
    row_start = row_block * BLOCK_M
    local_col_start = col_block * BLOCK_N
    rows = row_start + tl.arange(0, BLOCK_M)
    local_cols = local_col_start + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    col_mask = local_cols < chunk_len
    z = _logits_tile(h_ptr, w_ptr, b_ptr, row_start, local_col_start, N, chunk_len, H, stride_hn, stride_wv, softcap,
                     HAS_BIAS, HAS_SOFTCAP, BLOCK_M, BLOCK_N, BLOCK_K, INPUT_PRECISION, DOT_IN_FP32)
    labels = tl.load(labels_ptr + rows, mask=row_mask, other=ignore_index)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    row_scale = tl.load(grad_out_ptr + rows, mask=row_mask & (labels != ignore_index), other=0.0)
    grad = tl.where((vocab_start + local_cols)[None, :] == labels[:, None], 1.0, 0.0) - tl.exp(z - lse[:, None])
    if HAS_SOFTCAP:
        tanh = z / softcap  # z = softcap * tanh(raw / softcap); d z / d raw = 1 - tanh^2
        grad = grad * (1.0 - tanh * tanh)
    grad = tl.where(col_mask[None, :], grad * row_scale[:, None], 0.0)
    out_ptrs = (grad_logits_ptr + row_start.to(tl.int64) * stride_gl
                + (tl.arange(0, BLOCK_M)[:, None] * stride_gl + local_cols[None, :]))
    tl.store(out_ptrs, grad.to(grad_logits_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])
    if WRITE_BIAS_PARTIAL:
        tl.store(bias_partial_ptr + row_block * stride_bp + local_cols, tl.sum(grad, axis=0), mask=col_mask)


@triton.jit
def _grad_hidden_kernel(g_ptr, w_ptr, hi_ptr, lo_ptr, N, H, chunk_len, stride_gl, stride_wv, stride_out,
                        FIRST_CHUNK: tl.constexpr, HAS_LO: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                        DOT_IN_FP32: tl.constexpr):
    """(hi + lo)[rows, hcols] += G_chunk[rows] @ weight[chunk, hcols], carried as hi = half(x), lo = half(x - hi).
    w_ptr points at the chunk's first vocab row."""
    row_block, col_block = _grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_M), tl.cdiv(H, BLOCK_N), GROUP_M)
    row_start = row_block * BLOCK_M
    local_rows = tl.arange(0, BLOCK_M)
    hcols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    row_mask = local_rows < N - row_start
    col_mask = hcols < H
    g_ptrs = g_ptr + row_start.to(tl.int64) * stride_gl + (local_rows[:, None] * stride_gl + offs_k[None, :])
    w_ptrs = w_ptr + (offs_k[:, None] * stride_wv + hcols[None, :])
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(chunk_len, BLOCK_K)):
        k_mask = offs_k < chunk_len - k * BLOCK_K
        g_tile = tl.load(g_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w_tile = tl.load(w_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        acc = _dot(g_tile, w_tile, acc, INPUT_PRECISION, DOT_IN_FP32)
        g_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wv
    block_offset = row_start.to(tl.int64) * stride_out
    out_offsets = local_rows[:, None] * stride_out + hcols[None, :]
    out_mask = row_mask[:, None] & col_mask[None, :]
    if not FIRST_CHUNK:
        acc += tl.load(hi_ptr + block_offset + out_offsets, mask=out_mask, other=0.0).to(tl.float32)
        if HAS_LO:
            acc += tl.load(lo_ptr + block_offset + out_offsets, mask=out_mask, other=0.0).to(tl.float32)
    hi = acc.to(hi_ptr.dtype.element_ty)
    tl.store(hi_ptr + block_offset + out_offsets, hi, mask=out_mask)
    if HAS_LO:
        residual = (acc - hi.to(tl.float32)).to(lo_ptr.dtype.element_ty)
        tl.store(lo_ptr + block_offset + out_offsets, residual, mask=out_mask)


def _num_splits(row_blocks: int, vocab_tiles: int, device: torch.device, programs_per_sm: int) -> int:
    """Vocab splits so the forward grid has ~programs_per_sm programs per SM (2 splits on the interpreter, to test
    the merge)."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        wanted = triton.cdiv(programs_per_sm * sms, row_blocks)
    else:
        wanted = 2
    tiles_per_split = triton.cdiv(vocab_tiles, max(1, min(wanted, vocab_tiles)))
    return triton.cdiv(vocab_tiles, tiles_per_split)


def _forward(hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, softcap: float | None,
             configs: KernelConfigs) -> tuple[Tensor, Tensor]:
    """(lse [N], label logit [N]), both fp32."""
    n, h = hidden.shape
    v = weight.shape[0]
    cfg = configs.forward
    row_blocks = triton.cdiv(n, cfg.block_m)
    vocab_tiles = triton.cdiv(v, cfg.block_n)
    splits = _num_splits(row_blocks, vocab_tiles, hidden.device, configs.forward_programs_per_sm)
    partial = torch.empty((3, splits, n), dtype=torch.float32, device=hidden.device)
    _lse_partial_kernel[(row_blocks * splits,)](
        hidden, weight, bias if bias is not None else hidden, labels, partial[0], partial[1], partial[2],
        n, v, h, hidden.stride(0), weight.stride(0), triton.cdiv(vocab_tiles, splits), splits,
        softcap if softcap is not None else 1.0,
        HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, **_dot_options(hidden.device, hidden.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    split_max, split_sumexp, split_label_logit = partial
    row_max = split_max.max(dim=0).values
    lse = row_max + torch.log((split_sumexp * torch.exp(split_max - row_max)).sum(dim=0))
    return lse, split_label_logit.sum(dim=0)


def default_vocab_chunk(num_rows: int, hidden: int, vocab: int, dtype: torch.dtype, block: int) -> int:
    """Widest multiple of `block` whose grad-logit chunk [num_rows, chunk] fits in what the temporary budget leaves
    after the residual of the carried grad_hidden sum (half dtypes only) and the small vectors."""
    columns = grad_logits_budget_bytes(num_rows, hidden, dtype.itemsize) // max(1, num_rows * dtype.itemsize)
    return min(max(block, columns // block * block), triton.cdiv(vocab, block) * block)


def _backward(grad_out: Tensor, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, lse: Tensor,
              softcap: float | None, ignore_index: int, vocab_chunk: int | None, needs: tuple[bool, bool, bool],
              configs: KernelConfigs) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    need_hidden, need_weight, need_bias = needs
    n, h = hidden.shape
    v = weight.shape[0]
    cfg, gh_cfg = configs.grad_logits, configs.grad_hidden
    chunk = vocab_chunk or default_vocab_chunk(n, h, v, hidden.dtype, cfg.block_n)
    row_blocks = triton.cdiv(n, cfg.block_m)
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    residual = torch.empty_like(hidden) if need_hidden and hidden.dtype != torch.float32 else None
    grad_weight = torch.empty_like(weight) if need_weight else None
    grad_bias = torch.empty(v, dtype=torch.float32, device=weight.device) if need_bias else None
    grad_logits = torch.empty((n, min(chunk, v)), dtype=hidden.dtype, device=hidden.device)
    bias_partial = (torch.empty((row_blocks, min(chunk, v)), dtype=torch.float32, device=hidden.device)
                    if need_bias else None)
    dot_options = _dot_options(hidden.device, hidden.dtype)
    for chunk_index, vocab_start in enumerate(range(0, v, chunk)):
        length = min(chunk, v - vocab_start)
        _grad_logits_kernel[(row_blocks * triton.cdiv(length, cfg.block_n),)](
            hidden, weight[vocab_start:], bias[vocab_start:] if bias is not None else hidden, labels, lse, grad_out,
            grad_logits,
            bias_partial if bias_partial is not None else lse,
            n, h, vocab_start, length, hidden.stride(0), weight.stride(0), grad_logits.stride(0),
            bias_partial.stride(0) if bias_partial is not None else 0,
            softcap if softcap is not None else 1.0, ignore_index,
            HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None, WRITE_BIAS_PARTIAL=need_bias,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            **dot_options, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        chunk_grad_logits = grad_logits[:, :length]
        if grad_weight is not None:
            torch.mm(chunk_grad_logits.t(), hidden, out=grad_weight[vocab_start:vocab_start + length])
        if grad_bias is not None:
            torch.sum(bias_partial[:, :length], dim=0, out=grad_bias[vocab_start:vocab_start + length])
        if grad_hidden is not None:
            _grad_hidden_kernel[(triton.cdiv(n, gh_cfg.block_m) * triton.cdiv(h, gh_cfg.block_n),)](
                grad_logits, weight[vocab_start:], grad_hidden, residual if residual is not None else grad_hidden,
                n, h, length, grad_logits.stride(0), weight.stride(0), grad_hidden.stride(0),
                FIRST_CHUNK=chunk_index == 0, HAS_LO=residual is not None, BLOCK_M=gh_cfg.block_m,
                BLOCK_N=gh_cfg.block_n, BLOCK_K=gh_cfg.block_k, GROUP_M=gh_cfg.group_m, **dot_options,
                num_warps=gh_cfg.num_warps, num_stages=gh_cfg.num_stages,
            )
    return grad_hidden, grad_weight, grad_bias.to(bias.dtype) if grad_bias is not None else None


class TritonLabelLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, softcap: float | None,
                ignore_index: int, vocab_chunk: int | None, configs: KernelConfigs | None) -> Tensor:
        configs = configs or kernel_configs(hidden.device, hidden.dtype)
        lse, label_logit = _forward(hidden, weight, bias, labels, softcap, configs)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.softcap, ctx.ignore_index, ctx.vocab_chunk, ctx.configs = softcap, ignore_index, vocab_chunk, configs
        return torch.where(labels != ignore_index, label_logit - lse, 0.0)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        grads = _backward(grad_out.float().contiguous(), hidden, weight, bias, labels, lse, ctx.softcap,
                          ctx.ignore_index, ctx.vocab_chunk, tuple(ctx.needs_input_grad[:3]), ctx.configs)
        return (*grads, None, None, None, None, None)


def triton_label_logprobs(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None, softcap: float | None,
                          ignore_index: int, vocab_chunk: int | None = None,
                          configs: KernelConfigs | None = None) -> Tensor:
    """Inputs already validated by `mpo_dist.kernels.label_logprobs`. `vocab_chunk` (columns of the backward's
    grad-logit buffer) defaults to what fits the temporary budget; tests set it small to cover several chunks.
    `configs` defaults to `kernel_configs(device, dtype)`; the benchmark's tile sweep passes candidates."""
    if not hidden.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the triton backend needs CUDA tensors, or TRITON_INTERPRET=1 (set before importing "
                           "triton) to run on the CPU; use backend='torch' on the CPU otherwise")
    return TritonLabelLogprobs.apply(hidden, weight, bias, labels, softcap, ignore_index, vocab_chunk, configs)
