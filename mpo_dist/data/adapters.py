"""Readers for the released data formats of the two papers, each producing the unified `ParallelRecord`.

- unified: {"id", "prompt": {lang: text}, "chosen": {lang: text}, "rejected": {lang: text}} (our own schema)
- mpo: the MPO release, one pair of languages per row: source_conversations / source_chosen / source_rejected /
  target_conversations / target_chosen / target_rejected with ShareGPT {"from", "value"} turns
- mlc: the MLC release: prompt / chosen / rejected in the base language plus prompt_xx for the other languages
"""
from __future__ import annotations

from typing import Callable

from mpo_dist.data.schema import DataError, ParallelRecord, check_language, check_text, validate_unified

MPO_FIELDS = ("source_conversations", "source_chosen", "source_rejected", "target_conversations", "target_chosen", "target_rejected")
_USER_ROLES = ("human", "user")


def detect_format(raw: object) -> str:
    """Guess the format from the keys of one row."""
    if isinstance(raw, dict):
        if "source_conversations" in raw or "target_conversations" in raw:
            return "mpo"
        if isinstance(raw.get("prompt"), str):
            return "mlc"
    return "unified"


def _sharegpt_prompt(value: object, file: str, row: int, field_name: str) -> str:
    if not isinstance(value, list) or not value:
        raise DataError(file, row, field_name, "expected a non-empty list of {'from', 'value'} turns")
    user_turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or "value" not in turn or "from" not in turn:
            raise DataError(file, row, f"{field_name}[{i}]", "expected a turn {'from': ..., 'value': ...}")
        if turn["from"] in _USER_ROLES:
            user_turns.append(check_text(turn["value"], file, row, f"{field_name}[{i}].value"))
    if len(user_turns) != 1:
        raise DataError(file, row, field_name, f"expected exactly one human turn (single-turn prompts), found {len(user_turns)}")
    return user_turns[0]


def _sharegpt_response(value: object, file: str, row: int, field_name: str) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        if "value" not in value:
            raise DataError(file, row, f"{field_name}.value", "missing field")
        return check_text(value["value"], file, row, f"{field_name}.value")
    return check_text(value, file, row, field_name)


def read_mpo_row(raw: object, file: str, row: int, source_language: str, target_language: str) -> ParallelRecord:
    """One released-MPO row -> a record with the source (dominant) and target language."""
    if not isinstance(raw, dict):
        raise DataError(file, row, None, f"expected a JSON object, got {type(raw).__name__}")
    for name in MPO_FIELDS:
        if name not in raw or raw[name] is None:
            raise DataError(file, row, name, "missing field (released MPO format)")
    if not target_language:
        raise DataError(file, row, None, "the MPO format does not name its languages: set target_language for this file in data.train_files")
    check_language(source_language, file, row, "source_language (config)")
    check_language(target_language, file, row, "target_language (config)")
    prompt, chosen, rejected = {}, {}, {}
    for side, lang in (("source", source_language), ("target", target_language)):
        prompt[lang] = _sharegpt_prompt(raw[f"{side}_conversations"], file, row, f"{side}_conversations")
        chosen[lang] = _sharegpt_response(raw[f"{side}_chosen"], file, row, f"{side}_chosen")
        rejected[lang] = _sharegpt_response(raw[f"{side}_rejected"], file, row, f"{side}_rejected")
    record_id = str(raw.get("id", f"{file}#{row}"))
    return ParallelRecord(record_id, prompt, chosen, rejected, file, row)


def read_mlc_row(raw: object, file: str, row: int, base_language: str) -> ParallelRecord:
    """One released-MLC row: responses in `base_language`, prompts in every prompt_xx language."""
    if not isinstance(raw, dict):
        raise DataError(file, row, None, f"expected a JSON object, got {type(raw).__name__}")
    prompt = {base_language: check_text(raw.get("prompt"), file, row, "prompt")}
    for key, value in raw.items():
        if key.startswith("prompt_") and value is not None:
            lang = check_language(key[len("prompt_"):], file, row, key)
            prompt[lang] = check_text(value, file, row, key)
    chosen = {base_language: check_text(raw.get("chosen"), file, row, "chosen")}
    rejected = {base_language: check_text(raw.get("rejected"), file, row, "rejected")}
    record_id = str(raw.get("id", f"{file}#{row}"))
    return ParallelRecord(record_id, prompt, chosen, rejected, file, row)


def row_reader(fmt: str, source_language: str, target_language: str) -> Callable[[object, str, int], ParallelRecord]:
    """The per-row reader for a file's format ("auto" decides per row)."""

    def read(raw: object, file: str, row: int) -> ParallelRecord:
        row_format = detect_format(raw) if fmt == "auto" else fmt
        if row_format == "mpo":
            return read_mpo_row(raw, file, row, source_language, target_language)
        if row_format == "mlc":
            return read_mlc_row(raw, file, row, source_language)
        return validate_unified(raw, file, row)

    return read
