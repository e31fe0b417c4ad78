"""Load records from .jsonl / .json / .parquet files or `datasets` saved directories.

JSON is parsed here, row by row with 1-based row numbers: the `datasets` JSON loader infers one Arrow schema for the whole
file and, when a row breaks it, logs its own 0-based "row N" (contradicting ours) and an Arrow cast message instead of the
field. Parquet files and `datasets` directories are columnar already and are read through `datasets`.
"""
from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

from mpo_dist.data.data_file import DataFile
from mpo_dist.data.adapters import row_reader
from mpo_dist.data.schema import DataError, ParallelRecord

log = logging.getLogger(__name__)

SAMPLE_PREFIX = "sample:"


def resolve_path(path: str) -> Path:
    """`sample:NAME` names a bundled split (sample:train, sample:heldout, sample:benign); anything else is a local path."""
    if path.startswith(SAMPLE_PREFIX):
        name = path[len(SAMPLE_PREFIX):]
        bundled = Path(str(resources.files("mpo_dist.data") / "sample" / f"{name}.jsonl"))
        if not bundled.is_file():
            raise DataError(path, None, None, "no such bundled sample split (available: sample:train, sample:heldout, sample:benign)")
        return bundled
    return Path(path)


class _DuplicateKey(ValueError):
    """A JSON object names the same key twice; json.loads would silently keep the last value."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys: dict[str, object] = {}
    for key, value in pairs:
        if key in keys:
            raise _DuplicateKey(f"the key {key!r} appears twice in one object (JSON keeps only the last value); "
                                "expected each field and each language once")
        keys[key] = value
    return keys


def _parse_json(text: str) -> object:
    return json.loads(text, object_pairs_hook=_unique_keys)


def _unreadable(path: Path, error: OSError) -> DataError:
    return DataError(str(path), None, None, f"cannot be read: {error.strerror or error}")


def _json_list_rows(path: Path) -> Iterator[tuple[int, object]]:
    """Records of a .json file (one list): row N is the N-th record; a syntax error names the text line, not a row.
    A leading UTF-8 byte-order mark (Windows editors write one) is dropped."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise _unreadable(path, error) from None
    except UnicodeDecodeError as error:
        raise DataError(str(path), None, None, f"not UTF-8 text (byte {error.start + 1})") from None
    if not text.strip():
        raise DataError(str(path), None, None, "empty file; expected a JSON list of records")
    try:
        rows = _parse_json(text)
    except json.JSONDecodeError as error:
        raise DataError(str(path), None, None,
                        f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    except _DuplicateKey as error:
        raise DataError(str(path), None, None, str(error)) from None
    if not isinstance(rows, list):
        raise DataError(str(path), None, None, f"a .json file must hold a list of records, got a {type(rows).__name__}")
    yield from enumerate(rows, start=1)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    """Rows of a .jsonl file, row N = text line N (blank lines are skipped but counted, so N is the line an editor
    shows); a line of bad JSON is yielded as a DataError naming it, so data.skip_bad_rows can skip it. A UTF-8
    byte-order mark at the start of the file (Windows editors write one) is dropped."""
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise _unreadable(path, error) from None
    with handle:
        for line_number, raw_line in enumerate(handle, start=1):
            try:
                line = raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                yield line_number, DataError(str(path), line_number, None, f"not UTF-8 text (byte {error.start + 1} of the line)")
                continue
            if not line.strip():
                continue
            try:
                yield line_number, _parse_json(line)
            except json.JSONDecodeError as error:
                yield line_number, DataError(str(path), line_number, None, f"invalid JSON (column {error.colno}): {error.msg}")
            except _DuplicateKey as error:
                yield line_number, DataError(str(path), line_number, None, str(error))


def _columnar(path: Path) -> Iterable[dict]:
    """A Parquet file or a `datasets` directory as a Dataset; a file datasets / Arrow cannot read is a DataError."""
    import datasets
    from datasets.exceptions import DatasetGenerationError

    datasets.disable_progress_bars()
    what = "a datasets directory (Dataset.save_to_disk)" if path.is_dir() else "a Parquet file"
    if not path.is_dir() and _parquet_row_count(path) == 0:  # datasets fails on it with a generation error
        raise DataError(str(path), None, None, "no records: the Parquet file has no rows")
    try:
        loaded = (datasets.load_from_disk(str(path)) if path.is_dir()
                  else datasets.load_dataset("parquet", data_files=str(path), split="train"))
    except (OSError, ValueError, DatasetGenerationError) as error:  # a directory of something else, ArrowInvalid, ...
        cause = error.__cause__ if isinstance(error, DatasetGenerationError) and error.__cause__ else error
        raise DataError(str(path), None, None, f"cannot be read as {what}: {(str(cause).splitlines() or [''])[0]}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(str(path), None, None, f"a DatasetDict needs a 'train' split, found {list(loaded)}")
        loaded = loaded["train"]
    return loaded


def _parquet_row_count(path: Path) -> int | None:
    """Rows in a Parquet file's footer, or None if it has no readable footer (load_dataset then says why)."""
    import pyarrow.parquet

    try:
        return pyarrow.parquet.read_metadata(str(path)).num_rows
    except (OSError, ValueError):  # ArrowInvalid is a ValueError
        return None


def _rows(path: Path) -> Iterator[tuple[int, object]]:
    if path.suffix == ".jsonl" and not path.is_dir():
        yield from _jsonl_rows(path)
        return
    if path.suffix == ".json" and not path.is_dir():
        yield from _json_list_rows(path)
        return
    if not path.is_dir() and path.suffix != ".parquet":
        raise DataError(str(path), None, None, "unsupported file type; expected .jsonl, .json, .parquet or a datasets directory")
    for row_number, row in enumerate(_columnar(path), start=1):
        yield row_number, row


def load_records(data_file: DataFile, dominant_language: str, skip_bad_rows: bool = False) -> list[ParallelRecord]:
    """All valid records of one file; bad rows raise DataError, or are skipped and counted when `skip_bad_rows`."""
    path = resolve_path(data_file.path)
    if not path.exists():
        raise DataError(str(path), None, None, "file does not exist")
    read = row_reader(data_file.format, data_file.source_language or dominant_language, data_file.target_language)
    records: list[ParallelRecord] = []
    skipped = 0
    for row_number, raw in _rows(path):
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
        problem = "no valid records (every row was skipped)" if skipped else "no records: the file is empty"
        raise DataError(str(path), None, None, problem)
    return records


def require_unique_ids(records: list[ParallelRecord]) -> None:
    """A record id repeated within one file is a mistake (a pasted row); the same id in two files is allowed (the
    released MPO data has one file per language with the same items)."""
    seen: dict[tuple[str, str], ParallelRecord] = {}
    for record in records:
        first = seen.setdefault((record.file, record.id), record)
        if first is not record:
            raise DataError(record.file, record.row, "id", f"duplicate id {record.id!r} (first at row {first.row})")


def load_all(files: list[DataFile], dominant_language: str, skip_bad_rows: bool = False) -> list[ParallelRecord]:
    records = [record for data_file in files for record in load_records(data_file, dominant_language, skip_bad_rows)]
    require_unique_ids(records)
    return records
