"""DPO, IPO, SimPO, ORPO, CPO vs independent float64 implementations of their standard definitions, one
hand-computed DPO value, and the loss registry."""
import math

import pytest
import torch

from mpo_dist.losses import (LOSSES, DPOOptions, PreferenceInputs, SequenceLogps, build_loss, options_class)

PAIRS = 7


def random_case(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n_w = torch.randint(1, 30, (PAIRS,), generator=gen).double()
    n_l = torch.randint(1, 30, (PAIRS,), generator=gen).double()

    def sums(tokens):
        return -tokens * (0.05 + 2 * torch.rand(PAIRS, generator=gen, dtype=torch.float64))

    return {"n_w": n_w, "n_l": n_l, "p_w": sums(n_w), "p_l": sums(n_l), "r_w": sums(n_w), "r_l": sums(n_l)}


def neg_log_sigmoid(x):
    return torch.log1p(torch.exp(-x))


def ref_dpo(c, beta, label_smoothing):
    z = beta * ((c["p_w"] - c["r_w"]) - (c["p_l"] - c["r_l"]))
    return ((1 - label_smoothing) * neg_log_sigmoid(z) + label_smoothing * neg_log_sigmoid(-z)).mean()


def ref_ipo(c, beta):
    h = (c["p_w"] - c["r_w"]) / c["n_w"] - (c["p_l"] - c["r_l"]) / c["n_l"]
    return ((h - 1 / (2 * beta)) ** 2).mean()


def ref_simpo(c, beta, gamma):
    return neg_log_sigmoid(beta * (c["p_w"] / c["n_w"] - c["p_l"] / c["n_l"]) - gamma).mean()


def ref_orpo(c, lam):
    a_w, a_l = c["p_w"] / c["n_w"], c["p_l"] / c["n_l"]
    odds_w, odds_l = torch.exp(a_w) / (1 - torch.exp(a_w)), torch.exp(a_l) / (1 - torch.exp(a_l))
    return (-a_w + lam * neg_log_sigmoid(torch.log(odds_w / odds_l))).mean()


def ref_cpo(c, beta, nll_weight):
    return (neg_log_sigmoid(beta * (c["p_w"] - c["p_l"])) - nll_weight * c["p_w"] / c["n_w"]).mean()


CASES = [
    ("dpo", {"beta": 0.1, "label_smoothing": 0.0}, lambda c: ref_dpo(c, 0.1, 0.0)),
    ("dpo", {"beta": 0.5, "label_smoothing": 0.2}, lambda c: ref_dpo(c, 0.5, 0.2)),
    ("ipo", {"beta": 0.1}, lambda c: ref_ipo(c, 0.1)),
    ("ipo", {"beta": 1.0}, lambda c: ref_ipo(c, 1.0)),
    ("simpo", {}, lambda c: ref_simpo(c, 2.0, 0.5)),
    ("simpo", {"beta": 2.5, "gamma": 1.0}, lambda c: ref_simpo(c, 2.5, 1.0)),
    ("orpo", {}, lambda c: ref_orpo(c, 0.1)),
    ("orpo", {"lam": 1.0}, lambda c: ref_orpo(c, 1.0)),
    ("cpo", {}, lambda c: ref_cpo(c, 0.1, 1.0)),
    ("cpo", {"beta": 0.3, "nll_weight": 0.5}, lambda c: ref_cpo(c, 0.3, 0.5)),
]


def library_inputs(c, loss_fn):
    leaf = {k: v.float().requires_grad_(k in ("p_w", "p_l", "r_w", "r_l")) for k, v in c.items()}
    reference = SequenceLogps(leaf["r_w"], leaf["r_l"], leaf["n_w"], leaf["n_l"]) if loss_fn.needs_reference else None
    return PreferenceInputs(policy=SequenceLogps(leaf["p_w"], leaf["p_l"], leaf["n_w"], leaf["n_l"]),
                            reference=reference), leaf


@pytest.mark.parametrize("index", range(len(CASES)))
def test_value_and_gradient_match_float64_reference(index):
    name, options, reference_loss = CASES[index]
    case = random_case(seed=100 + index)
    ref_leaves = {k: v.clone().requires_grad_(k in ("p_w", "p_l")) for k, v in case.items()}
    expected = reference_loss(ref_leaves)
    expected.backward()

    loss_fn = build_loss(name, options)
    inputs, leaf = library_inputs(case, loss_fn)
    out = loss_fn(inputs)
    out.loss.backward()

    assert out.loss.item() == pytest.approx(expected.item(), rel=2e-5, abs=1e-6)
    for key in ("p_w", "p_l"):
        want = ref_leaves[key].grad
        torch.testing.assert_close(leaf[key].grad.double(), want, rtol=1e-4, atol=1e-6 * want.abs().max().item())
    assert leaf["r_w"].grad is None and leaf["r_l"].grad is None, "the reference must be frozen"
    for metric, value in out.metrics.items():
        assert not value.requires_grad and value.dim() == 0, metric


def test_dpo_hand_computed_value_and_metrics():
    # log-ratios: chosen -10 - (-12) = 2, rejected -15 - (-13) = -2 -> margin 0.1 * 4 = 0.4
    # loss = -log sigmoid(0.4) = log(1 + e^-0.4) = 0.51301525...
    policy = SequenceLogps(torch.tensor([-10.0]), torch.tensor([-15.0]), torch.tensor([5]), torch.tensor([6]))
    reference = SequenceLogps(torch.tensor([-12.0]), torch.tensor([-13.0]), torch.tensor([5]), torch.tensor([6]))
    out = build_loss("dpo", DPOOptions(beta=0.1))(PreferenceInputs(policy=policy, reference=reference))
    assert out.loss.item() == pytest.approx(0.5130152523999526, rel=1e-6)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.4)), rel=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.2)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.2)
    assert out.metrics["rewards/margin"].item() == pytest.approx(0.4)
    assert out.metrics["rewards/accuracy"].item() == 1.0


