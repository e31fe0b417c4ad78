"""Benchmark one MPO training step on one GPU: mpo-dist against a naive MPO step, both under DeepSpeed ZeRO-3.

Model: a random-init Llama (default hidden 2048, 16 layers, 32 heads / 8 KV heads, MLP 8192, vocab 128256, untied:
1.50 B parameters), bf16, activation checkpointing on every decoder layer (except the mpo-dist-*-ckpt rows).
Batch: `--pairs` MPO examples per step, each 4 sequences (target chosen / rejected, dominant chosen / rejected) of
`--min-length`..`--seq-len` tokens, a quarter of each the prompt. The same batch is used every step.

  mpo-dist  the library's step (what Trainer.micro_step runs): AlignmentModel with the fused log-prob head (Triton on
            GPU, never the full logits), reference terms read from a reference cache written once before timing
            (mpo-dist precompute-ref's format), packing (data.packing, on by default: flash_attention_2's varlen
            kernel keeps attention inside each sequence, and where sdpa is asked for on a GPU the model loads
            flex_attention, whose block-sparse mask does the same without flash-attn).
  mpo-dist-half-ckpt  only the first half of the decoder layers checkpointed (model.checkpointed_layers =
            layers / 2): half the recomputation for half the extra activation memory.
  mpo-dist-no-ckpt  no activation checkpointing: the memory the fused head and the cache save (no [tokens, vocab]
            float32 logits, no reference activations) pays for keeping every layer's activations, which removes the
            recomputation (~1/4 of the step's FLOPs). `mpo-dist plan --no-activation-checkpointing` (or
            `--checkpointed-layers N`) estimates the peak; the goal compares it with the naive step's measured peak.
  naive     written here: the Hugging Face model's full logits materialised in float32 + log_softmax + gather, the
            reference model run on the dominant pair EVERY step (a second ZeRO-3 engine with offload_param=cpu, or
            --naive-reference gpu: a plain bf16 copy on the GPU), a padded batch.

Reported per method: median step time, tokens/s (real tokens of the 4 x pairs policy sequences / step time), MFU and
peak GPU memory (torch.cuda.max_memory_allocated over the timed steps). MFU counts the policy's useful training FLOPs
only: 6 x (parameters except the input embedding) per real token + causal attention 6 x layers x hidden x sum(len^2);
activation recomputation and the naive method's reference forward are not counted (MFU, not hardware FLOPs).
The last lines give each mpo-dist variant's speed-up over naive and whether it stays within naive's peak memory.

    python benchmarks/train_step.py                       # needs CUDA + DeepSpeed; prints a Markdown table
    python benchmarks/train_step.py --min-length 512      # variable lengths: padding waste, where packing helps
    python benchmarks/train_step.py --cpu-smoke           # tiny shapes on the CPU: checks the script, times nothing useful
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.profiler import record_function

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

GIB = 2**30
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4, "A100": 312.0}  # dense, per GPU


@dataclass
class Result:
    name: str
    seconds: float
    tokens: int
    model_flops: float
    peak_gib: float
    loss: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--seq-len", type=int, default=1024, help="longest sequence (tokens)")
    parser.add_argument("--min-length", type=int, default=0, help="shortest sequence; default = --seq-len (no padding)")
    parser.add_argument("--pairs", type=int, default=2, help="MPO examples per step (4 sequences each)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every method this many times, in turns, each in a fresh process; the table gives the "
                             "median round (processes on one machine differed by up to 20 %% in step time)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (Triton compiles, allocator warms)")
    parser.add_argument("--attn", default="auto", choices=["auto", "sdpa", "flash_attention_2"],
                        help="auto = flash_attention_2 if flash-attn is importable, else sdpa")
    parser.add_argument("--packing", default="auto", choices=["auto", "on", "off"],
                        help="mpo-dist's data.packing; auto = on (packed rows run flash_attention_2, or flex_attention "
                             "where sdpa is asked for on a GPU)")
    parser.add_argument("--naive-reference", default="offload", choices=["offload", "gpu"],
                        help="naive step's reference: ZeRO-3 engine offloaded to CPU, or a bf16 copy on the GPU")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="dense bf16 peak per GPU for MFU; 0 = by device")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--policy-config", default="",
                        help="DeepSpeed template of the policy engine for every method (default: engine.policy_config's)")
    parser.add_argument("--profile", type=Path,
                        help="after timing, profile 2 more steps of each method: top ops by GPU and CPU time into "
                             "PROFILE-<method>.txt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run tiny shapes in float32 on the CPU to check the script end to end (no useful timings)")
    # internal: the parent runs each method in a child process with these
    parser.add_argument("--run-one", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--matmul-params", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def smoke_shapes(args: argparse.Namespace) -> None:
    args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate, args.vocab = 64, 2, 4, 2, 128, 512
    args.seq_len, args.min_length, args.steps, args.warmup = 64, 32, 2, 1


# ---- model, data, FLOPs ---------------------------------------------------------------------------------------------
def write_random_llama(args: argparse.Namespace, directory: Path, dtype: torch.dtype, device: torch.device) -> int:
    """A random-init Llama saved as an ordinary HF directory (the loaders read files); returns its parameter count."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, intermediate_size=args.intermediate, vocab_size=args.vocab,
                         max_position_embeddings=max(args.seq_len * 4 * args.pairs, 2048), tie_word_embeddings=False,
                         rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(args.seed)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(directory, safe_serialization=True)
    count = sum(p.numel() for p in model.parameters())
    del model
    return count


