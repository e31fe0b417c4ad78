"""Every data file, row and field, then what only the whole data set shows: languages configured but absent, records
without the dominant-language pair MPO anchors on, chosen identical to rejected, one example id twice.

Each file is read to its first bad row (or to its end with data.skip_bad_rows), so `check` names a problem in every
file at once instead of one per run.
"""
from __future__ import annotations

from collections import Counter

from mpo_dist.check.report import CheckReport
from mpo_dist.config import Config
from mpo_dist.data.data_file import DataFile
from mpo_dist.data.loading import load_records, require_unique_ids
from mpo_dist.data.schema import DataError, ParallelRecord


def load_section(files: list[DataFile], key: str, config: Config, report: CheckReport) -> list[ParallelRecord] | None:
    """The records of data.train_files or data.eval_files; None (after recording each file's error) if any file fails."""
    records: list[ParallelRecord] = []
    failed = False
    for data_file in files:
        try:
            records += load_records(data_file, config.data.dominant_language, config.data.skip_bad_rows)
        except DataError as error:
            report.error(f"{key}: {error}")
            failed = True
    if failed:
        return None
    try:
        require_unique_ids(records)
    except DataError as error:
        report.error(f"{key}: {error}")
        return None
    return records


def _where(record: ParallelRecord) -> str:
    return f"{record.file}, row {record.row}"


def pairs_per_language(records: list[ParallelRecord]) -> str:
    """"ar 64, bn 64, ...": complete preference pairs per language, for the summary and for messages."""
    counts = Counter(lang for record in records for lang in record.pair_languages())
    return ", ".join(f"{lang} {count}" for lang, count in sorted(counts.items())) or "none"


def check_languages(config: Config, records: list[ParallelRecord], *, with_anchor: bool, with_mlc: bool,
                    report: CheckReport) -> None:
    """Configured languages against the languages the training records really have."""
    data = config.data
    pair_languages = {lang for record in records for lang in record.pair_languages()}
    found = pairs_per_language(records)
    absent = [lang for lang in data.languages if lang not in pair_languages]
    if absent:
        report.error(f"data.languages: {', '.join(absent)} ha{'ve' if len(absent) > 1 else 's'} no preference pair in "
                     f"data.train_files (pairs per language: {found})")
    trained = [lang for lang in (data.languages or sorted(pair_languages)) if not (with_anchor and lang == data.dominant_language)]
    if with_anchor and not trained:
        report.error(f"data.languages: MPO trains languages other than data.dominant_language "
                     f"({data.dominant_language}); none is left (pairs per language: {found})")
    if with_anchor and trained:
        needing_anchor = [r for r in records if any(lang in trained for lang in r.pair_languages())]
        lacking = [r for r in needing_anchor if data.dominant_language not in r.pair_languages()]
        if lacking:
            report.error(f"data.dominant_language: MPO anchors every pair on the same record's "
                         f"{data.dominant_language} pair, but {len(lacking)} of {len(needing_anchor)} records have none "
                         f"(first: {_where(lacking[0])}); is {data.dominant_language!r} the data's dominant language?")
    if with_mlc:
        lacking = [r for r in records if any(lang in trained for lang in r.pair_languages())
                   and any(lang not in r.prompt for lang in config.mlc.languages)]
        if lacking:
            missing = [lang for lang in config.mlc.languages if lang not in lacking[0].prompt]
            report.error(f"mlc.languages: {len(lacking)} of {len(records)} records lack a prompt in some MLC language "
                         f"(first: {_where(lacking[0])}, no prompt in {', '.join(missing)})")


def _files(records: list[ParallelRecord]) -> str:
    """The files `records` come from, at most three by name, so that the message stays one readable line."""
    files = sorted({str(record.file) for record in records})
    return ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")


def check_identical_pairs(config: Config, records: list[ParallelRecord], *, with_anchor: bool,
                          report: CheckReport) -> None:
    """A pair whose chosen and rejected texts are equal carries no preference: its reward gap is zero by construction.
    A few are a warning; a language the run uses whose every pair is such (or the whole data set) is an error, since
    its training would do nothing (a rejected column filled from the chosen one, say)."""
    used = set(config.data.languages) | ({config.data.dominant_language} if with_anchor else set())
    pairs = [(record, lang) for record in records for lang in record.pair_languages()
             if not config.data.languages or lang in used]
    identical = [(record, lang) for record, lang in pairs if record.chosen[lang].strip() == record.rejected[lang].strip()]
    if not identical:
        return
    if len(identical) == len(pairs):
        report.error(f"data.train_files: all {len(pairs)} pairs have chosen identical to rejected "
                     f"({_files([record for record, _ in pairs])}): there is no preference to learn (docs/data.md)")
        return
    per_language = Counter(lang for _, lang in pairs)
    identical_per_language = Counter(lang for _, lang in identical)
    void = sorted(lang for lang, count in identical_per_language.items() if count == per_language[lang])
    for lang in void:
        report.error(f"data.train_files: all {per_language[lang]} {lang} pairs have chosen identical to rejected "
                     f"({_files([record for record, pair_lang in identical if pair_lang == lang])}): {lang} has no "
                     "preference to learn (docs/data.md)")
    rest = [(record, lang) for record, lang in identical if lang not in void]
    if rest:
        record, lang = rest[0]
        report.warn(f"{len(rest)} pair(s) have chosen identical to rejected (first: {_where(record)}, language "
                    f"{lang}); they train nothing but take their share of every batch (docs/data.md)")


def check_example_ids(example_ids: list[str], *, cache: bool, report: CheckReport) -> None:
    """The same <record id>/<language> from two files: the reference cache is keyed by it, the sample log names it."""
    repeated = [example_id for example_id, count in Counter(example_ids).items() if count > 1]
    if not repeated:
        return
    message = (f"{len(repeated)} example id(s) occur in more than one training file (e.g. {repeated[0]!r}; an example id "
               "is <record id>/<language>)")
    if cache:
        report.error(f"{message}: engine.reference=cache keys the cache by example id; give every record a unique id")
    else:
        report.warn(f"{message}: samples.jsonl cannot tell them apart")
