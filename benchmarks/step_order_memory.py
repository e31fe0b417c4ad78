"""Host memory of one MPO micro-step with the reference forward before or after the policy forward (CPU).

Why Trainer.micro_step runs the frozen reference first (docs/plan.md, "The step's memory phases"). Two orders of the
same work on the same trainer, engines and batch:

  reference first  Trainer.micro_step itself: reference forward (no grad), policy forward, loss, backward, step.
  policy first     the order the step had before: policy forward, then the reference forward while the policy's
                   activations are alive, then loss, backward, step (written out here for the comparison).

A tiny-but-not-trivial Llama (hidden 512, 4 layers, fp32) under DeepSpeed ZeRO-3 on the CPU, reference online; a batch
of 2 MPO examples x 4 sequences x 512 tokens. Allocated bytes come from torch.profiler with profile_memory (every CPU
allocation and free with its time, so peaks are exact, not sampled), read from the profiler's event tree (the
torch._C._profiler interface torch.profiler's own memory timeline reads). Reported per order, in MiB above the step's
start: the step's peak, the peak inside the reference forward, and what was already live when it started.

    python benchmarks/step_order_memory.py     # a few minutes on 2 cores; prints a Markdown table
"""
from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from torch.profiler import ProfilerActivity, profile, record_function

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

MIB = 2**20
HIDDEN, LAYERS, SEQ_LEN, PAIRS = 512, 4, 512, 2
REFERENCE_RANGE = "reference forward"


def build_trainer(model_dir: Path, output_dir: Path, checkpointing: bool):
    from mpo_dist.config import load_config
    from mpo_dist.train.trainer import Trainer

    return Trainer(load_config(None, [
        f"model.path={model_dir}", f"train.output_dir={output_dir}", f"train.micro_batch_size={PAIRS}",
        f"data.max_length={SEQ_LEN}", f"data.max_prompt_length={SEQ_LEN // 4}", "data.eval_files=[]", "loss.name=mpo",
        "engine.reference=online",
        f"model.gradient_checkpointing={str(checkpointing).lower()}", "checkpoint.resume=none",
        "logging.progress_bar=false", "logging.tensorboard=false"]))


def synthetic_batch(trainer):
    from mpo_dist.data.examples import PreferenceExample
    from mpo_dist.data.tokenize import EncodedSequence

    rng = random.Random(0)

    def sequence() -> EncodedSequence:
        return EncodedSequence(tuple(rng.randrange(5, 3000) for _ in range(SEQ_LEN)), SEQ_LEN // 4)

    examples = [PreferenceExample(f"b{i}/zh", "zh", sequence(), sequence(), sequence(), sequence())
                for i in range(PAIRS)]
    return trainer.collator(examples)


def policy_first(trainer, batch) -> None:
    from mpo_dist.train.step import ReferencePlan, preference_inputs, reference_terms, total_loss

    policy_out = trainer.policy.forward(batch)
    plan = ReferencePlan.for_loss(trainer.loss, batch)
    terms = reference_terms(trainer.reference.forward(batch, plan.rows), plan, batch, trainer.loss)
    base = trainer.loss(preference_inputs(policy_out, terms, batch, trainer.loss))
    mlc = trainer.config.mlc
    trainer.policy.backward(total_loss(base, policy_out, batch, 0.0, mlc.tau, mlc.eps).loss)
    trainer.policy.step()


def reference_first(trainer, batch) -> None:
    trainer.micro_step(batch, 0.0)


def allocation_timeline(prof: profile) -> tuple[np.ndarray, np.ndarray]:
    """(microseconds since the trace start, bytes allocated since the trace start) after each allocation or free."""
    from torch._C._profiler import _EventType

    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.typed[0] == _EventType.Allocation:
            events.append((event.start_time_ns, event.typed[1].alloc_size))  # negative for a free
        stack.extend(event.children)
    events.sort()
    start_ns = prof.profiler.kineto_results.trace_start_ns()
    times = np.array([(ns - start_ns) / 1000 for ns, _ in events])
    return times, np.cumsum([size for _, size in events])


def measure(trainer, batch, order: Callable) -> dict[str, float]:
    reference_forward = trainer.reference.forward

    def marked(*args, **kwargs):
        with record_function(REFERENCE_RANGE):
            return reference_forward(*args, **kwargs)

    trainer.reference.forward = marked
    order(trainer, batch)  # warm-up: optimizer states exist before the measured step
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        order(trainer, batch)
    trainer.reference.forward = reference_forward
    times, live = allocation_timeline(prof)
    event = next(e for e in prof.events() if e.name == REFERENCE_RANGE)
    inside = (times >= event.time_range.start) & (times <= event.time_range.end)
    before = times < event.time_range.start
    return {"step": live.max() / MIB, "reference": live[inside].max() / MIB,
            "at_reference_start": (live[before][-1] if before.any() else 0.0) / MIB}


def main() -> int:
    from mpo_dist.models.tiny import init_tiny

    rows = []
    with tempfile.TemporaryDirectory(prefix="mpo_dist_step_order_") as scratch:
        model_dir = init_tiny(Path(scratch) / "model", "llama", hidden_size=HIDDEN, layers=LAYERS)
        for checkpointing in (False, True):
            trainer = build_trainer(model_dir, Path(scratch) / f"run{int(checkpointing)}", checkpointing)
            batch = synthetic_batch(trainer)
            for name, order in (("policy first", policy_first), ("reference first", reference_first)):
                rows.append((checkpointing, name, measure(trainer, batch, order)))
    print(f"hidden {HIDDEN}, {LAYERS} layers, fp32, {PAIRS} MPO examples x 4 x {SEQ_LEN} tokens, reference online; "
          "MiB allocated above the step's start\n")
    print("| activation checkpointing | order | step peak | reference forward peak | live when it starts |")
    print("|---|---|---:|---:|---:|")
    for checkpointing, name, m in rows:
        print(f"| {'on' if checkpointing else 'off'} | {name} | {m['step']:.1f} | {m['reference']:.1f} | "
              f"{m['at_reference_start']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
