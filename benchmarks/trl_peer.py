"""Peer benchmark: mpo-dist DPO against TRL's DPOTrainer on the same model, pairs, order, optimiser and schedule.

Why: TRL's DPOTrainer is what a user would otherwise pick. This puts both side by side on one machine, each in a fresh
process, runs alternated (round r: TRL, mpo-dist on 1 rank, on 2 ranks; then round r+1) so machine noise hits both,
and checks on the way that the two compute the same thing (per-step loss within 1e-5). docs/benchmarks.md, "Peer
benchmark: TRL DPOTrainer", says how the two are made identical and what each column means.

- Model: SmolLM2-135M-Instruct as `mpo-dist import-gguf` writes it (float32, sdpa, activation checkpointing in both).
- Pairs: configs/real_dpo.yaml's (sample:train; zh ja ko ar bn sw), tokenised once by mpo-dist's own code here; TRL
  gets those token ids (benchmarks/trl_peer_trl.py) and checks every micro-batch against them.
- Order: mpo-dist's sampler (seed from the config) decides which 4 pairs each optimiser step trains on; 1 rank
  (micro-batch 2 x accumulation 2) and 2 ranks (2 x 1) draw the same 4 per step, TRL is fed those 4 per step
  (2 x accumulation 2), and each mpo-dist run's samples.jsonl is checked against them.
- Optimiser: torch AdamW with the parameters of mpo-dist's rendered DeepSpeed config, clipping at its
  gradient_clipping, lr by mpo-dist's warmup-cosine factor (a LambdaLR in both).
- Measured by this process for both tools alike: every process of the launched tree sampled with psutil every
  --sample-seconds (CPU-seconds user+system summed over the tree, launcher included; resident memory per process).
  Per-step wall times and losses come from mpo-dist's metrics.jsonl and a TRL callback (time.time() in both).

    bash benchmarks/trl_peer.sh                                  # sets up .venv-bench, then runs this (~10 min)
    bash benchmarks/trl_peer.sh --steps 3 --max-length 128 --ranks 1
    bash benchmarks/trl_peer.sh --rounds 3 --json runs/trl_peer.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil

if TYPE_CHECKING:  # annotations only: mpo-dist (and torch) load when main() needs them, after the arguments are read
    from mpo_dist.config import Config
    from mpo_dist.data.examples import PreferenceExample

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/real_dpo.yaml"
PAIRS_PER_STEP = 4  # as the recipe's 2 ranks x micro-batch 2
MICRO_BATCH = 2
LOSS_TOLERANCE = 1e-5
TRL_CHILD = REPO_ROOT / "benchmarks" / "trl_peer_trl.py"
GIB = 1024 ** 3


@dataclass
class Step:
    """One optimiser step as the tool reported it; times are time.time() seconds."""

    step: int
    begin: float
    end: float
    loss: float
    tokens: int
    lr: float
    grad_norm: float


@dataclass
class Run:
    """One launch of one tool: its steps plus what the sampler saw of its process tree."""

    tool: str
    ranks: int
    round: int
    launched: float
    exited: float
    steps: list[Step] = field(default_factory=list)
    cpu_samples: list[tuple[float, float]] = field(default_factory=list)  # (time, CPU-seconds of the whole tree)
    peak_rss: dict[int, int] = field(default_factory=dict)  # pid -> largest resident bytes seen
    training_pids: list[int] = field(default_factory=list)
    processes: dict[int, dict] = field(default_factory=dict)  # pid -> parent pid, command line, first seen: what was counted

    def cpu_at(self, moment: float) -> float:
        times, cpu = zip(*self.cpu_samples)
        return float(np.interp(moment, times, cpu))

    def metrics(self) -> dict[str, float]:
        """The table's columns for this run; the first step (warm-up, allocator growth) is left out of the rates."""
        first, last = self.steps[0], self.steps[-1]
        wall = last.end - first.end
        cpu = self.cpu_at(last.end) - self.cpu_at(first.end)
        tokens = sum(step.tokens for step in self.steps[1:])
        durations = [b.end - a.end for a, b in zip(self.steps, self.steps[1:])]
        return {
            "s_per_step": statistics.median(durations),
            "tokens_per_s": tokens / wall,
            "tokens_per_cpu_s": tokens / cpu,
            "cores_busy": cpu / wall,
            "peak_rss_gib": max(self.peak_rss.get(pid, 0) for pid in self.training_pids) / GIB,
            "startup_s": first.begin - self.launched,
            "shutdown_s": self.exited - last.end,
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="mpo-dist DPO against TRL's DPOTrainer on SmolLM2-135M-Instruct and configs/real_dpo.yaml's pairs "
                    "(same token ids, order, optimiser, schedule); prints one Markdown table of medians over rounds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="rounds; each runs TRL, then mpo-dist at every --ranks, "
                        "each in a fresh process")
    parser.add_argument("--steps", type=int, default=8, help=f"optimiser steps per run ({PAIRS_PER_STEP} pairs each); "
                        "the first is left out of the rates, so at least 3")
    parser.add_argument("--ranks", default="1,2", help="mpo-dist world sizes to run, comma-separated: 1 (micro-batch 2 "
                        "x accumulation 2) and/or 2 (micro-batch 2 per rank)")
    parser.add_argument("--max-length", type=int, default=256, help="data.max_length (prompt + response tokens); "
                        "data.max_prompt_length is min(128, max-length / 2)")
    parser.add_argument("--sample-seconds", type=float, default=0.2, help="how often the process trees are sampled")
    parser.add_argument("--json", type=Path, help="also write the raw numbers (every step, every run) here")
    parser.add_argument("--keep-runs", action="store_true", help="keep the runs' directories (checkpoints, logs, "
                        "metrics) and print where; by default each is removed once read")
    args = parser.parse_args(argv)
    try:
        args.ranks = [int(item) for item in args.ranks.split(",")]
    except ValueError:
        parser.error(f"--ranks: expected a comma-separated list of 1 and 2, got {args.ranks!r}")
    if not args.ranks or any(ranks not in (1, 2) for ranks in args.ranks):
        parser.error(f"--ranks: {PAIRS_PER_STEP} pairs per step at micro-batch {MICRO_BATCH} allow 1 or 2 ranks, "
                     f"got {args.ranks}")
    if args.steps < 3:
        parser.error("--steps: at least 3 (the first step is excluded and a median needs two more)")
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    if args.max_length < 2:
        parser.error("--max-length: at least 2 (prompt and response each keep one token)")
    return args


