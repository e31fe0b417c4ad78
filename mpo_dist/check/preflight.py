"""The checks `train`, `precompute-ref` and `check` share, run before any process group or DeepSpeed starts, and what
they built on the way (tokenizer, examples, reference cache), so the run reuses it instead of redoing it.

Every rank of a torchrun / srun job may run them: they read files and create nothing (the output-directory check makes
an empty probe directory and removes it at once). The resume checkpoint is not
checked here: `train` verifies it right after the process group starts, where the ranks share reading it, and `check`
verifies it with the same function (check/resume.py, engine/checkpoint_resume.resolve_resume).
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from mpo_dist.check.build_lock import check_build_locks
from mpo_dist.check.data_checks import (check_example_ids, check_identical_pairs, check_languages, load_section,
                                        pairs_per_language)
from mpo_dist.check.model_dir import ModelInputs, check_model_directory
from mpo_dist.check.output_dir import check_output_dir
from mpo_dist.check.report import CheckReport
from mpo_dist.check.token_counts import CountingEncoder, TokenCounts
from mpo_dist.config import Config, needs_reference
from mpo_dist.data.examples import PreferenceExample, build_examples
from mpo_dist.data.sampler import ResumableDistributedSampler
from mpo_dist.data.schema import ParallelRecord
from mpo_dist.data.tokenize import ChatEncoder
from mpo_dist.engine.ds_config import render_policy_config, render_reference_config
from mpo_dist.engine.reference_cache import ReferenceCache, reference_fingerprint
from mpo_dist.errors import UserError
from mpo_dist.losses import build_loss
from mpo_dist.runtime import resolve_dtype

@dataclass
class RunInputs:
    """The pre-flight's findings plus what it built; fields stay None / empty where an error stopped the build."""

    report: CheckReport
    dtype_name: str
    model: ModelInputs | None = None
    train_examples: list[PreferenceExample] = field(default_factory=list)
    eval_examples: list[PreferenceExample] = field(default_factory=list)
    token_counts: TokenCounts = field(default_factory=TokenCounts)
    total_steps: int = 0
    reference_cache: ReferenceCache | None = None


@dataclass(frozen=True)
class LaunchContext:
    world_size: int
    on_gpu: bool
    device: torch.device


def launch_context() -> LaunchContext:
    """The world init_distributed will join, read from the launcher's environment (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK;
    slurm/train.sbatch runs torchrun under srun; a plain `python` run is a world of one) so the checks can run before the process group exists."""
    on_gpu = torch.cuda.is_available()
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if on_gpu else torch.device("cpu")
    return LaunchContext(world_size, on_gpu, device)


def _build_examples(config: Config, model: ModelInputs, train_records: list[ParallelRecord],
                    eval_records: list[ParallelRecord], inputs: RunInputs) -> None:
    data = config.data
    needs_anchor = build_loss(config.loss.name, config.loss.options()).needs_anchor
    encoder = CountingEncoder(model.tokenizer, data.max_length, data.max_prompt_length, data.system_prompt)
    try:
        inputs.train_examples = build_examples(
            train_records, encoder, dominant_language=data.dominant_language, languages=data.languages,
            with_anchor=needs_anchor, mlc_languages=config.mlc.languages if config.mlc.enabled else None)
        inputs.eval_examples = build_examples(
            eval_records, ChatEncoder(model.tokenizer, data.max_length, data.max_prompt_length, data.system_prompt),
            dominant_language=data.dominant_language, languages=[], with_anchor=False)
    except UserError as error:  # a DataError naming a row, or the chat template's frame not fitting the limits
        inputs.report.error(str(error))
        return
    inputs.token_counts = encoder.counts
    per_language = Counter(example.language for example in inputs.train_examples)
    inputs.report.line(f"examples   {len(inputs.train_examples)} training ("
                       + ", ".join(f"{lang} {count}" for lang, count in sorted(per_language.items()))
                       + f"), {len(inputs.eval_examples)} held-out")
    inputs.report.line(f"tokens     {encoder.counts.describe()} (data.max_length {data.max_length}, "
                       f"data.max_prompt_length {data.max_prompt_length})")
    if not inputs.train_examples:
        inputs.report.error(f"data.languages: languages {data.languages or 'all'} with dominant language "
                            f"{data.dominant_language} give no training example from data.train_files")
        return
    check_example_ids([e.example_id for e in inputs.train_examples], cache=config.engine.reference == "cache",
                      report=inputs.report)


