"""Memory of one training step under DeepSpeed ZeRO-3, per GPU and per node, from a model's shape.

The accounting follows what DeepSpeed 0.19's ZeRO-3 optimizer actually allocates (read from
runtime/zero/stage3.py and checked against a live engine in tests/test_plan.py):
  * bf16 parameter shard (lp_param_buffer), 2 B/param/world
  * gradient shard (grad_partitions_flat_buffer) in data_types.grad_accum_dtype: fp32 in the shipped
    templates (4 B/param/world), the model dtype when unset (2 B)
  * fp32 master weights + Adam m + v, 12 B/param/world
  * fp32 gradients for Adam exist only inside optimizer.step, one sub-group at a time: a flat copy of the
    sub-group's gradients (4 B x sub-group from fp32 accumulation; 2 + 4 B from half accumulation, which
    is flattened, then converted), or persistently on the CPU (4 B/param/world) with optimizer offload
  * one gradient reduce bucket of reduce_bucket_size elements (bf16) on the GPU, capped at the parameter
    count as PolicyEngine caps it
GPU components are tagged with the phase of the step in which they are live. Trainer.micro_step runs the
phases one after another (STEP_PHASES: the reference forward first, then the policy's forward and
backward, then the optimizer step) and each frees its working memory before the next starts, so the
peak is persistent + the largest phase; tests/test_plan.py checks that order on the live step.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import asdict, dataclass, field, replace
from math import ceil

from mpo_dist.engine.ds_config import DEEPSPEED_DEFAULT_REDUCE_BUCKET_SIZE, reduce_bucket_elements
from mpo_dist.errors import UserError
from mpo_dist.kernels.backward_budget import backward_temporary_bytes
from mpo_dist.plan.choices import (ATTENTION_KINDS, DEEPSPEED_DEFAULT_SUB_GROUP_SIZE, GRAD_ACCUM_DTYPES,
                                   HALF_PRECISION_DTYPES, REFERENCE_MODES)
from mpo_dist.plan.model_shape import ModelShape

GIB = 1 << 30
CUDA_CONTEXT_ALLOWANCE_BYTES = 3 * GIB  # CUDA/NCCL context, cuBLAS workspaces, allocator fragmentation
HOST_RUNTIME_BYTES_PER_RANK = 4 * GIB  # Python + torch + CUDA libraries + data loading, per rank process

PERSISTENT = "persistent"
FORWARD_BACKWARD = "forward/backward"
OPTIMIZER_STEP = "optimizer step"
REFERENCE_FORWARD = "reference forward"
STEP_PHASES = (REFERENCE_FORWARD, FORWARD_BACKWARD, OPTIMIZER_STEP)  # the order Trainer.micro_step runs them
PHASES = (PERSISTENT, *STEP_PHASES)

HALF = 2  # bytes of a bf16/fp16 element
FP32 = 4


class PlanError(UserError):
    """A planner setting out of range (the message names the setting, as its `mpo-dist plan` option spells it less the
    dashes)."""


@dataclass(frozen=True)
class PlanSettings:
    """Hardware and run options; validated here so every entry point gets the same clear errors."""

    nodes: int
    gpus_per_node: int
    gpu_mem_gib: float
    cpu_mem_gib: float
    seq_len: int = 1024
    micro_batch: int = 1
    sequences_per_example: int = 4
    # sequences the online reference scores per example (ReferencePlan): 2 for MPO (the dominant pair) and the DPO
    # family (the training pair), 4 for MPO with gap=dpo (both pairs)
    reference_sequences_per_example: int = 2
    dtype: str = "bf16"
    grad_accum_dtype: str = "fp32"  # the shipped policy templates' data_types.grad_accum_dtype
    activation_checkpointing: bool = True
    checkpointed_layers: int = -1  # with activation checkpointing: the first N decoder layers only; -1 = all
    offload_optimizer: bool = False
    reference: str = "online"
    head_chunk: int = 4096
    attention: str = "flash"
    # data.packing: a micro-batch's sequences end to end in one row; eager attention then keeps one (S x T)^2 score
    # matrix per head instead of S matrices of T^2 (memory-efficient kernels are linear either way)
    packing: bool = False
    reduce_bucket_size: int = DEEPSPEED_DEFAULT_REDUCE_BUCKET_SIZE
    sub_group_size: int = DEEPSPEED_DEFAULT_SUB_GROUP_SIZE

    def __post_init__(self) -> None:
        for name in ("nodes", "gpus_per_node", "seq_len", "micro_batch", "sequences_per_example",
                     "reference_sequences_per_example", "reduce_bucket_size", "sub_group_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise PlanError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("gpu_mem_gib", "cpu_mem_gib"):
            if not getattr(self, name) > 0:
                raise PlanError(f"{name} must be a positive number of GiB, got {getattr(self, name)!r}")
        if not isinstance(self.checkpointed_layers, int) or self.checkpointed_layers < -1:
            raise PlanError(f"checkpointed_layers must be -1 (all) or a number of layers >= 0, "
                             f"got {self.checkpointed_layers!r}")
        if not isinstance(self.head_chunk, int) or self.head_chunk < 0:
            raise PlanError(f"head_chunk must be >= 0 tokens (0 = Triton kernel, no logits tile), "
                             f"got {self.head_chunk!r}")
        for name, allowed in (("dtype", HALF_PRECISION_DTYPES), ("grad_accum_dtype", GRAD_ACCUM_DTYPES),
                              ("reference", REFERENCE_MODES), ("attention", ATTENTION_KINDS)):
            if getattr(self, name) not in allowed:
                raise PlanError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.grad_accum_dtype not in ("fp32", self.dtype):
            raise PlanError(f"grad_accum_dtype must be fp32 or the training dtype {self.dtype}, got "
                             f"{self.grad_accum_dtype!r} (DeepSpeed supports no other mix)")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def tokens_per_micro_step(self) -> int:
        return self.micro_batch * self.sequences_per_example * self.seq_len


@dataclass(frozen=True)
class Component:
    name: str
    bytes: int
    phase: str  # when it is live; CPU components are all PERSISTENT
    formula: str

    @property
    def gib(self) -> float:
        return self.bytes / GIB


@dataclass(frozen=True)
class MemoryPlan:
    shape: ModelShape
    settings: PlanSettings
    gpu: tuple[Component, ...]  # per GPU
    cpu: tuple[Component, ...]  # per node

    def gpu_phase_bytes(self) -> dict[str, int]:
        return _phase_totals(self.gpu)

    @property
    def gpu_peak_bytes(self) -> int:
        return _peak(self.gpu)

    @property
    def cpu_bytes_per_node(self) -> int:
        return sum(c.bytes for c in self.cpu)

    @property
    def gpu_headroom(self) -> float:
        return 1.0 - self.gpu_peak_bytes / (self.settings.gpu_mem_gib * GIB)

    @property
    def cpu_headroom(self) -> float:
        return 1.0 - self.cpu_bytes_per_node / (self.settings.cpu_mem_gib * GIB)

    @property
    def fits(self) -> bool:
        return self.gpu_headroom >= 0 and self.cpu_headroom >= 0

    def to_dict(self) -> dict:
        def rows(components):
            return [{"component": c.name, "phase": c.phase, "gib": round(c.gib, 3), "bytes": c.bytes,
                     "formula": c.formula} for c in components]
        return {
            "model": self.shape.to_dict(),
            "settings": asdict(self.settings) | {"world_size": self.settings.world_size,
                                                 "tokens_per_micro_step": self.settings.tokens_per_micro_step},
            "gpu_per_gpu": {
                "components": rows(self.gpu),
                "phase_gib": {phase: round(b / GIB, 3) for phase, b in self.gpu_phase_bytes().items()},
                "peak_gib": round(self.gpu_peak_bytes / GIB, 3),
                "budget_gib": self.settings.gpu_mem_gib,
                "headroom_percent": round(100 * self.gpu_headroom, 2),
            },
            "cpu_per_node": {
                "components": rows(self.cpu),
                "total_gib": round(self.cpu_bytes_per_node / GIB, 3),
                "budget_gib": self.settings.cpu_mem_gib,
                "headroom_percent": round(100 * self.cpu_headroom, 2),
            },
            "fits": self.fits,
        }


def _phase_totals(components) -> dict[str, int]:
    totals: dict[str, int] = {}
    for component in components:
        totals[component.phase] = totals.get(component.phase, 0) + component.bytes
    return totals


def _peak(components) -> int:
    """Persistent memory plus the hungriest phase: the step runs the transient phases one after another."""
    totals = _phase_totals(components)
    persistent = totals.pop(PERSISTENT, 0)
    return persistent + max(totals.values(), default=0)


def _shard(count: int, world_size: int) -> int:
    return ceil(count / world_size)


def optimizer_sub_group_params(shape: ModelShape, world_size: int, sub_group_size: int) -> int:
    """Largest optimizer sub-group on one rank: DeepSpeed closes a sub-group once it reaches sub_group_size,
    so it can overshoot by at most one parameter's shard (bounded by the largest module's shard)."""
    shard = _shard(shape.total_params, world_size)
    return min(shard, sub_group_size + _shard(shape.largest_module_params, world_size))


def _bytes_of(dtype: str) -> int:
    return FP32 if dtype == "fp32" else HALF


def model_state_gpu_components(shape: ModelShape, world_size: int, offload_optimizer: bool,
                               sub_group_size: int, grad_accum_dtype: str) -> list[Component]:
    """Parameters, gradients, optimizer states and gathered parameters on one GPU."""
    P, W = shape.total_params, world_size
    shard = _shard(P, W)
    components = [Component("bf16 parameter shard", HALF * shard, PERSISTENT, f"2 B x {P:,} / {W}")]
    if not offload_optimizer:
        sub_group = optimizer_sub_group_params(shape, W, sub_group_size)
        grad = _bytes_of(grad_accum_dtype)
        step_bytes, step_formula = ((FP32, "4 B flat copy") if grad == FP32 else
                                    (HALF + FP32, "(2 B flat copy + 4 B)"))
        components += [
            Component(f"{grad_accum_dtype} gradient shard", grad * shard, PERSISTENT, f"{grad} B x {P:,} / {W}"),
            Component("fp32 master weights + Adam m, v", 3 * FP32 * shard, PERSISTENT, f"12 B x {P:,} / {W}"),
            Component("fp32 gradients of one optimizer sub-group", step_bytes * sub_group, OPTIMIZER_STEP,
                      f"{step_formula} x {sub_group:,} elements"),
        ]
    L = shape.largest_module_params
    components.append(Component(
        "gathered parameters (2 x largest module, bf16)", 2 * HALF * L, FORWARD_BACKWARD,
        f"2 x 2 B x {L:,}: the gathered module + its full gradient / the prefetched module "
        "(DeepSpeed's own 4 B x largest layer)"))
    return components


def _layer_saved_bytes_per_token(shape: ModelShape) -> int:
    """Bytes autograd keeps per token for one decoder layer, with memory-efficient (flash/SDPA) attention."""
    h, i = shape.hidden_size, shape.intermediate_size
    q_dim = shape.num_attention_heads * shape.head_dim
    kv_dim = shape.num_key_value_heads * shape.head_dim
    norms = shape.norms_per_layer * (FP32 + HALF) * h  # RMSNorm keeps its fp32 input and bf16 output
    keys_values = 2 * q_dim if kv_dim < q_dim else 2 * kv_dim  # GQA: K, V are expanded before the kernel
    attention = HALF * (q_dim + keys_values + q_dim) + FP32 * shape.num_attention_heads  # q, k, v, out, lse
    mlp = 4 * HALF * i  # gate, activation, up, product
    return norms + attention + mlp


def _eager_attention_bytes(shape: ModelShape, sequences: int, seq_len: int) -> int:
    """Eager attention keeps the score matrix: fp32 softmax + bf16 probabilities (+ bf16 tanh for soft-capping)."""
    bytes_per_score = FP32 + HALF + (HALF if shape.attention_logit_softcap else 0)
    return sequences * shape.num_attention_heads * seq_len * seq_len * bytes_per_score


def _logits_tile_bytes_per_element(shape: ModelShape, backward: bool) -> int:
    """fp32 logits (+ fp32 gradient in backward) (+ fp32 tanh for a final-logit soft-cap)."""
    return FP32 * (2 if backward else 1) + (FP32 if shape.final_logit_softcap else 0)


def checkpointed_layer_count(shape: ModelShape, s: PlanSettings) -> int:
    """Decoder layers whose activations are recomputed in backward."""
    if not s.activation_checkpointing:
        return 0
    if s.checkpointed_layers > shape.n_layers:
        raise PlanError(f"checkpointed_layers {s.checkpointed_layers} is more than the model's {shape.n_layers} "
                         f"decoder layers")
    return shape.n_layers if s.checkpointed_layers == -1 else s.checkpointed_layers


def activation_components(shape: ModelShape, s: PlanSettings) -> list[Component]:
    tokens, h, i = s.tokens_per_micro_step, shape.hidden_size, shape.intermediate_size
    sequences = s.micro_batch * s.sequences_per_example
    layer = tokens * _layer_saved_bytes_per_token(shape)
    if s.attention == "eager":
        rows, row_len = (1, sequences * s.seq_len) if s.packing else (sequences, s.seq_len)
        layer += _eager_attention_bytes(shape, rows, row_len)
    tokens_text = f"{tokens:,} tokens"
    scores_text = " + eager attention scores" + (f" of one packed row of {sequences} sequences" if s.packing else "")
    layer_formula = (f"{tokens_text} x {_layer_saved_bytes_per_token(shape):,} B"
                     + (scores_text if s.attention == "eager" else ""))
    checkpointed = checkpointed_layer_count(shape, s)
    components = []
    if checkpointed:
        components += [
            Component("checkpointed layer inputs", checkpointed * tokens * HALF * h, FORWARD_BACKWARD,
                      f"{checkpointed} layers x {tokens_text} x {h} x 2 B"),
            Component("one recomputed layer's activations", layer, FORWARD_BACKWARD, layer_formula),
        ]
    kept = shape.n_layers - checkpointed
    if kept == shape.n_layers:
        components.append(Component("all layers' activations", kept * layer, FORWARD_BACKWARD,
                                    f"{kept} layers x {layer_formula}"))
    elif kept:
        components.append(Component("activations of the layers not checkpointed", kept * layer, FORWARD_BACKWARD,
                                    f"{kept} layers x {layer_formula}"))
    components += [
        Component("activation gradients in flight", tokens * HALF * (3 * i + 2 * h), FORWARD_BACKWARD,
                  f"{tokens_text} x 2 B x (3 x {i} + 2 x {h})"),
        Component("final norm", tokens * (FP32 + HALF) * h, FORWARD_BACKWARD, f"{tokens_text} x 6 B x {h}"),
        _head_workspace(shape, s, tokens, backward=True, phase=FORWARD_BACKWARD),
    ]
    return components


def _head_workspace(shape: ModelShape, s: PlanSettings, tokens: int, backward: bool, phase: str) -> Component:
    """Fused log-prob head: a chunk x vocab fp32 tile in memory, or per-token scalars for the Triton kernel (plus its
    backward's bounded temporaries)."""
    if s.head_chunk == 0:
        per_token = tokens * 2 * FP32
        if not backward:
            return Component("log-prob head workspace (Triton kernel)", per_token, phase,
                             f"{tokens:,} tokens x (logsumexp + label logit) fp32")
        temporaries = backward_temporary_bytes(tokens, shape.hidden_size, shape.vocab_size, HALF)
        return Component("log-prob head workspace (Triton kernel)", per_token + temporaries, phase,
                         f"{tokens:,} tokens x (logsumexp + label logit) fp32 + backward grad-logit chunk and "
                         f"carried-sum residual {temporaries / 2**20:,.0f} MiB")
    chunk = min(s.head_chunk, tokens)
    per_element = _logits_tile_bytes_per_element(shape, backward)
    input_grad = tokens * FP32 * shape.hidden_size if backward else 0
    return Component("log-prob head workspace", chunk * shape.vocab_size * per_element + input_grad, phase,
                     f"{chunk:,} x {shape.vocab_size:,} x {per_element} B tile"
                     + (f" + {tokens:,} x {shape.hidden_size} fp32 input grad" if backward else ""))


def reference_terms_component(shape: ModelShape, s: PlanSettings) -> list[Component]:
    """What the reference (online or cached) leaves for the loss, live through the policy's forward and backward:
    MPO's pooled dominant hidden states and a few log-prob sums and token counts per pair (less for the DPO family)."""
    if s.reference == "none":
        return []
    P, h = s.micro_batch, shape.hidden_size
    return [Component("reference terms kept for the loss", P * (2 * h + 8) * FP32, FORWARD_BACKWARD,
                      f"{P} pairs x (2 x {h} pooled hidden + 8 sums and counts) x 4 B")]


def reference_gpu_components(shape: ModelShape, s: PlanSettings) -> list[Component]:
    """Online reference engine (offload_param=cpu, no optimizer), run under no_grad before the policy pass."""
    if s.reference != "online":
        return []
    tokens = s.micro_batch * s.reference_sequences_per_example * s.seq_len
    h, i, L = shape.hidden_size, shape.intermediate_size, shape.largest_module_params
    return [
        Component("reference: gathered parameters", 2 * HALF * L, REFERENCE_FORWARD,
                  f"2 x 2 B x {L:,} (gathered + prefetched module)"),
        Component("reference: one layer's no-grad transients", tokens * HALF * (3 * i + 3 * h), REFERENCE_FORWARD,
                  f"{tokens:,} tokens x 2 B x (3 x {i} + 3 x {h})"),
        replace(_head_workspace(shape, s, tokens, backward=False, phase=REFERENCE_FORWARD),
                name="reference: log-prob head workspace"),
    ]


def fixed_gpu_components(shape: ModelShape, s: PlanSettings) -> list[Component]:
    bucket = reduce_bucket_elements(s.reduce_bucket_size, shape.total_params)
    return [
        Component("gradient reduce bucket", HALF * bucket, PERSISTENT,
                  f"2 B x min(reduce_bucket_size {s.reduce_bucket_size:,}, {shape.total_params:,} parameters)"),
        Component("CUDA context + fragmentation allowance", CUDA_CONTEXT_ALLOWANCE_BYTES, PERSISTENT,
                  "fixed 3 GiB"),
    ]


def model_state_cpu_components(shape: ModelShape, world_size: int, gpus_per_node: int,
                               offload_optimizer: bool, grad_accum_dtype: str) -> list[Component]:
    """Optimizer offload moves the gradient shard and all fp32 state to pinned host memory, per node."""
    if not offload_optimizer:
        return []
    P, W, G = shape.total_params, world_size, gpus_per_node
    per_node = G * _shard(P, W)
    grad = _bytes_of(grad_accum_dtype)
    return [
        Component("offloaded fp32 master weights + Adam m, v", 3 * FP32 * per_node, PERSISTENT,
                  f"12 B x {P:,} x {G} / {W}"),
        Component("offloaded fp32 gradients", FP32 * per_node, PERSISTENT, f"4 B x {P:,} x {G} / {W}"),
        Component(f"offloaded {grad_accum_dtype} gradient shard", grad * per_node, PERSISTENT,
                  f"{grad} B x {P:,} x {G} / {W}"),
    ]


def cpu_components(shape: ModelShape, s: PlanSettings) -> list[Component]:
    G, W, P = s.gpus_per_node, s.world_size, shape.total_params
    components = [Component("rank processes (host runtime allowance)", G * HOST_RUNTIME_BYTES_PER_RANK,
                            PERSISTENT, f"{G} ranks x 4 GiB")]
    if s.reference == "online":
        components.append(Component("reference parameters (offload_param, bf16 shards)",
                                    HALF * G * _shard(P, W), PERSISTENT, f"2 B x {P:,} x {G} / {W}"))
    return components + model_state_cpu_components(shape, W, G, s.offload_optimizer, s.grad_accum_dtype)


def plan_memory(shape: ModelShape, settings: PlanSettings) -> MemoryPlan:
    gpu = (model_state_gpu_components(shape, settings.world_size, settings.offload_optimizer,
                                      settings.sub_group_size, settings.grad_accum_dtype)
           + fixed_gpu_components(shape, settings)
           + activation_components(shape, settings)
           + reference_terms_component(shape, settings)
           + reference_gpu_components(shape, settings))
    gpu.sort(key=lambda component: PHASES.index(component.phase))  # stable: keeps the order within a phase
    return MemoryPlan(shape=shape, settings=settings, gpu=tuple(gpu), cpu=tuple(cpu_components(shape, settings)))


@dataclass(frozen=True)
class DeepSpeedCrossCheck:
    """Model-state bytes by this planner and by DeepSpeed's own estimator, for the same settings.

    Model states = what DeepSpeed's estimator covers: the persistent parameter, gradient and optimizer shards plus
    the gathered parameters of the largest layer. The plan's other GPU terms (activations, buffers, the fp32
    gradient copy that lives only inside optimizer.step) are working memory, outside both numbers."""

    planner_gpu_bytes: int
    deepspeed_gpu_bytes: int
    planner_cpu_bytes_per_node: int
    deepspeed_cpu_bytes_per_node: int
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_relative_difference(self) -> float:
        return self.planner_gpu_bytes / self.deepspeed_gpu_bytes - 1.0

    def to_dict(self) -> dict:
        return asdict(self) | {"gpu_relative_difference": round(self.gpu_relative_difference, 4)}


def deepspeed_model_state_estimate(shape: ModelShape, nodes: int, gpus_per_node: int,
                                   offload_optimizer: bool) -> tuple[int, int]:
    """(GPU bytes per GPU, CPU bytes per node) from DeepSpeed's estimator, the code behind
    estimate_zero3_model_states_mem_needs_all_cold, without its 1.5x CPU buffer factor."""
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed logs its accelerator choice to stdout on import
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    cpu_bytes, gpu_bytes, _ = estimate_zero3_model_states_mem_needs(
        total_params=shape.total_params, largest_layer_params=shape.largest_module_params,
        num_gpus_per_node=gpus_per_node, num_nodes=nodes, cpu_offload=offload_optimizer,
        cpu_offload_params=False, zero_init=True, additional_buffer_factor=1.0)
    return gpu_bytes, cpu_bytes


def compare_with_deepspeed(shape: ModelShape, nodes: int, gpus_per_node: int, offload_optimizer: bool,
                           sub_group_size: int = DEEPSPEED_DEFAULT_SUB_GROUP_SIZE,
                           grad_accum_dtype: str = "fp32") -> DeepSpeedCrossCheck:
    world = nodes * gpus_per_node
    model_states = [c for c in model_state_gpu_components(shape, world, offload_optimizer, sub_group_size,
                                                          grad_accum_dtype) if c.phase != OPTIMIZER_STEP]
    cpu = model_state_cpu_components(shape, world, gpus_per_node, offload_optimizer, grad_accum_dtype)
    deepspeed_gpu, deepspeed_cpu = deepspeed_model_state_estimate(shape, nodes, gpus_per_node, offload_optimizer)
    if offload_optimizer:
        notes = ["with optimizer offload the GPU holds only the bf16 parameter shard and gathered layers; DeepSpeed's "
                 "CPU estimate counts 16 B/param, the optimizer also keeps the gradient shard on the CPU"]
    elif grad_accum_dtype == "fp32":
        notes = ["both count 18 B/param (2 B bf16 parameters, 4 B fp32 gradients, 12 B fp32 master + Adam m, v) "
                 "and the gathered largest layer"]
    else:
        notes = [f"DeepSpeed's estimator assumes fp32 gradients (18 B/param); with grad_accum_dtype "
                 f"{grad_accum_dtype} the gradient shard is 2 B/param, 16 B/param in all"]
    return DeepSpeedCrossCheck(planner_gpu_bytes=_peak(model_states), deepspeed_gpu_bytes=deepspeed_gpu,
                               planner_cpu_bytes_per_node=sum(c.bytes for c in cpu),
                               deepspeed_cpu_bytes_per_node=deepspeed_cpu, notes=notes)