def test_orpo_is_finite_when_a_response_has_probability_one():
    # A(y_w) = 0 (p = 1) makes the exact log-odds infinite; the loss must stay finite, gradients too.
    p_w = torch.tensor([0.0, -1e-9, -0.5], requires_grad=True)
    p_l = torch.tensor([-2.0, -30.0, -1e-3], requires_grad=True)
    ones = torch.ones(3)
    out = build_loss("orpo", {})(PreferenceInputs(policy=SequenceLogps(p_w, p_l, ones, ones)))
    out.loss.backward()
    assert out.loss.isfinite()
    assert p_w.grad.isfinite().all() and p_l.grad.isfinite().all()


@pytest.mark.parametrize("name", ["dpo", "ipo"])
def test_reference_losses_demand_a_reference(name):
    policy = SequenceLogps(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match=r"needs PreferenceInputs fields \['reference'\]"):
        build_loss(name)(PreferenceInputs(policy=policy))


def test_reference_on_different_sequences_is_rejected():
    policy = SequenceLogps(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([3]), torch.tensor([4]))
    reference = SequenceLogps(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([3]), torch.tensor([5]))
    with pytest.raises(ValueError, match="same sequences"):
        build_loss("dpo")(PreferenceInputs(policy=policy, reference=reference))


def test_registry_names_and_requirements():
    assert sorted(LOSSES) == ["cpo", "dpo", "ipo", "mpo", "orpo", "simpo"]
    assert {name for name in LOSSES if build_loss(name).needs_reference} == {"dpo", "ipo"}
    assert options_class("simpo")().beta == 2.0


def test_unknown_loss_name_lists_valid_names():
    with pytest.raises(ValueError) as error:
        build_loss("kto", {})
    for name in LOSSES:
        assert name in str(error.value)
    with pytest.raises(ValueError, match="valid names"):
        options_class("kto")


def test_unknown_option_key_is_named():
    with pytest.raises(ValueError, match="betta"):
        build_loss("dpo", {"betta": 0.1})


def test_options_of_the_wrong_type_are_rejected():
    with pytest.raises(TypeError, match="DPOOptions"):
        build_loss("dpo", options_class("ipo")())


@pytest.mark.parametrize("name, bad", [("dpo", {"label_smoothing": 0.5}), ("ipo", {"beta": 0.0}),
                                       ("simpo", {"beta": -1.0}), ("orpo", {"lam": -0.1}),
                                       ("cpo", {"nll_weight": -1.0})])
def test_bad_option_values_raise(name, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_loss(name, bad)