def steps_per_epoch(config: Config, num_examples: int, world_size: int) -> int:
    """Optimiser steps per pass over the examples: the sampler's micro-batches per rank over the accumulation."""
    sampler = ResumableDistributedSampler(num_examples, rank=0, world_size=world_size,
                                          micro_batch_size=config.train.micro_batch_size, seed=config.train.seed)
    return math.ceil(sampler.batches_per_epoch / config.train.gradient_accumulation)


def _check_steps(config: Config, world_size: int, inputs: RunInputs) -> None:
    train = config.train
    per_epoch = steps_per_epoch(config, len(inputs.train_examples), world_size)
    inputs.total_steps = train.max_steps or train.epochs * per_epoch
    global_batch = train.micro_batch_size * train.gradient_accumulation * world_size
    inputs.report.line(f"steps      {inputs.total_steps} optimiser steps ({per_epoch} per epoch); global batch "
                       f"{global_batch} = micro-batch {train.micro_batch_size} x accumulation "
                       f"{train.gradient_accumulation} x world {world_size}")
    if global_batch > len(inputs.train_examples):
        inputs.report.warn(f"the global batch ({global_batch}) is larger than the {len(inputs.train_examples)} training "
                           "examples: every step repeats examples")
    for key, every in (("train.eval_every", train.eval_every), ("checkpoint.every_steps", config.checkpoint.every_steps)):
        if every > inputs.total_steps:
            inputs.report.warn(f"{key}={every} is more than the run's {inputs.total_steps} steps; it never triggers")


def _check_templates(config: Config, world_size: int, on_gpu: bool, hidden_size: int, inputs: RunInputs) -> None:
    """The DeepSpeed templates render: every "auto" gets a value and no section mpo-dist owns is set."""
    renders: list[Any] = [render_policy_config]
    if config.engine.reference == "online" and needs_reference(config):
        renders.append(render_reference_config)
    for render in renders:
        try:
            render(config, world_size=world_size, dtype=inputs.dtype_name, hidden_size=hidden_size, on_gpu=on_gpu)
        except UserError as error:
            inputs.report.error(str(error))


def _open_reference_cache(config: Config, device: torch.device, inputs: RunInputs) -> None:
    """A stale or incomplete cache fails here, in seconds, not after the model has loaded (fingerprint: the cache's)."""
    try:
        cache = ReferenceCache.open(config.engine.reference_cache, reference_fingerprint(config, inputs.dtype_name), device)
        cache.require_examples(example.example_id for example in inputs.train_examples)
    except UserError as error:
        inputs.report.error(f"engine.reference_cache: {error}")
        return
    inputs.reference_cache = cache


def preflight(config: Config, *, world_size: int, on_gpu: bool, device: torch.device | None = None,
              open_reference_cache: bool = True) -> RunInputs:
    """Check everything a run of `config` at `world_size` ranks needs but its resume checkpoint; the report holds what
    is wrong. Leaves nothing on disk. `open_reference_cache=False` is for precompute-ref, which writes the cache."""
    inputs = RunInputs(CheckReport(), resolve_dtype(config.model.dtype, on_gpu))
    report = inputs.report
    loss = build_loss(config.loss.name, config.loss.options())
    check_output_dir(config.output_dir, report)
    check_build_locks(report)
    inputs.model = check_model_directory(config, report)
    if inputs.model is not None:
        hf_config, tokenizer = inputs.model.hf_config, inputs.model.tokenizer
        report.line(f"model      {config.model.path}: {hf_config.model_type}, hidden {hf_config.hidden_size}, "
                    f"vocabulary {hf_config.vocab_size} (tokenizer {len(tokenizer)}), dtype {inputs.dtype_name}")
    train_records = load_section(config.data.train_files, "data.train_files", config, report)
    eval_records = load_section(config.data.eval_files, "data.eval_files", config, report)
    if train_records is not None:
        report.line(f"data       {len(train_records)} records in {len(config.data.train_files)} training file(s); "
                    f"pairs per language: {pairs_per_language(train_records)}")
        check_languages(config, train_records, with_anchor=loss.needs_anchor, with_mlc=config.mlc.enabled, report=report)
        check_identical_pairs(config, train_records, with_anchor=loss.needs_anchor, report=report)
    if inputs.model is None or train_records is None or eval_records is None or report.errors:
        return inputs
    _build_examples(config, inputs.model, train_records, eval_records, inputs)
    if report.errors:
        return inputs
    _check_steps(config, world_size, inputs)
    _check_templates(config, world_size, on_gpu, inputs.model.hf_config.hidden_size, inputs)
    if open_reference_cache and config.engine.reference == "cache" and needs_reference(config):
        _open_reference_cache(config, device or torch.device("cpu"), inputs)
    return inputs
