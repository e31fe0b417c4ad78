"""torchrun worker: one SimPO micro-step through the ZeRO-3 policy with the fused log-prob head, against the plain
Hugging Face model (full logits, log_softmax, float64) on the same per-rank batches; writes the comparison as JSON."""
from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from mpo_dist.config import load_config
from mpo_dist.train.step import preference_inputs
from mpo_dist.train.trainer import Trainer


def plain_simpo_loss(model, batch, beta: float, gamma: float) -> torch.Tensor:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    labels = batch.labels
    mask = labels != -100
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask
    means = logprobs.sum(-1) / mask.sum(-1)
    p = batch.num_pairs
    return -F.logsigmoid(beta * (means[:p] - means[p : 2 * p]) - gamma).mean()


def main() -> None:
    config = load_config(None, sys.argv[1:])
    trainer = Trainer(config)
    batch = trainer.collator([trainer.train_examples[i] for i in trainer.sampler.next_batch()])
    outputs = trainer.policy.forward(batch)
    loss = trainer.loss(preference_inputs(outputs, None, batch, trainer.loss))
    trainer.policy.backward(loss.loss)
    ours = trainer.policy.full_gradients()

    options = config.loss.simpo
    plain = AutoModelForCausalLM.from_pretrained(config.model.path, attn_implementation="eager").double()
    reference_loss = plain_simpo_loss(plain, batch, options.beta, options.gamma)
    reference_loss.backward()
    worst = 0.0
    for name, param in plain.named_parameters():
        grad = param.grad.clone()
        dist.all_reduce(grad)
        grad /= dist.get_world_size()  # data-parallel average, as DeepSpeed does
        mine = ours["causal_lm." + name].double()
        worst = max(worst, float((mine - grad).norm() / grad.norm().clamp_min(1e-30)))
    result = {"loss": float(loss.loss), "reference_loss": float(reference_loss), "worst_grad_rel_error": worst,
              "checked": len(ours)}
    (config.output_dir / f"head_rank{dist.get_rank()}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
