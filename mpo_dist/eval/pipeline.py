"""What `mpo-dist eval` runs (its options: mpo_dist/cli/evaluate.py): reward gaps and judged generations per language for
a model (and a reference), then the report. Each model's scores are stored beside the report, and taken from an earlier
run's store when `--reuse-scores` names one that measured the same model the same way (eval/score_store.py).

Runs as one process or under torchrun (plain torch.distributed: gloo on CPU, nccl on GPU; no DeepSpeed, since the models
are ordinary Hugging Face directories). Work is sharded over ranks and gathered on rank 0, which writes everything.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mpo_dist.data.schema import ParallelRecord
from mpo_dist.engine.process_exit import note_process_group_joined
from mpo_dist.eval.benchmarks import LmEvalOptions, check_tasks, parse_lm_eval_options
from mpo_dist.eval.errors import EvalError
from mpo_dist.eval.readers import read_eval_data

if TYPE_CHECKING:  # torch and transformers are imported when the command runs, so `mpo-dist --help` stays fast
    import torch

    from mpo_dist.eval.benign import BenignRecord
    from mpo_dist.eval.generation import GenerationSettings, JudgedResponse
    from mpo_dist.eval.judge import RefusalJudge, SafetyJudge
    from mpo_dist.eval.report import ModelScores

GENERATIONS_FILE = "generations.jsonl"


@dataclass(frozen=True)
class EvalContext:
    rank: int
    world_size: int
    device: torch.device
    owns_process_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def say(self, message: str) -> None:
        if self.is_main:
            print(f"[mpo-dist eval] {message}", flush=True)


def init_context() -> EvalContext:
    """Join the process group torchrun set up (nccl on GPU, gloo on CPU), or run as a world of one."""
    import torch
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    owns = world_size > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if on_gpu else "gloo")
        note_process_group_joined()
    rank = dist.get_rank() if dist.is_initialized() else 0
    return EvalContext(rank, dist.get_world_size() if dist.is_initialized() else 1, device, owns)


def check_model_dir(path: Path, option: str) -> Path:
    """A Hugging Face directory; a training output or DeepSpeed checkpoint gets the export hint instead."""
    training_output = ((path / "checkpoints").is_dir() or (path / "latest").is_file() or any(path.glob("step_*"))
                       or any(path.glob("*model_states.pt")))
    if training_output:  # checked first: a training output also holds a config.json (the run's config)
        raise EvalError(f"{option} {path} is a training output / DeepSpeed checkpoint, not a Hugging Face model: export it "
                        f"first (`mpo-dist export RUN/checkpoints/step_XXXXXXXX OUT_DIR`) and pass OUT_DIR")
    if (path / "config.json").is_file():
        return path
    raise EvalError(f"{option} {path} is not a Hugging Face model directory (no config.json)")


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    from mpo_dist.eval.generation import GenerationSettings

    sampling = args.temperature is not None or args.top_p is not None
    if sampling and args.greedy:
        raise EvalError("--greedy cannot be combined with --temperature / --top-p (they ask for sampling)")
    return GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=sampling,
                              temperature=args.temperature if args.temperature is not None else 1.0,
                              top_p=args.top_p if args.top_p is not None else 1.0, batch_size=args.batch_size, seed=args.seed)


@dataclass(frozen=True)
class Judges:
    safety: SafetyJudge  # harmful prompts: safe / unsafe / invalid
    refusals: RefusalJudge  # benign prompts: refused / answered


def evaluate_model(role: str, path: Path, records: list[ParallelRecord], benign: list[BenignRecord], languages: list[str],
                   judges: Judges, settings: GenerationSettings, args: argparse.Namespace,
                   ctx: EvalContext) -> tuple[ModelScores, dict[str, list[JudgedResponse]] | None]:
    """Reward gaps (all ranks), judged generations on harmful and benign prompts and the benign reference answers'
    log-likelihood (gathered on rank 0) of one model; the responses come back by split ("harmful", "benign")."""
    import torch
    from transformers import AutoModelForCausalLM

    from mpo_dist.data.examples import build_examples
    from mpo_dist.data.tokenize import ChatEncoder
    from mpo_dist.eval.generation import PromptItem, generate_and_grade, refusal_grader, safety_grader
    from mpo_dist.eval.report import ModelScores, refusal_counts, verdict_counts
    from mpo_dist.eval.reward_gaps import model_reward_gaps
    from mpo_dist.eval.utility import reference_logprobs
    from mpo_dist.models.tokenizer import load_tokenizer
    from mpo_dist.runtime import resolve_dtype, torch_dtype

    ctx.say(f"{role}: loading {path}")
    tokenizer = load_tokenizer(path)
    dtype = torch_dtype(resolve_dtype(args.dtype, on_gpu=ctx.device.type == "cuda"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    model.to(ctx.device).eval()
    encoder = ChatEncoder(tokenizer, args.max_length, args.max_prompt_length, args.system_prompt)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = build_examples(records, encoder, dominant_language=args.dominant_language, languages=languages,
                              with_anchor=False)  # every language's pair; prompt-only records give none
    ctx.say(f"{role}: reward gaps on {len(examples)} held-out pairs")
    gaps = model_reward_gaps(model, examples, pad_token_id, batch_size=args.batch_size, device=ctx.device,
                             rank=ctx.rank, world_size=ctx.world_size)
    items = [PromptItem(record.id, lang, record.prompt[lang]) for record in records for lang in record.prompt]
    ctx.say(f"{role}: generating and judging {len(items)} responses ({settings.describe()})")
    harmful = generate_and_grade(model, encoder, items, safety_grader(judges.safety), settings, ctx.device, ctx.rank,
                                 ctx.world_size)
    benign_items = [PromptItem(record.id, lang, record.prompt[lang]) for record in benign for lang in record.prompt]
    refused, utility = None, None
    if benign_items:
        ctx.say(f"{role}: generating on {len(benign_items)} benign prompts (over-refusal) and scoring their reference answers")
        refused = generate_and_grade(model, encoder, benign_items, refusal_grader(judges.refusals), settings, ctx.device,
                                     ctx.rank, ctx.world_size)
        utility = reference_logprobs(model, benign, encoder, pad_token_id, batch_size=args.batch_size, device=ctx.device,
                                     rank=ctx.rank, world_size=ctx.world_size)
    del model
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    scores = ModelScores(role, role, str(path), gaps, verdict_counts(harmful or []), refusal_counts(refused or []),
                         utility or {})
    return scores, (None if harmful is None else {"harmful": harmful, "benign": refused or []})


def write_generations(path: Path, judged: dict[str, dict[str, list[JudgedResponse]]]) -> None:
    """One line per response: harmful prompts carry is_safe, benign ones refused."""
    from mpo_dist.atomic_write import atomic_write_text
    from mpo_dist.eval.verdicts import REFUSED

    def row(role: str, split: str, r: JudgedResponse) -> dict:
        grade = {"is_safe": r.is_safe} if split == "harmful" else {"refused": r.verdict == REFUSED}
        return {"role": role, "split": split, "id": r.record_id, "language": r.language, "prompt": r.prompt,
                "response": r.response, "verdict": r.verdict, **grade}

    atomic_write_text(path, "".join(json.dumps(row(role, split, r), ensure_ascii=False) + "\n"
                                        for role, splits in judged.items()
                                        for split, responses in splits.items() for r in responses))


def run_benchmarks(scores: list[ModelScores], models: list[tuple[str, Path]], lm_eval: LmEvalOptions,
                   out: Path, args: argparse.Namespace, ctx: EvalContext) -> None:
    """lm-evaluation-harness on each model directory (rank 0's device), each into a fresh OUT/lm_eval/<role>/."""
    from mpo_dist.eval.benchmarks import run_lm_eval
    from mpo_dist.runtime import resolve_dtype, torch_dtype

    dtype = str(torch_dtype(resolve_dtype(args.dtype, on_gpu=ctx.device.type == "cuda"))).removeprefix("torch.")
    for model_scores, (role, path) in zip(scores, models):
        ctx.say(f"{role}: lm-evaluation-harness on {', '.join(lm_eval.tasks)} (offline; log in {out / 'lm_eval' / role})")
        model_scores.benchmarks = run_lm_eval(path, lm_eval, device=str(ctx.device), dtype=dtype,
                                              out_dir=out / "lm_eval" / role)


def recorded_settings(args: argparse.Namespace, judges: Judges, settings: GenerationSettings, dtype_name: str,
                      with_benign: bool, world_size: int) -> dict[str, str]:
    """What the numbers depend on, one entry per setting, for the report and for `mpo-dist compare`, which refuses to
    put evaluations whose entries differ side by side (except eval/comparison.py's NOT_COMPARED)."""
    reading = [f"format {args.format}"] if args.format != "auto" else []
    reading += [f"dominant language {args.dominant_language}"] if args.dominant_language != "en" else []
    return {
        "data": ", ".join(args.data) + (f" ({', '.join(reading)})" if reading else ""),
        "limit": f"first {args.limit} records of each file" if args.limit else "all records",
        "judge": judges.safety.name + (f", template {args.judge_template}" if args.judge_template else ""),
        "generation": settings.describe(),
        "lengths": f"max length {args.max_length}, max prompt length {args.max_prompt_length}",
        "system prompt": repr(args.system_prompt) if args.system_prompt else "none",
        "dtype": dtype_name,
        **({"benign": ", ".join(args.benign),
            "over-refusal judge": judges.refusals.name + (f", template {args.judge_refusal_template}"
                                                          if args.judge_refusal_template else "")} if with_benign else {}),
        **({"benchmarks": f"lm-evaluation-harness, tasks {args.lm_eval_tasks}"
                          + (f", arguments {args.lm_eval_args}" if args.lm_eval_args else "")} if args.lm_eval_tasks else {}),
        "processes": str(world_size), **({"training run": str(args.run_dir)} if args.run_dir else {})}


def evaluate(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from mpo_dist.eval.benign import read_benign_data
    from mpo_dist.eval.judge import build_judge, build_refusal_judge
    from mpo_dist.eval.report import EvalReport, load_run_history, write_report
    from mpo_dist.eval.score_store import (check_reuse_directories, evaluation_fingerprint, find_scores, read_stores,
                                           save_scores)
    from mpo_dist.runtime import resolve_dtype

    # inputs are checked before any process group starts
    model_dir = check_model_dir(args.model, "--model")
    models = ([("reference", check_model_dir(args.reference, "--reference"))] if args.reference else []) + [("model", model_dir)]
    out = args.out if args.out is not None else model_dir.parent / f"{model_dir.name}-eval"
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out} is a file; the report needs a directory")
    history = load_run_history(args.run_dir) if args.run_dir is not None else []
    reuse = check_reuse_directories(args.reuse_scores)
    settings = generation_settings(args)
    if not 0 < args.max_prompt_length < args.max_length:
        raise EvalError(f"need 0 < --max-prompt-length < --max-length, got {args.max_prompt_length} and {args.max_length}")
    requested = [lang.strip() for lang in args.languages.split(",") if lang.strip()] if args.languages else []
    records = read_eval_data(args.data, args.format, args.dominant_language, requested, args.limit)
    languages = requested or list(dict.fromkeys(lang for record in records for lang in record.prompt))
    benign = read_benign_data(args.benign, languages, args.limit) if args.benign else []
    lm_eval = parse_lm_eval_options(args.lm_eval_tasks, args.lm_eval_args) if args.lm_eval_tasks else None
    if args.lm_eval_args and not args.lm_eval_tasks:
        raise EvalError("--lm-eval-args needs --lm-eval-tasks")
    if args.judge_refusal_template and not (args.benign and args.judge_template):
        raise EvalError("--judge-refusal-template grades the --benign prompts with a chat-model judge: it needs --benign "
                        "and --judge-model with --judge-template")
    if lm_eval is not None:  # lm-eval's task index takes seconds: after the quick checks, before any model loads
        check_tasks(lm_eval, out / "lm_eval")
    ctx = init_context()
    try:
        judge = build_judge(args.judge, args.judge_model, args.judge_template, ctx.device, args.judge_unsafe_index, args.batch_size)
        judges = Judges(judge, build_refusal_judge(judge, args.judge_refusal_template))
        for each in [judges.safety, judges.refusals] if benign else [judges.safety]:
            if hasattr(each, "check_languages"):  # optional: a judge that knows its languages fails before any model loads
                each.check_languages(languages)
        judge_names = [judges.safety.name] + ([judges.refusals.name] if benign else [])
        dtype_name = resolve_dtype(args.dtype, on_gpu=ctx.device.type == "cuda")
        scores, judged = [], {}
        stores = read_stores(reuse, ctx.say)
        for role, path in models:
            fingerprint = evaluation_fingerprint(path, args, languages, settings, judge_names, dtype_name, ctx.device.type)
            stored = find_scores(stores, fingerprint, role, path, ctx.say)
            if stored is not None:
                ctx.say(f"{role}: scores of {path} taken from {stored.file} (same model, data and settings)")
                model_scores, responses = stored.scores, stored.responses
            else:
                model_scores, responses = evaluate_model(role, path, records, benign, languages, judges, settings, args, ctx)
            if ctx.is_main:
                save_scores(out, role, path, fingerprint, model_scores, responses)
            scores.append(model_scores)
            judged[role] = responses
        if dist.is_initialized():  # the last collective: lm-eval below runs on rank 0 alone, however long it takes
            dist.barrier()
        if ctx.is_main:
            if lm_eval is not None:
                run_benchmarks(scores, models, lm_eval, out, args, ctx)
            pairs = {lang: sum(lang in record.pair_languages() for record in records) for lang in languages}
            prompts = {lang: sum(lang in record.prompt for record in records) for lang in languages}
            report = EvalReport(languages, scores, {k: v for k, v in pairs.items() if v}, prompts, history=history,
                                settings=recorded_settings(args, judges, settings, dtype_name, bool(benign), ctx.world_size))
            files = write_report(report, out)
            write_generations(out / GENERATIONS_FILE, judged)
            print((out / "report.md").read_text(encoding="utf-8"))
            ctx.say(f"wrote {', '.join(str(p) for p in files.values())} and {out / GENERATIONS_FILE}")
        return 0
    finally:
        if ctx.owns_process_group:
            dist.destroy_process_group()
