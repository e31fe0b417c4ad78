"""`mpo-dist plan`: the options, turned into PlanSettings; mpo_dist.plan computes the plan and its table (docs/plan.md)."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from mpo_dist.engine.ds_config import DEEPSPEED_DEFAULT_REDUCE_BUCKET_SIZE
from mpo_dist.plan.choices import (ATTENTION_KINDS, DEEPSPEED_DEFAULT_SUB_GROUP_SIZE, GRAD_ACCUM_DTYPES,
                                   HALF_PRECISION_DTYPES, REFERENCE_MODES, bundled_model_names)

if TYPE_CHECKING:
    from mpo_dist.plan.memory import PlanSettings
    from mpo_dist.plan.model_shape import ModelShape

AUTO = "auto"


def register(subparsers) -> None:
    """Add `plan` to the CLI's sub-command parsers; the CLI then calls args.func(args)."""
    parser = subparsers.add_parser(
        "plan", help="estimate per-GPU and per-node memory of a ZeRO-3 training run before submitting it",
        description="Estimate per-GPU and per-node memory of one MPO / DPO-family training step under DeepSpeed "
                    "ZeRO-3 and say whether it fits. Exit status: 0 fits, 1 does not fit, 2 bad input.")
    parser.add_argument("--model", required=True,
                        help=f"config.json path, local HF model directory, or bundled name "
                             f"({', '.join(bundled_model_names())})")
    parser.add_argument("--nodes", type=int, required=True, help="number of nodes")
    parser.add_argument("--gpus-per-node", type=int, required=True, help="GPUs (ranks) per node")
    parser.add_argument("--gpu-mem", type=float, required=True, help="memory per GPU, GiB")
    parser.add_argument("--cpu-mem", type=float, required=True, help="host memory per node, GiB")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence (default 1024)")
    parser.add_argument("--micro-batch", type=int, default=1, help="examples per GPU per micro-step (default 1)")
    parser.add_argument("--sequences-per-example", type=int, default=4,
                        help="policy sequences per example: MPO 4 (target chosen/rejected + dominant "
                             "chosen/rejected), DPO family 2 (default 4)")
    parser.add_argument("--dtype", choices=HALF_PRECISION_DTYPES, default="bf16", help="training dtype")
    parser.add_argument("--grad-accum-dtype", choices=GRAD_ACCUM_DTYPES, default="fp32",
                        help="DeepSpeed data_types.grad_accum_dtype: fp32 as in the shipped policy templates "
                             "(4 B/param gradient shard), or the training dtype (2 B/param) (default fp32)")
    parser.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                        help="recompute each decoder layer in backward (default on)")
    parser.add_argument("--checkpointed-layers", type=int, default=-1,
                        help="with activation checkpointing, only the first N decoder layers are recomputed "
                             "(model.checkpointed_layers); -1 = all (default)")
    parser.add_argument("--offload-optimizer", action="store_true",
                        help="ZeRO-3 offload_optimizer=cpu: gradients and fp32 states live in host memory")
    parser.add_argument("--reference", choices=REFERENCE_MODES, default="online",
                        help="online: second ZeRO-3 engine with offload_param=cpu; cache: precomputed reference "
                             "terms, no reference engine; none: loss without reference (default online)")
    parser.add_argument("--head-chunk", type=int, default=4096,
                        help="tokens per logits tile in the fused log-prob head; 0 = Triton kernel (default 4096)")
    parser.add_argument("--attention", choices=ATTENTION_KINDS, default="flash",
                        help="flash: memory-efficient attention (flash/SDPA); eager: keeps seq x seq scores")
    parser.add_argument("--packing", action="store_true",
                        help="data.packing: each micro-batch's sequences in one row (matters with --attention eager)")
    parser.add_argument("--reduce-bucket-size", type=_elements_or_auto, default=DEEPSPEED_DEFAULT_REDUCE_BUCKET_SIZE,
                        help="zero_optimization.reduce_bucket_size in elements (DeepSpeed default 5e8), or auto: "
                             "hidden size squared, what a template's \"auto\" renders to")
    parser.add_argument("--sub-group-size", type=int, default=DEEPSPEED_DEFAULT_SUB_GROUP_SIZE,
                        help="zero_optimization.sub_group_size in elements (DeepSpeed default 1e9)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    parser.set_defaults(func=run)


def _elements_or_auto(text: str) -> int | str:
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of elements or {AUTO}, got {text!r}") from None


def settings_from_args(args, shape: ModelShape) -> PlanSettings:
    from mpo_dist.engine.ds_config import auto_reduce_bucket_size
    from mpo_dist.plan.memory import PlanSettings

    bucket = args.reduce_bucket_size
    return PlanSettings(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, gpu_mem_gib=args.gpu_mem, cpu_mem_gib=args.cpu_mem,
        seq_len=args.seq_len, micro_batch=args.micro_batch, sequences_per_example=args.sequences_per_example,
        dtype=args.dtype, grad_accum_dtype=args.grad_accum_dtype,
        activation_checkpointing=args.activation_checkpointing, checkpointed_layers=args.checkpointed_layers,
        offload_optimizer=args.offload_optimizer, reference=args.reference, head_chunk=args.head_chunk,
        attention=args.attention, packing=args.packing, sub_group_size=args.sub_group_size,
        reduce_bucket_size=auto_reduce_bucket_size(shape.hidden_size) if bucket == AUTO else bucket)


def run(args) -> int:
    from mpo_dist.plan.memory import compare_with_deepspeed, plan_memory
    from mpo_dist.plan.model_shape import load_model_shape
    from mpo_dist.plan.table import render_table

    shape = load_model_shape(args.model)
    settings = settings_from_args(args, shape)
    plan = plan_memory(shape, settings)
    check = compare_with_deepspeed(shape, settings.nodes, settings.gpus_per_node, settings.offload_optimizer,
                                   settings.sub_group_size, settings.grad_accum_dtype)
    if args.json:
        print(json.dumps(plan.to_dict() | {"deepspeed_cross_check": check.to_dict()}, indent=2))
    else:
        print(render_table(plan, check))
    return 0 if plan.fits else 1
