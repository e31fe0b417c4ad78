"""One pass of the frozen reference over the training examples, written as a sharded cache.

Run it under torchrun / srun exactly like `train`, with the same config and overrides. The reference is the same ZeRO-3
engine with CPU-offloaded parameters that online training would build; every rank takes every world_size-th example and
writes its own shard, rank 0 writes the index (with each shard's size and checksum) last. Training with
`engine.reference: cache` then builds no reference engine at all (see mpo_dist.engine.reference_cache).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch.distributed as dist

from mpo_dist.artefact import FileRecord
from mpo_dist.check.preflight import launch_context, preflight
from mpo_dist.config import Config, ConfigError
from mpo_dist.data.collate import PreferenceCollator
from mpo_dist.data.sampler import batches_per_rank, rank_batches
from mpo_dist.engine.engines import barrier, init_distributed
from mpo_dist.engine.reference_cache import (cached_term_names, prepare_directory, reference_fingerprint,
                                             require_unique_ids, term_tensors, write_index, write_shard)
from mpo_dist.losses import build_loss
from mpo_dist.train.build import reference_engine
from mpo_dist.train.logger import setup_console_logging
from mpo_dist.train.step import ReferencePlan, reference_terms

log = logging.getLogger("mpo_dist")
PROGRESS_EVERY = 50  # micro-batches between progress lines


def precompute_reference(config: Config, out_dir: Path) -> None:
    """Collective: every rank of the job calls it. The number of forwards is equal on all ranks (ZeRO-3 gathers each
    layer's parameters collectively), so a rank that runs out of examples repeats one and drops the result."""
    loss = build_loss(config.loss.name, config.loss.options())
    if not (loss.needs_reference or loss.needs_anchor):
        raise ConfigError(f"loss.name: {config.loss.name!r} with these options reads no reference terms; nothing to "
                          "precompute (train with engine.reference=none)")
    launch = launch_context()  # the checks train runs, before the process group: a bad path or row is one line
    inputs = preflight(config, world_size=launch.world_size, on_gpu=launch.on_gpu, open_reference_cache=False)
    inputs.report.raise_if_failed()
    ctx = init_distributed()
    setup_console_logging(ctx.rank)
    data = config.data
    tokenizer, examples = inputs.model.tokenizer, inputs.train_examples
    require_unique_ids([example.example_id for example in examples])  # before hours of forwards, not after

    dtype_name = inputs.dtype_name
    hidden_size = inputs.model.hf_config.hidden_size
    reference = reference_engine(config, world_size=ctx.world_size, on_gpu=ctx.on_gpu, dtype_name=dtype_name,
                                 hidden_size=hidden_size)
    fingerprint = reference_fingerprint(config, dtype_name)
    if ctx.is_main:
        prepare_directory(out_dir)
    barrier()

    collator = PreferenceCollator(tokenizer.pad_token_id, packing=data.packing)
    batch_size = config.train.micro_batch_size
    num_batches = batches_per_rank(len(examples), world_size=ctx.world_size, batch_size=batch_size)
    log.info("precompute-ref: %d examples, %d micro-batches of %d per rank, world size %d, dtype %s, writing %s",
             len(examples), num_batches, batch_size, ctx.world_size, dtype_name, out_dir)
    computed, example_ids = [], []
    batches = rank_batches(examples, rank=ctx.rank, world_size=ctx.world_size, batch_size=batch_size)
    for index, (chunk, real) in enumerate(batches):
        batch = collator(chunk).to(ctx.device)
        plan = ReferencePlan.for_loss(loss, batch)
        terms = reference_terms(reference.forward(batch, plan.rows), plan, batch, loss)
        if real:
            computed.append(term_tensors(terms))
            example_ids += batch.example_ids
        if (index + 1) % PROGRESS_EVERY == 0:
            log.info("precompute-ref: %d / %d micro-batches", index + 1, num_batches)

    shard = write_shard(out_dir, ctx.rank, ctx.world_size, computed)
    shards: list[tuple[tuple[str, FileRecord] | None, list[str]]] = [(None, [])] * ctx.world_size
    dist.all_gather_object(shards, (shard, example_ids))
    if ctx.is_main:
        write_index(out_dir, fingerprint, cached_term_names(loss),
                    [(written[0], written[1], ids) for written, ids in shards if written is not None])
        log.info("precompute-ref: wrote %d examples (%s) to %s", len(examples), ", ".join(cached_term_names(loss)), out_dir)
    barrier()
