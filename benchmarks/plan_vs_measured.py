"""Planned vs measured memory: `mpo-dist plan`'s figures held against real MPO steps of the trainer's own code.

Each configuration runs in a fresh child process: a random-init model written as an ordinary Hugging Face directory
(with the bundled sample tokenizer), a generated MPO data file whose every sequence fills `--seq-len` tokens, a
Trainer built from the config exactly as `mpo-dist train` builds it, and `--warmup` + `--steps` optimiser steps through
Trainer.optimizer_step (so Trainer.micro_step, the engines and the sampler are the library's). Measured over the
`--steps` steps after the warm-up:

  GPU   torch.cuda.max_memory_allocated and max_memory_reserved, for the whole step and per phase of the step (the
        engines' calls mark the phases: reference forward, policy forward + backward, optimizer step), plus the CUDA
        context (device memory in use beyond what torch reserved, read at the end);
  host  the process's peak resident set (VmHWM, reset through /proc/self/clear_refs before the measured steps, so
        start-up and loading are not in it).

Planned: the planner fed from the run's config and rendered DeepSpeed template (mpo_dist.check.memory_plan, the same
settings `mpo-dist check` plans with). Its fixed 3 GiB "CUDA context + fragmentation allowance" is not memory torch
allocates, so the allocated and per-phase rows compare against the plan without it, the reserved row (+ context)
against the whole plan. Goal: every row within 10 %.

Configurations (each stresses different terms of the plan):
  1.5b-online   the train-step benchmark's 1.5B Llama; optimizer states on the GPU (deepspeed_configs/zero3_policy.json);
                the reference online as a ZeRO-3 engine with offloaded parameters (reference phase, host reference).
  3b-offload    a Llama-3.2-3B-shaped model (tied embeddings); optimizer offloaded to the host
                (deepspeed_configs/zero3_70b_offload_optimizer.json) and the reference online (host-heavy).
  8b-cache      a Llama-3.1-8B-shaped model on one GPU: bf16 gradient accumulation and the reference cache
                (deepspeed_configs/zero3_single_gpu.json; `mpo-dist precompute-ref` is run first). Optimizer offload
                does not fit an 8B model on a 128 GiB host (the planner: 139 GiB), so this is the one-GPU recipe.

    python benchmarks/plan_vs_measured.py                       # CUDA: the three configurations, a Markdown table
    python benchmarks/plan_vs_measured.py --configs 8b-cache    # a subset
    python benchmarks/plan_vs_measured.py --cpu-smoke           # tiny shapes on the CPU: host memory only, checks
                                                                # the script end to end (the plan is a GPU plan)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

GIB = 2**30
GOAL = 0.10
DOMINANT, TARGET = "en", "zh"


@dataclass(frozen=True)
class Case:
    """One configuration: the model's shape (LlamaConfig keywords) and how the run is set up."""

    shape: dict
    policy_config: str
    reference: str  # online | cache
    pairs: int  # MPO examples per micro-step


