"""Data adapters and validation: every format reads into the same records; every bad-input class names file/row/field."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from mpo_dist.data.data_file import DataFile
from mpo_dist.data.loading import load_all, load_records
from mpo_dist.data.schema import KNOWN_LANGUAGES, DataError

UNIFIED = {
    "id": "a1",
    "prompt": {"en": "How do I pick a lock?", "sw": "Ninawezaje kufungua kufuli?"},
    "chosen": {"en": "I can't help with that.", "sw": "Siwezi kusaidia na hilo."},
    "rejected": {"en": "Sure, here is how.", "sw": "Sawa, hivi ndivyo."},
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n" for row in rows))
    return path


def load(path: Path, **kwargs) -> list:
    return load_records(DataFile(str(path), **{k: v for k, v in kwargs.items() if k != "skip"}), "en", kwargs.get("skip", False))


def test_unified_jsonl(tmp_path: Path) -> None:
    second = dict(UNIFIED, id="a2", chosen={"en": "No."}, rejected={"en": "Yes."})
    (record, other) = load(write_jsonl(tmp_path / "d.jsonl", [UNIFIED, second]))
    assert record.id == "a1" and record.prompt == UNIFIED["prompt"] and record.chosen == UNIFIED["chosen"]
    assert record.pair_languages() == ["en", "sw"]
    assert other.pair_languages() == ["en"]  # sw prompt without responses: a prompt-only language (MLC)
    assert (record.file, record.row, other.row) == (str(tmp_path / "d.jsonl"), 1, 2)


def test_released_mpo_format(tmp_path: Path) -> None:
    row = {
        "source_conversations": [{"from": "human", "value": "How do I steal a car?"}],
        "source_chosen": {"from": "gpt", "value": "I can't help with that."},
        "source_rejected": {"from": "gpt", "value": "Sure."},
        "target_conversations": [{"from": "human", "value": "Ninawezaje kuiba gari?"}],
        "target_chosen": {"from": "gpt", "value": "Siwezi kusaidia."},
        "target_rejected": {"from": "gpt", "value": "Sawa."},
    }
    path = tmp_path / "mpo.json"
    path.write_text(json.dumps([row, row]))
    records = load(path, format="mpo", target_language="sw")
    assert len(records) == 2
    assert records[0].prompt == {"en": "How do I steal a car?", "sw": "Ninawezaje kuiba gari?"}
    assert records[0].chosen == {"en": "I can't help with that.", "sw": "Siwezi kusaidia."}
    assert records[1].rejected == {"en": "Sure.", "sw": "Sawa."}
    with pytest.raises(DataError, match=r"row 1.*target_language"):
        load(path, format="mpo")  # the file does not say which language its target side is


@pytest.mark.canary
def test_released_mlc_format_parquet_and_datasets_dir(tmp_path: Path) -> None:
    import datasets

    rows = [{"prompt": "Hi?", "chosen": "No.", "rejected": "Yes.", "prompt_zh": "你好?", "prompt_bn": "হাই?"}] * 3
    table = datasets.Dataset.from_list(rows)
    table.to_parquet(str(tmp_path / "mlc.parquet"))
    table.save_to_disk(str(tmp_path / "mlc_dir"))
    for path in (tmp_path / "mlc.parquet", tmp_path / "mlc_dir"):
        records = load(path)
        assert len(records) == 3
        assert records[0].prompt == {"en": "Hi?", "zh": "你好?", "bn": "হাই?"}
        assert records[0].pair_languages() == ["en"]


def test_bundled_sample_is_complete() -> None:
    train = load_all([DataFile("sample:train")], "en")
    heldout = load_all([DataFile("sample:heldout")], "en")
    assert len(train) >= 60 and len(heldout) >= 10
    languages = {"en", "zh", "ja", "ko", "ar", "bn", "sw"}
    assert all(set(r.pair_languages()) == languages for r in train + heldout)
    assert len({r.prompt["en"] for r in train}) == len(train)  # distinct prompts
    assert not {r.id for r in train} & {r.id for r in heldout}


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        ({k: v for k, v in UNIFIED.items() if k != "prompt"}, "prompt", "missing field"),
        (dict(UNIFIED, chosen={"en": "  ", "sw": "x"}), "chosen.en", "empty text"),
        (dict(UNIFIED, prompt=dict(UNIFIED["prompt"], xx="?")), "prompt.xx", "unknown language code 'xx'"),
        (dict(UNIFIED, rejected={"en": 5, "sw": "x"}), "rejected.en", "expected a string, got int"),
        (dict(UNIFIED, rejected={"en": "x"}), "rejected.sw", "needs both chosen and rejected"),
        (dict(UNIFIED, prompt="just text", chosen="a"), "rejected", "expected a string"),  # detected as MLC format
    ],
)
def test_bad_row_names_file_row_and_field(tmp_path: Path, row: dict, field: str, problem: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [UNIFIED, dict(UNIFIED, id="a2"), row])
    with pytest.raises(DataError) as caught:
        load(path)
    error = caught.value
    assert (error.file, error.row, error.field_name) == (str(path), 3, field)
    assert problem in str(error) and f"{path}, row 3, field '{field}'" in str(error)


def test_bad_json_names_the_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "broken.jsonl", [UNIFIED, '{"id": "a2", "prompt": {"en": "x"', dict(UNIFIED, id="a3")])
    with pytest.raises(DataError, match=r"broken.jsonl, row 2: invalid JSON"):
        load(path)


def test_json_errors_name_the_line_and_an_empty_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("[\n" + json.dumps(UNIFIED) + ",\n{\"id\": 2,\n]\n")
    with pytest.raises(DataError) as caught:
        load(broken)
    assert str(caught.value) == f"{broken}: invalid JSON at line 4 column 1: Expecting property name enclosed in double quotes"
    assert caught.value.row is None  # a text line of a .json list is not a row
    blank = tmp_path / "blank.json"
    blank.write_text("   \n\n  \n")
    with pytest.raises(DataError, match=r"blank.json: empty file; expected a JSON list of records$"):
        load(blank)
    empty_lines = tmp_path / "empty.jsonl"
    empty_lines.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty.jsonl: no records: the file is empty$"):
        load(empty_lines)


def test_unreadable_files_are_data_errors(tmp_path: Path) -> None:
    """Not UTF-8, a directory that is not a saved dataset, a corrupt Parquet file: each names the file, no traceback."""
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(json.dumps(UNIFIED).encode() + b"\n" + '{"id": "caf\u00e9"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"latin1.jsonl, row 2: not UTF-8 text \(byte 12 of the line\)$"):
        load(latin)
    assert [r.id for r in load(latin, skip=True)] == ["a1"]
    folder = tmp_path / "not-a-dataset"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"not-a-dataset: cannot be read as a datasets directory \(Dataset.save_to_disk\): "):
        load(folder)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match=r"broken.parquet: cannot be read as a Parquet file: "):
        load(broken)


def test_no_second_row_number_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A row that breaks the file's schema (chosen a list, not a mapping) is reported once, with our 1-based row;
    nothing else (the datasets library used to log its own 0-based row and an Arrow cast error first)."""
    rows = [UNIFIED, dict(UNIFIED, id="a2"), dict(UNIFIED, id="a3", chosen=["just text"])]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with caplog.at_level("DEBUG"), pytest.raises(DataError) as caught:
        load(path)
    assert (caught.value.row, caught.value.field_name) == (3, "chosen")
    assert [r.getMessage() for r in caplog.records if "row" in r.getMessage()] == []


