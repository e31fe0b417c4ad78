"""Host memory of a CPU training run, phase by phase: where each rank's resident set goes and whether it grows.

Runs `mpo-dist train` under torchrun with the given config and overrides, and records in every rank, from
/proc/self/status, the resident set (VmRSS) and its peak so far (VmHWM) after each phase: process start, policy
engine built, reference engine built, every optimiser step, every evaluation, the final save. (tracemalloc cannot
see torch's allocations; these are the kernel's own figures.) Prints one Markdown table: rank 0's figures and the
largest over ranks.

    python benchmarks/cpu_memory.py --config configs/real_warmup.yaml --set model.path=DIR --steps 6
    MALLOC_ARENA_MAX=2 python benchmarks/cpu_memory.py ...     # glibc arenas: one of the suspects for growth
    python benchmarks/cpu_memory.py ... --set engine.policy_config=my_template.json    # another reduce bucket
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def status_gib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in GiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) * 1024 / GIB, int(fields["VmHWM"].split()[0]) * 1024 / GIB)


def worker(record_file: Path, train_args: list[str]) -> int:
    """One rank: wrap the trainer's phases so each appends (phase, rss, peak) to this rank's record file."""
    import functools

    from mpo_dist import cli
    from mpo_dist.engine import engines
    from mpo_dist.train import trainer

    rank_file = record_file.with_suffix(f".rank{os.environ.get('RANK', '0')}.jsonl")

    def record(phase: str) -> None:
        rss, peak = status_gib()
        with rank_file.open("a") as out:
            out.write(json.dumps({"phase": phase, "rss": rss, "peak": peak}) + "\n")

    def after(owner: type, method: str, phase) -> None:
        original = getattr(owner, method)

        @functools.wraps(original)
        def wrapped(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            record(phase(args) if callable(phase) else phase)
            return result

        setattr(owner, method, wrapped)

    record("start (torch, deepspeed imported)")
    after(engines.PolicyEngine, "__init__", "policy engine built")
    after(engines.ReferenceEngine, "__init__", "reference engine built")
    after(trainer.Trainer, "optimizer_step", lambda args: f"optimiser step {args[0] + 1}")
    after(trainer.Trainer, "evaluate", lambda args: f"evaluation at step {args[0]}")
    after(trainer.Trainer, "save", lambda args: f"checkpoint at step {args[0]}")
    return cli.main(["train", *train_args])


def table(record_file: Path, nproc: int) -> str:
    ranks = [[json.loads(line) for line in record_file.with_suffix(f".rank{rank}.jsonl").read_text().splitlines()]
             for rank in range(nproc)]
    rows = ["| phase | rank 0 RSS GiB | rank 0 peak GiB | max RSS over ranks | max peak over ranks |", "|---|---:|---:|---:|---:|"]
    for index, entry in enumerate(ranks[0]):
        others = [records[index] for records in ranks if index < len(records)]
        rows.append(f"| {entry['phase']} | {entry['rss']:.2f} | {entry['peak']:.2f} | "
                    f"{max(r['rss'] for r in others):.2f} | {max(r['peak'] for r in others):.2f} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=6, help="optimiser steps (train.max_steps)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    train_args = ["--config", str(args.config)] + [item for value in args.set for item in ("--set", value)]
    if args.worker is not None:
        return worker(args.worker, train_args)
    with tempfile.TemporaryDirectory() as scratch:
        record_file = Path(scratch) / "memory"
        overrides = [f"train.max_steps={args.steps}", f"train.output_dir={scratch}/run", "checkpoint.resume=none",
                     "train.save_hf_at_end=false", "logging.tensorboard=false"]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
                   str(Path(__file__).resolve()), "--worker", str(record_file), *train_args,
                   *[item for value in overrides for item in ("--set", value)]]
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
        subprocess.run(command, check=True, env=env, cwd=REPO_ROOT)
        print(f"\nconfig {args.config} {' '.join(args.set)}, {args.steps} steps, {args.nproc} ranks, "
              f"MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', 'unset')}\n")
        print(table(record_file, args.nproc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
