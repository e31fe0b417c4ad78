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
