"""MPO loss vs an independent float64 implementation of docs/methods/mpo.md, plus a hand-computed gradient."""
import zlib

import pytest
import torch

from mpo_dist.losses import MPOLoss, MPOOptions, PreferenceInputs, SequenceLogps, build_loss

PAIRS, HIDDEN = 6, 8


def random_case(seed: int) -> dict[str, torch.Tensor]:
    """float64 leaves: response token counts, log-prob sums (= −tokens × a positive per-token NLL), hidden."""
    gen = torch.Generator().manual_seed(seed)

    def sums(tokens):
        return -tokens * (0.1 + 3 * torch.rand(PAIRS, generator=gen, dtype=torch.float64))

    case = {name: torch.randint(1, 40, (PAIRS,), generator=gen).double()
            for name in ("n_w", "n_l", "m_w", "m_l")}
    case.update(p_w=sums(case["n_w"]), p_l=sums(case["n_l"]), r_w=sums(case["n_w"]), r_l=sums(case["n_l"]),
                d_w=sums(case["m_w"]), d_l=sums(case["m_l"]),
                h_policy=torch.randn(PAIRS, 2, HIDDEN, generator=gen, dtype=torch.float64),
                h_ref=torch.randn(PAIRS, 2, HIDDEN, generator=gen, dtype=torch.float64))
    return case


def reference_mpo(c, beta, alpha, gap, length_normalize):
    """Straight from the formulas, float64, no shared code with the library."""
    def agg(total, tokens):
        return total / tokens if length_normalize else total
    if gap == "dpo":
        rg_target = agg(c["p_w"] - c["r_w"], c["n_w"]) - agg(c["p_l"] - c["r_l"], c["n_l"])
    else:
        rg_target = agg(c["p_w"], c["n_w"]) - agg(c["p_l"], c["n_l"])
    rg_anchor = agg(c["d_w"], c["m_w"]) - agg(c["d_l"], c["m_l"])
    l1 = ((beta * rg_target - rg_anchor) ** 2).sum() / PAIRS
    l2 = ((c["h_policy"] - c["h_ref"]) ** 2).sum() / c["h_policy"].numel()
    return l1 + alpha * l2, l1, l2


def library_inputs(c, dtype=torch.float32):
    """Copies of the case in `dtype`; policy sums, policy hidden AND the frozen inputs require grad, so the
    test can check that the loss sends no gradient into the frozen ones."""
    grad_leaves = ("p_w", "p_l", "h_policy", "r_w", "d_w", "h_ref")
    leaf = {k: v.to(dtype).requires_grad_(k in grad_leaves) for k, v in c.items()}
    inputs = PreferenceInputs(
        policy=SequenceLogps(leaf["p_w"], leaf["p_l"], leaf["n_w"], leaf["n_l"]),
        reference=SequenceLogps(leaf["r_w"], leaf["r_l"], leaf["n_w"], leaf["n_l"]),
        anchor_reference=SequenceLogps(leaf["d_w"], leaf["d_l"], leaf["m_w"], leaf["m_l"]),
        anchor_policy_hidden=leaf["h_policy"], anchor_reference_hidden=leaf["h_ref"])
    return inputs, leaf


@pytest.mark.parametrize("gap", ["length_normalized", "dpo"])
@pytest.mark.parametrize("length_normalize", [True, False])
@pytest.mark.parametrize("alpha", [1.0, 0.0, 0.5])
def test_mpo_value_and_gradient_match_float64_reference(gap, length_normalize, alpha):
    case = random_case(seed=zlib.crc32(f"{gap}-{length_normalize}-{alpha}".encode()))
    beta = 1.5
    ref_leaves = {k: v.clone().requires_grad_(k in ("p_w", "p_l", "h_policy")) for k, v in case.items()}
    expected, expected_l1, expected_l2 = reference_mpo(ref_leaves, beta, alpha, gap, length_normalize)
    expected.backward()

    loss_fn = MPOLoss(MPOOptions(beta=beta, alpha=alpha, gap=gap, length_normalize=length_normalize))
    inputs, leaf = library_inputs(case)
    out = loss_fn(inputs)
    out.loss.backward()

    scale = expected.abs().item() + 1e-3
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6 * scale)
    assert out.metrics["mpo/l1"].item() == pytest.approx(expected_l1.item(), rel=1e-5)
    if alpha > 0:
        assert out.metrics["mpo/l2"].item() == pytest.approx(expected_l2.item(), rel=1e-5)
    else:
        assert "mpo/l2" not in out.metrics
    for name in ("p_w", "p_l", "h_policy"):
        got = leaf[name].grad
        if name == "h_policy" and alpha == 0:
            assert got is None
            continue
        want = ref_leaves[name].grad
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6 * want.abs().max().item())
    for frozen in ("r_w", "d_w", "h_ref"):
        assert leaf[frozen].grad is None, f"{frozen} is frozen but received a gradient"


