"""Each DPO-family baseline (DPO, IPO, SimPO, ORPO, CPO) through the real Trainer and DeepSpeed ZeRO-3 (world size 1),
checked against an independent float64 computation with the plain Hugging Face model's logits.

Two steps are checked per method, with non-default options so `loss.<name>.*` must reach the loss:
- step 1: policy = reference = the initial model. The logged loss AND rewards/chosen, rewards/margin are compared; for
  SimPO/ORPO/CPO these depend on the model, for DPO/IPO they are the zero-margin constants (log 2, (1/2β)², 0).
- the last step: the policy is the model after the previous optimiser step (read back from the checkpoint saved there,
  through DeepSpeed's engine-free zero_to_fp32), the reference is still the initial model. This is where DPO/IPO's
  log-ratios are non-zero, so it checks both the policy forward and that the reference stays frozen.
"""
from __future__ import annotations

import math
from statistics import fmean
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from mpo_dist.models.tokenizer import load_tokenizer
from mpo_dist.config import load_config
from mpo_dist.data.data_file import DataFile
from mpo_dist.data.loading import load_all
from mpo_dist.data.schema import ParallelRecord
from mpo_dist.data.tokenize import ChatEncoder
from mpo_dist.engine.checkpoint_layout import tag_for
from mpo_dist.train.logger import METRICS_FILE
from mpo_dist.train.trainer import SAMPLES_FILE, Trainer

from conftest import read_jsonl
from test_train_single_process import mean_response_logprob

MAX_LENGTH, MAX_PROMPT_LENGTH = 128, 64
# DeepSpeed's WarmupCosineLR runs the first two optimiser steps at lr 0 (its ratio starts at 0 and warm-up lasts >= 2
# steps), so step 4 is the first whose policy (after step 3) differs from the reference.
LAST_STEP = 4

OPTIONS = {
    "dpo": {"beta": 0.5},
    "ipo": {"beta": 0.5},
    "simpo": {"beta": 2.5, "gamma": 0.3},
    "orpo": {"lam": 0.5},
    "cpo": {"beta": 0.2, "nll_weight": 0.5},
}


@dataclass(frozen=True)
class ResponseScores:
    """float64 log-likelihood of the chosen and rejected responses of one pair: sums and per-token means."""

    chosen_sum: float
    rejected_sum: float
    chosen_mean: float
    rejected_mean: float


def response_scores(model: PreTrainedModel, encoder: ChatEncoder, record: ParallelRecord, language: str) -> ResponseScores:
    chosen = encoder.encode(record.prompt[language], record.chosen[language])
    rejected = encoder.encode(record.prompt[language], record.rejected[language])
    chosen_mean = mean_response_logprob(model, chosen.input_ids, chosen.prompt_length)
    rejected_mean = mean_response_logprob(model, rejected.input_ids, rejected.prompt_length)
    return ResponseScores(chosen_mean * chosen.response_length, rejected_mean * rejected.response_length,
                          chosen_mean, rejected_mean)


def neg_log_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def log_odds(mean_logprob: float) -> float:
    """log(p / (1 − p)) with log p = the per-token mean log-prob."""
    return mean_logprob - math.log(-math.expm1(mean_logprob))


def expected_pair(name: str, options: dict, policy: ResponseScores, reference: ResponseScores) -> tuple[float, float, float]:
    """(loss, chosen reward, rejected reward) of one pair, from the textbook definitions (docs/methods/baselines.md)."""
    if name == "dpo":
        chosen = options["beta"] * (policy.chosen_sum - reference.chosen_sum)
        rejected = options["beta"] * (policy.rejected_sum - reference.rejected_sum)
        return neg_log_sigmoid(chosen - rejected), chosen, rejected
    if name == "ipo":
        chosen_ratio = policy.chosen_mean - reference.chosen_mean
        rejected_ratio = policy.rejected_mean - reference.rejected_mean
        loss = (chosen_ratio - rejected_ratio - 1 / (2 * options["beta"])) ** 2
        return loss, options["beta"] * chosen_ratio, options["beta"] * rejected_ratio
    if name == "simpo":
        chosen, rejected = options["beta"] * policy.chosen_mean, options["beta"] * policy.rejected_mean
        return neg_log_sigmoid(chosen - rejected - options["gamma"]), chosen, rejected
    if name == "orpo":
        odds = neg_log_sigmoid(log_odds(policy.chosen_mean) - log_odds(policy.rejected_mean))
        return -policy.chosen_mean + options["lam"] * odds, policy.chosen_mean, policy.rejected_mean
    if name == "cpo":
        chosen, rejected = options["beta"] * policy.chosen_sum, options["beta"] * policy.rejected_sum
        return neg_log_sigmoid(chosen - rejected) - options["nll_weight"] * policy.chosen_mean, chosen, rejected
    raise ValueError(f"no reference formula for {name}")


