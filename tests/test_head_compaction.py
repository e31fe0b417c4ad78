"""Only the rows a loss reads reach the LM head (LogProbHead gathers the live label positions, scatters back).

Each test compares against the uncompacted computation written out in plain torch: the full logits of every position in
float64, log_softmax, the label's entry, masked afterwards: on one process, and under 2-rank ZeRO-3 with a rank whose
micro-batch has no live position."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import mpo_dist.models.head as head_module
from mpo_dist.data.collate import IGNORE_INDEX, Batch, PreferenceCollator
from mpo_dist.engine.engines import _call_model
from mpo_dist.losses import build_loss
from mpo_dist.models.alignment_model import ModelOutputs
from mpo_dist.models.head import LogProbHead
from mpo_dist.train.step import ReferencePlan, head_live_fraction, preference_inputs, reference_terms

from conftest import REPO_ROOT, torchrun
from test_packing import PAD, alignment_model, random_examples, tokenizer  # noqa: F401  (tokenizer is a fixture)


def full_logit_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The uncompacted head: log_softmax over every position's full logits, the label's entry, 0 where ignored."""
    picked = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(labels != IGNORE_INDEX, picked, 0.0)


@pytest.fixture
def head_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of hidden rows each LogProbHead call hands to the kernel."""
    rows: list[int] = []
    kernel = head_module.label_logprobs

    def counting(hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        rows.append(hidden.shape[0])
        return kernel(hidden, *args, **kwargs)

    monkeypatch.setattr(head_module, "label_logprobs", counting)
    return rows


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_head_equals_full_logits_and_scores_only_live_rows(softcap: float | None, head_rows: list[int]) -> None:
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(8, 50, bias=True)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(50, 8, generator=generator))
        linear.bias.copy_(torch.randn(50, generator=generator))
    head = LogProbHead(linear, softcap, backend="torch", chunk_size=3)
    hidden = torch.randn(3, 7, 8, generator=generator, requires_grad=True)
    labels = torch.randint(0, 50, (3, 7), generator=generator)
    labels[0, :4] = labels[1] = labels[2, 6] = IGNORE_INDEX  # a prompt, a row nobody reads, a padding position
    upstream = torch.randn(3, 7, generator=generator, dtype=torch.float64)

    out = head(hidden, labels)
    (out.double() * upstream).sum().backward()
    assert head_rows == [int((labels != IGNORE_INDEX).sum())] == [3 + 6]

    hidden64 = hidden.detach().double().requires_grad_()
    weight64, bias64 = linear.weight.detach().double().requires_grad_(), linear.bias.detach().double().requires_grad_()
    logits = hidden64 @ weight64.T + bias64
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    expected = full_logit_logprobs(logits, labels)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(out.double(), expected.detach(), rtol=0, atol=1e-5)
    assert torch.equal(out[labels == IGNORE_INDEX], torch.zeros(int((labels == IGNORE_INDEX).sum())))
    for ours, reference in ((hidden, hidden64), (linear.weight, weight64), (linear.bias, bias64)):
        torch.testing.assert_close(ours.grad.double(), reference.grad, rtol=1e-5, atol=1e-5)
    assert hidden.grad[1].abs().max() == 0  # rows that never reached the head get no gradient through it


def test_zero_live_positions_still_give_the_weight_a_zero_gradient(head_rows: list[int]) -> None:
    """A rank whose micro-batch has no live position calls the head too: under ZeRO-3 the weight is gathered in the
    head's forward and its gradient reduced on every rank, so the head must run and produce a (zero) gradient."""
    linear = nn.Linear(4, 10, bias=False)
    head = LogProbHead(linear, None, backend="torch")
    hidden = torch.randn(2, 5, 4, requires_grad=True)
    out = head(hidden, torch.full((2, 5), IGNORE_INDEX))
    (out.sum() + hidden.pow(2).sum()).backward()
    assert head_rows == [0]
    assert torch.equal(out, torch.zeros(2, 5))
    assert linear.weight.grad is not None and torch.equal(linear.weight.grad, torch.zeros(10, 4))
    torch.testing.assert_close(hidden.grad, 2 * hidden.detach())