def test_mpo_hand_computed_gradient_is_2beta_gap_error_over_pairs():
    # A_w = [-2, -4]/2 = [-1, -2], A_l = [-3, -1]/1 -> RG_t = [2, -1]; anchor RG_d = [1, 0.5]; beta = 1.5
    # L1 = ((3 - 1)^2 + (-1.5 - 0.5)^2) / 2 = 4;  dL1/dRG_t = 2*1.5*[2, -2]/2 = [3, -3]
    # dRG_t/dp_w = 1/n_w = 1/2, dRG_t/dp_l = -1/n_l = -1
    p_w = torch.tensor([-2.0, -4.0], requires_grad=True)
    p_l = torch.tensor([-3.0, -1.0], requires_grad=True)
    policy = SequenceLogps(p_w, p_l, torch.tensor([2, 2]), torch.tensor([1, 1]))
    anchor = SequenceLogps(torch.tensor([-1.0, -1.0]), torch.tensor([-2.0, -1.5]), torch.tensor([1, 1]),
                           torch.tensor([1, 1]))
    out = MPOLoss(MPOOptions(beta=1.5, alpha=0.0))(PreferenceInputs(policy=policy, anchor_reference=anchor))
    out.loss.backward()
    assert out.loss.item() == pytest.approx(4.0)
    torch.testing.assert_close(p_w.grad, torch.tensor([1.5, -1.5]))
    torch.testing.assert_close(p_l.grad, torch.tensor([-3.0, 3.0]))
    assert out.metrics["mpo/target_gap"].item() == pytest.approx(0.5)
    assert out.metrics["mpo/anchor_ref_gap"].item() == pytest.approx(0.75)
    assert out.metrics["mpo/gap_distance"].item() == pytest.approx(2.0)
    assert out.metrics["rewards/accuracy"].item() == pytest.approx(0.5)


def test_mpo_alpha_zero_needs_no_hidden_and_alpha_positive_does():
    inputs, _ = library_inputs(random_case(seed=3))
    inputs.anchor_policy_hidden = inputs.anchor_reference_hidden = None
    assert MPOLoss(MPOOptions(alpha=0.0))(inputs).loss.isfinite()
    with pytest.raises(ValueError, match="anchor_policy_hidden"):
        MPOLoss(MPOOptions(alpha=1.0))(inputs)


def test_mpo_requirements_follow_options():
    assert not MPOLoss(MPOOptions()).needs_reference
    assert MPOLoss(MPOOptions(gap="dpo")).needs_reference
    assert MPOLoss(MPOOptions()).needs_anchor
    inputs, _ = library_inputs(random_case(seed=4))
    inputs.reference = None
    with pytest.raises(ValueError, match="reference"):
        MPOLoss(MPOOptions(gap="dpo"))(inputs)


def test_mpo_half_precision_inputs_are_computed_in_float32():
    case = random_case(seed=5)
    inputs, _ = library_inputs(case, dtype=torch.bfloat16)
    out = build_loss("mpo", {"beta": 1.0})(inputs)
    assert out.loss.dtype == torch.float32


@pytest.mark.parametrize("bad, match", [({"gap": "ratio"}, "gap must be one of"),
                                         ({"pooling": "max"}, "pooling must be one of"),
                                         ({"beta": 0.0}, "beta must be > 0"), ({"alpha": -1.0}, "alpha")])
def test_mpo_options_reject_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        MPOOptions(**bad)


def test_sequence_logps_rejects_bad_shapes_and_empty_responses():
    with pytest.raises(ValueError, match="same shape"):
        SequenceLogps(torch.zeros(3), torch.zeros(2), torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="1-D"):
        SequenceLogps(torch.zeros(3, 1), torch.zeros(3), torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="chosen_tokens must be > 0"):
        SequenceLogps(torch.zeros(2), torch.zeros(2), torch.tensor([1, 0]), torch.ones(2))


def test_preference_inputs_reject_mismatched_pairs_and_hidden_shapes():
    two = SequenceLogps(torch.zeros(2), torch.zeros(2), torch.ones(2), torch.ones(2))
    three = SequenceLogps(torch.zeros(3), torch.zeros(3), torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="anchor_reference has 3 pairs"):
        PreferenceInputs(policy=two, anchor_reference=three)
    with pytest.raises(ValueError, match=r"\[P=2, 2, H\]"):
        PreferenceInputs(policy=two, anchor_policy_hidden=torch.zeros(2, 3, 4))
