"""Planned memory per GPU and per host for the run's N x G ranks: the planner (docs/plan.md) fed from the config and
the rendered DeepSpeed template, so `check` and `mpo-dist plan` give the same figures for the same settings."""
from __future__ import annotations

import math

from mpo_dist.check.report import CheckReport
from mpo_dist.config import Config
from mpo_dist.engine.ds_config import render_policy_config
from mpo_dist.errors import UserError
from mpo_dist.losses import build_loss
from mpo_dist.plan.choices import DEEPSPEED_DEFAULT_SUB_GROUP_SIZE, HALF_PRECISION_DTYPES
from mpo_dist.plan.memory import DEEPSPEED_DEFAULT_REDUCE_BUCKET_SIZE, GIB, PlanSettings, plan_memory
from mpo_dist.plan.model_shape import load_model_shape

# Policy sequences per example: MPO adds the dominant chosen + rejected to the target pair. MLC's prompt-only rows are
# not counted (the planner sizes every sequence at data.max_length; prompts are shorter).
GPU_SEQUENCES = {True: 4, False: 2}


def plan_settings(config: Config, *, nodes: int, gpus_per_node: int, dtype: str, hidden_size: int,
                  gpu_mem_gib: float, cpu_mem_gib: float) -> PlanSettings:
    """The planner's settings for this config; `gpu_mem_gib` / `cpu_mem_gib` may be inf (no budget to compare with)."""
    rendered = render_policy_config(config, world_size=nodes * gpus_per_node, dtype=dtype, hidden_size=hidden_size,
                                    on_gpu=True)
    zero = rendered.get("zero_optimization", {})
    loss = build_loss(config.loss.name, config.loss.options())
    reference = config.engine.reference if (loss.needs_reference or loss.needs_anchor) else "none"
    return PlanSettings(
        nodes=nodes, gpus_per_node=gpus_per_node, gpu_mem_gib=gpu_mem_gib, cpu_mem_gib=cpu_mem_gib,
        seq_len=config.data.max_length, micro_batch=config.train.micro_batch_size,
        sequences_per_example=GPU_SEQUENCES[loss.needs_anchor],
        reference_sequences_per_example=2 * (int(loss.needs_reference) + int(loss.needs_anchor)), dtype=dtype,
        grad_accum_dtype=rendered.get("data_types", {}).get("grad_accum_dtype", dtype),
        activation_checkpointing=config.model.gradient_checkpointing,
        checkpointed_layers=config.model.checkpointed_layers,
        offload_optimizer=zero.get("offload_optimizer", {}).get("device") == "cpu", reference=reference,
        head_chunk=0 if config.model.logprob_backend in ("auto", "triton") else config.model.logprob_chunk_size,
        attention="eager" if config.model.attn_implementation == "eager" else "flash", packing=config.data.packing,
        reduce_bucket_size=int(zero.get("reduce_bucket_size", DEEPSPEED_DEFAULT_REDUCE_BUCKET_SIZE)),
        sub_group_size=int(zero.get("sub_group_size", DEEPSPEED_DEFAULT_SUB_GROUP_SIZE)))


def check_memory(config: Config, report: CheckReport, *, model: str, nodes: int, gpus_per_node: int, dtype: str,
                 gpu_mem_gib: float | None, cpu_mem_gib: float | None) -> None:
    """One summary line with the planned peak per GPU and host memory per node; an error when a given budget is
    exceeded. `model` is what the planner reads: the model directory or a bundled name (`mpo-dist plan --model`)."""
    if dtype not in HALF_PRECISION_DTYPES:
        report.line(f"memory     not planned: the planner models bf16 / fp16 GPU training, this run is {dtype}")
        return
    try:
        shape = load_model_shape(model)
        settings = plan_settings(config, nodes=nodes, gpus_per_node=gpus_per_node, dtype=dtype,
                                 hidden_size=shape.hidden_size, gpu_mem_gib=gpu_mem_gib or math.inf,
                                 cpu_mem_gib=cpu_mem_gib or math.inf)
        plan = plan_memory(shape, settings)
    except (UserError, ValueError) as error:  # ValueError: PlanSettings' own range checks
        report.error(f"memory plan: {error}")
        return
    gpu, host = plan.gpu_peak_bytes / GIB, plan.cpu_bytes_per_node / GIB
    report.line(f"memory     {shape.name} on {nodes} x {gpus_per_node} GPUs: {gpu:.1f} GiB peak per GPU"
                + (f" of {gpu_mem_gib:g}" if gpu_mem_gib else "") + f", {host:.1f} GiB host memory per node"
                + (f" of {cpu_mem_gib:g}" if cpu_mem_gib else "") + " (mpo-dist plan, docs/plan.md)")
    if gpu_mem_gib and plan.gpu_headroom < 0:
        report.error(f"memory plan: {gpu:.1f} GiB per GPU does not fit in --gpu-mem {gpu_mem_gib:g} GiB; see "
                     "docs/plan.md (activation checkpointing, more GPUs, optimizer offload)")
    if cpu_mem_gib and plan.cpu_headroom < 0:
        report.error(f"memory plan: {host:.1f} GiB host memory per node does not fit in --cpu-mem {cpu_mem_gib:g} GiB; "
                     "see docs/plan.md")
