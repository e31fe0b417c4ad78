"""The trainer's door to DeepSpeed: process group, the policy and reference engines, and their checkpoints.

The trainer sees `PolicyEngine` / `ReferenceEngine` with forward, backward, step, save and load and never imports
DeepSpeed itself. This is not the only module that does: zero3_loading (partitioned loading under zero.Init),
universal and offline_export (DeepSpeed's checkpoint formats) and the memory planner (mpo_dist.plan, checked against
DeepSpeed's estimator) import it too, and ds_config writes its JSON, so another sharding backend would replace all of
those, not this file alone. On a machine without CUDA, DS_ACCELERATOR=cpu and gloo are chosen before DeepSpeed is
imported, so the same code runs on a laptop, in CI and on a GPU cluster.
"""
from __future__ import annotations

import atexit
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from mpo_dist.data.collate import Batch
from mpo_dist.data.packing import attention_implementation
from mpo_dist.engine.checkpoint_layout import CheckpointError
from mpo_dist.engine.ds_config import with_reduce_bucket_capped
from mpo_dist.engine.op_builds import wait_for_build_locks
from mpo_dist.engine.process_exit import note_process_group_joined
from mpo_dist.engine.waits import announced_wait
from mpo_dist.models.activation_checkpointing import enable_activation_checkpointing
from mpo_dist.models.alignment_model import AlignmentModel, ModelOutputs
from mpo_dist.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


COLLECTIVE_TIMEOUT_ENV = "MPO_DIST_COLLECTIVE_TIMEOUT_S"
DEFAULT_COLLECTIVE_TIMEOUT_S = 1800.0


