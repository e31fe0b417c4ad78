"""The TRL side of benchmarks/trl_peer.py: one DPOTrainer run in its own process, on the pairs the parent wrote.

The parent (trl_peer.py) tokenised the pairs with mpo-dist's own code and laid them out in mpo-dist's per-step grouping;
this child makes TRL 1.16's DPOTrainer train on exactly those token ids, in that order, with mpo-dist's optimiser and
learning-rate schedule, and writes one JSON line per optimiser step for the parent to time and compare:

    {"step": 1, "begin": <time.time() at on_step_begin>, "end": <at on_step_end>, "loss": <TRL's logged loss>,
     "lr": <the lr of the step's update>, "grad_norm": <before clipping>, "tokens": <real tokens of the step's pairs>}

How TRL is made to take mpo-dist's sequences (TRL 1.16, read from its source):
- The dataset holds `prompt_ids` / `chosen_ids` / `rejected_ids` (the columns TRL's own tokenisation produces) and
  `_prepare_dataset` returns it untouched: TRL's version would look for text columns, append an EOS and tokenise again.
  `max_length=None`: mpo-dist already truncated (its prompt-keeping policy), TRL's collator must cut nothing.
- `_get_train_sampler` returns a SequentialSampler: the rows are already in the order of mpo-dist's sampler.
- `compute_loss` first checks the padded batch TRL's collator built against the expected pairs of that micro-step
  (prompt + completion ids, completion start), so a mismatch in sequences or grouping stops the run instead of
  skewing the comparison.
- `optimizers=(AdamW, LambdaLR)` built here from the parameters the parent took from mpo-dist's rendered DeepSpeed
  config, and mpo-dist's own warmup-cosine factor: the same lr at every step.

    python benchmarks/trl_peer_trl.py SPEC.json      # run by trl_peer.py in .venv-bench; not meant to be run by hand
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import SequentialSampler
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

from mpo_dist.train.schedule import warmup_cosine


class SequenceMismatch(RuntimeError):
    """TRL's collated batch differs from the pairs mpo-dist trains on in that micro-step."""


class PretokenisedDPOTrainer(DPOTrainer):
    """DPOTrainer on rows that are already mpo-dist's token ids, in mpo-dist's order, checked on every micro-step."""

    def __init__(self, *args: Any, pairs: list[dict], **kwargs: Any) -> None:
        self.expected_pairs = pairs
        self.micro_steps_seen = 0
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset: Dataset, processing_class: Any, args: DPOConfig, dataset_name: str) -> Dataset:
        return dataset  # tokenised by mpo-dist: TRL must not add an EOS or tokenise text again

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> SequentialSampler:
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        self._check_batch(inputs)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _check_batch(self, inputs: dict[str, torch.Tensor]) -> None:
        """Rows [chosen..., rejected...] of the padded batch, unpadded, must be this micro-step's pairs as mpo-dist
        encoded them, and the completion must start at mpo-dist's prompt length."""
        size = self.args.per_device_train_batch_size
        first = self.micro_steps_seen * size
        expected = self.expected_pairs[first:first + size]
        self.micro_steps_seen += 1
        rows = [(pair, "chosen") for pair in expected] + [(pair, "rejected") for pair in expected]
        if inputs["input_ids"].shape[0] != len(rows):
            raise SequenceMismatch(f"micro-step {self.micro_steps_seen}: {inputs['input_ids'].shape[0]} rows, "
                                   f"expected {len(rows)}")
        for row, (pair, side) in enumerate(rows):
            real = inputs["attention_mask"][row].bool()
            ids = inputs["input_ids"][row][real].tolist()
            completion = inputs["completion_mask"][row][real].tolist()
            want = pair["prompt_ids"] + pair[f"{side}_ids"]
            want_completion = [0] * len(pair["prompt_ids"]) + [1] * len(pair[f"{side}_ids"])
            if ids != want or completion != want_completion:
                raise SequenceMismatch(f"micro-step {self.micro_steps_seen}, {pair['example_id']} {side}: TRL built "
                                       f"{len(ids)} tokens, mpo-dist encoded {len(want)}")


class StepLog(TrainerCallback):
    """One JSON line per optimiser step: wall-clock begin/end (time.time(), comparable with mpo-dist's metrics.jsonl),
    TRL's logged loss and the step's real tokens."""

    def __init__(self, path: Path, tokens_per_step: list[int]) -> None:
        self.path = path
        self.tokens_per_step = tokens_per_step
        self.begin = self.end = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.begin = time.time()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.end = time.time()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs:  # the end-of-training summary line has train_loss, not loss
            return
        record = {"step": state.global_step, "begin": self.begin, "end": self.end, "loss": logs["loss"],
                  "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                  "tokens": self.tokens_per_step[state.global_step - 1]}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def run(spec: dict) -> None:
    pairs = spec["pairs"]  # in step order: pairs_per_step consecutive rows per optimiser step
    per_step = spec["pairs_per_step"]
    tokens_per_step = [sum(len(p["prompt_ids"]) * 2 + len(p["chosen_ids"]) + len(p["rejected_ids"])
                           for p in pairs[s * per_step:(s + 1) * per_step]) for s in range(spec["steps"])]
    model = AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=torch.float32, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    optim = spec["optimizer"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"],
                                  weight_decay=optim["weight_decay"], fused=optim["fused"])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(spec["warmup_ratio"], spec["steps"], spec["min_lr_ratio"]))
    args = DPOConfig(
        output_dir=spec["output_dir"], per_device_train_batch_size=spec["micro_batch_size"],
        gradient_accumulation_steps=per_step // spec["micro_batch_size"], max_steps=spec["steps"],
        learning_rate=optim["lr"], max_grad_norm=spec["max_grad_norm"], seed=spec["seed"],
        beta=spec["beta"], label_smoothing=spec["label_smoothing"], loss_type=["sigmoid"], max_length=None,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},  # as mpo-dist's
        bf16=False, fp16=False, use_cpu=True, logging_steps=1, save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )
    columns = ("prompt_ids", "chosen_ids", "rejected_ids")
    dataset = Dataset.from_dict({name: [p[name] for p in pairs] for name in columns})
    trainer = PretokenisedDPOTrainer(
        model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer,
        optimizers=(optimizer, schedule), callbacks=[StepLog(Path(spec["log_file"]), tokens_per_step)], pairs=pairs,
    )
    trainer.train()
    if trainer.micro_steps_seen != len(pairs) // spec["micro_batch_size"]:
        raise SequenceMismatch(f"TRL ran {trainer.micro_steps_seen} micro-steps, expected {len(pairs) // spec['micro_batch_size']}")


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
