"""Each model's scores and judged responses, stored beside the report (`OUT/scores/<role>.json`) with a fingerprint of
everything they depend on, so a later `mpo-dist eval --reuse-scores OUT` does not measure that model again: comparing
several trained models with one reference (docs/evaluation.md, "Several models, one reference") measures the reference
once. A stored result is reused only when its fingerprint equals the current one; one that differs is named with what
differs and the model is measured afresh.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mpo_dist.atomic_write import atomic_write_text
from mpo_dist.data.loading import resolve_path
from mpo_dist.eval.errors import EvalError
from mpo_dist.eval.generation import GenerationSettings, JudgedResponse
from mpo_dist.eval.report import ModelScores, RefusalCounts, VerdictCounts
from mpo_dist.fingerprint import data_digest, fingerprint_differences, model_fingerprint, sha256_file

STORE_FORMAT = 1
SCORES_DIR = "scores"
Responses = dict[str, list[JudgedResponse]]  # split ("harmful", "benign") -> judged responses


def evaluation_fingerprint(model_dir: Path, args: argparse.Namespace, languages: list[str], settings: GenerationSettings,
                           judge_names: list[str], dtype: str, device_type: str) -> dict[str, Any]:
    """Everything a model's scores depend on, as readable JSON: its files, the data, how prompts are encoded, how
    responses are generated and judged, dtype and device. A judge of your own (`--judge MODULE:FACTORY`) is known by its
    name only: change its code and the stored scores still match."""
    def files(paths: list[str] | None) -> list[dict[str, str]]:
        return [{"path": path, "sha256": data_digest(resolve_path(path))} for path in paths or []]

    def template(path: str | None) -> str | None:
        return sha256_file(Path(path)) if path else None

    judge: dict[str, Any] = {"names": judge_names, "template": template(args.judge_template),
                             "refusal_template": template(args.judge_refusal_template), "unsafe_index": args.judge_unsafe_index}
    if args.judge_model:
        judge["model"] = model_fingerprint(Path(args.judge_model))
    return {"format": STORE_FORMAT, **model_fingerprint(model_dir),
            "data": {"harmful": files(args.data), "benign": files(args.benign), "format": args.format,
                     "languages": languages, "limit": args.limit, "dominant_language": args.dominant_language},
            "encoding": {"max_length": args.max_length, "max_prompt_length": args.max_prompt_length,
                         "system_prompt": args.system_prompt},
            "generation": dataclasses.asdict(settings), "judge": judge, "dtype": dtype, "device": device_type}


@dataclass(frozen=True)
class StoredScores:
    scores: ModelScores
    responses: Responses | None
    file: Path


def _scores_to_json(scores: ModelScores) -> dict[str, Any]:
    """lm-eval results are left out: they are not part of the fingerprint, and a run that asks for them runs them."""
    return {"reward_gaps": scores.reward_gaps,
            "verdict_counts": {lang: dataclasses.asdict(counts) for lang, counts in scores.verdict_counts.items()},
            "refusal_counts": {lang: dataclasses.asdict(counts) for lang, counts in scores.refusal_counts.items()},
            "utility": scores.utility}


def _scores_from_json(scores: dict[str, Any], role: str, source: Path) -> ModelScores:
    """The inverse of `_scores_to_json`, as `role` of this evaluation (a stored "model" can be today's reference)."""
    return ModelScores(role, role, str(source), scores["reward_gaps"],
                       {lang: VerdictCounts(**counts) for lang, counts in scores["verdict_counts"].items()},
                       {lang: RefusalCounts(**counts) for lang, counts in scores["refusal_counts"].items()},
                       scores["utility"])


def save_scores(out: Path, role: str, fingerprint: dict[str, Any], scores: ModelScores,
                responses: Responses | None) -> Path:
    """OUT/scores/<role>.json, written atomically (rank 0)."""
    path = out / SCORES_DIR / f"{role}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    stored_responses = None if responses is None else {
        split: [dataclasses.asdict(response) for response in judged] for split, judged in responses.items()}
    atomic_write_text(path, json.dumps({"fingerprint": fingerprint, "scores": _scores_to_json(scores),
                                        "responses": stored_responses}, ensure_ascii=False) + "\n")
    return path


def _read_store(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return content if isinstance(content, dict) and isinstance(content.get("fingerprint"), dict) else None


def find_scores(directories: list[Path], fingerprint: dict[str, Any], role: str, source: Path,
                say: Callable[[str], None]) -> StoredScores | None:
    """Stored scores of the same model under the same settings in any of `directories` (earlier eval outputs), taken
    over as `role`; stored scores of the same model under other settings are named with what differs, then skipped."""
    for directory in directories:
        for path in sorted((directory / SCORES_DIR).glob("*.json")):
            content = _read_store(path)
            if content is None:
                say(f"{role}: {path} is not a stored-scores file; ignored")
                continue
            stored = content["fingerprint"]
            if stored == fingerprint:
                model_scores = _scores_from_json(content["scores"], role, source)
                responses = None if content["responses"] is None else {
                    split: [JudgedResponse(**row) for row in rows] for split, rows in content["responses"].items()}
                return StoredScores(model_scores, responses, path)
            if {key: stored.get(key) for key in ("model", "tokenizer")} == {key: fingerprint[key] for key in ("model", "tokenizer")}:
                differences = fingerprint_differences(stored, fingerprint, stored_as="stored", place="the stored scores")
                say(f"{role}: {path} has this model's scores under other settings, so it is measured again "
                    f"({'; '.join(differences)})")
    return None


def check_reuse_directories(directories: list[Path] | None) -> list[Path]:
    """--reuse-scores directories must exist (before any process group starts)."""
    for directory in directories or []:
        if not directory.is_dir():
            raise EvalError(f"--reuse-scores {directory}: no such directory; pass the --out directory of an earlier "
                            "`mpo-dist eval`")
    return list(directories or [])
