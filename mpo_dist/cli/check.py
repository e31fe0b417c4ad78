"""`mpo-dist check`: everything a run needs, checked on a login node in seconds, with no process group, no DeepSpeed
engine and no GPU. Prints a summary, then every warning and error; exit 0 (the run would start) or 2 (it would fail)."""
from __future__ import annotations

import argparse
from pathlib import Path
from mpo_dist.cli.run_options import add_run_options, run_overrides
from mpo_dist.errors import EXIT_USER_ERROR

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
    import torch

    from mpo_dist.check.memory_plan import check_memory
    from mpo_dist.check.reference_cache import check_reference_cache
    from mpo_dist.check.resume import check_resume
    from mpo_dist.check.versions import check_versions
    from mpo_dist.check.preflight import preflight
    from mpo_dist.check.report import CheckReport
    from mpo_dist.config import ConfigError, load_config
    from mpo_dist.check.reference_gap import check_reference_gap

    overrides = run_overrides(args)
    gpus_per_node = 1 if args.gpus_per_node is None else args.gpus_per_node
    try:
        if args.nodes < 1 or gpus_per_node < 1 or args.reference_gap < 0:
            raise ConfigError(f"--nodes {args.nodes}, --gpus-per-node {gpus_per_node}, --reference-gap "
                              f"{args.reference_gap}: expected at least 1, 1 and 0")
        config = load_config(args.config, overrides)
    except ConfigError as error:
        report = CheckReport()
        report.error(str(error))
        print(report.render())
        return EXIT_USER_ERROR
    on_gpu = not args.cpu and (args.gpus_per_node is not None or torch.cuda.is_available())
    inputs = preflight(config, world_size=args.nodes * gpus_per_node, on_gpu=on_gpu)
    report = inputs.report
    check_resume(config, report, world_size=args.nodes * gpus_per_node, checksums=not args.skip_tag_checksums)
    check_reference_cache(inputs.reference_cache, report)
    check_versions(report)
    report.summary.insert(0, f"run        {config.loss.name}{' + mlc' if config.mlc.enabled else ''}, "
                             f"{args.nodes} node(s) x {gpus_per_node} rank(s) on {'GPUs' if on_gpu else 'CPU'}"
                             f" = world {args.nodes * gpus_per_node}")
    plan_model = args.plan_model or config.model.path
    if not on_gpu:
        report.line("memory     not planned: a CPU run (the planner models GPU runs; --gpus-per-node G checks one)")
    elif args.plan_model or Path(config.model.path).is_dir():
        check_memory(config, report, model=plan_model, nodes=args.nodes, gpus_per_node=gpus_per_node,
                     dtype=inputs.dtype_name, gpu_mem_gib=args.gpu_mem, cpu_mem_gib=args.cpu_mem)
    else:
        report.line("memory     not planned: model.path is not on this machine; --plan-model NAME plans a bundled shape")
    if args.reference_gap and not report.errors:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        check_reference_gap(report, config.model.path, inputs.eval_examples,
                            dominant_language=config.data.dominant_language, pairs=args.reference_gap,
                            pad_token_id=inputs.model.tokenizer.pad_token_id,
                            dtype="fp32" if device.type == "cpu" else inputs.dtype_name, device=device)
    print(report.render())
    return EXIT_USER_ERROR if report.errors else 0
