"""The plan as the table `mpo-dist plan` prints: every component with its phase, the peaks, the DeepSpeed cross-check."""
from __future__ import annotations

from mpo_dist.plan.memory import GIB, PERSISTENT, DeepSpeedCrossCheck, MemoryPlan, PlanSettings


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / GIB:8.2f}"


def _checkpointing_text(s: PlanSettings) -> str:
    if not s.activation_checkpointing:
        return "off"
    return "on" if s.checkpointed_layers == -1 else f"on for the first {s.checkpointed_layers} layers"


def render_table(plan: MemoryPlan, check: DeepSpeedCrossCheck) -> str:
    shape, s = plan.shape, plan.settings
    lines = [
        f"model   {shape.name}: {shape.total_params / 1e9:.2f} B parameters, {shape.n_layers} layers, "
        f"hidden {shape.hidden_size}, vocab {shape.vocab_size}, largest module {shape.largest_module_params:,}",
        f"run     {s.nodes} node(s) x {s.gpus_per_node} GPUs = world {s.world_size}; {s.micro_batch} x "
        f"{s.sequences_per_example} sequences x {s.seq_len} tokens = {s.tokens_per_micro_step:,} tokens/GPU; "
        f"{s.dtype} ({s.grad_accum_dtype} gradients); "
        f"activation checkpointing {_checkpointing_text(s)}; "
        f"optimizer on {'CPU' if s.offload_optimizer else 'GPU'}; reference {s.reference}; "
        f"head chunk {s.head_chunk or 'Triton'}; attention {s.attention}{', packed rows' if s.packing else ''}",
        "",
        f"{'GPU memory per GPU':<52}{'phase':<20}{'GiB':>8}",
    ]
    lines += [f"  {c.name:<50}{c.phase:<20}{_gib(c.bytes)}" for c in plan.gpu]
    phases = plan.gpu_phase_bytes()
    persistent = phases.pop(PERSISTENT, 0)
    transient = ", ".join(f"{phase} {b / GIB:.2f}" for phase, b in phases.items())
    lines += [
        f"  peak = persistent {persistent / GIB:.2f} + max({transient}) GiB",
        f"  {'peak per GPU':<70}{_gib(plan.gpu_peak_bytes)}  of {s.gpu_mem_gib:g} GiB, "
        f"headroom {100 * plan.gpu_headroom:.1f} %",
        "",
        f"{'CPU memory per node':<72}{'GiB':>8}",
    ]
    lines += [f"  {c.name:<70}{_gib(c.bytes)}" for c in plan.cpu]
    lines += [
        f"  {'total per node':<70}{_gib(plan.cpu_bytes_per_node)}  of {s.cpu_mem_gib:g} GiB, "
        f"headroom {100 * plan.cpu_headroom:.1f} %",
        "",
        f"DeepSpeed estimator cross-check (model states only): planner {check.planner_gpu_bytes / GIB:.2f} GiB/GPU, "
        f"DeepSpeed {check.deepspeed_gpu_bytes / GIB:.2f} GiB/GPU ({100 * check.gpu_relative_difference:+.1f} %)",
        *[f"  note: {note}" for note in check.notes],
        "",
        "FITS" if plan.fits else "DOES NOT FIT",
    ]
    return "\n".join(lines)
