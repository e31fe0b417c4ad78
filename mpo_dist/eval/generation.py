"""Batched generation on held-out prompts, sharded over ranks, graded where it was generated (safety verdicts on harmful
prompts, refused / answered on benign ones), gathered on rank 0.

Batches are formed BEFORE sharding (prompts sorted by token length, then cut into `batch_size` groups) and batch b goes
to rank b % world_size, seeded with seed + b. A batch therefore has the same rows, the same left padding and the same
random stream whatever the number of processes, so 1 and N ranks give identical responses (greedy or sampled).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from mpo_dist.data.tokenize import ChatEncoder
from mpo_dist.eval.errors import EvalError
from mpo_dist.eval.verdicts import ANSWERED, REFUSED, SAFE, RefusalJudge, SafetyJudge, as_verdict


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    do_sample: bool = False  # False: greedy
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise EvalError(f"max_new_tokens and batch_size must be >= 1, got {self.max_new_tokens} and {self.batch_size}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise EvalError(f"need temperature > 0 and 0 < top_p <= 1, got temperature={self.temperature}, top_p={self.top_p}")

    def describe(self) -> str:
        mode = f"sampled (temperature {self.temperature}, top-p {self.top_p}, seed {self.seed})" if self.do_sample else "greedy"
        return f"{mode}, at most {self.max_new_tokens} new tokens"


@dataclass(frozen=True)
class PromptItem:
    record_id: str
    language: str
    prompt: str


@dataclass(frozen=True)
class JudgedResponse:
    record_id: str
    language: str
    prompt: str
    response: str
    verdict: str  # one of mpo_dist.eval.verdicts.VERDICTS; for benign prompts REFUSED or ANSWERED

    @property
    def is_safe(self) -> bool:
        return self.verdict == SAFE


def plan_batches(prompt_lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Prompt indices grouped into batches of similar length (less padding); depends on nothing but the prompts."""
    order = sorted(range(len(prompt_lengths)), key=lambda i: (prompt_lengths[i], i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] input ids and attention mask with padding on the left, so every row's next token is at position T."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        if ids:
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask


def _generation_config(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: GenerationSettings) -> GenerationConfig:
    """A fresh config with only the model's special tokens: a checkpoint's own sampling defaults (e.g. temperature 0.6)
    must not leak into a run the user asked to be greedy. Sampling is pure temperature + nucleus (top_k disabled)."""
    base = model.generation_config
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_token_id = base.eos_token_id if base.eos_token_id is not None else tokenizer.eos_token_id
    sampling = dict(temperature=settings.temperature, top_p=settings.top_p, top_k=0) if settings.do_sample else {}
    return GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample, pad_token_id=pad_token_id,
                            eos_token_id=eos_token_id, bos_token_id=base.bos_token_id, **sampling)


@torch.inference_mode()
def generate_batch(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[Sequence[int]],
                   settings: GenerationSettings, device: torch.device) -> list[str]:
    """Decoded continuations (special tokens dropped, whitespace stripped) of left-padded prompt token ids."""
    config = _generation_config(model, tokenizer, settings)
    input_ids, attention_mask = left_pad(prompt_ids, config.pad_token_id)
    output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config)
    new_tokens = output[:, input_ids.shape[1]:].tolist()
    return [tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in new_tokens]


def gather_on_main(items: list, rank: int, world_size: int) -> list | None:
    """Every rank's list concatenated in rank order on rank 0; None on the other ranks."""
    if world_size == 1 or not dist.is_initialized():
        return list(items)
    gathered: list[list] | None = [[] for _ in range(world_size)] if rank == 0 else None
    dist.gather_object(items, gathered, dst=0)
    return [item for part in gathered for item in part] if gathered is not None else None


Grader = Callable[[Sequence[PromptItem], list[str]], Sequence[str]]  # (items, responses) -> one grade per response


def generate_and_grade(model: PreTrainedModel, encoder: ChatEncoder, items: Sequence[PromptItem], grade: Grader,
                       settings: GenerationSettings, device: torch.device, rank: int = 0,
                       world_size: int = 1) -> list[JudgedResponse] | None:
    """Responses and grades for `items` in their order on rank 0 (None elsewhere); each rank grades its own batches."""
    prompt_ids = [encoder.prompt_ids(item.prompt) for item in items]
    mine: list[tuple[int, JudgedResponse]] = []
    for batch_index, indices in enumerate(plan_batches([len(ids) for ids in prompt_ids], settings.batch_size)):
        if batch_index % world_size != rank:
            continue
        torch.manual_seed(settings.seed + batch_index)
        responses = generate_batch(model, encoder.tokenizer, [prompt_ids[i] for i in indices], settings, device)
        batch_items = [items[i] for i in indices]
        grades = grade(batch_items, responses)
        mine += [(i, JudgedResponse(item.record_id, item.language, item.prompt, response, verdict))
                 for i, item, response, verdict in zip(indices, batch_items, responses, grades)]
    gathered = gather_on_main(mine, rank, world_size)
    if gathered is None:
        return None
    return [result for _, result in sorted(gathered, key=lambda pair: pair[0])]


def _checked(judge_name: str, answers: Sequence, items: Sequence[PromptItem]) -> Sequence:
    if len(answers) != len(items):
        raise EvalError(f"judge {judge_name} returned {len(answers)} grades for {len(items)} responses")
    return answers


def safety_grader(judge: SafetyJudge) -> Grader:
    """Harmful prompts: the judge's safe / unsafe / invalid (bools read as safe / unsafe)."""
    def grade(items: Sequence[PromptItem], responses: list[str]) -> list[str]:
        verdicts = judge.judge([item.prompt for item in items], responses, [item.language for item in items])
        return [as_verdict(verdict, judge.name) for verdict in _checked(judge.name, verdicts, items)]

    return grade


def refusal_grader(judge: RefusalJudge) -> Grader:
    """Benign prompts: refused or answered (over-refusal)."""
    def grade(items: Sequence[PromptItem], responses: list[str]) -> list[str]:
        refused = judge.refusals([item.prompt for item in items], responses, [item.language for item in items])
        return [REFUSED if value else ANSWERED for value in _checked(judge.name, refused, items)]

    return grade


def generate_and_judge(model: PreTrainedModel, encoder: ChatEncoder, items: Sequence[PromptItem], judge: SafetyJudge,
                       settings: GenerationSettings, device: torch.device, rank: int = 0,
                       world_size: int = 1) -> list[JudgedResponse] | None:
    """`generate_and_grade` with a safety judge's verdicts."""
    return generate_and_grade(model, encoder, items, safety_grader(judge), settings, device, rank, world_size)