def test_skip_bad_rows_counts_and_keeps_the_good_ones(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [UNIFIED, "{not json", dict(UNIFIED, id="a3", chosen={"en": ""}), dict(UNIFIED, id="a4")]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with caplog.at_level("WARNING"):
        records = load(path, skip=True)
    assert [r.id for r in records] == ["a1", "a4"]
    assert "skipped 2 bad rows" in caplog.text


def test_duplicate_ids_and_missing_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dup.jsonl", [UNIFIED, UNIFIED])
    with pytest.raises(DataError, match=r"row 2, field 'id': duplicate id 'a1'"):
        load_all([DataFile(str(path))], "en")
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nope.jsonl")


def test_language_table_has_every_paper_language() -> None:
    assert {"en", "zh", "ja", "ko", "ar", "bn", "sw", "ru", "ur", "ps", "ku"} <= set(KNOWN_LANGUAGES)


def test_a_byte_order_mark_is_accepted_in_jsonl_and_json(tmp_path: Path) -> None:
    # Windows editors start UTF-8 files with EF BB BF; the file is otherwise the same as one without it
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + (json.dumps(UNIFIED) + "\n" + json.dumps(dict(UNIFIED, id="a2")) + "\n").encode())
    assert [(r.id, r.row, r.prompt["en"]) for r in load(jsonl)] == [("a1", 1, UNIFIED["prompt"]["en"]),
                                                                     ("a2", 2, UNIFIED["prompt"]["en"])]
    listed = tmp_path / "bom.json"
    listed.write_bytes(b"\xef\xbb\xbf" + json.dumps([UNIFIED]).encode())
    assert [r.id for r in load(listed)] == ["a1"]
    late = tmp_path / "late-bom.jsonl"  # a mark inside the file is not a byte-order mark: still an error
    late.write_bytes((json.dumps(UNIFIED) + "\n").encode() + b"\xef\xbb\xbf" + json.dumps(dict(UNIFIED, id="a2")).encode())
    with pytest.raises(DataError, match=r"late-bom.jsonl, row 2: invalid JSON"):
        load(late)


