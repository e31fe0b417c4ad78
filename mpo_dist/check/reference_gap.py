"""MPO's precondition, measured: the reference model's reward gap in the dominant language on held-out pairs.

MPO pulls every target language's gap to the reference's dominant-language gap (docs/methods/mpo.md), so that gap must
be clearly positive: an instruct model that does not prefer the safe response in its own dominant language gives MPO an
unaligned anchor. One process, forward only, through the evaluation's log-prob path (mpo_dist.eval.reward_gaps).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mpo_dist.check.report import CheckReport
from mpo_dist.data.collate import PreferenceCollator
from mpo_dist.data.examples import PreferenceExample
from mpo_dist.eval.reward_gaps import logprob_forward, pair_reward_gaps
from mpo_dist.runtime import torch_dtype

WARMUP_RECIPE = "configs/demo_warmup.yaml (the demo's English stage, docs/quickstart.md)"


@dataclass(frozen=True)
class GapThresholds:
    """Below these the anchor is not clearly aligned. The defaults are judgement, not theory: on the bundled held-out
    English pairs a length-normalised gap of 0.5 nats per token and 75 % of pairs won separate the demo's warmed-up
    reference (+5.5) from a random tiny model (-0.005, 40 %) and SmolLM2-135M-Instruct (+0.196, 60 %); figures in
    docs/quickstart.md."""

    min_mean: float = 0.5
    min_accuracy: float = 0.75


def pair_gaps(model_dir: str | Path, examples: list[PreferenceExample], pad_token_id: int, *, dtype: str,
              device: torch.device, batch_size: int = 8) -> torch.Tensor:
    """A(chosen) - A(rejected) of each example (A = mean response-token log-prob), float64 on the CPU."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(dtype), local_files_only=True).to(device)
    model.eval()
    forward = logprob_forward(model)
    collator = PreferenceCollator(pad_token_id)
    gaps = []
    for start in range(0, len(examples), batch_size):
        batch = collator(examples[start:start + batch_size]).to(device)
        gaps.append(pair_reward_gaps(forward(batch).token_logprobs, batch).cpu())
    return torch.cat(gaps)


def check_reference_gap(report: CheckReport, model_dir: str, eval_examples: list[PreferenceExample], *,
                        dominant_language: str, pairs: int, pad_token_id: int, dtype: str, device: torch.device,
                        thresholds: GapThresholds = GapThresholds()) -> None:
    """Measure on the first `pairs` held-out dominant-language pairs; warn when the mean or the accuracy is low."""
    examples = [example for example in eval_examples if example.language == dominant_language][:pairs]
    if not examples:
        report.error(f"reference gap: data.eval_files have no {dominant_language} pair (data.dominant_language) to "
                     "measure it on")
        return
    gaps = pair_gaps(model_dir, examples, pad_token_id, dtype=dtype, device=device)
    mean, accuracy = float(gaps.mean()), float((gaps > 0).double().mean())
    report.line(f"reference  {dominant_language} reward gap of {model_dir} on {len(examples)} held-out pairs: mean "
                f"{mean:+.3f}, chosen preferred in {100 * accuracy:.0f} %")
    if mean < thresholds.min_mean or accuracy < thresholds.min_accuracy:
        report.warn(f"the reference's {dominant_language} reward gap (mean {mean:+.3f}, accuracy {100 * accuracy:.0f} %) "
                    f"is not clearly positive (mean >= {thresholds.min_mean}, accuracy >= "
                    f"{100 * thresholds.min_accuracy:.0f} %): MPO would pull every language towards an unaligned anchor; "
                    f"align the model in {dominant_language} first, e.g. with a warm-up like {WARMUP_RECIPE}")
