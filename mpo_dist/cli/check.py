"""`mpo-dist check`: the options; mpo_dist.check.run_check checks everything a run needs, on a login node in seconds,
with no process group, no DeepSpeed engine and no GPU. Prints a summary, then every warning and error; exit 0 (the run
would start) or 2 (it would fail: mpo_dist.cli.main prints the failed report)."""
from __future__ import annotations

import argparse

from mpo_dist.cli.run_options import add_run_options, run_overrides


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check", help="check a run's config, model, data, cache, resume path and memory before submitting it",
        description="Check everything `mpo-dist train` would need with this config, without starting it: config values, "
                    "the model directory, every data row, languages, the reference cache, the resume path, the DeepSpeed "
                    "templates, steps and planned memory for N x G GPUs. Exit 0: the run would start; 2: it would fail. "
                    "See docs/quickstart.md.")
    add_run_options(parser, resume=True)
    parser.add_argument("--nodes", type=int, default=1, help="nodes of the run (default 1)")
    parser.add_argument("--gpus-per-node", type=int, help="ranks (GPUs) per node (default 1); giving it means a GPU run")
    parser.add_argument("--cpu", action="store_true", help="the ranks are CPU processes (as in the demo), not GPUs")
    parser.add_argument("--skip-tag-checksums", action="store_true",
                        help="read the resume tag's marker and world size but leave checksumming its files to the run's "
                             "ranks (slurm/train.sbatch: a 70B tag takes minutes to read on one login node)")
    parser.add_argument("--gpu-mem", type=float, help="GiB per GPU: error when the planned peak does not fit")
    parser.add_argument("--cpu-mem", type=float, help="GiB of host memory per node: error when the plan does not fit")
    parser.add_argument("--plan-model", help="what the memory planner reads when model.path is not on this machine: a "
                                             "bundled name (llama-3.1-8b, ...) or a config.json (default: model.path)")
    parser.add_argument("--reference-gap", type=int, metavar="K", default=0,
                        help="also measure the reference model's dominant-language reward gap on K held-out pairs "
                             "(forward passes on this machine; MPO needs it clearly positive)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mpo_dist.check.run_check import run_check

    report = run_check(args.config, run_overrides(args), nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                       cpu=args.cpu, tag_checksums=not args.skip_tag_checksums, gpu_mem_gib=args.gpu_mem,
                       cpu_mem_gib=args.cpu_mem, plan_model=args.plan_model, reference_gap_pairs=args.reference_gap)
    print(report.render())
    return 0