# ---- the shared inputs -------------------------------------------------------------------------------------------
def overrides(model_path: str, output_dir: Path, args: argparse.Namespace, ranks: int) -> list[str]:
    """The --set values of an mpo-dist run with `ranks` ranks (and of the check that tokenises the pairs)."""
    return [f"model.path={model_path}", f"train.output_dir={output_dir}", "checkpoint.resume=none",
            "checkpoint.on_existing=delete", f"train.max_steps={args.steps}", "train.save_hf_at_end=false",
            "logging.tensorboard=false", f"train.micro_batch_size={MICRO_BATCH}",
            f"train.gradient_accumulation={PAIRS_PER_STEP // (MICRO_BATCH * ranks)}",
            f"data.max_length={args.max_length}", f"data.max_prompt_length={min(128, args.max_length // 2)}"]


def step_groups(num_examples: int, ranks: int, steps: int, seed: int) -> list[list[int]]:
    """The example indices each optimiser step of an mpo-dist run with `ranks` ranks trains on, from its own sampler."""
    from mpo_dist.data.sampler import ResumableDistributedSampler

    samplers = [ResumableDistributedSampler(num_examples, rank=rank, world_size=ranks, micro_batch_size=MICRO_BATCH,
                                            seed=seed) for rank in range(ranks)]
    groups = []
    for _ in range(steps):
        group: list[int] = []
        for _ in range(PAIRS_PER_STEP // (MICRO_BATCH * ranks)):  # accumulation micro-steps, all ranks in lockstep
            for sampler in samplers:
                group += sampler.next_batch()
        groups.append(group)
    return groups


def trl_spec(config: Config, examples: list[PreferenceExample], groups: list[list[int]], model_path: str,
             hidden_size: int, dtype_name: str, steps: int) -> dict:
    """What the TRL child needs: the pairs in step order, split as TRL's columns, and mpo-dist's optimiser settings
    as its DeepSpeed template renders them."""
    from mpo_dist.engine.ds_config import render_policy_config

    rendered = render_policy_config(config, world_size=1, dtype=dtype_name, hidden_size=hidden_size, on_gpu=False)
    optimizer = rendered["optimizer"]
    if optimizer.get("type") != "AdamW" or not optimizer["params"].get("torch_adam"):
        raise SystemExit(f"{config.engine.policy_config}: the benchmark mirrors torch's AdamW (torch_adam: true); "
                         f"the template has {optimizer}")
    pairs = []
    for index in (i for group in groups for i in group):
        example = examples[index]
        chosen, rejected = example.chosen, example.rejected
        prompt = chosen.input_ids[:chosen.prompt_length]
        if rejected.input_ids[:rejected.prompt_length] != prompt:
            raise SystemExit(f"{example.example_id}: chosen and rejected prompts differ; TRL's rows share one prompt")
        pairs.append({"example_id": example.example_id, "prompt_ids": list(prompt),
                      "chosen_ids": list(chosen.input_ids[chosen.prompt_length:]),
                      "rejected_ids": list(rejected.input_ids[rejected.prompt_length:])})
    params = optimizer["params"]
    return {"model_path": model_path, "pairs": pairs, "pairs_per_step": PAIRS_PER_STEP, "micro_batch_size": MICRO_BATCH,
            "steps": steps, "seed": config.train.seed, "beta": config.loss.dpo.beta,
            "label_smoothing": config.loss.dpo.label_smoothing, "max_grad_norm": rendered["gradient_clipping"],
            "warmup_ratio": config.optim.warmup_ratio, "min_lr_ratio": config.optim.min_lr_ratio,
            "optimizer": {key: params[key] for key in ("lr", "betas", "eps", "weight_decay")}
                         | {"fused": bool(params.get("fused", False))}}


# ---- running and sampling ----------------------------------------------------------------------------------------
MPO_DIST_ONLY_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR")


def child_environment(trl: bool) -> dict[str, str]:
    """The user's environment without OMP_NUM_THREADS (each tool's own thread choice is part of the comparison).
    TRL runs offline, as everything here does, and without what launch/setup_env.sh exports for mpo-dist's CPU ranks
    (glibc's fixed malloc thresholds, DeepSpeed's accelerator and op folder): a TRL user has none of them."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    if trl:
        for key in MPO_DIST_ONLY_ENVIRONMENT:
            env.pop(key, None)
        env |= {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_DATASETS_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1"}
    return env


def launch_and_sample(command: list[str], env: dict[str, str], log: Path, run: Run, launcher_is_training: bool,
                      sample_seconds: float) -> None:
    """Run `command` to its end, sampling its process tree. A process keeps its last CPU reading after it exits, so
    the tree's CPU never goes backwards. Training processes (for peak RSS): the launched one for TRL, torchrun's
    workers (the launcher's children) for mpo-dist; their own short-lived children (a fork before an exec shows its
    parent's shared pages as resident) count towards CPU only."""
    last_cpu: dict[int, float] = {}
    with log.open("w", encoding="utf-8") as output:
        run.launched = time.time()
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        root = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                tree = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            for member in tree:
                try:
                    with member.oneshot():
                        times = member.cpu_times()
                        rss = member.memory_info().rss
                        command_line = " ".join(member.cmdline())  # re-read: a fork shows its parent's until it execs
                        seen = run.processes.get(member.pid) or {"parent": member.ppid(), "first_seen": time.time()}
                except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                    continue
                last_cpu[member.pid] = times.user + times.system
                run.peak_rss[member.pid] = max(run.peak_rss.get(member.pid, 0), rss)
                seen["command"] = command_line
                if member.pid not in run.processes:
                    run.processes[member.pid] = seen
                    if member.pid == root.pid if launcher_is_training else seen["parent"] == root.pid:
                        run.training_pids.append(member.pid)
            run.cpu_samples.append((time.time(), sum(last_cpu.values())))
            time.sleep(sample_seconds)
        run.exited = time.time()
    if process.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
        raise SystemExit(f"{run.tool} ({run.ranks} rank(s), round {run.round}) exited {process.returncode}; "
                         f"its log {log} ends:\n{tail}")


def run_trl(spec: dict, tool: str, directory: Path, round_index: int, sample_seconds: float) -> Run:
    directory.mkdir(parents=True)
    log_file = directory / "steps.jsonl"
    spec_file = directory / "spec.json"
    spec_file.write_text(json.dumps(spec | {"output_dir": str(directory / "trainer"), "log_file": str(log_file)}),
                         encoding="utf-8")
    run = Run(tool, 1, round_index, 0.0, 0.0)
    launch_and_sample([sys.executable, str(TRL_CHILD), str(spec_file)], child_environment(trl=True),
                      directory / "log.txt", run, launcher_is_training=True, sample_seconds=sample_seconds)
    for line in log_file.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        run.steps.append(Step(record["step"], record["begin"], record["end"], record["loss"], record["tokens"],
                              record["lr"], record["grad_norm"]))
    return run


def run_mpo_dist(model_path: str, args: argparse.Namespace, ranks: int, group_ids: list[set[str]], directory: Path,
                 round_index: int) -> Run:
    """Launched as a user would (launch/real.sh's torchrun line); its per-step numbers read from metrics.jsonl, its
    per-step pairs from samples.jsonl (checked against those TRL was fed)."""
    command = [sys.executable, "-m", "mpo_dist.train.launcher", "--standalone", f"--nproc-per-node={ranks}",
               "-m", "mpo_dist.cli", "train", "--config", CONFIG]
    for value in overrides(model_path, directory, args, ranks):
        command += ["--set", value]
    directory.parent.mkdir(parents=True, exist_ok=True)
    run = Run("mpo-dist", ranks, round_index, 0.0, 0.0)
    launch_and_sample(command, child_environment(trl=False), directory.parent / f"{directory.name}.log", run,
                      launcher_is_training=False, sample_seconds=args.sample_seconds)
    for line in (directory / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            end = record["time"]
            run.steps.append(Step(record["step"], end - record["train/step_seconds"], end, record["train/loss"],
                                  int(record["train/tokens"]), record["train/lr"], record["train/grad_norm"]))
    drawn = [set(json.loads(line)["ids"]) for line in (directory / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    if drawn != group_ids:
        raise SystemExit(f"mpo-dist on {ranks} rank(s) trained on other pairs than TRL was fed: {drawn} vs {group_ids}")
    return run


# ---- the report ----------------------------------------------------------------------------------------------------
def max_loss_difference(run: Run, reference: Run) -> float:
    """The largest per-step |loss difference|, once the steps, their real tokens and their lr are seen to agree."""
    for name in ("step", "tokens"):
        mine, theirs = [getattr(s, name) for s in run.steps], [getattr(s, name) for s in reference.steps]
        if mine != theirs:
            raise SystemExit(f"{run.tool} on {run.ranks} rank(s) logged {name} {mine}, TRL {theirs}")
    lr_gap = max(abs(a.lr - b.lr) for a, b in zip(run.steps, reference.steps))
    if lr_gap > 1e-12:
        raise SystemExit(f"the learning rates differ by up to {lr_gap:.3g}: the schedules are not the same")
    return max(abs(a.loss - b.loss) for a, b in zip(run.steps, reference.steps))


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    return (f"{model}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), "
            f"{psutil.virtual_memory().total / GIB:.0f} GiB memory, Python {platform.python_version()}")


def versions() -> dict[str, str]:
    found = {}
    for name in ("trl", "transformers", "torch", "deepspeed", "accelerate", "mpo-dist"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def summary_rows(runs: list[tuple[Run, Run | None]]) -> list[tuple[str, int, dict[str, float], float | None]]:
    """One row per tool and world size, in the order first run: the medians of its rounds' metrics, and its largest
    loss difference from the TRL run of the same round (None for TRL's own row)."""
    rows = []
    for tool, ranks in dict.fromkeys((run.tool, run.ranks) for run, _ in runs):
        members = [(run, reference) for run, reference in runs if (run.tool, run.ranks) == (tool, ranks)]
        per_run = [run.metrics() for run, _ in members]
        medians = {name: statistics.median(m[name] for m in per_run) for name in per_run[0]}
        gaps = [max_loss_difference(run, reference) for run, reference in members if reference is not None]
        rows.append((tool, ranks, medians, max(gaps) if gaps else None))
    return rows


def table(rows: list[tuple[str, int, dict[str, float], float | None]], rounds: int) -> str:
    lines = [f"| tool | ranks | s/step (median) | job tokens/s | tokens per CPU-s | cores busy | peak RSS per process "
             f"(GiB) | start-up (s) | shut-down (s) | max \\|Δ loss\\| vs TRL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for tool, ranks, m, loss_gap in rows:
        gap = "reference" if loss_gap is None else (
            f"{loss_gap:.1e}" if loss_gap <= LOSS_TOLERANCE else f"FAIL {loss_gap:.1e} > {LOSS_TOLERANCE:.0e}")
        lines.append(f"| {tool} | {ranks} | {m['s_per_step']:.2f} | {m['tokens_per_s']:.1f} | {m['tokens_per_cpu_s']:.1f} "
                     f"| {m['cores_busy']:.2f} | {m['peak_rss_gib']:.2f} | {m['startup_s']:.1f} | {m['shutdown_s']:.1f} "
                     f"| {gap} |")
    lines.append(f"\nMedians over {rounds} round(s); the loss column is the largest per-step difference of any round.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """0 when every run's loss stayed within LOSS_TOLERANCE of TRL's, 1 otherwise (the table says which), 2 for a
    --max-length the recipe's data cannot take."""
    args = parse_args(argv)
    started = time.time()
    from mpo_dist.check.preflight import preflight
    from mpo_dist.config import load_config
    from mpo_dist.errors import UserError

    model_path = subprocess.run([sys.executable, "-m", "mpo_dist.cli", "import-gguf"], cwd=REPO_ROOT, check=True,
                                capture_output=True, text=True).stdout.strip().splitlines()[-1]
    runs_root = Path(tempfile.mkdtemp(prefix="trl_peer-"))
    try:  # e.g. a --max-length too short for the chat template's frame: mpo-dist's own one-line error
        config = load_config(REPO_ROOT / CONFIG, overrides(model_path, runs_root / "check", args, ranks=1))
        inputs = preflight(config, world_size=1, on_gpu=False)
        inputs.report.raise_if_failed()
    except UserError as error:
        shutil.rmtree(runs_root)
        print(f"trl_peer.py: --max-length {args.max_length} with {CONFIG}: {error}", file=sys.stderr)
        return 2
    examples = inputs.train_examples
    # One TRL run per distinct grouping (1 and 2 ranks draw the same 4 pairs per step, so normally one).
    groupings: dict[tuple[tuple[int, ...], ...], list[int]] = {}
    for ranks in args.ranks:
        groups = step_groups(len(examples), ranks, args.steps, config.train.seed)
        groupings.setdefault(tuple(tuple(sorted(group)) for group in groups), []).append(ranks)
    specs = {key: trl_spec(config, examples, [list(group) for group in key], model_path,
                           inputs.model.hf_config.hidden_size, inputs.dtype_name, args.steps) for key in groupings}
    print(f"{len(examples)} pairs, {args.steps} steps of {PAIRS_PER_STEP} pairs, max_length {args.max_length}, "
          f"{args.rounds} round(s); runs under {runs_root}", flush=True)

    runs: list[tuple[Run, Run | None]] = []  # (run, the TRL run it is compared with)
    for round_index in range(args.rounds):
        for number, (key, ranks_list) in enumerate(groupings.items()):
            tool = "TRL DPOTrainer" if len(groupings) == 1 else f"TRL DPOTrainer (pairs as mpo-dist {ranks_list} ranks)"
            trl = run_trl(specs[key], tool, runs_root / f"round{round_index}" / f"trl{number}", round_index,
                          args.sample_seconds)
            print(f"round {round_index + 1}: TRL done", flush=True)
            runs.append((trl, None))
            group_ids = [{examples[i].example_id for i in group} for group in key]
            for ranks in ranks_list:
                directory = runs_root / f"round{round_index}" / f"mpo-dist-{ranks}"
                run = run_mpo_dist(model_path, args, ranks, group_ids, directory, round_index)
                print(f"round {round_index + 1}: mpo-dist {ranks} rank(s) done", flush=True)
                runs.append((run, trl))
                if not args.keep_runs:
                    shutil.rmtree(directory)  # its checkpoint alone is ~1.5 GB
    rows = summary_rows(runs)
    print(f"\nPeer benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {time.time() - started:.0f} s in all")
    print("versions: " + ", ".join(f"{name} {v}" for name, v in versions().items()))
    print(f"machine: {machine()}")
    print(f"model: {model_path} (float32, sdpa, activation checkpointing); {len(examples)} pairs of {CONFIG}, "
          f"max_length {args.max_length}; {args.steps} steps x {PAIRS_PER_STEP} pairs\n")
    print(table(rows, args.rounds))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "versions": versions(), "machine": machine(), "arguments": {k: str(v) for k, v in vars(args).items()},
            "rows": [{"tool": t, "ranks": r, "medians": m, "max_loss_difference": g} for t, r, m, g in rows],
            "runs": [asdict(run) | {"metrics": run.metrics()} for run, _ in runs]}, indent=1), encoding="utf-8")
        print(f"raw numbers: {args.json}")
    if args.keep_runs:
        print(f"runs kept under {runs_root}")
    else:
        shutil.rmtree(runs_root)
    failed = any(gap is not None and gap > LOSS_TOLERANCE for *_, gap in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
