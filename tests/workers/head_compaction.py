"""torchrun worker: one micro-step through the ZeRO-3 policy whose head scores only the live label positions, against
the same weights with full float64 logits on every position (plain torch, no compaction); writes the comparison as JSON.

Rank 0 takes an MPO step on its batch. Rank 1's batch has no live label at all (every label IGNORE_INDEX): its head
scores zero positions, yet the head's weight must be gathered and its gradient reduced like on rank 0, or the step
hangs or loses gradients; its objective reads the (all-zero) log-probs and the final hidden states."""
from __future__ import annotations

import json
import sys
from dataclasses import replace

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

import mpo_dist.models.head as head_module
from mpo_dist.config import load_config
from mpo_dist.data.collate import IGNORE_INDEX, Batch
from mpo_dist.models.alignment_model import ModelOutputs
from mpo_dist.train.step import ReferencePlan, preference_inputs, reference_terms
from mpo_dist.train.trainer import Trainer

head_rows: list[int] = []
kernel = head_module.label_logprobs


def counting_kernel(hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    head_rows.append(hidden.shape[0])
    return kernel(hidden, *args, **kwargs)


def uncompacted_outputs(model, batch: Batch) -> ModelOutputs:
    """Full float64 logits of every position, log_softmax, the label's entry, masked afterwards."""
    tokens = batch.sequences()
    attention = ({"attention_mask": None, "position_ids": tokens.position_ids} if tokens.packed
                 else {"attention_mask": tokens.attention_mask})
    hidden = model.model(input_ids=tokens.input_ids, use_cache=False, **attention).last_hidden_state
    logits = hidden.double() @ model.lm_head.weight.double().T
    picked = torch.log_softmax(logits, dim=-1).gather(-1, batch.labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return ModelOutputs(torch.where(batch.labels != IGNORE_INDEX, picked, 0.0), hidden, None)


def main() -> None:
    config = load_config(None, sys.argv[1:])
    trainer = Trainer(config)
    rank = dist.get_rank()
    examples = [trainer.train_examples[i] for i in trainer.sampler.next_batch()]
    batch = trainer.collator(examples)
    plan = ReferencePlan.for_loss(trainer.loss, batch)
    terms = reference_terms(trainer.reference.forward(batch, plan.rows), plan, batch, trainer.loss)  # both ranks
    if rank == 1:
        batch = replace(batch, labels=torch.full_like(batch.labels, IGNORE_INDEX))

    def objective(outputs: ModelOutputs) -> torch.Tensor:
        if rank == 1:
            return outputs.token_logprobs.sum() + outputs.last_hidden.pow(2).mean()
        return trainer.loss(preference_inputs(outputs, terms, batch, trainer.loss)).loss

    head_module.label_logprobs = counting_kernel
    loss = objective(trainer.policy.forward(batch))
    head_module.label_logprobs = kernel
    trainer.policy.backward(loss)
    ours = trainer.policy.full_gradients()

    plain = AutoModelForCausalLM.from_pretrained(config.model.path, attn_implementation=config.model.attn_implementation)
    reference_loss = objective(uncompacted_outputs(plain, batch))
    reference_loss.backward()
    worst, checked = 0.0, 0
    for name, param in plain.named_parameters():
        grad = param.grad.double().clone()
        dist.all_reduce(grad)
        grad /= dist.get_world_size()  # data-parallel average, as DeepSpeed does
        mine = ours["causal_lm." + name].double()
        worst = max(worst, float((mine - grad).norm() / grad.norm().clamp_min(1e-30)))
        checked += 1
    result = {"loss": float(loss), "reference_loss": float(reference_loss), "worst_grad_rel_error": worst,
              "checked": checked, "head_rows": head_rows,
              "pair_response_tokens": sum(len(s.input_ids) - s.prompt_length for e in examples for s in (e.chosen, e.rejected))}
    (config.output_dir / f"compaction_rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
