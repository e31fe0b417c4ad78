"""Turn parallel records into training examples: one preference pair in a training language, plus what the loss needs.

- MPO (`with_anchor`): one example per (record, target language); the anchor is the same record's dominant-language pair.
- Baselines: one example per (record, language) with a complete pair.
- MLC: each example also carries the prompt rendered in every MLC language (prompt only, generation header included).
"""
from __future__ import annotations

from dataclasses import dataclass

from mpo_dist.data.schema import DataError, ParallelRecord
from mpo_dist.data.tokenize import ChatEncoder, EncodedSequence
from mpo_dist.errors import UserError


@dataclass(frozen=True)
class PreferenceExample:
    example_id: str  # "<record id>/<language>"
    language: str
    chosen: EncodedSequence
    rejected: EncodedSequence
    anchor_chosen: EncodedSequence | None = None
    anchor_rejected: EncodedSequence | None = None
    mlc_prompts: tuple[tuple[int, ...], ...] = ()


def _encode_pair(encoder: ChatEncoder, record: ParallelRecord, lang: str) -> tuple[EncodedSequence, EncodedSequence]:
    try:
        return encoder.encode(record.prompt[lang], record.chosen[lang]), encoder.encode(record.prompt[lang], record.rejected[lang])
    except UserError:  # not about this row (e.g. the chat template's frame longer than data.max_prompt_length)
        raise
    except ValueError as error:
        raise DataError(record.file, record.row, f"chosen.{lang}/rejected.{lang}", str(error)) from None


def build_examples(
    records: list[ParallelRecord],
    encoder: ChatEncoder,
    *,
    dominant_language: str,
    languages: list[str],
    with_anchor: bool,
    mlc_languages: list[str] | None = None,
) -> list[PreferenceExample]:
    """Examples in record order, languages in the record's order; `languages` empty means every language present."""
    examples: list[PreferenceExample] = []
    for record in records:
        train_languages = [
            lang for lang in record.pair_languages()
            if (not languages or lang in languages) and not (with_anchor and lang == dominant_language)
        ]
        anchor: tuple[EncodedSequence | None, EncodedSequence | None] = (None, None)
        if with_anchor and train_languages:
            if dominant_language not in record.pair_languages():
                raise DataError(record.file, record.row, f"chosen.{dominant_language}",
                                f"MPO needs the dominant-language ({dominant_language}) pair in every record")
            anchor = _encode_pair(encoder, record, dominant_language)
        mlc_prompts: tuple[tuple[int, ...], ...] = ()
        if mlc_languages and train_languages:
            missing = [lang for lang in mlc_languages if lang not in record.prompt]
            if missing:
                raise DataError(record.file, record.row, f"prompt.{missing[0]} (prompt_{missing[0]} in the MLC format)",
                                f"MLC is configured for {mlc_languages} but this record has no prompt in {missing[0]}")
            mlc_prompts = tuple(tuple(encoder.prompt_ids(record.prompt[lang])) for lang in mlc_languages)
        for lang in train_languages:
            chosen, rejected = _encode_pair(encoder, record, lang)
            examples.append(PreferenceExample(f"{record.id}/{lang}", lang, chosen, rejected, anchor[0], anchor[1], mlc_prompts))
    return examples
