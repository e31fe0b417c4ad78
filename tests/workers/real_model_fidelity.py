"""torchrun worker: the real SmolLM2 model under the 2-rank ZeRO-3 policy. Writes, for the test to compare:

- the fused head's per-token log-probs of the first batch (policy.evaluate) and the same batch's tensors;
- Hugging Face's own logits -> log_softmax -> gather on the plain float32 model loaded from the same directory
  (the independent reference; its head is the tied input embedding);
- after one optimiser step, the policy's log-probs again, and the live export (train.save_hf_at_end's path) in
  <output_dir>/hf, which the test reloads with transformers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from mpo_dist.config import load_config
from mpo_dist.data.packing import IGNORE_INDEX
from mpo_dist.engine.hf_export import export_live_policy
from mpo_dist.train.step import preference_inputs
from mpo_dist.train.trainer import Trainer


def plain_logprobs(model_dir: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight, "the reference model must have a tied head"
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    live = labels != IGNORE_INDEX
    gathered = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return gathered * live


def main() -> None:
    config = load_config(None, sys.argv[1:])
    trainer = Trainer(config)
    batch = trainer.collator([trainer.train_examples[i] for i in trainer.sampler.next_batch()])
    head = trainer.policy.module.causal_lm.lm_head
    tied = head.weight is trainer.policy.module.backbone.embed_tokens.weight
    before = trainer.policy.evaluate(batch).token_logprobs
    labels = batch.training_pair_labels()
    reference = plain_logprobs(config.model.path, batch.input_ids, batch.attention_mask, labels)

    outputs = trainer.policy.forward(batch)
    loss = trainer.loss(preference_inputs(outputs, None, batch, trainer.loss))
    trainer.policy.backward(loss.loss)
    trainer.policy.step()
    after = trainer.policy.evaluate(batch).token_logprobs
    export_live_policy(trainer.policy, Path(config.model.path), config.output_dir / "hf", trainer.tokenizer,
                       torch.float32, trainer.ctx.rank)
    torch.save({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": labels,
                "fused_before": before, "plain_before": reference, "fused_after": after, "tied_under_zero3": tied},
               config.output_dir / f"fidelity_rank{dist.get_rank()}.pt")


if __name__ == "__main__":
    main()
