"""`mpo-dist check`'s sequence: the pre-flight `train` runs (config, output directory, model, data, templates, steps),
then the resume path, the reference cache, the library versions, the memory plan for N x G ranks and, on request, the
reference model's dominant-language reward gap; one report of them all.

A model.path that is no model directory is found from the config file and --set alone, before torch, transformers and
DeepSpeed load (seconds of CPU): the report then holds that one error and says what was left unchecked.
"""
from __future__ import annotations

from pathlib import Path

from mpo_dist.check.model_path import model_path_problem
from mpo_dist.check.report import CheckReport
from mpo_dist.config_files import ConfigError, read_config_tree

UNCHECKED_WITHOUT_MODEL = ("checked    model.path only: the config's values, data, resume path and memory are checked "
                           "once it is a model directory, or with --plan-model NAME")


def _never_a_list(parts: list[str]) -> bool:
    """Which keys are lists is known to the Config (torch): a --set it would refuse as one item of a list leaves
    model.path alone here, and the full check refuses it."""
    return False


def model_path_problem_before_loading(config_path: Path | None, overrides: list[str]) -> str | None:
    """model.path's problem, read from the config file and --set alone; None when it is a model directory and also
    when the config does not read or names no model.path, which the full check reports in the config's own words."""
    try:
        tree = read_config_tree(config_path, overrides, is_list_key=_never_a_list)
    except ConfigError:
        return None
    model = tree.get("model")
    path = model.get("path") if isinstance(model, dict) else None
    return model_path_problem(Path(path)) if isinstance(path, str) and path else None


def run_check(config_path: Path | None, overrides: list[str], *, nodes: int = 1, gpus_per_node: int | None = None,
              cpu: bool = False, tag_checksums: bool = True, gpu_mem_gib: float | None = None,
              cpu_mem_gib: float | None = None, plan_model: str | None = None,
              reference_gap_pairs: int = 0) -> CheckReport:
    """The report of a run of `config_path` + `overrides` on `nodes` x `gpus_per_node` ranks (None: 1 rank, on a GPU if
    this machine has one; `cpu`: CPU processes); raises CheckReportFailed with the rendered report when the run would
    fail. `plan_model` is what the memory planner reads when model.path is not on this machine."""
    ranks = 1 if gpus_per_node is None else gpus_per_node
    report = CheckReport()
    if nodes < 1 or ranks < 1 or reference_gap_pairs < 0:
        report.error(f"--nodes {nodes}, --gpus-per-node {ranks}, --reference-gap {reference_gap_pairs}: expected at "
                     "least 1, 1 and 0")
        report.raise_report_if_failed()
    problem = None if plan_model else model_path_problem_before_loading(config_path, overrides)
    if problem:
        report.line(UNCHECKED_WITHOUT_MODEL)
        report.error(problem)
        report.raise_report_if_failed()
    report = _loaded_check(config_path, overrides, nodes=nodes, gpus_per_node=gpus_per_node, cpu=cpu,
                           tag_checksums=tag_checksums, gpu_mem_gib=gpu_mem_gib, cpu_mem_gib=cpu_mem_gib,
                           plan_model=plan_model, reference_gap_pairs=reference_gap_pairs)
    report.raise_report_if_failed()
    return report


def _loaded_check(config_path: Path | None, overrides: list[str], *, nodes: int, gpus_per_node: int | None, cpu: bool,
                  tag_checksums: bool, gpu_mem_gib: float | None, cpu_mem_gib: float | None, plan_model: str | None,
                  reference_gap_pairs: int) -> CheckReport:
    """Every check, with the config loaded (and torch with it): run_check's arguments, already range-checked."""
    # Imported here, past the file-system checks: torch, transformers and DeepSpeed take seconds of CPU to load.
    import torch

    from mpo_dist.check.memory_plan import check_memory
    from mpo_dist.check.preflight import preflight
    from mpo_dist.check.reference_cache import check_reference_cache
    from mpo_dist.check.reference_gap import check_reference_gap
    from mpo_dist.check.resume import check_resume
    from mpo_dist.check.versions import check_versions
    from mpo_dist.config import load_config

    ranks = 1 if gpus_per_node is None else gpus_per_node
    try:
        config = load_config(config_path, overrides)
    except ConfigError as error:
        report = CheckReport()
        report.error(str(error))
        return report
    on_gpu = not cpu and (gpus_per_node is not None or torch.cuda.is_available())
    inputs = preflight(config, world_size=nodes * ranks, on_gpu=on_gpu)
    report = inputs.report
    check_resume(config, report, world_size=nodes * ranks, checksums=tag_checksums)
    check_reference_cache(inputs.reference_cache, report)
    check_versions(report)
    report.summary.insert(0, f"run        {config.loss.name}{' + mlc' if config.mlc.enabled else ''}, "
                             f"{nodes} node(s) x {ranks} rank(s) on {'GPUs' if on_gpu else 'CPU'} = world {nodes * ranks}")
    if not on_gpu:
        report.line("memory     not planned: a CPU run (the planner models GPU runs; --gpus-per-node G checks one)")
    elif plan_model or Path(config.model.path).is_dir():
        check_memory(config, report, model=plan_model or config.model.path, nodes=nodes, gpus_per_node=ranks,
                     dtype=inputs.dtype_name, gpu_mem_gib=gpu_mem_gib, cpu_mem_gib=cpu_mem_gib)
    else:
        report.line("memory     not planned: model.path is not on this machine; --plan-model NAME plans a bundled shape")
    if reference_gap_pairs and not report.errors:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        check_reference_gap(report, config.model.path, inputs.eval_examples,
                            dominant_language=config.data.dominant_language, pairs=reference_gap_pairs,
                            pad_token_id=inputs.model.tokenizer.pad_token_id,
                            dtype="fp32" if device.type == "cpu" else inputs.dtype_name, device=device)
    return report
