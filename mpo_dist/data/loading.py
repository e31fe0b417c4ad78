"""Load records from .jsonl / .json / .parquet files or `datasets` saved directories.

The `datasets` library does the reading (memory-mapped Arrow, the same code path users already trust). When it rejects a
JSON file, the file is re-scanned line by line so the error can name the row and field instead of an Arrow cast message.
"""
from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Iterator

from mpo_dist.config import DataFile
from mpo_dist.data.adapters import row_reader
from mpo_dist.data.schema import DataError, ParallelRecord

log = logging.getLogger(__name__)

SAMPLE_PREFIX = "sample:"


def resolve_path(path: str) -> Path:
    """`sample:NAME` names a bundled split (sample:train, sample:heldout); anything else is a local path."""
    if path.startswith(SAMPLE_PREFIX):
        name = path[len(SAMPLE_PREFIX):]
        bundled = Path(str(resources.files("mpo_dist.data") / "sample" / f"{name}.jsonl"))
        if not bundled.is_file():
            raise DataError(path, None, None, "no such bundled sample split (available: sample:train, sample:heldout)")
        return bundled
    return Path(path)


def _scan_json_rows(path: Path) -> Iterator[tuple[int, object]]:
    """Rows of a .jsonl / .json file with 1-based row numbers; a line of bad JSON is yielded as a DataError naming it."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(str(path), error.lineno, None, f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
        if not isinstance(rows, list):
            raise DataError(str(path), None, None, "a .json file must hold a list of records")
        yield from enumerate(rows, start=1)
        return
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_number, json.loads(line)
        except json.JSONDecodeError as error:
            yield line_number, DataError(str(path), line_number, None, f"invalid JSON (column {error.colno}): {error.msg}")


def _dataset_rows(path: Path) -> Iterator[tuple[int, object]]:
    import datasets

    datasets.disable_progress_bars()
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise DataError(str(path), None, None, f"a DatasetDict needs a 'train' split, found {list(loaded)}")
            loaded = loaded["train"]
    elif path.suffix in (".jsonl", ".json"):
        try:
            loaded = datasets.load_dataset("json", data_files=str(path), split="train")
        except Exception as error:  # noqa: BLE001 - re-scan to turn Arrow's message into a row/field one
            log.debug("datasets could not read %s (%s); scanning it row by row", path, error)
            yield from _scan_json_rows(path)
            return
    elif path.suffix == ".parquet":
        loaded = datasets.load_dataset("parquet", data_files=str(path), split="train")
    else:
        raise DataError(str(path), None, None, "unsupported file type; expected .jsonl, .json, .parquet or a datasets directory")
    for row_number, row in enumerate(loaded, start=1):
        yield row_number, row


def load_records(data_file: DataFile, dominant_language: str, skip_bad_rows: bool = False) -> list[ParallelRecord]:
    """All valid records of one file; bad rows raise DataError, or are skipped and counted when `skip_bad_rows`."""
    path = resolve_path(data_file.path)
    if not path.exists():
        raise DataError(str(path), None, None, "file does not exist")
    read = row_reader(data_file.format, data_file.source_language or dominant_language, data_file.target_language)
    records: list[ParallelRecord] = []
    skipped = 0
    for row_number, raw in _dataset_rows(path):
        try:
            if isinstance(raw, DataError):
                raise raw
            records.append(read(raw, str(path), row_number))
        except DataError as error:
            if not skip_bad_rows:
                raise
            skipped += 1
            log.debug("skipping %s", error)
    if skipped:
        log.warning("%s: skipped %d bad rows (data.skip_bad_rows=true)", path, skipped)
    if not records:
        raise DataError(str(path), None, None, "no valid records")
    return records


def load_all(files: list[DataFile], dominant_language: str, skip_bad_rows: bool = False) -> list[ParallelRecord]:
    records = [record for data_file in files for record in load_records(data_file, dominant_language, skip_bad_rows)]
    seen: dict[str, ParallelRecord] = {}
    for record in records:
        if record.id in seen and seen[record.id].file == record.file:
            raise DataError(record.file, record.row, "id", f"duplicate id {record.id!r} (first at row {seen[record.id].row})")
        seen[record.id] = record
    return records