def checkpoint_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """Full fp32 weights of the policy saved at `step`, consolidated from the ZeRO-3 shards without an engine."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return dict(get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=tag_for(step)))


def float64_model(model_dir: Path, weights: dict[str, torch.Tensor] | None = None) -> PreTrainedModel:
    """The plain HF model in float64; `weights` (AlignmentModel names) replace the initial ones when given."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
    if weights is not None:
        prefix = "causal_lm."
        model.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}, strict=True)
    return model.double().eval()


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_baseline_steps_match_float64_reference(name: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    options = OPTIONS[name]
    model_dir = tiny_models["llama"]
    config = load_config(None, [
        f"model.path={model_dir}", "model.attn_implementation=eager", f"train.output_dir={tmp_path}",
        f"train.max_steps={LAST_STEP}", "train.micro_batch_size=2", f"data.max_length={MAX_LENGTH}",
        f"data.max_prompt_length={MAX_PROMPT_LENGTH}", "data.eval_files=[]", f"loss.name={name}",
        *(f"loss.{name}.{key}={value}" for key, value in options.items()),
        "optim.lr=1e-2", "optim.warmup_ratio=0", f"checkpoint.every_steps={LAST_STEP - 1}", "logging.progress_bar=false",
        "logging.tensorboard=false",
    ])
    result = Trainer(config).train()
    assert result.exit_code == 0 and result.steps_done == LAST_STEP

    samples = {row["step"]: row["ids"] for row in read_jsonl(tmp_path / SAMPLES_FILE)}
    metrics = {row["step"]: row for row in read_jsonl(tmp_path / METRICS_FILE)}
    records = {r.id: r for r in load_all([DataFile("sample:train")], "en")}
    encoder = ChatEncoder(load_tokenizer(model_dir), MAX_LENGTH, MAX_PROMPT_LENGTH)
    initial = float64_model(model_dir)
    moved_weights = checkpoint_weights(tmp_path, LAST_STEP - 1)
    initial_weights = dict(initial.named_parameters())
    assert any(not torch.allclose(moved_weights["causal_lm." + k].double(), p) for k, p in initial_weights.items()), \
        f"the policy did not move by step {LAST_STEP - 1}: the last-step check would not test the reference"
    moved = float64_model(model_dir, moved_weights)

    for step, policy in ((1, initial), (LAST_STEP, moved)):
        pairs = []
        with torch.no_grad():
            for example_id in samples[step]:
                record_id, language = example_id.split("/")
                record = records[record_id]
                pairs.append(expected_pair(name, options, response_scores(policy, encoder, record, language),
                                           response_scores(initial, encoder, record, language)))
        logged = metrics[step]
        assert logged["train/loss"] == pytest.approx(fmean(p[0] for p in pairs), rel=1e-4, abs=1e-6), step
        assert logged["train/rewards/chosen"] == pytest.approx(fmean(p[1] for p in pairs), rel=1e-3, abs=1e-5), step
        assert logged["train/rewards/margin"] == pytest.approx(fmean(p[1] - p[2] for p in pairs), rel=1e-3, abs=1e-5), step
    if name in ("dpo", "ipo"):  # the last-step check must have seen a policy that differs from the reference
        # (rewards/chosen = beta * (policy - reference) log-prob of the chosen responses: zero iff they still agree)
        assert abs(metrics[LAST_STEP]["train/rewards/chosen"]) > 1e-3
