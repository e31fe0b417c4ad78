"""Chunked torch label log-probs vs an independent float64 reference (materialised logits, torch autograd).

The reference helpers here are also used by tests/test_kernel_logprob_triton.py.
Tolerances: fp32 inputs agree to ~1e-6; for bf16 inputs the reference is evaluated on the same bf16 values in
float64, so forward log-probs still agree to ~1e-6 (fp32 accumulation of exact products), while gradients are
rounded to bf16 (relative 2^-9 per element) and built from a bf16 grad-logit matrix: 1e-2 normwise (fp16: 2e-3).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import pytest
import torch

from mpo_dist.kernels import label_logprobs

IGNORE = -100


@dataclass
class Case:
    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    labels: torch.Tensor
    upstream: torch.Tensor  # d loss / d logprob per row

    def to(self, device: str | torch.device) -> "Case":
        return Case(*(t.to(device) if t is not None else None
                      for t in (self.hidden, self.weight, self.bias, self.labels, self.upstream)))


def make_case(seed: int, n: int, h: int, v: int, dtype: torch.dtype, with_bias: bool) -> Case:
    """Random inputs with logits spread over several units (a peaked softmax) and ~1/4 ignored rows."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < 0.25] = IGNORE
    return Case(
        hidden=torch.randn(n, h, generator=gen).to(dtype),
        weight=(0.5 * torch.randn(v, h, generator=gen)).to(dtype),
        bias=(0.5 * torch.randn(v, generator=gen)).to(dtype) if with_bias else None,
        labels=labels,
        upstream=torch.randn(n, generator=gen),
    )


def reference_logprobs(hidden, weight, labels, bias, softcap, ignore_index=IGNORE):
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    live = labels != ignore_index
    picked = torch.log_softmax(logits, dim=-1).gather(1, torch.where(live, labels, 0)[:, None])[:, 0]
    return torch.where(live, picked, 0.0)


def reference_run(case: Case, softcap: float | None):
    """(log-probs, [grad_hidden, grad_weight, grad_bias?]) in float64, computed on the CPU."""
    case = case.to("cpu")
    leaves = [t.detach().double().requires_grad_() for t in (case.hidden, case.weight, case.bias) if t is not None]
    out = reference_logprobs(leaves[0], leaves[1], case.labels, leaves[2] if case.bias is not None else None, softcap)
    (out * case.upstream.double()).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves]


def kernel_run(case: Case, softcap: float | None, logprob_fn):
    """Run `logprob_fn(hidden, weight, labels, bias)` forward + backward with the case's upstream gradient, on the
    case's device; results come back on the CPU."""
    leaves = [t.detach().clone().requires_grad_() for t in (case.hidden, case.weight, case.bias) if t is not None]
    out = logprob_fn(leaves[0], leaves[1], case.labels, leaves[2] if case.bias is not None else None)
    (out * case.upstream).sum().backward()
    return out.detach().cpu(), [leaf.grad.cpu() for leaf in leaves]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30))


def assert_matches_reference(case: Case, softcap, logprob_fn, grad_tolerance: float, logprob_atol: float):
    out, grads = kernel_run(case, softcap, logprob_fn)
    ref_out, ref_grads = reference_run(case, softcap)
    assert out.dtype == torch.float32 and out.shape == case.labels.shape
    torch.testing.assert_close(out.double(), ref_out, atol=logprob_atol, rtol=0)
    ignored = case.labels.cpu() == IGNORE
    assert bool((out[ignored] == 0).all())
    for name, grad, ref_grad, leaf in zip(("hidden", "weight", "bias"), grads, ref_grads,
                                          (case.hidden, case.weight, case.bias)):
        assert grad.dtype == leaf.dtype and grad.shape == leaf.shape, name
        error = relative_error(grad, ref_grad)
        assert error <= grad_tolerance, f"grad_{name}: relative error {error:.2e} > {grad_tolerance:.0e}"
    assert bool((grads[0][ignored] == 0).all()), "ignored rows must get no gradient"


def torch_backend(chunk_size: int, softcap):
    return lambda h, w, y, b: label_logprobs(h, w, y, bias=b, softcap=softcap, backend="torch", chunk_size=chunk_size)


