"""CPU figure for LM-head row compaction: one MPO micro-step of a tiny model with a large vocabulary, with the head
scoring every position of every row (before) and only the training pair's response tokens (after, the library's head).

Model: a random-init Llama, small hidden (default 64, 2 layers) and a Llama-3-sized vocabulary (128256), so the head's
vocabulary-sized matmuls dominate the step, as they do for real models at short sequence lengths. Batch: `--pairs` MPO
examples, each 4 sequences (target chosen / rejected, dominant chosen / rejected) of `--min-length`..`--seq-len`
tokens, a quarter of each the prompt; padded and packed. The reference terms are computed once before timing (what the
reference cache does), so the step is the policy's forward + MPO loss + backward, no DeepSpeed and no optimizer.

  before  LogProbHead as it was: the fused head (chunked torch twin on the CPU) over all R x T positions, prompt,
          padding and the anchor rows included; the positions without a label are computed and then zeroed
  after   the library's LogProbHead: the live positions gathered, scored, scattered back

Each timed step runs both variants back to back (in alternating order), so load from other processes on the machine
hits both alike; the table gives the median step time of each and the ratio. The losses of the two must agree.

    python benchmarks/head_compaction.py                 # the figure in docs/benchmarks.md
    python benchmarks/head_compaction.py --vocab 32000 --steps 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from mpo_dist.data.collate import Batch, PreferenceCollator  # noqa: E402
from mpo_dist.data.packing import IGNORE_INDEX  # noqa: E402
from mpo_dist.engine.engines import _call_model  # noqa: E402
from mpo_dist.kernels import label_logprobs  # noqa: E402
from mpo_dist.losses import build_loss  # noqa: E402
from mpo_dist.models.alignment_model import AlignmentModel  # noqa: E402
from mpo_dist.models.head import LogProbHead  # noqa: E402
from mpo_dist.train.step import ReferencePlan, head_live_fraction, preference_inputs, reference_terms  # noqa: E402
from train_step import synthetic_examples  # noqa: E402  (the train-step benchmark's batch recipe, this directory)


class UncompactedHead(LogProbHead):
    """The head before compaction: every position goes through the vocabulary matmuls."""

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        flat = label_logprobs(hidden.reshape(-1, hidden.shape[-1]), self.weight, labels.reshape(-1), bias=self.bias,
                              softcap=self.softcap, ignore_index=IGNORE_INDEX, backend=self.backend,
                              chunk_size=self.chunk_size)
        return flat.view(labels.shape)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--seq-len", type=int, default=128, help="longest sequence (tokens)")
    parser.add_argument("--min-length", type=int, default=64, help="shortest sequence (tokens)")
    parser.add_argument("--pairs", type=int, default=2, help="MPO examples per micro-step (4 sequences each)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (median reported)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="model.logprob_chunk_size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def random_llama(args: argparse.Namespace):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=4 * args.hidden, vocab_size=args.vocab,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(args.seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)


def step_function(args: argparse.Namespace, head_type: type[LogProbHead], batch: Batch) -> Callable[[], float]:
    model = random_llama(args)
    policy = AlignmentModel(model, "torch", args.chunk_size)
    policy.causal_lm.lm_head = head_type(model.lm_head, None, "torch", args.chunk_size)
    reference = AlignmentModel(random_llama(args), "torch", args.chunk_size).eval()
    loss = build_loss("mpo", {})
    plan = ReferencePlan.for_loss(loss, batch)
    with torch.no_grad():
        terms = reference_terms(_call_model(reference, batch, plan.rows, with_mlc=False), plan, batch, loss)

    def step() -> float:
        policy.zero_grad(set_to_none=True)
        out = loss(preference_inputs(_call_model(policy, batch, None, with_mlc=False), terms, batch, loss))
        out.loss.backward()
        return float(out.loss.detach())

    return step


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for layout, packing in (("padded", False), ("packed", True)):
        batch = PreferenceCollator(pad_token_id=0, packing=packing)(synthetic_examples(args))
        steps = {"before": step_function(args, UncompactedHead, batch), "after": step_function(args, LogProbHead, batch)}
        losses = {name: step() for name, step in steps.items()}  # warm-up
        times: dict[str, list[float]] = {name: [] for name in steps}
        for index in range(args.steps):
            for name in (list(steps) if index % 2 == 0 else list(steps)[::-1]):
                started = time.perf_counter()
                losses[name] = steps[name]()
                times[name].append(time.perf_counter() - started)
        if abs(losses["before"] - losses["after"]) > 1e-4 * max(abs(losses["before"]), 1e-6):
            print(f"{layout}: losses differ, before {losses['before']} after {losses['after']}", file=sys.stderr)
            return 1
        medians = {name: statistics.median(values) for name, values in times.items()}
        head_positions = batch.labels.numel()
        rows.append(f"| {layout} | {head_positions} | {head_live_fraction(batch).item():.3f} | "
                    f"{medians['before']:.3f} | {medians['after']:.3f} | {medians['before'] / medians['after']:.2f}x | "
                    f"{losses['after']:.6g} |")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Llama hidden {args.hidden}, {args.layers} layers, "
          f"vocab {args.vocab}; {args.pairs} MPO pairs x 4 sequences of {args.min_length}..{args.seq_len} tokens; "
          f"fp32, chunk {args.chunk_size}; median of {args.steps} steps")
    print()
    print("| layout | positions | live fraction | before s/step | after s/step | speed-up | loss |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
