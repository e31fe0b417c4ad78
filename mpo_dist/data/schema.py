"""The unified multi-way parallel record and its validation.

Every input format is turned into `ParallelRecord`: one item (one prompt) with its text in several languages. Responses
may be missing for some languages (MLC needs only prompts there). Errors name file, row and field so a user can open the
file at the right line.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mpo_dist.errors import UserError

# ISO 639-1 codes (plus a few 639-3 ones used by the papers) that mpo-dist accepts; an unknown code is a typo far more often
# than a new language, so it is an error.
KNOWN_LANGUAGES: dict[str, str] = {
    "en": "English", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "ar": "Arabic", "bn": "Bengali", "sw": "Swahili",
    "ru": "Russian", "ur": "Urdu", "ps": "Pashto", "ku": "Kurdish", "de": "German", "fr": "French", "es": "Spanish",
    "it": "Italian", "pt": "Portuguese", "nl": "Dutch", "hi": "Hindi", "th": "Thai", "vi": "Vietnamese", "id": "Indonesian",
    "jv": "Javanese", "tr": "Turkish", "fa": "Persian", "he": "Hebrew", "pl": "Polish", "uk": "Ukrainian", "te": "Telugu",
    "ta": "Tamil", "mr": "Marathi", "yo": "Yoruba", "ha": "Hausa", "am": "Amharic", "zu": "Zulu", "ms": "Malay",
    "tl": "Tagalog", "el": "Greek", "cs": "Czech", "sv": "Swedish", "fi": "Finnish", "hu": "Hungarian", "ro": "Romanian",
}

TEXT_FIELDS = ("prompt", "chosen", "rejected")


class DataError(UserError):
    """Invalid input data; the message names the file, the 1-based row and the field."""

    def __init__(self, file: str, row: int | None, field_name: str | None, problem: str):
        self.file, self.row, self.field_name, self.problem = file, row, field_name, problem
        where = file
        if row is not None:
            where += f", row {row}"
        if field_name:
            where += f", field '{field_name}'"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class ParallelRecord:
    """One prompt with its texts per language; `chosen`/`rejected` may lack languages that only have a prompt."""

    id: str
    prompt: dict[str, str]
    chosen: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    file: str = ""
    row: int = 0

    def pair_languages(self) -> list[str]:
        """Languages with a complete preference triple."""
        return [lang for lang in self.prompt if lang in self.chosen and lang in self.rejected]


def check_language(code: object, file: str, row: int, field_name: str) -> str:
    if not isinstance(code, str) or code not in KNOWN_LANGUAGES:
        raise DataError(file, row, field_name, f"unknown language code {code!r}; expected one of {', '.join(sorted(KNOWN_LANGUAGES))}")
    return code


def check_text(value: object, file: str, row: int, field_name: str) -> str:
    if not isinstance(value, str):
        raise DataError(file, row, field_name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(file, row, field_name, "empty text")
    return value


def validate_unified(raw: object, file: str, row: int) -> ParallelRecord:
    """Check one unified-schema row: {"id", "prompt": {lang: text}, "chosen": {lang: text}, "rejected": {lang: text}}."""
    if not isinstance(raw, dict):
        raise DataError(file, row, None, f"expected a JSON object, got {type(raw).__name__}")
    record_id = raw.get("id", f"row{row}")
    if not isinstance(record_id, (str, int)):
        raise DataError(file, row, "id", f"expected a string, got {type(record_id).__name__}")
    texts: dict[str, dict[str, str]] = {}
    for name in TEXT_FIELDS:
        value = raw.get(name)
        if value is None:
            if name == "prompt":
                raise DataError(file, row, name, "missing field; expected a mapping of language code to text")
            value = {}
        if not isinstance(value, dict):
            raise DataError(file, row, name, f"expected a mapping of language code to text, got {type(value).__name__}")
        texts[name] = {}
        for lang, text in value.items():
            if text is None:  # columnar loaders fill absent languages with null
                continue
            check_language(lang, file, row, f"{name}.{lang}")
            texts[name][lang] = check_text(text, file, row, f"{name}.{lang}")
    if not texts["prompt"]:
        raise DataError(file, row, "prompt", "no language has a prompt")
    for name in ("chosen", "rejected"):
        for lang in texts[name]:
            if lang not in texts["prompt"]:
                raise DataError(file, row, f"prompt.{lang}", f"{name}.{lang} is given but the prompt in {lang} is missing")
    for lang in texts["prompt"]:
        if (lang in texts["chosen"]) != (lang in texts["rejected"]):
            missing = "rejected" if lang in texts["chosen"] else "chosen"
            raise DataError(file, row, f"{missing}.{lang}", "a language needs both chosen and rejected, or neither")
    return ParallelRecord(str(record_id), texts["prompt"], texts["chosen"], texts["rejected"], file, row)