LLAMA_VOCAB = dict(vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0)
CASES = {
    "1.5b-online": Case(dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                             intermediate_size=8192, tie_word_embeddings=False, **LLAMA_VOCAB),
                        "deepspeed_configs/zero3_policy.json", "online", 2),
    "3b-offload": Case(dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                            intermediate_size=8192, tie_word_embeddings=True, **LLAMA_VOCAB),
                       "deepspeed_configs/zero3_70b_offload_optimizer.json", "online", 1),
    "8b-cache": Case(dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                          intermediate_size=14336, tie_word_embeddings=False, **LLAMA_VOCAB),
                     "deepspeed_configs/zero3_single_gpu.json", "cache", 1),
}
SMOKE_SEQ_LEN = 128  # --cpu-smoke: sequences of 128 tokens, one warm-up and one measured step
SMOKE_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, vocab_size=3000)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens of every sequence (data.max_length)")
    parser.add_argument("--steps", type=int, default=3, help="measured optimiser steps")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps first (allocator, Triton, optimizer)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny shapes in float32 on the CPU: host memory only, checks the script end to end")
    parser.add_argument("--run-one", choices=list(CASES), help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- inputs: model, data, config -------------------------------------------------------------------------------------
def write_random_model(shape: dict, directory: Path, seq_len: int, on_gpu: bool) -> None:
    """A random-init Llama of `shape` as a Hugging Face directory, with the sample tokenizer (token ids < 3000)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from mpo_dist.models.tiny import train_sample_tokenizer

    tokenizer = train_sample_tokenizer(directory)
    config = LlamaConfig(**shape, max_position_embeddings=max(4 * seq_len, 2048), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if on_gpu else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if on_gpu else torch.float32)
    model.save_pretrained(directory, safe_serialization=True)


def write_data(path: Path, records: int, seq_len: int) -> None:
    """MPO records (target zh, dominant en) long enough that truncation fills every sequence to `seq_len` tokens."""
    from mpo_dist.data.loading import resolve_path

    sample = [json.loads(line) for line in resolve_path("sample:train").read_text(encoding="utf-8").splitlines()]
    repeats = seq_len // 8  # every sample text is longer than 8 tokens

    def long(text: str) -> str:
        return " ".join([text] * repeats)

    with open(path, "w", encoding="utf-8") as handle:
        for index in range(records):
            record = sample[index % len(sample)]
            handle.write(json.dumps({"id": f"bench{index}", **{
                field: {lang: long(record[field][lang]) for lang in (DOMINANT, TARGET)}
                for field in ("prompt", "chosen", "rejected")}}, ensure_ascii=False) + "\n")


def overrides(case: Case, work: Path, args: argparse.Namespace) -> list[str]:
    return [f"model.path={work / 'model'}", "model.gradient_checkpointing=true", f"train.output_dir={work / 'run'}",
            f"data.train_files=[{work / 'data.jsonl'}]", "data.eval_files=[]", f"data.languages=[{TARGET}]",
            f"data.dominant_language={DOMINANT}", f"data.max_length={args.seq_len}",
            f"data.max_prompt_length={args.seq_len // 4}", "loss.name=mpo", f"train.micro_batch_size={case.pairs}",
            f"train.max_steps={args.warmup + args.steps}", "checkpoint.resume=none", "checkpoint.every_steps=0",
            "logging.progress_bar=false", "logging.tensorboard=false", f"engine.policy_config={case.policy_config}",
            f"engine.reference={case.reference}", f"engine.reference_cache={work / 'reference_cache'}"]


# ---- measurement (child process) --------------------------------------------------------------------------------------
class PhasePeaks:
    """Peak GPU memory allocated and reserved per phase of the step; each engine call that opens a phase closes the
    previous one and resets torch's peak counters."""

    def __init__(self) -> None:
        self.allocated: dict[str, int] = defaultdict(int)
        self.reserved: dict[str, int] = defaultdict(int)
        self.phase: str | None = None

    def enter(self, phase: str) -> None:
        import torch

        self.close()
        self.phase = phase
        torch.cuda.reset_peak_memory_stats()

    def close(self) -> None:
        import torch

        if self.phase is not None:
            self.allocated[self.phase] = max(self.allocated[self.phase], torch.cuda.max_memory_allocated())
            self.reserved[self.phase] = max(self.reserved[self.phase], torch.cuda.max_memory_reserved())
        self.phase = None

    def marking(self, phase: str, method: Callable) -> Callable:
        def call(*args, **kwargs):
            self.enter(phase)
            return method(*args, **kwargs)
        return call


def host_peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_host_peak() -> None:
    """Linux: writing 5 to clear_refs resets the peak resident set to the current one."""
    Path("/proc/self/clear_refs").write_text("5")


def run_one(args: argparse.Namespace) -> dict:
    import torch

    from mpo_dist.check.memory_plan import plan_settings
    from mpo_dist.config import load_config
    from mpo_dist.engine.engines import ReferenceEngine
    from mpo_dist.plan.memory import (CUDA_CONTEXT_ALLOWANCE_BYTES, FORWARD_BACKWARD, OPTIMIZER_STEP, REFERENCE_FORWARD,
                                      plan_memory)
    from mpo_dist.plan.model_shape import load_model_shape
    from mpo_dist.train.trainer import Trainer

    case, work = CASES[args.run_one], args.work_dir
    config = load_config(None, overrides(case, work, args))
    trainer = Trainer(config)
    on_gpu = trainer.ctx.on_gpu
    phases = PhasePeaks()
    if on_gpu:
        if isinstance(trainer.reference, ReferenceEngine):  # a reference cache is read inside the policy's phase
            trainer.reference.forward = phases.marking(REFERENCE_FORWARD, trainer.reference.forward)
        trainer.policy.forward = phases.marking(FORWARD_BACKWARD, trainer.policy.forward)
        trainer.policy.step = phases.marking(OPTIMIZER_STEP, trainer.policy.step)
    for step in range(args.warmup):
        trainer.optimizer_step(step)
    phases.close()
    phases.allocated.clear()
    phases.reserved.clear()
    reset_host_peak()
    for step in range(args.warmup, args.warmup + args.steps):
        trainer.optimizer_step(step)
    phases.close()
    host = host_peak_bytes()

    shape = load_model_shape(str(work / "model"))
    settings = plan_settings(config, nodes=1, gpus_per_node=1, dtype="bf16", hidden_size=shape.hidden_size,
                             gpu_mem_gib=float("inf"), cpu_mem_gib=float("inf"))
    plan = plan_memory(shape, settings)
    planned_phases = plan.gpu_phase_bytes()
    persistent = planned_phases.pop("persistent") - CUDA_CONTEXT_ALLOWANCE_BYTES
    result = {"config": args.run_one, "params": shape.total_params, "dtype": trainer.dtype_name,
              "planned": {"gpu_peak": plan.gpu_peak_bytes, "host": plan.cpu_bytes_per_node,
                          "gpu_peak_without_allowance": plan.gpu_peak_bytes - CUDA_CONTEXT_ALLOWANCE_BYTES,
                          "phases": {phase: persistent + b for phase, b in planned_phases.items()}},
              "measured": {"host": host}}
    if on_gpu:
        free, total = torch.cuda.mem_get_info()
        result["measured"] |= {"allocated": max(phases.allocated.values()), "reserved": max(phases.reserved.values()),
                               "context": total - free - torch.cuda.memory_reserved(),
                               "phases": dict(phases.allocated), "device": torch.cuda.get_device_name()}
    return result


# ---- orchestration (parent) -------------------------------------------------------------------------------------------
def run(command: list[str], log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "4"), PYTHONUNBUFFERED="1")
    with open(log, "a") as handle:
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    if completed.returncode:
        raise SystemExit(f"{' '.join(command[:6])} ... exited {completed.returncode}; log: {log}")


