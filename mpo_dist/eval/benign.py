"""Benign prompts for over-refusal and utility: JSONL rows {"id", "kind", "prompt": {lang: text}, "reference": {lang:
text}}. `kind` is "plain" (plainly benign) or "contrast" (benign but harmful-looking, as in XSTest: "how do I kill a
Python process"); `reference` is a short helpful answer, whose log-likelihood is the utility measure. The bundled
`sample:benign` has 50 such prompts (25 of each kind) in en, zh, ja, ko, ar, bn, sw, written for this project.
"""
from __future__ import annotations

from dataclasses import dataclass

from mpo_dist.data.loading import resolve_path
from mpo_dist.data.schema import DataError, check_language, check_text
from mpo_dist.eval.errors import EvalError
from mpo_dist.eval.readers import jsonl_rows

KINDS = ("plain", "contrast")
TEXT_FIELDS = ("prompt", "reference")


@dataclass(frozen=True)
class BenignRecord:
    id: str
    kind: str
    prompt: dict[str, str]
    reference: dict[str, str]  # the same languages as prompt
    file: str = ""
    row: int | None = None


def read_benign_row(raw: object, file: str, row: int) -> BenignRecord:
    if not isinstance(raw, dict):
        raise DataError(file, row, None, f"expected a JSON object, got {type(raw).__name__}")
    if raw.get("kind") not in KINDS:
        raise DataError(file, row, "kind", f"expected one of {', '.join(KINDS)}, got {raw.get('kind')!r}")
    texts: dict[str, dict[str, str]] = {}
    for name in TEXT_FIELDS:
        value = raw.get(name)
        if not isinstance(value, dict) or not value:
            raise DataError(file, row, name, "expected a non-empty object {language: text}")
        texts[name] = {check_language(lang, file, row, f"{name}.{lang}"): check_text(text, file, row, f"{name}.{lang}")
                       for lang, text in value.items()}
    if set(texts["prompt"]) != set(texts["reference"]):
        raise DataError(file, row, "reference", f"languages {sorted(texts['reference'])} differ from the prompt's "
                                                f"{sorted(texts['prompt'])}; every prompt needs its reference answer")
    return BenignRecord(str(raw.get("id", f"row{row}")), raw["kind"], texts["prompt"], texts["reference"], file, row)


def read_benign_file(path_text: str) -> list[BenignRecord]:
    """Records of one benign JSONL file; `path_text` may be `sample:benign`."""
    path = resolve_path(path_text)
    if not path.is_file():
        raise DataError(str(path), None, None, "file does not exist")
    return [read_benign_row(raw, str(path), row) for row, raw in jsonl_rows(path)]


def read_benign_data(paths: list[str], languages: list[str], limit: int | None = None) -> list[BenignRecord]:
    """Records of every file (the first `limit` of each), restricted to `languages`; a language none of them has is an
    error, since its over-refusal and utility would silently be missing from the report."""
    records = [record for path in paths for record in read_benign_file(path)[:limit]]
    present = {lang for record in records for lang in record.prompt}
    absent = [lang for lang in languages if lang not in present]
    if absent:
        raise EvalError(f"--benign has no prompts in {absent} (it has {sorted(present)}); add benign prompts in those "
                        "languages or leave them out with --languages")
    kept = []
    for record in records:
        prompt = {lang: text for lang, text in record.prompt.items() if lang in languages}
        if prompt:
            kept.append(BenignRecord(record.id, record.kind, prompt, {lang: record.reference[lang] for lang in prompt},
                                     record.file, record.row))
    return kept
