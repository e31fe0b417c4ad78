"""The training loop, readable top to bottom: check the inputs, build engines and loss; then step, log, evaluate,
checkpoint, stop.

It never calls DeepSpeed: the engine layer (mpo_dist.engine) owns the process group, the ZeRO-3 engines and their
checkpoints. Exit status: 0 when training completed, EXIT_REQUEUE (75) when it stopped early on a signal / STOP file
after saving a checkpoint.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from mpo_dist.check.preflight import RunInputs, launch_context, preflight
from mpo_dist.config import Config, needs_reference, to_dict
from mpo_dist.data.collate import Batch, PreferenceCollator
from mpo_dist.data.sampler import ResumableDistributedSampler
from mpo_dist.engine.ds_config import render_policy_config, with_universal_loading
from mpo_dist.engine.engines import (
    DistributedContext,
    PolicyEngine,
    ReferenceEngine,
    all_ranks_agree,
    barrier,
    broadcast_from_rank0,
    build_alignment_model,
    decided_by_rank0,
    init_distributed,
)
from mpo_dist.engine.checkpoint_resume import resolve_resume
from mpo_dist.engine.hf_export import export_live_policy
from mpo_dist.engine.reference_cache import ReferenceCache, verify_reference_cache
from mpo_dist.engine.checkpoint_layout import is_universal
from mpo_dist.engine.run_directory import RunDirectory, slurm_job
from mpo_dist.engine.run_lock import RunLock
from mpo_dist.eval.reward_gaps import reward_gaps
from mpo_dist.losses import build_loss
from mpo_dist.losses.base import LossOutput
from mpo_dist.losses.mlc import mlc_applies
from mpo_dist.atomic_write import atomic_write_text
from mpo_dist.run_files import COMPLETED_FILE, CONFIG_FILE, EVAL_FILE, EVAL_TENSORBOARD_PREFIX, SAMPLES_FILE
from mpo_dist.runtime import seed_everything, torch_dtype
from mpo_dist.train.build import model_options, reference_engine
from mpo_dist.train.checkpoint import CheckpointManager
from mpo_dist.train.data_identity import ChangedDataError, changed_data, data_identity
from mpo_dist.train.logger import RunLogger, peak_memory, setup_console_logging
from mpo_dist.train.schedule import warmup_cosine
from mpo_dist.train.preemption import EXIT_REQUEUE, STOP_FILE, StopRequest
from mpo_dist.versions import VERSIONS_FILE, installed_versions, run_versions
from mpo_dist.train.step_profiler import StepProfiler, phase
from mpo_dist.train.step import ReferencePlan, head_live_fraction, preference_inputs, reference_terms, total_loss

log = logging.getLogger("mpo_dist")

@dataclass
class TrainResult:
    exit_code: int
    steps_done: int
    losses: list[float] = field(default_factory=list)  # mean loss of each optimiser step run in this process
    eval_history: list[dict] = field(default_factory=list)


class Trainer:
    def __init__(self, config: Config):
        """Checks first (those of `mpo-dist check`, on every rank): a run that would fail raises a one-line UserError
        before the process group or DeepSpeed starts. Then rank 0 takes the run directory's lock (creating the
        directory) and the resume checkpoint is verified (the ranks share reading it); nothing else in the directory
        changes before the resume has loaded (`train`). A reference cache is checksummed before the directory is
        touched. The lock is released when the constructor fails."""
        self.config = config
        launch = launch_context()
        inputs = preflight(config, world_size=launch.world_size, on_gpu=launch.on_gpu, device=launch.device)
        inputs.report.raise_if_failed()
        self.ctx: DistributedContext = init_distributed()
        if (self.ctx.world_size, self.ctx.device) != (launch.world_size, launch.device):
            raise RuntimeError(f"the process group ({self.ctx.world_size} ranks, {self.ctx.device}) differs from the "
                               f"launch environment the checks used ({launch.world_size}, {launch.device})")
        setup_console_logging(self.ctx.rank)
        for warning in inputs.report.warnings:
            log.warning("%s", warning)
        seed_everything(config.train.seed)
        if inputs.reference_cache is not None:  # every rank checksums its share of the shards, before the directory
            verify_reference_cache(inputs.reference_cache)
        self.output_dir = config.output_dir
        self.config_text = json.dumps(to_dict(config), indent=2)  # what config.json holds and COMPLETED is bound to
        self.run_dir = RunDirectory(self.output_dir, keep_abandoned=config.checkpoint.keep_abandoned)
        self.run_lock = RunLock(self.output_dir)
        self._last_save_time = 0.0  # checkpoint.every_minutes counts from the last save; the loop starts it
        resume = decided_by_rank0(self._own_run_directory, "take the run directory's lock and read its line")
        try:
            self._prepare(inputs, resume)
        except BaseException:
            self.run_lock.release()
            raise

    # ---- construction -------------------------------------------------------------------------------------------
    def _prepare(self, inputs: RunInputs, resume: str) -> None:
        """Everything after the lock: the resume tag (rank 0 decides whether it is universal), loss, data, engines."""
        config = self.config
        self.resume_dir = resolve_resume(resume, config.checkpoints_dir, world_size=self.ctx.world_size,
                                         line_origin=broadcast_from_rank0(self.run_dir.line_fallback()))
        self.resume_universal = bool(broadcast_from_rank0(self.resume_dir is not None and is_universal(self.resume_dir)))
        self.data_identity = data_identity(config, inputs.train_examples)
        self.loss = build_loss(config.loss.name, config.loss.options())
        self.tokenizer = inputs.model.tokenizer
        self.train_examples, self.eval_examples = inputs.train_examples, inputs.eval_examples
        self.collator = PreferenceCollator(self.tokenizer.pad_token_id, packing=config.data.packing)
        self.sampler = ResumableDistributedSampler(
            len(self.train_examples), rank=self.ctx.rank, world_size=self.ctx.world_size,
            micro_batch_size=config.train.micro_batch_size, seed=config.train.seed,
        )
        self.total_steps = inputs.total_steps
        self.dtype_name = inputs.dtype_name
        self.checkpoints = CheckpointManager(config.checkpoints_dir, config.checkpoint.keep_last, self.ctx.rank)
        self.policy, self.reference = self._build_engines(inputs.model.hf_config.hidden_size, inputs.reference_cache)
        log.info("%d training examples (%d of %d sequences truncated), %d eval examples, %d optimiser steps, world size "
                 "%d, dtype %s, loss %s%s", len(self.train_examples), inputs.token_counts.truncated,
                 len(inputs.token_counts.kept), len(self.eval_examples), self.total_steps, self.ctx.world_size,
                 self.dtype_name, config.loss.name, " + mlc" if config.mlc.enabled else "")

    def _build_engines(self, hidden_size: int, cache: ReferenceCache | None
                       ) -> tuple[PolicyEngine, ReferenceEngine | ReferenceCache | None]:
        """The policy, and the reference: the cache the checks opened, a ZeRO-3 engine, or none for reference-free losses."""
        config = self.config
        policy = self._policy_engine(hidden_size)
        if cache is not None:
            log.info("reference terms from the cache %s: no reference engine", config.engine.reference_cache)
            return policy, cache
        if not needs_reference(config):
            return policy, None
        return policy, reference_engine(config, world_size=self.ctx.world_size, on_gpu=self.ctx.on_gpu,
                                        dtype_name=self.dtype_name, hidden_size=hidden_size)

    def _policy_engine(self, hidden_size: int) -> PolicyEngine:
        config = self.config
        ds_config = render_policy_config(config, world_size=self.ctx.world_size, dtype=self.dtype_name,
                                         hidden_size=hidden_size, on_gpu=self.ctx.on_gpu)
        if self.resume_universal:  # written at another world size
            ds_config = with_universal_loading(ds_config)
        model = build_alignment_model(
            config.model.path, ds_config, torch_dtype(self.dtype_name), gradient_checkpointing=config.model.gradient_checkpointing,
            checkpointed_layers=config.model.checkpointed_layers, mlc_dim=config.mlc.dim if config.mlc.enabled else 0,
            mlc_layer=config.mlc.layer, seed=config.train.seed, **model_options(config),
        )
        lr_factor = warmup_cosine(config.optim.warmup_ratio, self.total_steps, config.optim.min_lr_ratio)
        return PolicyEngine(model, ds_config, lr_factor)

    # ---- one step -----------------------------------------------------------------------------------------------
    def micro_step(self, batch: Batch, mlc_weight: float) -> LossOutput:
        # The frozen reference runs first (no grad): its gathered parameters and workspace are freed before the policy's
        # activations exist, and only its small per-pair terms live on. docs/plan.md's memory phases assume this order.
        plan = ReferencePlan.for_loss(self.loss, batch)
        terms = None
        with phase("reference"):
            if isinstance(self.reference, ReferenceCache):
                terms = self.reference.terms(batch)
            elif self.reference is not None and plan.rows:
                terms = reference_terms(self.reference.forward(batch, plan.rows), plan, batch, self.loss)
        with phase("policy_forward"):
            policy_out = self.policy.forward(batch)
        with phase("loss"):
            base = self.loss(preference_inputs(policy_out, terms, batch, self.loss))
            mlc = self.config.mlc
            out = total_loss(base, policy_out, batch, mlc_weight, mlc.tau, mlc.eps)
        with phase("backward"):
            self.policy.backward(out.loss)
        with phase("engine_step"):  # DeepSpeed's step: the optimiser update at the last micro-step of the step
            self.policy.step()
        return LossOutput(out.loss, out.metrics | {"head/live_fraction": head_live_fraction(batch)})

    def optimizer_step(self, step: int) -> tuple[float, dict[str, float], list[str], int]:
        """Run the accumulation micro-steps of optimiser step `step`; return this rank's mean loss, the metrics (means
        over ranks), this rank's example ids, and the tokens every rank trained on in the step (the job's)."""
        mlc = self.config.mlc
        mlc_weight = mlc.weight if mlc.enabled and mlc_applies(step, mlc.every) else 0.0
        accumulation = self.config.train.gradient_accumulation
        totals: dict[str, torch.Tensor] = {}  # kept on the device: one host sync per optimiser step, not per metric
        example_ids: list[str] = []
        tokens = 0
        for _ in range(accumulation):
            with phase("collate"):
                batch = self.collator([self.train_examples[i] for i in self.sampler.next_batch()])
            tokens += batch.num_tokens  # counted on the host copy
            out = self.micro_step(batch.to(self.ctx.device), mlc_weight)
            for name, value in {"loss": out.loss.detach(), **out.metrics}.items():
                value = torch.as_tensor(value, dtype=torch.float64, device=self.ctx.device) / accumulation
                totals[name] = totals[name] + value if name in totals else value
            example_ids += batch.example_ids
        with phase("metrics_reduce"):
            metrics, job_tokens = self._reduce_over_ranks(totals, tokens)
        return float(totals["loss"]), metrics, example_ids, job_tokens

    def _reduce_over_ranks(self, values: dict[str, torch.Tensor], tokens: int) -> tuple[dict[str, float], int]:
        """Means of the metrics over ranks and the sum of their tokens, in one all-reduce."""
        names = sorted(values)
        packed = torch.stack([values[n] for n in names] + [torch.tensor(float(tokens), dtype=torch.float64,
                                                                         device=self.ctx.device)])
        if dist.is_initialized():
            dist.all_reduce(packed)
        reduced = packed.tolist()
        return {name: value / self.ctx.world_size for name, value in zip(names, reduced)}, round(reduced[-1])

    # ---- evaluation, logging, checkpoints ----------------------------------------------------------------------
    def evaluate(self, step: int, logger: RunLogger) -> dict:
        gaps = reward_gaps(self.policy.evaluate, self.eval_examples, self.collator, rank=self.ctx.rank,
                           world_size=self.ctx.world_size, batch_size=self.config.train.micro_batch_size, device=self.ctx.device)
        record = {"step": step, "reward_gap": gaps}
        logger.scalars(step, gaps, prefix=EVAL_TENSORBOARD_PREFIX)
        if self.ctx.is_main:
            with open(self.output_dir / EVAL_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        return record

    def _log_samples(self, step: int, example_ids: list[str]) -> None:
        if not self.config.logging.log_samples:
            return
        gathered: list[list[str]] = [[] for _ in range(self.ctx.world_size)]
        if dist.is_initialized():
            dist.all_gather_object(gathered, example_ids)
        else:
            gathered = [example_ids]
        if self.ctx.is_main:
            with open(self.output_dir / SAMPLES_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "ids": [i for ids in gathered for i in ids]}) + "\n")

    def _own_run_directory(self) -> str:
        """Rank 0: take the run directory's lock (another live job: one line, every rank exits); decide what the
        resume request means for this run's line (a requeue continues it); refuse a fresh start that would bury
        earlier tags; all before anything in the directory changes. Returns the resume value to resolve."""
        checkpoint = self.config.checkpoint
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.run_lock.acquire()
        try:
            job, restart_count = slurm_job()
            resume = self.run_dir.resume_request(checkpoint.resume, job=job, restart_count=restart_count,
                                                 new_line=checkpoint.new_line)
            self.run_dir.refuse_fresh_start_over_tags(resume, checkpoint.on_existing)
            return resume
        except BaseException:
            self.run_lock.release()
            raise

    def save(self, step: int) -> None:
        client_state = {"step": step, "sampler": self.sampler.state_dict(), "config": to_dict(self.config),
                        "data": self.data_identity}
        tag_dir = self.checkpoints.save(self.policy, step, client_state)
        log.info("saved checkpoint %s", tag_dir)

    def _resume(self) -> int:
        tag_dir = self.resume_dir
        if tag_dir is None:
            return 0
        state = self.checkpoints.load(self.policy, tag_dir)
        changed = changed_data(state.get("data"), self.data_identity)
        if changed and not self.config.data.allow_changed:
            raise ChangedDataError(f"checkpoint.resume: {tag_dir}: {changed}; resume with the same data, or with "
                                   "--set data.allow_changed=true to continue with these examples (the sampler then "
                                   "restarts its epoch)")
        if changed:
            self.sampler.restart_epoch(state["sampler"]["epoch"])
            log.warning("%s: data.allow_changed=true, so the sampler restarts epoch %d from its first sample",
                        changed, self.sampler.epoch)
        else:
            self.sampler.load_state_dict(state["sampler"])
        log.info("resumed from %s at step %d", tag_dir, state["step"])
        return int(state["step"])

    # ---- the loop -----------------------------------------------------------------------------------------------
    def _step_and_log(self, step: int, logger: RunLogger, result: TrainResult) -> None:
        """One optimiser step, its samples and (every log_every steps and at the last) its metrics."""
        config = self.config
        started = time.perf_counter()
        lr = self.policy.lr  # the lr this step's update uses (the scheduler advances after it)
        with phase("optimizer_step"):
            loss, metrics, example_ids, tokens = self.optimizer_step(step)
        done = step + 1
        result.steps_done, seconds = done, time.perf_counter() - started
        result.losses.append(loss)
        self._log_samples(done, example_ids)
        if done % config.train.log_every == 0 or done == self.total_steps:
            logger.scalars(done, metrics | {"lr": lr, "grad_norm": self.policy.grad_norm, "tokens": tokens,
                                            "step_seconds": seconds, "tokens_per_s": tokens / seconds,
                                            **peak_memory(self.ctx.device)}, prefix="train/")
        logger.advance(metrics["loss"])

    def _between_steps(self, done: int, logger: RunLogger, stop: StopRequest, result: TrainResult) -> bool:
        """After step `done` (not the last): evaluate and save when due, then honour a stop request (signal or STOP
        file) by saving this step and setting EXIT_REQUEUE. True when the run stops here."""
        config = self.config
        if done == self.total_steps:
            return False  # the last step's evaluation and tag are _finish's
        if config.train.eval_every and done % config.train.eval_every == 0 and self.eval_examples:
            result.eval_history.append(self.evaluate(done, logger))
        due_by_steps = bool(config.checkpoint.every_steps) and done % config.checkpoint.every_steps == 0
        due_by_clock = bool(config.checkpoint.every_minutes) and all_ranks_agree(
            time.monotonic() - self._last_save_time >= 60 * config.checkpoint.every_minutes, self.ctx.device)
        if due_by_steps or due_by_clock:
            self.save(done)
            self._last_save_time = time.monotonic()
        if not stop.requested(self.ctx.device):
            return False
        if not (due_by_steps or due_by_clock):
            self.save(done)
        log.warning("stop requested (signal %s or %s file): saved step %d, exiting with %d", stop.signalled, STOP_FILE,
                    done, EXIT_REQUEUE)
        result.exit_code = EXIT_REQUEUE
        return True

    def _finish(self, start_step: int, logger: RunLogger, result: TrainResult) -> None:
        """The end of a completed run: the final evaluation and tag, the HF export if asked, COMPLETED."""
        config = self.config
        if start_step < self.total_steps:  # resumed at the last step: its evaluation and its tag are already there
            if self.eval_examples:
                result.eval_history.append(self.evaluate(self.total_steps, logger))
            self.save(self.total_steps)
        if config.train.save_hf_at_end:
            export_live_policy(self.policy, Path(config.model.path), self.output_dir / "hf", self.tokenizer,
                               torch_dtype(self.dtype_name), self.ctx.rank)
        if self.ctx.is_main:
            self.run_dir.write_completed(self.total_steps, self.config_text)
        barrier()

    def train(self) -> TrainResult:
        """Run to the end or to a stop request; the run directory's lock is released whatever happens."""
        try:
            return self._train()
        finally:
            self.run_lock.release()  # held by rank 0 only; a no-op elsewhere

    def _train(self) -> TrainResult:
        config = self.config
        start_step = self._resume()  # nothing in the output directory changes before the resume has loaded
        if self.ctx.is_main:
            self.run_dir.start_line(self.resume_dir, on_existing=config.checkpoint.on_existing,
                                    job=slurm_job()[0])
            self.run_dir.truncate_logs_after(start_step if self.resume_dir is not None else -1)
            (self.output_dir / STOP_FILE).unlink(missing_ok=True)
            (self.output_dir / COMPLETED_FILE).unlink(missing_ok=True)
            atomic_write_text(self.output_dir / CONFIG_FILE, self.config_text)
            atomic_write_text(self.output_dir / VERSIONS_FILE, json.dumps(run_versions(installed_versions()), indent=1))
        barrier("rank 0 to put the run directory's tags in order (setting aside or deleting old ones)")
        stop = StopRequest(self.output_dir)
        logger = RunLogger(self.output_dir, enabled=self.ctx.is_main, tensorboard=config.logging.tensorboard,
                           progress_bar=config.logging.progress_bar, total_steps=self.total_steps, start_step=start_step)
        result = TrainResult(exit_code=0, steps_done=start_step)
        if start_step == 0 and self.eval_examples:
            result.eval_history.append(self.evaluate(0, logger))
        self._last_save_time = time.monotonic()
        profiler = StepProfiler(self.output_dir, self.ctx.rank, config.logging.profile_steps, self.ctx.on_gpu)
        try:
            with profiler.running():
                for step in range(start_step, self.total_steps):
                    self._step_and_log(step, logger, result)
                    profiler.step_done()
                    if self._between_steps(step + 1, logger, stop, result):
                        return result
                self._finish(start_step, logger, result)
                return result
        finally:
            logger.close()