def synthetic_examples(args: argparse.Namespace) -> list:
    """`pairs` MPO examples of random tokens; lengths uniform in [min_length, seq_len], prompt = first quarter."""
    from mpo_dist.data.examples import PreferenceExample
    from mpo_dist.data.tokenize import EncodedSequence

    rng = random.Random(args.seed)

    def sequence() -> EncodedSequence:
        length = rng.randint(args.min_length, args.seq_len)
        return EncodedSequence(tuple(rng.randrange(3, args.vocab) for _ in range(length)), max(length // 4, 1))

    return [PreferenceExample(f"bench{i}/xx", "xx", sequence(), sequence(), sequence(), sequence())
            for i in range(args.pairs)]


def model_flops(args: argparse.Namespace, matmul_params: int, lengths: list[int]) -> float:
    """Useful training FLOPs of one step: 6 N per real token + causal attention 6 x layers x hidden x len^2 per sequence."""
    return 6.0 * matmul_params * sum(lengths) + 6.0 * args.layers * args.hidden * sum(n * n for n in lengths)


def policy_override(args: argparse.Namespace) -> list[str]:
    return [f"engine.policy_config={args.policy_config}"] if args.policy_config else []


# ---- timing ---------------------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], float], args: argparse.Namespace, device: torch.device) -> tuple[float, float, float]:
    """(median seconds, peak GiB, last loss) of `args.steps` steps after `args.warmup` untimed ones."""
    for _ in range(args.warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, loss = [], float("nan")
    for _ in range(args.steps):
        started = time.perf_counter()
        loss = step()  # returns a Python float, so each step ends with the device idle
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else float("nan")
    return statistics.median(times), peak, loss


def profile_steps(step: Callable[[], float], report: Path, steps: int = 2) -> None:
    """`steps` more steps under torch.profiler; writes the top ops by device and by host time, and how much of the
    wall time the GPU was busy (gaps = host-bound: hooks, launches, synchronisation)."""
    from torch.profiler import ProfilerActivity, profile

    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(steps):
            step()
    wall_ms = (time.perf_counter() - started) * 1e3 / steps
    averages = profiler.key_averages()
    phases = {"forward", "backward", "optimizer step"}  # this file's record_function ranges, also shown on the GPU
    kernels = [event for event in profiler.events()  # device-side events only: host ops would count them twice
               if event.device_type != torch.autograd.DeviceType.CPU and event.name not in phases]
    device_ms = sum(event.device_time_total for event in kernels) / 1e3 / steps
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(f"per step: wall {wall_ms:.1f} ms (profiled), device busy {device_ms:.1f} ms\n\n"
                      + averages.table(sort_by="self_device_time_total", row_limit=45) + "\n\n"
                      + averages.table(sort_by="cpu_time_total", row_limit=45))


# ---- mpo-dist -------------------------------------------------------------------------------------------------------
def mpo_dist_step(args: argparse.Namespace, model_dir: Path, examples: list, dtype_name: str,
                  device: torch.device, checkpointed_layers: int = -1) -> Callable[[], float]:
    """The library's micro-step with the reference terms from a cache; `checkpointed_layers` as in the model config
    (-1 = all decoder layers, 0 = no activation checkpointing)."""
    from mpo_dist.config import load_config
    from mpo_dist.data.collate import PreferenceCollator
    from mpo_dist.engine.ds_config import render_policy_config
    from mpo_dist.engine.engines import PolicyEngine, build_alignment_model
    from mpo_dist.engine.reference_cache import (ReferenceCache, cached_term_names, term_tensors, write_index,
                                                 write_shard)
    from mpo_dist.losses import build_loss
    from mpo_dist.runtime import torch_dtype
    from mpo_dist.train.build import model_options, reference_engine
    from mpo_dist.train.step import ReferencePlan, preference_inputs, reference_terms

    cache_dir = model_dir.parent / "reference_cache"
    cache_dir.mkdir(exist_ok=True)
    checkpointing = (["model.gradient_checkpointing=false"] if checkpointed_layers == 0 else
                     ["model.gradient_checkpointing=true", f"model.checkpointed_layers={checkpointed_layers}"])
    config = load_config(None, checkpointing + [
        f"model.path={model_dir}", f"model.dtype={dtype_name}", f"model.attn_implementation={args.attn}",
        f"data.packing={args.packing == 'on'}",
        f"data.max_length={args.seq_len}", f"data.max_prompt_length={args.seq_len // 2}", "loss.name=mpo",
        f"train.micro_batch_size={args.pairs}", "engine.reference=cache", f"engine.reference_cache={cache_dir}",
        *policy_override(args),
    ])
    on_gpu = device.type == "cuda"
    loss = build_loss("mpo", config.loss.mpo)
    batch = PreferenceCollator(pad_token_id=0, packing=config.data.packing)(examples).to(device)
    plan = ReferencePlan.for_loss(loss, batch)

    # precompute-ref, in miniature: one reference forward, the cache files, then the engine is dropped
    reference = reference_engine(config, world_size=1, on_gpu=on_gpu, dtype_name=dtype_name, hidden_size=args.hidden)
    terms = reference_terms(reference.forward(batch, plan.rows), plan, batch, loss)
    shard = write_shard(cache_dir, 0, 1, [term_tensors(terms)])
    write_index(cache_dir, {}, cached_term_names(loss), [(shard, batch.example_ids)])
    del reference, terms
    gc.collect()
    cache = ReferenceCache.open(cache_dir, {}, device)

    policy_ds = render_policy_config(config, world_size=1, dtype=dtype_name, hidden_size=args.hidden, on_gpu=on_gpu)
    model = build_alignment_model(str(model_dir), policy_ds, torch_dtype(dtype_name),
                                  gradient_checkpointing=config.model.gradient_checkpointing,
                                  checkpointed_layers=config.model.checkpointed_layers, **model_options(config))
    policy = PolicyEngine(model, policy_ds, lambda step: 1.0)

    def step() -> float:
        with record_function("forward"):
            outputs = policy.forward(batch)
            out = loss(preference_inputs(outputs, cache.terms(batch), batch, loss))
        with record_function("backward"):
            policy.backward(out.loss)
        with record_function("optimizer step"):
            policy.step()
        return float(out.loss.detach())

    return step


# ---- naive ----------------------------------------------------------------------------------------------------------
def naive_step(args: argparse.Namespace, model_dir: Path, examples: list, dtype_name: str,
               device: torch.device) -> Callable[[], float]:
    """MPO as a first implementation would write it: HF logits in float32, a reference forward every step, padding."""
    import deepspeed
    from transformers import AutoModelForCausalLM

    from mpo_dist.config import load_config
    from mpo_dist.data.collate import PreferenceCollator
    from mpo_dist.data.packing import IGNORE_INDEX
    from mpo_dist.engine.ds_config import render_policy_config, render_reference_config
    from mpo_dist.engine.zero3_loading import load_causal_lm
    from mpo_dist.models.activation_checkpointing import enable_activation_checkpointing
    from mpo_dist.runtime import torch_dtype

    config = load_config(None, [f"model.path={model_dir}", f"model.dtype={dtype_name}",
                                f"train.micro_batch_size={args.pairs}", *policy_override(args)])
    dtype, on_gpu = torch_dtype(dtype_name), device.type == "cuda"
    policy_ds = render_policy_config(config, world_size=1, dtype=dtype_name, hidden_size=args.hidden, on_gpu=on_gpu)
    hf_policy = load_causal_lm(model_dir, policy_ds, dtype, args.attn)
    enable_activation_checkpointing(hf_policy)
    policy, _, _, _ = deepspeed.initialize(model=hf_policy, model_parameters=list(hf_policy.parameters()), config=policy_ds)
    if args.naive_reference == "offload":
        reference_ds = render_reference_config(config, world_size=1, dtype=dtype_name, hidden_size=args.hidden, on_gpu=on_gpu)
        hf_reference = load_causal_lm(model_dir, reference_ds, dtype, args.attn).requires_grad_(False)
        reference, _, _, _ = deepspeed.initialize(model=hf_reference, config=reference_ds)
    else:
        reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=args.attn).to(device)
        reference.requires_grad_(False)
    reference.eval()

    batch = PreferenceCollator(pad_token_id=0)(examples).to(device)
    p, beta, alpha = args.pairs, config.loss.mpo.beta, config.loss.mpo.alpha
    anchor = slice(2 * p, 4 * p)
    anchor_mask = batch.attention_mask[anchor].unsqueeze(-1).float()

    def mean_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # the full [rows, T, V] float32 tensor
        live = labels != IGNORE_INDEX
        picked = logprobs.gather(-1, torch.where(live, labels, 0).unsqueeze(-1)).squeeze(-1) * live
        return picked.sum(-1) / live.sum(-1)

    def pooled(hidden: torch.Tensor) -> torch.Tensor:
        return (hidden.float() * anchor_mask).sum(1) / anchor_mask.sum(1)

    def step() -> float:
        out = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True,
                     use_cache=False)
        policy_means = mean_logps(out.logits, batch.labels)
        with torch.no_grad():
            ref = reference(input_ids=batch.input_ids[anchor], attention_mask=batch.attention_mask[anchor],
                            output_hidden_states=True, use_cache=False)
            ref_means = mean_logps(ref.logits, batch.labels[anchor])
            ref_hidden = pooled(ref.hidden_states[-1])
        target_gap = policy_means[:p] - policy_means[p : 2 * p]
        anchor_gap = ref_means[:p] - ref_means[p:]
        l1 = (beta * target_gap - anchor_gap).pow(2).mean()
        l2 = F.mse_loss(pooled(out.hidden_states[-1][anchor]), ref_hidden)
        loss = l1 + alpha * l2
        policy.backward(loss)
        policy.step()
        return float(loss.detach())

    return step


METHODS: dict[str, Callable[..., Callable[[], float]]] = {
    "mpo-dist": mpo_dist_step,
    "mpo-dist-half-ckpt": lambda args, *rest: mpo_dist_step(args, *rest, checkpointed_layers=args.layers // 2),
    "mpo-dist-no-ckpt": lambda *args: mpo_dist_step(*args, checkpointed_layers=0),
    "naive": naive_step,
}


# ---- main -----------------------------------------------------------------------------------------------------------
def peak_tflops(args: argparse.Namespace, device: torch.device) -> float:
    if args.peak_tflops > 0 or device.type != "cuda":
        return args.peak_tflops
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():  # "H100 PCIe" is tried before "H100"
        if key in name:
            return value
    return 0.0


def resolve_attention(args: argparse.Namespace, device: torch.device) -> None:
    if args.attn == "auto":
        try:
            import flash_attn  # noqa: F401

            args.attn = "flash_attention_2" if device.type == "cuda" else "sdpa"
        except ImportError:
            args.attn = "sdpa"
    if args.packing == "auto":
        args.packing = "on"


def median_round(runs: list[Result]) -> Result:
    """The round with the median step time (the lower middle one for an even count), with the highest peak memory
    of all rounds: the memory condition must hold in every round."""
    median = sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]
    return replace(median, peak_gib=max(r.peak_gib for r in runs))


def table(results: list[Result], peak: float) -> str:
    lines = ["| method | step s | tokens/s/GPU | MFU | peak GiB | loss |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        mfu = f"{100 * r.model_flops / r.seconds / (peak * 1e12):.1f} %" if peak else "n/a (--peak-tflops)"
        lines.append(f"| {r.name} | {r.seconds:.3f} | {r.tokens / r.seconds:,.0f} | {mfu} | {r.peak_gib:.1f} | {r.loss:.6g} |")
    naive = next((r for r in results if r.name == "naive"), None)
    device_memory_measured = all(r.peak_gib == r.peak_gib for r in results)  # NaN on the CPU
    if naive is not None:
        lines.append("")
        for r in results:
            if r is not naive:
                memory = (f"peak {r.peak_gib:.1f} GiB, {'within' if r.peak_gib <= naive.peak_gib else 'ABOVE'} "
                          f"naive's {naive.peak_gib:.1f} GiB" if device_memory_measured else "peak memory not measured")
                lines.append(f"{r.name}: {naive.seconds / r.seconds:.2f}x naive's tokens/s, {memory}")
    return "\n".join(lines)


def run_one(args: argparse.Namespace, device: torch.device, dtype_name: str) -> int:
    """Child process: build one method's step on the parent's model, time it, write its Result as JSON."""
    from mpo_dist.engine.engines import init_distributed
    from mpo_dist.train.logger import setup_console_logging

    setup_console_logging(rank=0)  # also mutes torch's per-collective deprecation warnings
    init_distributed()  # a world of one (DeepSpeed needs a process group)
    examples = synthetic_examples(args)
    lengths = [len(s.input_ids) for e in examples for s in (e.chosen, e.rejected, e.anchor_chosen, e.anchor_rejected)]
    step = METHODS[args.run_one](args, args.model_dir, examples, dtype_name, device)
    seconds, peak_gib, loss = timed(step, args, device)
    if args.profile:
        profile_steps(step, args.profile.with_name(f"{args.profile.name}-{args.run_one}.txt"))
    flops = model_flops(args, args.matmul_params, lengths)
    args.result.write_text(json.dumps(Result(args.run_one, seconds, sum(lengths), flops, peak_gib, loss).__dict__))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.cpu_smoke:
        smoke_shapes(args)
        device, dtype_name = torch.device("cpu"), "fp32"
    elif not torch.cuda.is_available():
        print("train_step benchmark: no CUDA device found; it times a GPU training step and needs one GPU with DeepSpeed "
              "installed. `--cpu-smoke` runs tiny shapes on the CPU to check the script itself.", file=sys.stderr)
        return 2
    else:
        device, dtype_name = torch.device("cuda", 0), "bf16"
    args.min_length = args.min_length or args.seq_len
    if not 2 <= args.min_length <= args.seq_len:
        print(f"--min-length must be in [2, --seq-len={args.seq_len}], got {args.min_length}", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print(f"--rounds must be at least 1, got {args.rounds}", file=sys.stderr)
        return 2
    resolve_attention(args, device)
    if args.run_one:
        return run_one(args, device, dtype_name)
    from mpo_dist.data.packing import attention_implementation
    from mpo_dist.runtime import torch_dtype

    lengths = [len(s.input_ids) for e in synthetic_examples(args)
               for s in (e.chosen, e.rejected, e.anchor_chosen, e.anchor_rejected)]
    peak = peak_tflops(args, device)
    with tempfile.TemporaryDirectory(prefix="mpo_dist_bench_") as scratch:
        model_dir = Path(scratch) / "model"
        params = write_random_llama(args, model_dir, torch_dtype(dtype_name), device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke run)"
        mpo_dist_attention = attention_implementation(args.attn, args.packing == "on", on_gpu=device.type == "cuda")
        print(f"device {device_name}; torch {torch.__version__}; Llama {params / 1e9:.2f} B params (hidden {args.hidden}, "
              f"{args.layers} layers, vocab {args.vocab}); {args.pairs} pairs x 4 sequences, lengths "
              f"{min(lengths)}..{max(lengths)} (mean {statistics.mean(lengths):.0f}); {dtype_name}; attention {args.attn} (mpo-dist: {mpo_dist_attention}); mpo-dist packing {args.packing}; naive reference "
              f"{args.naive_reference}; peak {peak or 'unknown'} TFLOP/s; {args.warmup} warm-up + {args.steps} timed steps; "
              f"{args.rounds} round(s)",
              flush=True)
        rounds: dict[str, list[Result]] = {name: [] for name in args.methods}
        for round_index in range(args.rounds):
            for name in args.methods:  # one process each: every method starts from an empty GPU and a fresh DeepSpeed
                result_file = Path(scratch) / f"{name}.json"
                child = [sys.executable, __file__, *argv, "--run-one", name, "--model-dir", str(model_dir),
                         "--matmul-params", str(params - args.vocab * args.hidden), "--result", str(result_file)]
                completed = subprocess.run(child, env=dict(os.environ, PYTHONUNBUFFERED="1"))
                if completed.returncode != 0:
                    print(f"{name}: failed with exit code {completed.returncode} (its output is above)", file=sys.stderr)
                    continue
                rounds[name].append(Result(**json.loads(result_file.read_text())))
                print(f"{name} (round {round_index + 1}/{args.rounds}): {rounds[name][-1].seconds:.3f} s/step, "
                      f"peak {rounds[name][-1].peak_gib:.1f} GiB", flush=True)
        results = [median_round(runs) for runs in rounds.values() if len(runs) == args.rounds]
    print()
    print(table(results, peak))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 0 if len(results) == len(args.methods) else 1


if __name__ == "__main__":
    sys.exit(main())
