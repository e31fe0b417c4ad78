"""Fingerprints that change when the content changes: every byte of a weight file counts (hashlib's SHA-256 of the
bytes is the reference), generation_config.json counts, code counts by what it does and not by its comments, and a
remembered digest (mpo_dist/file_digest.py) is used only while the file's identity is the one it was taken from."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import mpo_dist.file_digest as file_digest_module
from mpo_dist.fingerprint import PACKAGE_ROOT, code_digest, fingerprint_differences, model_fingerprint
from mpo_dist.file_digest import file_digest


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


@pytest.fixture
def digest_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A private cache directory that remembers every file (no size floor, no racy window); counts the files read."""
    monkeypatch.setenv(file_digest_module.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(file_digest_module, "CACHED_FROM_BYTES", 0)
    monkeypatch.setattr(file_digest_module, "RACY_WINDOW_NS", -1)
    reads = {"count": 0}
    real = file_digest_module.sha256_file

    def counting(path: Path) -> str:
        reads["count"] += 1
        return real(path)

    monkeypatch.setattr(file_digest_module, "sha256_file", counting)
    return reads


def test_a_middle_byte_flip_changes_the_weight_fingerprint(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model = Path(shutil.copytree(tiny_models["llama"], tmp_path / "model"))
    weights = model / "model.safetensors"
    content = bytearray(weights.read_bytes() + bytes(3 << 20))  # past 3 MiB: the old first/last-MiB sample missed this
    weights.write_bytes(bytes(content))
    before = model_fingerprint(model)
    content[len(content) // 2] ^= 0x01
    weights.write_bytes(bytes(content))
    after = model_fingerprint(model)
    assert before["model"]["model.safetensors"] != after["model"]["model.safetensors"] == sha256_hex(bytes(content))
    assert fingerprint_differences(before, after) == [
        f'model.model.safetensors: cached "{before["model"]["model.safetensors"]}", now "{sha256_hex(bytes(content))}"']


def test_generation_config_is_part_of_the_model(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model = Path(shutil.copytree(tiny_models["llama"], tmp_path / "model"))
    before = model_fingerprint(model)
    assert set(before["model"]) == {"config.json", "generation_config.json", "model.safetensors"}
    assert set(before["tokenizer"]) == {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    config = json.loads((model / "generation_config.json").read_text())
    config["eos_token_id"] = 7  # where generation stops
    (model / "generation_config.json").write_text(json.dumps(config))
    assert [line.split(":")[0] for line in fingerprint_differences(before, model_fingerprint(model))] == [
        "model.generation_config.json"]


def test_a_remembered_digest_spares_the_read_while_the_identity_holds(tmp_path: Path, digest_cache: dict[str, int]) -> None:
    path = tmp_path / "weights.bin"
    data = os.urandom(1 << 20)
    path.write_bytes(data)
    assert file_digest(path) == sha256_hex(data) and digest_cache["count"] == 1
    assert file_digest(path) == sha256_hex(data) and digest_cache["count"] == 1  # remembered: not read again
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # another identity, the same bytes
    assert file_digest(path) == sha256_hex(data) and digest_cache["count"] == 2


def test_an_edit_that_keeps_size_and_mtime_is_not_served_from_the_cache(tmp_path: Path, digest_cache: dict[str, int]) -> None:
    """An entry taken before an edit that restored the mtime (`touch -d`, `cp -p`) differs from the file in its
    status-change time, which no user tool sets back: here the entry is written as the earlier hash left it."""
    path = tmp_path / "weights.bin"
    path.write_bytes(b"edited" * 1000)
    identity = file_digest_module.identity_of(path.resolve())
    earlier = file_digest_module.FileIdentity(**{**identity.__dict__, "ctime_ns": identity.ctime_ns - 10**10})
    entry = file_digest_module.cache_directory() / f"{file_digest_module.entry_name(identity)}.json"
    file_digest_module._remember(entry, earlier, sha256_hex(b"before" * 1000))
    assert file_digest(path) == sha256_hex(b"edited" * 1000) and digest_cache["count"] == 1


def test_a_damaged_cache_entry_is_read_again(tmp_path: Path, digest_cache: dict[str, int],
                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"w" * 4096)
    file_digest(path)
    (entry,) = file_digest_module.cache_directory().iterdir()
    record = json.loads(entry.read_text())
    record["content"]["sha256"] = sha256_hex(b"something else")  # a forged or damaged entry, still valid JSON
    entry.write_text(json.dumps(record))
    assert file_digest(path) == sha256_hex(b"w" * 4096) and digest_cache["count"] == 2
    assert "hashing the file again" in caplog.text and str(entry) in caplog.text


def test_a_file_changed_just_before_it_was_hashed_is_not_remembered(tmp_path: Path, digest_cache: dict[str, int],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Within the racy window a second edit could keep every timestamp (coarse file-system clocks)."""
    monkeypatch.setattr(file_digest_module, "RACY_WINDOW_NS", 10**12)
    path = tmp_path / "weights.bin"
    path.write_bytes(b"w" * 4096)
    file_digest(path)
    file_digest(path)
    assert digest_cache["count"] == 2 and not file_digest_module.cache_directory().exists()


def test_code_is_known_by_what_it_does(tmp_path: Path) -> None:
    source = (PACKAGE_ROOT / "eval" / "judge.py").read_text(encoding="utf-8")
    original = tmp_path / "original.py"
    original.write_text(source, encoding="utf-8")
    commented = tmp_path / "commented.py"
    commented.write_text('"""Another module docstring."""\n# a comment\n'
                         + source.split('"""', 2)[2].replace("\n\n\n", "\n\n\n# another comment\n", 1), encoding="utf-8")
    declaration = "REFUSAL_PHRASES: dict[str, tuple[str, ...]] = {"
    assert source.count(declaration) == 1
    phrases = tmp_path / "phrases.py"
    phrases.write_text(source.replace(declaration, declaration + '\n    "xx": ("i shall not",),'), encoding="utf-8")
    assert code_digest(commented) == code_digest(original) != code_digest(phrases)
