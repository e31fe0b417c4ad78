"""Stored scores (`mpo-dist eval --reuse-scores`): a model measured in an earlier eval, with the same files, data and
settings, is taken from its store instead of being measured again, and the report is the same as a fresh run's; other
settings or other weights are measured afresh, and the store says what differs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from mpo_dist.data.loading import resolve_path


def _first_lines(source: str, count: int, path: Path) -> str:
    path.write_text("".join(resolve_path(source).read_text(encoding="utf-8").splitlines(keepends=True)[:count]))
    return str(path)


def _eval(model: Path, reference: Path, out: Path, data: tuple[str, str], *extra: str) -> None:
    from mpo_dist.cli import main

    heldout, benign = data
    assert main(["eval", "--model", str(model), "--reference", str(reference), "--data", heldout, "--benign", benign,
                 "--languages", "en,sw", "--max-new-tokens", "3", "--batch-size", "4", "--out", str(out), *extra]) == 0


def _results(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    return {"results": metrics["results"], "change": metrics["change"]}


def _generation_lines(out: Path) -> list[str]:
    return sorted((out / "generations.jsonl").read_text(encoding="utf-8").splitlines())


def test_reused_scores_give_the_fresh_report(tiny_models: dict[str, Path], tmp_path: Path, capsys) -> None:
    data = (_first_lines("sample:heldout", 2, tmp_path / "heldout.jsonl"), _first_lines("sample:benign", 3, tmp_path / "benign.jsonl"))
    first, reused, fresh = tmp_path / "first", tmp_path / "reused", tmp_path / "fresh"
    # the first eval measures llama against qwen2; the second compares gemma2 with the same qwen2 reference
    _eval(tiny_models["llama"], tiny_models["qwen2"], first, data)
    capsys.readouterr()
    _eval(tiny_models["gemma2"], tiny_models["qwen2"], reused, data, "--reuse-scores", str(first))
    log = capsys.readouterr().out
    assert f"reference: scores of {tiny_models['qwen2']} taken from {first / 'scores' / 'reference.json'}" in log
    assert "reference: loading" not in log and "model: loading" in log
    _eval(tiny_models["gemma2"], tiny_models["qwen2"], fresh, data)
    assert _results(reused) == _results(fresh)
    assert _generation_lines(reused) == _generation_lines(fresh)
    # a model stored as "model" is reused as the reference of a later eval
    capsys.readouterr()
    _eval(tiny_models["qwen2"], tiny_models["llama"], tmp_path / "swapped", data, "--reuse-scores", str(first))
    log = capsys.readouterr().out
    assert f"taken from {first / 'scores' / 'model.json'}" in log and f"taken from {first / 'scores' / 'reference.json'}" in log
    swapped = _results(tmp_path / "swapped")["results"]
    original = _results(first)["results"]
    assert swapped["reference"]["per_language"] == original["model"]["per_language"]
    assert swapped["model"]["per_language"] == original["reference"]["per_language"]


def test_other_settings_or_weights_are_measured_again(tiny_models: dict[str, Path], tmp_path: Path, capsys) -> None:
    data = (_first_lines("sample:heldout", 1, tmp_path / "heldout.jsonl"), _first_lines("sample:benign", 1, tmp_path / "benign.jsonl"))
    first = tmp_path / "first"
    _eval(tiny_models["llama"], tiny_models["qwen2"], first, data)
    capsys.readouterr()
    _eval(tiny_models["llama"], tiny_models["qwen2"], tmp_path / "longer", data, "--reuse-scores", str(first),
          "--max-new-tokens", "4")
    log = capsys.readouterr().out
    assert "reference: loading" in log and "model: loading" in log
    assert f"{first / 'scores' / 'reference.json'} has this model's scores under other settings" in log
    assert "generation.max_new_tokens: stored 3, now 4" in log
    # changed weights (a copy of the model with one weight file rewritten) are another model: nothing to reuse
    changed = tmp_path / "changed"
    shutil.copytree(tiny_models["llama"], changed)
    weights = changed / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\1")
    _eval(changed, tiny_models["qwen2"], tmp_path / "changed-eval", data, "--reuse-scores", str(first))
    log = capsys.readouterr().out
    assert "model: loading" in log and "model: scores of" not in log
    assert "reference: scores of" in log


def test_reuse_directory_must_exist(tiny_models: dict[str, Path], tmp_path: Path, capsys) -> None:
    from mpo_dist.cli import main

    assert main(["eval", "--model", str(tiny_models["llama"]), "--data", "sample:heldout", "--out", str(tmp_path / "out"),
                 "--reuse-scores", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == (f"mpo-dist eval: error: --reuse-scores {tmp_path / 'missing'}: no such "
                                               "directory; pass the --out directory of an earlier `mpo-dist eval`")
    assert not (tmp_path / "out").exists()


def test_a_changed_input_or_an_edited_store_is_measured_again_with_the_cause(
        tiny_models: dict[str, Path], tmp_path: Path, capsys, monkeypatch) -> None:
    """Each change alone, against one stored eval: a bit flipped in the middle of a 3 MiB+ weight file, another
    generation_config.json, another judge phrase list (a copy of mpo-dist's source, read by the real fingerprint), and
    an edited number in a stored-scores file. Each is measured again with a line naming the cause; unchanged, both
    models are reused. The digests expected in the lines are hashlib's SHA-256 of the bytes."""
    import hashlib

    import mpo_dist.fingerprint as fingerprint
    from mpo_dist.models.tiny import init_tiny

    data = (_first_lines("sample:heldout", 1, tmp_path / "heldout.jsonl"), _first_lines("sample:benign", 1, tmp_path / "benign.jsonl"))
    model = init_tiny(tmp_path / "model", "llama", seed=1, hidden_size=128)
    weights = model / "model.safetensors"
    assert weights.stat().st_size > 3 << 20
    first = tmp_path / "first"
    _eval(model, tiny_models["qwen2"], first, data)
    stored_model = first / "scores" / "model.json"

    def eval_again(name: str) -> str:
        capsys.readouterr()
        _eval(model, tiny_models["qwen2"], tmp_path / name, data, "--reuse-scores", str(first))
        return capsys.readouterr().out

    log = eval_again("unchanged")
    assert "model: scores of" in log and "reference: scores of" in log and "loading" not in log

    original = weights.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    weights.write_bytes(bytes(flipped))
    log = eval_again("flipped")
    digests = [hashlib.sha256(content).hexdigest()[:32] for content in (original, bytes(flipped))]
    assert (f'model: {stored_model} has scores of {model} as its files were then, so it is measured again '
            f'(model.model.safetensors: stored "{digests[0]}", now "{digests[1]}")') in log
    assert "model: loading" in log and "reference: scores of" in log
    weights.write_bytes(original)

    generation_config = model / "generation_config.json"
    original_config = generation_config.read_text()
    generation_config.write_text(original_config.replace('"eos_token_id": ', '"eos_token_id": 1', 1))
    assert generation_config.read_text() != original_config
    log = eval_again("eos")
    assert f"model: {stored_model} has scores of {model} as its files were then, so it is measured again " \
           "(model.generation_config.json: stored " in log and "model: loading" in log
    generation_config.write_text(original_config)

    copy = Path(shutil.copytree(fingerprint.PACKAGE_ROOT, tmp_path / "mpo_dist", ignore=shutil.ignore_patterns("__pycache__")))
    judge = copy / "eval" / "judge.py"
    declaration = "REFUSAL_PHRASES: dict[str, tuple[str, ...]] = {"
    assert judge.read_text().count(declaration) == 1
    judge.write_text(judge.read_text().replace(declaration, declaration + '\n    "xx": ("i shall not",),'))
    with monkeypatch.context() as patched:
        patched.setattr(fingerprint, "PACKAGE_ROOT", copy)
        log = eval_again("phrases")
    for role, file in (("model", stored_model), ("reference", first / "scores" / "reference.json")):
        assert (f"{role}: {file} has this model's scores under other settings, so it is measured again "
                "(software.code.eval/judge.py: stored ") in log and f"{role}: loading" in log

    edited = Path(shutil.copytree(first, tmp_path / "edited"))
    record = json.loads((edited / "scores" / "reference.json").read_text(encoding="utf-8"))
    record["content"]["scores"]["reward_gaps"]["en"] += 0.9  # one number changed, the JSON still valid
    (edited / "scores" / "reference.json").write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    capsys.readouterr()
    _eval(model, tiny_models["qwen2"], tmp_path / "after-edit", data, "--reuse-scores", str(edited))
    log = capsys.readouterr().out
    assert f"not reused: {edited / 'scores' / 'reference.json'} has crc32 " in log
    assert "edited or damaged since it was written" in log and "reference: loading" in log and "model: scores of" in log
    assert _results(tmp_path / "after-edit") == _results(first)
