"""Evaluation data: our unified schema and the MLC release (via `mpo_dist.data.loading`), plus two prompt-only formats.

- multijail: a CSV with one column per language code (MultiJail: id, source, tags, en, zh, it, vi, ar, ko, th, bn, sw,
  jv). Columns that are not language codes are metadata; `id` names the record (so it is never read as Indonesian).
  Rows count from 1 after the header.
- pku: PKU-SafeRLHF-style JSONL: `prompt` (in the base language) and `prompt_xx` fields; other fields (responses, labels)
  are ignored. Rows are line numbers.
Prompt-only records are used for generation; records with chosen/rejected pairs also give reward gaps.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from mpo_dist.data.data_file import DataFile
from mpo_dist.data.loading import load_all, resolve_path
from mpo_dist.data.schema import KNOWN_LANGUAGES, DataError, ParallelRecord, check_language, check_text
from mpo_dist.eval.errors import EvalError

FORMATS = ("auto", "unified", "mlc", "multijail", "pku")
ID_COLUMN = "id"  # the record id in MultiJail, never Indonesian (whose code it shares)
PROMPT_PREFIX = "prompt_"


def read_multijail_csv(path: Path) -> list[ParallelRecord]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        languages = [column for column in header if column in KNOWN_LANGUAGES and column != ID_COLUMN]
        if not languages:
            raise DataError(str(path), None, None, f"no language columns in the header {header}; expected columns named by "
                                                   f"language code (e.g. en, zh, ar) as in MultiJail")
        records = []
        for row_number, row in enumerate(reader, start=1):
            if None in row:
                raise DataError(str(path), row_number, None, f"{len(header) + len(row[None])} values for {len(header)} header columns")
            prompt = {}
            for lang in languages:
                if row[lang] is None:
                    raise DataError(str(path), row_number, lang,
                                    f"missing value: the row has fewer values than the {len(header)} header columns")
                prompt[lang] = check_text(row[lang], str(path), row_number, lang)
            records.append(ParallelRecord(str(row.get(ID_COLUMN) or f"row{row_number}"), prompt, file=str(path), row=row_number))
    return records


def read_pku_row(raw: object, file: str, row: int, base_language: str) -> ParallelRecord:
    if not isinstance(raw, dict):
        raise DataError(file, row, None, f"expected a JSON object, got {type(raw).__name__}")
    prompt = {}
    if raw.get("prompt") is not None:
        prompt[base_language] = check_text(raw["prompt"], file, row, "prompt")
    for key, value in raw.items():
        if key.startswith(PROMPT_PREFIX) and value is not None:
            lang = check_language(key[len(PROMPT_PREFIX):], file, row, key)
            prompt[lang] = check_text(value, file, row, key)
    if not prompt:
        raise DataError(file, row, "prompt", "no prompt: expected 'prompt' and/or 'prompt_xx' fields (PKU-SafeRLHF style)")
    return ParallelRecord(str(raw.get("id", f"row{row}")), prompt, file=file, row=row)


def jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON) of each non-blank line; a syntax error is a DataError naming the line."""
    for row_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield row_number, json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(str(path), row_number, None, f"invalid JSON (column {error.colno}): {error.msg}") from None


def read_pku_jsonl(path: Path, base_language: str) -> list[ParallelRecord]:
    return [read_pku_row(raw, str(path), row_number, base_language) for row_number, raw in jsonl_rows(path)]


def detect_file_format(path: Path) -> str:
    """multijail for .csv; pku for .jsonl whose first row has a string prompt and no chosen; else the training loaders.
    A benign-prompt file (reference answers, no chosen) is an error: read as harmful prompts, it would make its
    refusals look like safety."""
    if path.suffix == ".csv":
        return "multijail"
    if path.suffix == ".jsonl" and path.is_file():
        with open(path, encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), "")
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            return "auto"  # the training loader reports the bad line
        if isinstance(row, dict) and "reference" in row and "chosen" not in row:
            raise EvalError(f"--data {path}: its rows have a 'reference' answer and no 'chosen': a benign-prompt file "
                            "(like sample:benign); pass it with --benign, --data is for harmful prompts")
        if isinstance(row, dict) and isinstance(row.get("prompt", row.get("prompt_en")), str) and "chosen" not in row:
            return "pku"
    return "auto"


def read_eval_file(path_text: str, fmt: str = "auto", base_language: str = "en") -> list[ParallelRecord]:
    """Records of one file; `path_text` may be `sample:heldout`. Unified/MLC rows go through the training loaders."""
    if fmt not in FORMATS:
        raise EvalError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path = resolve_path(path_text)
    if not path.exists():
        raise DataError(str(path), None, None, "file does not exist")
    fmt = detect_file_format(path) if fmt == "auto" else fmt
    if fmt == "multijail":
        return read_multijail_csv(path)
    if fmt == "pku":
        return read_pku_jsonl(path, base_language)
    return load_all([DataFile(path_text, fmt)], base_language)


def read_eval_data(paths: list[str], fmt: str = "auto", base_language: str = "en",
                   languages: list[str] | None = None, limit: int | None = None) -> list[ParallelRecord]:
    """Records of every file (the first `limit` of each when given, to bound generation time), restricted to `languages`
    (all when empty); a requested language absent everywhere is an error."""
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be at least 1 record per file, got {limit}")
    records = [record for path in paths for record in read_eval_file(path, fmt, base_language)[:limit]]
    if not languages:
        return records
    unknown = [lang for lang in languages if lang not in KNOWN_LANGUAGES]
    if unknown:
        raise EvalError(f"--languages: unknown language codes {unknown}; expected codes such as {', '.join(sorted(KNOWN_LANGUAGES))}")
    present = {lang for record in records for lang in record.prompt}
    absent = [lang for lang in languages if lang not in present]
    if absent:
        raise EvalError(f"--languages asks for {absent}, which no data file has (present: {sorted(present)})")
    kept = []
    for record in records:
        prompt = {lang: text for lang, text in record.prompt.items() if lang in languages}
        if prompt:
            kept.append(ParallelRecord(record.id, prompt, {k: v for k, v in record.chosen.items() if k in prompt},
                                       {k: v for k, v in record.rejected.items() if k in prompt}, record.file, record.row))
    return kept
