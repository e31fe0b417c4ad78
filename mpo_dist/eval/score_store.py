"""Each model's scores and judged responses, stored beside the report (`OUT/scores/<role>.json`) with a fingerprint of
everything they depend on, so a later `mpo-dist eval --reuse-scores OUT` does not measure that model again: comparing
several trained models with one reference (docs/evaluation.md, "Several models, one reference") measures the reference
once. A stored file is a sealed record (mpo_dist/artefact.py): one edited or damaged since it was written is named and
not reused. A stored result is reused only when its fingerprint equals the current one; one of the same model (the same
files, or the same directory) that differs is named with every difference, and the model is measured afresh.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mpo_dist.artefact import DamagedArtefactError, read_sealed, write_sealed
from mpo_dist.data.loading import resolve_path
from mpo_dist.eval.errors import EvalError
from mpo_dist.eval.generation import GenerationSettings, JudgedResponse
from mpo_dist.eval.judge import BUILT_IN_JUDGE
from mpo_dist.eval.report import ModelScores, RefusalCounts, VerdictCounts
from mpo_dist.file_digest import file_digest
from mpo_dist.fingerprint import LOGPROB_CODE, code_digest, data_digest, fingerprint_differences, model_fingerprint, software_fingerprint

STORE_FORMAT = 2  # 2: sealed file, full-content and software fingerprint
SCORES_DIR = "scores"
# The code between a model and its stored numbers and verdicts, beyond the log-prob path: reading the data, generating,
# judging (phrase lists, validity rules, verdict parsing), reward gaps and utility.
SCORE_CODE = LOGPROB_CODE + tuple(f"eval/{name}.py" for name in (
    "readers", "benign", "generation", "judge", "verdicts", "validity", "reward_gaps", "utility"))
Responses = dict[str, list[JudgedResponse]]  # split ("harmful", "benign") -> judged responses


def evaluation_fingerprint(model_dir: Path, args: argparse.Namespace, languages: list[str], settings: GenerationSettings,
                           judge_names: list[str], dtype: str, device_type: str) -> dict[str, Any]:
    """Everything a model's scores depend on, as readable JSON: its files, the data, how prompts are encoded, how
    responses are generated and judged, dtype and device, the library versions and mpo-dist's code that measures. A
    judge of your own (`--judge MODULE:FACTORY`) is known by its name and its module's source, not by what that imports."""
    def files(paths: list[str] | None) -> list[dict[str, str]]:
        return [{"path": path, "digest": data_digest(resolve_path(path))} for path in paths or []]

    def template(path: str | None) -> str | None:
        return file_digest(Path(path)) if path else None

    judge: dict[str, Any] = {"names": judge_names, "template": template(args.judge_template),
                             "refusal_template": template(args.judge_refusal_template), "unsafe_index": args.judge_unsafe_index}
    if args.judge != BUILT_IN_JUDGE:
        spec = importlib.util.find_spec(args.judge.partition(":")[0])  # imported already by the judge's factory
        judge["code"] = code_digest(Path(spec.origin)) if spec is not None and spec.origin else None
    if args.judge_model:
        judge["model"] = model_fingerprint(Path(args.judge_model))
    return {"format": STORE_FORMAT, **model_fingerprint(model_dir),
            "data": {"harmful": files(args.data), "benign": files(args.benign), "format": args.format,
                     "languages": languages, "limit": args.limit, "dominant_language": args.dominant_language},
            "encoding": {"max_length": args.max_length, "max_prompt_length": args.max_prompt_length,
                         "system_prompt": args.system_prompt},
            "generation": dataclasses.asdict(settings), "judge": judge, "dtype": dtype, "device": device_type,
            "software": software_fingerprint(SCORE_CODE)}


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


def save_scores(out: Path, role: str, model_dir: Path, fingerprint: dict[str, Any], scores: ModelScores,
                responses: Responses | None) -> Path:
    """OUT/scores/<role>.json, sealed and written atomically (rank 0). The model's directory is kept beside the
    fingerprint, not in it: a copy of the model elsewhere reuses the scores, and a later eval of the same directory
    whose files changed says so."""
    path = out / SCORES_DIR / f"{role}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    stored_responses = None if responses is None else {
        split: [dataclasses.asdict(response) for response in judged] for split, judged in responses.items()}
    write_sealed(path, {"fingerprint": fingerprint, "model_dir": str(model_dir.resolve()),
                        "scores": _scores_to_json(scores), "responses": stored_responses})
    return path


@dataclass(frozen=True)
class Store:
    """One stored-scores file whose checksum matched."""

    file: Path
    content: dict[str, Any]


def read_stores(directories: list[Path], say: Callable[[str], None]) -> list[Store]:
    """Every stored-scores file in `directories` (earlier eval outputs) that proves it is unedited; each one that does
    not (edited, damaged, cut short, written by an older mpo-dist) is named once, with why, and left out."""
    stores = []
    for directory in directories:
        for path in sorted((directory / SCORES_DIR).glob("*.json")):
            try:
                content = read_sealed(path)
            except DamagedArtefactError as error:
                say(f"not reused: {error}")
                continue
            if isinstance(content.get("fingerprint"), dict):
                stores.append(Store(path, content))
            else:
                say(f"not reused: {path} is not a stored-scores file")
    return stores


def find_scores(stores: list[Store], fingerprint: dict[str, Any], role: str, model_dir: Path,
                say: Callable[[str], None]) -> StoredScores | None:
    """Stored scores of the same model under the same settings, taken over as `role`. When there are none, each store
    of this model (the same model and tokenizer files, or the same directory) is named with every field that differs."""
    for store in stores:
        if store.content["fingerprint"] == fingerprint:
            content = store.content
            model_scores = _scores_from_json(content["scores"], role, model_dir)
            responses = None if content["responses"] is None else {
                split: [JudgedResponse(**row) for row in rows] for split, rows in content["responses"].items()}
            return StoredScores(model_scores, responses, store.file)
    for store in stores:
        stored = store.content["fingerprint"]
        same_files = all(stored.get(key) == fingerprint[key] for key in ("model", "tokenizer"))
        if same_files or store.content.get("model_dir") == str(model_dir.resolve()):
            differences = "; ".join(fingerprint_differences(stored, fingerprint, stored_as="stored",
                                                            place="the stored scores"))
            what = "this model's scores under other settings" if same_files else (
                f"scores of {model_dir} as its files were then")
            say(f"{role}: {store.file} has {what}, so it is measured again ({differences})")
    return None


def check_reuse_directories(directories: list[Path] | None) -> list[Path]:
    """--reuse-scores directories must exist (before any process group starts)."""
    for directory in directories or []:
        if not directory.is_dir():
            raise EvalError(f"--reuse-scores {directory}: no such directory; pass the --out directory of an earlier "
                            "`mpo-dist eval`")
    return list(directories or [])