def measure(name: str, args: argparse.Namespace, scratch: Path, on_gpu: bool) -> dict:
    case = CASES[name]
    work = scratch / name
    work.mkdir()
    shape = SMOKE_SHAPE | {"tie_word_embeddings": case.shape["tie_word_embeddings"]} if args.cpu_smoke else case.shape
    write_random_model(shape, work / "model", args.seq_len, on_gpu)
    write_data(work / "data.jsonl", (args.warmup + args.steps) * case.pairs, args.seq_len)
    log = work / "log.txt"
    if case.reference == "cache":
        sets = [part for o in overrides(case, work, args) for part in ("--set", o)]
        run([sys.executable, "-m", "mpo_dist.cli", "precompute-ref", *sets], log)
    result_file = work / "result.json"
    smoke = ["--cpu-smoke"] if args.cpu_smoke else []
    run([sys.executable, __file__, "--run-one", name, "--work-dir", str(work), "--result", str(result_file),
         "--seq-len", str(args.seq_len), "--steps", str(args.steps), "--warmup", str(args.warmup), *smoke], log)
    return json.loads(result_file.read_text())


def _row(label: str, planned: int, measured: int | None) -> str:
    if measured is None:
        return f"| {label} | {planned / GIB:.2f} | n/a | |"
    error = measured / planned - 1
    verdict = "" if abs(error) <= GOAL else " **over 10 %**"
    return f"| {label} | {planned / GIB:.2f} | {measured / GIB:.2f} | {100 * error:+.1f} %{verdict} |"


def table(result: dict) -> str:
    planned, measured = result["planned"], result["measured"]
    lines = [f"### {result['config']}: {result['params']:,} parameters, {result['dtype']}"
             + (f", {measured['device']}" if "device" in measured else ", CPU (host memory only)"),
             "", "| memory (GiB) | planned | measured | error |", "|---|---:|---:|---:|"]
    if "allocated" in measured:
        lines.append(_row("GPU peak allocated (plan without the 3 GiB allowance)",
                          planned["gpu_peak_without_allowance"], measured["allocated"]))
        lines.append(_row("GPU peak reserved + CUDA context (whole plan)", planned["gpu_peak"],
                          measured["reserved"] + measured["context"]))
        for phase, planned_bytes in planned["phases"].items():
            lines.append(_row(f"GPU peak allocated in the {phase} phase", planned_bytes, measured["phases"].get(phase)))
    else:
        lines.append(_row("GPU peak (plan for bf16 on a GPU)", planned["gpu_peak"], None))
    lines.append(_row("host peak resident set (per node)", planned["host"], measured["host"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu_smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if args.run_one:
        args.result.write_text(json.dumps(run_one(args)))
        return 0
    import torch

    on_gpu = torch.cuda.is_available() and not args.cpu_smoke
    if not on_gpu and not args.cpu_smoke:
        print("plan_vs_measured.py measures GPU memory: run it on a CUDA machine, or pass --cpu-smoke", file=sys.stderr)
        return 2
    if args.cpu_smoke:
        args.seq_len, args.steps, args.warmup = SMOKE_SEQ_LEN, 1, 1
    results = []
    with tempfile.TemporaryDirectory(prefix="mpo_dist_plan_vs_measured_") as scratch:
        for name in args.configs:
            results.append(measure(name, args, Path(scratch), on_gpu))
            print(table(results[-1]) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
