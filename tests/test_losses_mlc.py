"""MLC loss vs closed forms (collinear / orthogonal rows), a float64 reference built on torch.linalg.svdvals,
finite differences, and finiteness of gradients where singular values coincide."""
import math

import pytest
import torch

from mpo_dist.losses import MLCOptions, MLCProjection, mlc_applies, mlc_loss
from mpo_dist.losses.mlc import _singular_values

TAU = 0.2


def reference_mlc(z: torch.Tensor, tau: float, eps: float = 1e-12) -> torch.Tensor:
    """docs/methods/mlc.md written out in float64 with torch.linalg.svdvals."""
    z = z.double()
    unit = z / (z.pow(2).sum(-1, keepdim=True).sqrt() + eps)
    sigma = torch.linalg.svdvals(unit)
    logits = sigma / (sigma[:, :1].detach() + eps) / tau
    return (torch.logsumexp(logits, dim=-1) - logits[:, 0]).mean()


def collinear(batch, languages, dim, seed):
    """Each prompt: one random direction repeated, rows scaled by different positive factors."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(batch, 1, dim, generator=gen)
    scales = 0.5 + torch.rand(batch, languages, 1, generator=gen)
    return direction * scales


def orthogonal(batch, languages, dim, seed):
    """Each prompt: `languages` orthogonal rows (from QR), scaled by different positive factors."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(batch, dim, languages, generator=gen, dtype=torch.float64))
    scales = 0.5 + torch.rand(batch, languages, 1, generator=gen, dtype=torch.float64)
    return (q.transpose(1, 2) * scales).float()


def loss_and_grad(z):
    z = z.clone().requires_grad_(True)
    out = mlc_loss(z, TAU)
    out.loss.backward()
    return out, z.grad


@pytest.mark.parametrize("languages, dim", [(7, 16), (2, 512), (10, 512), (5, 3)])
def test_identical_rows_reach_the_collinear_floor(languages, dim):
    rank = min(languages, dim)
    out, grad = loss_and_grad(collinear(3, languages, dim, seed=languages))
    assert out.loss.item() == pytest.approx(math.log(1 + (rank - 1) * math.exp(-1 / TAU)), abs=1e-5)
    assert grad.isfinite().all()
    assert out.metrics["mlc/mean_cosine"].item() == pytest.approx(1.0, abs=1e-5)
    assert out.metrics["mlc/top_energy"].item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("languages, dim", [(7, 16), (7, 7), (2, 512)])
def test_orthogonal_rows_give_log_l(languages, dim):
    out, grad = loss_and_grad(orthogonal(2, languages, dim, seed=dim))
    assert out.loss.item() == pytest.approx(math.log(languages), abs=1e-5)
    assert grad.isfinite().all()
    assert out.metrics["mlc/mean_cosine"].item() == pytest.approx(0.0, abs=1e-5)
    assert out.metrics["mlc/top_energy"].item() == pytest.approx(1 / languages, abs=1e-5)


def test_gradients_finite_when_singular_values_coincide():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 32, generator=gen)
    b_orth = b - (b @ a) / (a @ a) * a
    cases = {
        "two identical pairs, orthogonal (σ1 = σ2, σ3 = σ4 = 0)": torch.stack([a, a, 2 * b_orth, b_orth]),
        "two identical pairs, oblique (σ3 = σ4 = 0)": torch.stack([a, 3 * a, b, b]),
        "identical rows (σ2..σL = 0)": torch.stack([a] * 6),
        "exactly orthogonal standard basis (all σ = 1)": torch.eye(32)[:5] * 4,
    }
    for label, rows in cases.items():
        out, grad = loss_and_grad(rows.unsqueeze(0))
        assert out.loss.isfinite(), label
        assert grad.isfinite().all(), label


def test_value_matches_float64_svdvals_reference_on_random_inputs():
    z = torch.randn(4, 7, 64, generator=torch.Generator().manual_seed(1))
    expected = reference_mlc(z, TAU)
    assert mlc_loss(z, TAU).loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert mlc_loss(z.double(), TAU).loss.item() == pytest.approx(expected.item(), abs=1e-12)


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
def test_gradient_matches_float64_svdvals_reference(dtype, rtol):
    base = torch.randn(3, 6, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref_z = base.clone().requires_grad_(True)
    reference_mlc(ref_z, TAU).backward()
    z = base.to(dtype).requires_grad_(True)
    mlc_loss(z, TAU).loss.backward()
    want = ref_z.grad
    torch.testing.assert_close(z.grad.double(), want, rtol=rtol, atol=rtol * want.abs().max().item())


def test_singular_value_gradient_matches_finite_differences():
    # The loss itself stops the gradient through σ_1 in the denominator, so finite differences of the loss
    # would differ by design; the guarded singular values themselves must have the true derivative.
    z = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_singular_values, (z,))
    torch.testing.assert_close(_singular_values(z), torch.linalg.svdvals(z))


def test_half_precision_input_is_computed_in_float32():
    z = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(4)).bfloat16().requires_grad_(True)
    out = mlc_loss(z, TAU)
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and z.grad.dtype == torch.bfloat16
    assert out.loss.item() == pytest.approx(reference_mlc(z.detach().float(), TAU).item(), abs=1e-5)


@pytest.mark.parametrize("shape", [(7, 16), (2, 1, 16), (0, 3, 8)])
def test_bad_shapes_raise(shape):
    with pytest.raises(ValueError, match=r"\[B, L, D\]|L >= 2"):
        mlc_loss(torch.randn(shape), TAU)


def test_mlc_applies_on_steps_0_every_2every():
    assert [step for step in range(9) if mlc_applies(step, every=2)] == [0, 2, 4, 6, 8]
    assert [step for step in range(7) if mlc_applies(step, every=3)] == [0, 3, 6]
    assert all(mlc_applies(step, every=1) for step in range(5))
    with pytest.raises(ValueError, match="every"):
        mlc_applies(0, every=0)
    with pytest.raises(ValueError, match="optimizer_step"):
        mlc_applies(-1, every=2)


def test_options_defaults_and_validation():
    options = MLCOptions()
    assert (options.weight, options.every, options.tau, options.layer, options.dim) == (0.8, 2, 0.2, -1, 512)
    assert options.languages == ["en", "zh", "ja", "ko", "ar", "bn", "sw"]
    assert MLCOptions().languages is not options.languages
    with pytest.raises(ValueError, match="tau"):
        MLCOptions(tau=0.0)
    with pytest.raises(ValueError, match="at least 2 languages"):
        MLCOptions(languages=["en"])
    with pytest.raises(ValueError, match="repeat"):
        MLCOptions(languages=["en", "zh", "en"])


def test_projection_is_a_trainable_affine_map():
    projection = MLCProjection(hidden_size=24, dim=8)
    hidden = torch.randn(3, 7, 24)
    z = projection(hidden)
    assert z.shape == (3, 7, 8)
    torch.testing.assert_close(z, hidden @ projection.linear.weight.T + projection.linear.bias)
    assert all(p.requires_grad for p in projection.parameters()) and len(list(projection.parameters())) == 2
