"""Worker (a fresh interpreter, a world of one): build MODEL_DIR's architecture under ZeRO-3 twice, as the trainer builds
the policy and then the reference, and write both models' logits on a fixed input, then the logits of the same
directory loaded by plain transformers outside ZeRO-3 (the oracle). Nothing may import the modeling module before the
first build: that is the order in which transformers >= 5.25 with `kernels` broke the second build.

argv: MODEL_DIR OUT_FILE (a torch.save of {"zero3": [logits, logits], "plain": logits})."""
from __future__ import annotations

import sys
from pathlib import Path

import deepspeed
import torch

from mpo_dist.engine.engines import init_distributed
from mpo_dist.engine.process_exit import exit_process
from mpo_dist.engine.zero3_loading import load_causal_lm

INPUT_IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])


def zero3_logits(model_dir: Path) -> torch.Tensor:
    ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    model = load_causal_lm(model_dir, ds_config, torch.float32, "eager").eval()
    with torch.no_grad(), deepspeed.zero.GatheredParameters(list(model.parameters())):
        return model(input_ids=INPUT_IDS).logits.clone()


def main() -> None:
    model_dir, out_file = Path(sys.argv[1]), Path(sys.argv[2])
    init_distributed()
    built = [zero3_logits(model_dir) for _ in range(2)]
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.save({"zero3": built, "plain": plain(input_ids=INPUT_IDS).logits}, out_file)


if __name__ == "__main__":
    main()
    exit_process(0)  # a world of one with DeepSpeed's engines: ends as `mpo-dist` ends a rank
