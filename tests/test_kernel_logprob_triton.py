"""Triton label log-probs vs the float64 reference: compiled on a CUDA GPU when there is one, else on the CPU through
the Triton interpreter (CI).

TRITON_INTERPRET must be set before triton (or the kernel module) is imported: @triton.jit reads it when decorating.
triton is a test dependency, so a missing triton fails this module at import instead of skipping it.

Shapes are small and deliberately ragged for the interpreter tiles (16 rows x 32 vocab x 16 hidden): N = 37 rows
(not a multiple of 16), V = 101 (not a multiple of 32), H = 40 (not a multiple of 16); vocab_chunk = 64 gives two
backward chunks (64 + 37 columns), and the interpreter forward uses two vocab splits, so the cross-split merge and the
cross-chunk grad_hidden carry are both exercised. On a GPU the same ragged shapes run through the Hopper tiles
(128 x 256 x 64), so they test the masking of partial tiles instead.
Tolerances as in test_kernel_logprob_torch.py, except bf16 gradients (2e-2): the interpreter casts fp32 -> bf16 by
truncation where the GPU rounds to nearest, which doubles the bf16 rounding error (observed 5.6e-3).
"""
import os

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402
import triton  # noqa: E402,F401  (fails the module when triton is missing)

if "mpo_dist.kernels.logprob_triton" in sys.modules:  # imported earlier without the interpreter: rebuild kernels
    importlib.reload(sys.modules["mpo_dist.kernels.logprob_triton"])

from mpo_dist.kernels import label_logprobs  # noqa: E402
from mpo_dist.kernels.logprob_triton import triton_label_logprobs  # noqa: E402
from test_kernel_logprob_torch import (IGNORE, assert_matches_reference, kernel_run, make_case,  # noqa: E402
                                       reference_logprobs, reference_run, relative_error)


def device_case(**kwargs):
    """A test case on the GPU when there is one (compiled kernels), else on the CPU (interpreter)."""
    return make_case(**kwargs).to(DEVICE)


TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 1e-5), torch.float16: (2e-3, 1e-5)}


def chunked_triton(softcap, vocab_chunk=64):
    return lambda h, w, y, b: triton_label_logprobs(h, w, y, b, softcap, IGNORE, vocab_chunk=vocab_chunk)


@pytest.mark.canary
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias,softcap", [(False, None), (True, None), (False, 5.0), (True, 5.0)])
def test_matches_float64_reference(dtype, with_bias, softcap):
    case = device_case(seed=zlib.crc32(f"triton-{dtype}-{with_bias}-{softcap}".encode()), n=37, h=40, v=101,
                     dtype=dtype, with_bias=with_bias)
    grad_tolerance, logprob_atol = TOLERANCES[dtype]
    assert_matches_reference(case, softcap, chunked_triton(softcap), grad_tolerance, logprob_atol)


@pytest.mark.parametrize("dtype,tolerance", [(torch.bfloat16, 2e-3), (torch.float16, 1e-4)])
def test_grad_hidden_carry_keeps_precision_across_chunks(dtype, tolerance):
    """Seven vocab chunks must give (nearly) the single-chunk grad_hidden: the (hi, lo) carry keeps ~16 bits, while
    carrying only the half-precision sum drifts (measured 1.2e-2 for bf16, 5e-4 for fp16)."""
    case = device_case(seed=zlib.crc32(f"carry-{dtype}".encode()), n=37, h=40, v=202, dtype=dtype, with_bias=False)
    _, many = kernel_run(case, None, chunked_triton(None, vocab_chunk=32))
    _, one = kernel_run(case, None, chunked_triton(None, vocab_chunk=256))
    assert relative_error(many[0], one[0].double()) <= tolerance


def test_public_api_with_default_single_chunk():
    case = device_case(seed=11, n=21, h=32, v=70, dtype=torch.bfloat16, with_bias=True)
    fn = lambda h, w, y, b: label_logprobs(h, w, y, bias=b, softcap=3.0, backend="triton")  # noqa: E731
    assert_matches_reference(case, 3.0, fn, *TOLERANCES[torch.bfloat16])


def test_deterministic_bitwise():
    case = device_case(seed=12, n=37, h=40, v=101, dtype=torch.bfloat16, with_bias=True)
    first = kernel_run(case, 5.0, chunked_triton(5.0))
    second = kernel_run(case, 5.0, chunked_triton(5.0))
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


def test_frozen_weight_and_bias_give_only_hidden_gradient():
    case = device_case(seed=13, n=20, h=16, v=40, dtype=torch.float32, with_bias=True)
    hidden = case.hidden.clone().requires_grad_()
    out = triton_label_logprobs(hidden, case.weight, case.labels, case.bias, None, IGNORE, vocab_chunk=32)
    (out * case.upstream).sum().backward()
    _, ref_grads = reference_run(case, None)
    assert case.weight.grad is None and case.bias.grad is None
    assert relative_error(hidden.grad.cpu(), ref_grads[0]) <= 1e-5


def test_all_rows_ignored():
    case = device_case(seed=14, n=18, h=16, v=40, dtype=torch.float32, with_bias=False)
    hidden, weight = case.hidden.clone().requires_grad_(), case.weight.clone().requires_grad_()
    out = label_logprobs(hidden, weight, torch.full((18,), IGNORE, device=DEVICE), backend="triton")
    out.sum().backward()
    assert bool((out == 0).all()) and bool((hidden.grad == 0).all()) and bool((weight.grad == 0).all())


def test_forward_only_matches_reference_under_no_grad():
    case = device_case(seed=15, n=37, h=40, v=101, dtype=torch.float32, with_bias=False)
    with torch.no_grad():
        out = label_logprobs(case.hidden, case.weight, case.labels, backend="triton")
    torch.testing.assert_close(out.double(), reference_logprobs(case.hidden, case.weight, case.labels, None, None),
                               atol=1e-5, rtol=0)


def test_cpu_without_interpreter_is_rejected(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    case = make_case(seed=16, n=4, h=16, v=32, dtype=torch.float32, with_bias=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        label_logprobs(case.hidden, case.weight, case.labels, backend="triton")