# (grads normwise relative, log-probs absolute); observed: fp32 3e-7 / 1e-6, bf16 3e-3 / 1e-6, fp16 3e-4 / 1e-6
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 1e-5), torch.float16: (2e-3, 1e-5)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias,softcap", [(False, None), (True, None), (False, 5.0), (True, 5.0)])
def test_matches_float64_reference(dtype, with_bias, softcap):
    case = make_case(seed=zlib.crc32(f"{dtype}-{with_bias}-{softcap}".encode()), n=37, h=24, v=131, dtype=dtype,
                     with_bias=with_bias)
    grad_tolerance, logprob_atol = TOLERANCES[dtype]
    # chunk_size 16 does not divide N = 37: three chunks, the last one partial
    assert_matches_reference(case, softcap, torch_backend(16, softcap), grad_tolerance, logprob_atol)


def test_one_chunk_and_many_chunks_agree_exactly_in_fp32_forward():
    case = make_case(seed=1, n=29, h=16, v=50, dtype=torch.float32, with_bias=True)
    one = label_logprobs(case.hidden, case.weight, case.labels, case.bias, backend="torch", chunk_size=1024)
    many = label_logprobs(case.hidden, case.weight, case.labels, case.bias, backend="torch", chunk_size=3)
    torch.testing.assert_close(one, many, atol=1e-6, rtol=0)


def test_deterministic_bitwise():
    case = make_case(seed=2, n=33, h=16, v=70, dtype=torch.bfloat16, with_bias=True)
    first = kernel_run(case, 4.0, torch_backend(8, 4.0))
    second = kernel_run(case, 4.0, torch_backend(8, 4.0))
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


def test_auto_backend_on_cpu_is_the_torch_path():
    case = make_case(seed=3, n=9, h=8, v=20, dtype=torch.float32, with_bias=False)
    auto = label_logprobs(case.hidden, case.weight, case.labels)
    torch.testing.assert_close(auto.double(), reference_logprobs(case.hidden, case.weight, case.labels, None, None),
                               atol=1e-5, rtol=0)


def test_frozen_weight_gives_only_hidden_gradient():
    case = make_case(seed=4, n=12, h=8, v=30, dtype=torch.float32, with_bias=False)
    hidden = case.hidden.clone().requires_grad_()
    out = label_logprobs(hidden, case.weight, case.labels, backend="torch", chunk_size=5)
    (out * case.upstream).sum().backward()
    _, ref_grads = reference_run(case, None)
    assert case.weight.grad is None
    assert relative_error(hidden.grad, ref_grads[0]) <= 1e-5


def test_all_rows_ignored_and_empty_batch():
    case = make_case(seed=5, n=6, h=8, v=10, dtype=torch.float32, with_bias=False)
    hidden = case.hidden.clone().requires_grad_()
    out = label_logprobs(hidden, case.weight, torch.full((6,), IGNORE), backend="torch")
    out.sum().backward()
    assert bool((out == 0).all()) and bool((hidden.grad == 0).all())
    empty = label_logprobs(torch.zeros(0, 8), case.weight, torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,) and empty.dtype == torch.float32


@pytest.mark.parametrize("change,message", [
    (dict(labels=torch.tensor([0, 1, 10])), "labels must be in"),
    (dict(labels=torch.tensor([0, 1, -1])), "labels must be in"),
    (dict(labels=torch.tensor([0, 1, 2], dtype=torch.int32)), "labels must be int64"),
    (dict(weight=torch.zeros(10, 4, dtype=torch.float64)), "share one dtype"),
    (dict(weight=torch.zeros(10, 5)), "expected hidden"),
    (dict(bias=torch.zeros(9)), "bias must be"),
    (dict(softcap=0.0), "softcap must be"),
    (dict(backend="cuda"), "backend must be"),
    (dict(chunk_size=0), "chunk_size must be"),
])
def test_bad_input_is_rejected_clearly(change, message):
    args = dict(hidden=torch.zeros(3, 4), weight=torch.zeros(10, 4), labels=torch.tensor([0, 1, IGNORE]))
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=message):
        label_logprobs(**args)