def collective_timeout() -> timedelta:
    """How long a collective may wait for a silent peer before it fails (env MPO_DIST_COLLECTIVE_TIMEOUT_S, default 30 min).

    A rank that dies is normally noticed at once (its sockets close and torchrun stops the others); the timeout bounds the
    remaining case, a rank that hangs, so the job fails and can be requeued instead of holding its nodes until walltime.
    """
    raw = os.environ.get(COLLECTIVE_TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_COLLECTIVE_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{COLLECTIVE_TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return timedelta(seconds=seconds)


def init_distributed() -> DistributedContext:
    """Join the process group torchrun/srun set up (or make a 1-process one), nccl on GPU, gloo on CPU."""
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # DeepSpeed's CPU accelerator counts its devices from LOCAL_SIZE, which only DeepSpeed's own launcher sets;
        # without it every count runs `numactl --hardware` in a subprocess, and ZeRO-3 counts once per gradient bucket
        # (hundreds of forks of a multi-GiB rank per micro-step: docs/benchmarks.md, "Peer benchmark").
        os.environ.setdefault("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if "RANK" not in os.environ:  # a plain `python` run: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if on_gpu:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        wait_for_build_locks()  # DeepSpeed loads its ops here, and waits silently forever on a killed build's lock
        with announced_wait("the other ranks to join the process group"):
            deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False,
                                       timeout=collective_timeout())
        atexit.register(leave_process_group)
        note_process_group_joined()
    device = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


def leave_process_group() -> None:
    """Registered at exit by init_distributed, for every entry point (train, precompute-ref, eval, test workers): the
    group leaves torch's registry while the interpreter is whole. Its worker threads can outlive this (whatever still
    holds the group keeps them), which is why a rank ends through engine/process_exit.py, without the teardown."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(waiting_for: str | None = None) -> None:
    """All ranks meet here; `waiting_for` (what the slowest rank is doing) makes a long wait say so every 30 s."""
    if not dist.is_initialized():
        return
    if waiting_for is None:
        dist.barrier()
        return
    with announced_wait(waiting_for):
        dist.barrier()


def all_ranks_agree(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any rank (stop requests, preemption)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def gather_objects(value: object) -> list:
    """`value` of every rank, on every rank (a list of one outside a process group)."""
    if not dist.is_initialized():
        return [value]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_from_rank0(value: object) -> object:
    """Rank 0's `value` on every rank (the value itself outside a process group): what rank 0 decided."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def decided_by_rank0(decide: Callable[[], T], what: str) -> T:
    """Run `decide` on rank 0 only (what reads or changes the run directory) and give every rank its result, or raise
    its UserError on every rank, so all ranks leave together and the launcher prints the one line once. `what` names
    the decision for the other ranks' wait lines."""
    outcome: tuple[Any, UserError | None] | None = None
    if rank_and_world()[0] == 0:
        try:
            outcome = (decide(), None)
        except UserError as error:
            outcome = (None, error)
    with announced_wait(f"rank 0 to {what}"):
        result, error = broadcast_from_rank0(outcome)
    if error is not None:
        raise error
    return result


def _call_model(engine: Any, batch: Batch, rows: list[int] | None, with_mlc: bool) -> ModelOutputs:
    """Forward of all sequences of `batch` (the policy: log-probs of the training pair only, see
    Batch.training_pair_labels), or of the sequences `rows` only as a sub-batch in the same layout (the reference, whose
    ReferencePlan lists just the rows it must score: log-probs of all of them)."""
    tokens = batch.sequences(rows)
    labels = batch.training_pair_labels() if rows is None else tokens.labels
    mlc_token_index = batch.mlc_token_index() if with_mlc and batch.num_mlc_languages else None
    return engine(tokens.input_ids, tokens.attention_mask, labels, tokens.position_ids, mlc_token_index)


class PolicyEngine:
    """ZeRO-3 engine with optimizer + scheduler around an AlignmentModel."""

    def __init__(self, module: AlignmentModel, ds_config: dict, lr_factor: Callable[[int], float]):
        """`lr_factor(step)` multiplies the configured lr at 0-based optimiser step `step` (a LambdaLR, saved in checkpoints)."""
        import deepspeed

        trainable = [p for p in module.parameters() if p.requires_grad]
        count = sum(getattr(p, "ds_numel", p.numel()) for p in trainable)  # ds_numel: the full size of a ZeRO-3 shard
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, model_parameters=trainable, config=with_reduce_bucket_capped(ds_config, count),
            lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor),
        )
        self.engine.train()

    def forward(self, batch: Batch) -> ModelOutputs:
        return _call_model(self.engine, batch, None, with_mlc=True)

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> ModelOutputs:
        self.engine.eval()
        try:
            return _call_model(self.engine, batch, None, with_mlc=False)
        finally:
            self.engine.train()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        """One micro-step; DeepSpeed applies the optimizer (with clipping and the schedule) at accumulation boundaries."""
        self.engine.step()

    @property
    def lr(self) -> float:
        """The lr the next optimiser step will use."""
        return float(self.engine.get_lr()[0])

    @property
    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def save(self, directory: Path, tag: str, client_state: dict) -> None:
        """Collective. If this rank's write fails (a full disk), it still takes part in the collectives DeepSpeed runs
        after the writes (ZeRO-3 re-gathers its persistent parameters, then a barrier) before re-raising, so ranks
        whose writes succeeded are not left waiting and all can agree on the failure (train/checkpoint.py)."""
        try:
            self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False)
        except (OSError, RuntimeError):
            if self.engine._optimizer_has_ckpt_event_epilogue():
                self.engine.optimizer.checkpoint_event_epilogue()
            barrier()
            raise

    def load(self, directory: Path, tag: str) -> dict:
        """Restore weights, optimizer and schedule. ZeRO shards only fit the world size that wrote them (a universal
        checkpoint, loaded when the config says load_universal, fits any): engine.checkpoint_resume.resolve_resume
        checked that before any engine was built."""
        path, client_state = self.engine.load_checkpoint(
            str(directory), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise CheckpointError(f"DeepSpeed found no checkpoint {tag} in {directory}")
        return client_state or {}

    def gathered_state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights of the wrapped model on rank 0 (others get {}); for small models and tests only."""
        import deepspeed

        module = self.engine.module
        state: dict[str, torch.Tensor] = {}
        for name, param in module.named_parameters():
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                if dist.get_rank() == 0:
                    state[name] = param.detach().clone().cpu()
        return state

    def full_gradients(self) -> dict[str, torch.Tensor]:
        """Full fp32 gradient of every trainable parameter, on every rank. Collective: call on all ranks after
        backward and before step (tests and debugging; it gathers each gradient once)."""
        from deepspeed.utils import safe_get_full_grad

        return {name: safe_get_full_grad(p).detach().float().cpu().clone()
                for name, p in self.engine.module.named_parameters() if p.requires_grad}

    @property
    def module(self) -> AlignmentModel:
        return self.engine.module


class ReferenceEngine:
    """Frozen ZeRO-3 engine (no optimizer), parameters offloaded to CPU per its config, always eval + no_grad."""

    def __init__(self, module: AlignmentModel, ds_config: dict):
        import deepspeed

        for param in module.parameters():
            param.requires_grad_(False)
        self.engine, _, _, _ = deepspeed.initialize(model=module, config=ds_config)
        self.engine.eval()

    @torch.no_grad()
    def forward(self, batch: Batch, rows: list[int]) -> ModelOutputs:
        return _call_model(self.engine, batch, rows, with_mlc=False)

    @property
    def module(self) -> AlignmentModel:
        return self.engine.module


def build_alignment_model(model_dir: str, ds_config: dict, dtype: torch.dtype, *, attn_implementation: str,
                          logprob_backend: str, logprob_chunk_size: int, packing: bool = False,
                          gradient_checkpointing: bool = False, checkpointed_layers: int = -1, mlc_dim: int = 0,
                          mlc_layer: int = -1, seed: int = 0) -> AlignmentModel:
    """The causal LM loaded into ZeRO-3 partitions, its head swapped for the log-prob head, and (mlc_dim > 0) a
    freshly initialised MLC projection created under the same partitioning so ZeRO-3 shards and checkpoints it too.
    `packing` (data.packing) lets packed rows on a GPU run flex_attention where sdpa was asked for (see
    mpo_dist.data.packing.attention_implementation)."""
    import deepspeed

    from mpo_dist.engine.zero3_loading import load_causal_lm
    from mpo_dist.losses.mlc import MLCProjection

    attention = attention_implementation(attn_implementation, packing, on_gpu=torch.cuda.is_available())
    causal_lm = load_causal_lm(model_dir, ds_config, dtype, attention)
    if gradient_checkpointing:
        enable_activation_checkpointing(causal_lm, checkpointed_layers)
    projection = None
    if mlc_dim > 0:
        torch.manual_seed(seed)
        with deepspeed.zero.Init(config_dict_or_path=ds_config):  # dtype from the config, see zero3_loading
            projection = MLCProjection(causal_lm.config.hidden_size, mlc_dim)
    return AlignmentModel(causal_lm, logprob_backend, logprob_chunk_size, projection, mlc_layer)
