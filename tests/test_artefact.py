"""Stored files that prove they are unedited (mpo_dist/artefact.py): a sealed record refuses an edited value, a cut or
damaged file and one without a checksum, by name, and accepts a change of layout; a payload file is compared with its
size and CRC-32, computed here with binascii, independently of zlib."""
from __future__ import annotations

import binascii
import json
import os
from pathlib import Path

import pytest

from mpo_dist.artefact import (DamagedArtefactError, FileRecord, payload_problem, payload_problems, read_sealed,
                               write_payload, write_sealed)

CONTENT = {"fingerprint": {"model": {"model.safetensors": "ab12"}}, "scores": {"reward_gaps": {"en": -0.013, "sw": 1.5}},
           "ids": ["p001/sw", "p002/zh"], "note": "日本語", "nothing": None}


def test_a_sealed_record_reads_back_and_refuses_an_edited_number(tmp_path: Path) -> None:
    path = tmp_path / "scores.json"
    write_sealed(path, CONTENT)
    assert read_sealed(path) == CONTENT
    record = json.loads(path.read_text(encoding="utf-8"))
    record["content"]["scores"]["reward_gaps"]["en"] = -0.913  # one digit, the JSON still valid
    path.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DamagedArtefactError) as raised:
        read_sealed(path)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message and "edited or damaged since it was written" in message


def test_a_sealed_record_accepts_another_layout_of_the_same_values(tmp_path: Path) -> None:
    path = tmp_path / "index.json"
    write_sealed(path, CONTENT, indent=1)
    record = json.loads(path.read_text(encoding="utf-8"))
    text = json.dumps(record, indent=4).replace("1.5", "1.50")  # re-indented, escaped, a float written longer
    path.write_text(text, encoding="utf-8")
    assert read_sealed(path) == CONTENT


@pytest.mark.parametrize("damage, expected", [
    (lambda data: data[: len(data) // 2], "is not valid JSON"),
    (lambda data: data[:40] + bytes([0xFF]) + data[41:], "is not UTF-8 text"),
    (lambda data: json.dumps(json.loads(data)["content"]).encode(), "carries no crc32 of its content"),
])
def test_a_cut_or_damaged_or_unsealed_record_is_named(tmp_path: Path, damage, expected: str) -> None:
    path = tmp_path / "record.json"
    write_sealed(path, CONTENT)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DamagedArtefactError, match=expected) as raised:
        read_sealed(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_a_payload_file_is_checked_against_its_record(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    path = tmp_path / "shard.bin"
    record = write_payload(path, data)
    assert record == FileRecord(len(data), f"{binascii.crc32(data):08x}")
    assert payload_problem(path.parent, path.name, record) is None
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01  # one bit in the middle
    path.write_bytes(bytes(flipped))
    assert payload_problem(path.parent, path.name, record) == (f"shard.bin has crc32 {binascii.crc32(bytes(flipped)):08x}, written with "
                                             f"{record.crc32} (damaged or edited)")
    path.write_bytes(data[:-1])
    assert payload_problem(path.parent, path.name, record) == f"shard.bin is {len(data) - 1} bytes, written with {len(data)} (cut short or still being copied)"
    path.unlink()
    assert payload_problem(path.parent, path.name, record) == f"shard.bin is missing (written with {len(data)} bytes)"


def test_payload_problems_name_each_damaged_file_in_order(tmp_path: Path) -> None:
    records = {name: write_payload(tmp_path / name, name.encode() * 1000) for name in ("c", "a", "b")}
    (tmp_path / "c").write_bytes(b"x" * 1000)
    (tmp_path / "a").write_bytes(b"a" * 999)
    assert [line.split()[0] for line in payload_problems(tmp_path, records, readers=3)] == ["a", "c"]
    assert payload_problems(tmp_path, {"b": records["b"]}) == []