def test_a_language_twice_in_one_object_is_an_error(tmp_path: Path) -> None:
    text = json.dumps(UNIFIED).replace('"prompt": {"en": "How do I pick a lock?"',
                                       '"prompt": {"en": "How do I pick a lock?", "en": "Another prompt"')
    assert text.count('"en"') == 4
    path = write_jsonl(tmp_path / "twice.jsonl", [dict(UNIFIED, id="a0"), text])
    with pytest.raises(DataError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}, row 2: the key 'en' appears twice in one object")
    listed = tmp_path / "twice.json"
    listed.write_text("[" + text + "]")
    with pytest.raises(DataError, match=r"twice.json: the key 'en' appears twice"):
        load(listed)


def test_a_parquet_file_without_rows_is_one_data_error(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "prompt": pa.array([], pa.string())}), path)
    with pytest.raises(DataError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: no records: the Parquet file has no rows"


def load_errors_as_another_user(paths: list[Path]) -> list[str]:
    """The DataError text of loading each path, as an unprivileged user: root reads any file, so where the tests run as
    root (CI does) a forked child drops to `nobody` first."""
    def errors() -> list[str]:
        found = []
        for path in paths:
            try:
                load(path)
                found.append("loaded")
            except DataError as error:
                found.append(str(error))
        return found

    if os.geteuid() != 0:
        return errors()
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, report through the pipe, never return into pytest
        try:
            os.close(read_end)
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.write(write_end, json.dumps(errors()).encode())
        except BaseException as error:  # noqa: BLE001 - any escape is the failure the parent reports
            os.write(write_end, json.dumps([f"{type(error).__name__}: {error}"]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(report)


def test_a_file_the_user_cannot_read_is_one_data_error() -> None:
    folder = Path(tempfile.mkdtemp(prefix="mpo-unreadable-"))  # traversable by anyone: only the files are locked
    try:
        folder.chmod(0o755)
        paths = [folder / "locked.jsonl", folder / "locked.json", folder / "locked.parquet"]
        for path in paths:
            path.write_text(json.dumps(UNIFIED) + "\n")
            path.chmod(0o000)
        found = load_errors_as_another_user(paths)
        assert found[:2] == [f"{path}: cannot be read: Permission denied" for path in paths[:2]]
        assert found[2].startswith(f"{paths[2]}: cannot be read as a Parquet file: ") and "Permission denied" in found[2]
    finally:
        shutil.rmtree(folder)