def uncompacted_outputs(model, batch: Batch, rows: list[int] | None) -> ModelOutputs:
    """Full float64 logits of every position of every sequence (anchors included) from the model's final hidden states.
    The backbone stays float32: Gemma-2's eager attention gives NaN on padded rows in float64."""
    tokens = batch.sequences(rows)
    attention = ({"attention_mask": None, "position_ids": tokens.position_ids} if tokens.packed
                 else {"attention_mask": tokens.attention_mask})
    causal_lm = model.causal_lm
    hidden = causal_lm.model(input_ids=tokens.input_ids, use_cache=False, **attention).last_hidden_state
    logits = hidden.double() @ causal_lm.lm_head.weight.double().T
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return ModelOutputs(full_logit_logprobs(logits, tokens.labels), hidden, None)


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("loss_name", ["mpo", "dpo"])
@pytest.mark.parametrize("family,attn", [("llama", "sdpa"), ("gemma2", "eager")])
def test_step_loss_and_every_gradient_equal_uncompacted(family: str, attn: str, loss_name: str, packing: bool,
                                                         tokenizer, head_rows: list[int]) -> None:  # noqa: F811
    examples = random_examples(3, len(tokenizer), with_anchor=loss_name == "mpo", mlc_languages=0, seed=4)
    batch = PreferenceCollator(PAD, packing=packing)(examples)
    loss_fn = build_loss(loss_name, {"alpha": 1.0, "beta": 1.5} if loss_name == "mpo" else {})
    policy = alignment_model(family, attn, tokenizer, seed=0)
    uncompacted_policy = alignment_model(family, attn, tokenizer, seed=0)
    reference = alignment_model(family, attn, tokenizer, seed=7).eval()
    plan = ReferencePlan.for_loss(loss_fn, batch)
    with torch.no_grad():  # the same reference terms for both paths: the comparison is about the policy's head
        terms = reference_terms(uncompacted_outputs(reference, batch, plan.rows), plan, batch, loss_fn)

    ours = loss_fn(preference_inputs(_call_model(policy, batch, None, with_mlc=False), terms, batch, loss_fn)).loss
    ours.backward()
    expected = loss_fn(preference_inputs(uncompacted_outputs(uncompacted_policy, batch, None), terms, batch, loss_fn)).loss
    expected.backward()

    pair_responses = sum(len(s.input_ids) - s.prompt_length for e in examples for s in (e.chosen, e.rejected))
    assert head_rows == [pair_responses]  # the policy's head saw the training pair's response tokens, nothing else
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    reference_grads = dict(uncompacted_policy.named_parameters())
    for name, param in policy.named_parameters():
        if name.startswith("mlc_projection"):
            continue  # no MLC in these batches
        expected_grad = reference_grads[name].grad
        assert expected_grad.abs().max() > 0, f"{name} got no gradient: the comparison would prove nothing"
        torch.testing.assert_close(param.grad, expected_grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_live_fraction_counts_the_training_pair_responses() -> None:
    examples = random_examples(2, 60, with_anchor=True, mlc_languages=2, seed=5)
    batch = PreferenceCollator(PAD)(examples)
    responses = sum(len(s.input_ids) - s.prompt_length for e in examples for s in (e.chosen, e.rejected))
    assert head_live_fraction(batch).item() == pytest.approx(responses / batch.labels.numel())
    packed = PreferenceCollator(PAD, packing=True)(examples)
    assert head_live_fraction(packed).item() == pytest.approx(responses / packed.labels.numel())
    no_pairs = replace(batch, labels=torch.full_like(batch.labels, IGNORE_INDEX))
    assert head_live_fraction(no_pairs).item() == 0.0


@pytest.mark.multiprocess
def test_zero3_two_ranks_one_without_live_positions(tmp_path: Path) -> None:
    """Packed MPO on rank 0, a micro-batch with no live label on rank 1: no hang, and the loss and every gradient
    (averaged over the ranks) equal the uncompacted float64-logit computation (tests/workers/head_compaction.py)."""
    from mpo_dist.models.tiny import init_tiny

    model = init_tiny(tmp_path / "model", "llama", seed=1, initializer_range=0.3)  # O(1) reward gaps: MPO's L1 is large
    overrides = [f"model.path={model}", f"train.output_dir={tmp_path}", "loss.name=mpo",
                 "data.packing=true", "data.languages=[sw]", "train.micro_batch_size=2", "data.eval_files=[]",
                 "data.max_length=64", "data.max_prompt_length=32", "model.logprob_chunk_size=7",
                 "logging.tensorboard=false", "logging.progress_bar=false"]
    result = torchrun(2, [str(REPO_ROOT / "tests/workers/head_compaction.py"), *overrides], REPO_ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    reports = [json.loads((tmp_path / f"compaction_rank{rank}.json").read_text()) for rank in range(2)]
    assert reports[0]["head_rows"] == [reports[0]["pair_response_tokens"]] and reports[1]["head_rows"] == [0]
    for report in reports:
        assert report["checked"] > 10
        assert report["loss"] == pytest.approx(report["reference_loss"], rel=1e-5)
        assert report["worst_grad_rel_error"] < 1e-4, report
    assert reports[0]["loss"] > 0.1  # MPO's L1 at this init: a comparison of near-zero losses would prove little
