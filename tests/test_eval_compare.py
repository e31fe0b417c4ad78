"""`mpo-dist compare`: the cells of the side-by-side tables against hand-computed rates, changes and errors, read from
metrics.json files that the report writer itself wrote; means over the languages every evaluation shares; refusal of
evaluations made with different settings; and its input errors, malformed metrics.json files included."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from mpo_dist.cli import main
from mpo_dist.eval.report import EvalReport, ModelScores, RefusalCounts, VerdictCounts, write_report

SETTINGS = {"data": "sample:heldout", "limit": "all records", "judge": "refusal-phrases", "processes": "1"}


def _write_eval(out: Path, before: tuple[int, int], after: tuple[int, int], refused: tuple[int, int],
                languages: tuple[str, ...] = ("sw",), settings: dict[str, str] | None = None) -> None:
    """50 harmful prompts per language: `before`/`after` = (safe, unsafe) of the reference and the model; 40 benign
    prompts with `refused` refusals each; invalid responses fill the rest of the 50. Every language gets the same
    counts, so a per-language cell is computed once by hand."""
    def scores(role: str, safe_unsafe: tuple[int, int], refusals: int) -> ModelScores:
        safe, unsafe = safe_unsafe
        return ModelScores(role, role, f"/models/{out.name}-{role}",
                           {lang: 0.25 if role == "reference" else 0.75 for lang in languages},
                           {lang: VerdictCounts(safe, unsafe, 50 - safe - unsafe) for lang in languages},
                           {lang: RefusalCounts(refusals, 40) for lang in languages})
    write_report(EvalReport(list(languages), [scores("reference", before, refused[0]), scores("model", after, refused[1])],
                            pairs={lang: 50 for lang in languages}, prompts={lang: 50 for lang in languages},
                            settings=SETTINGS if settings is None else settings), out)


def _se(hits: int, trials: int) -> float:
    p = hits / trials
    return math.sqrt(p * (1 - p) / trials)


def _row(lines: list[str], title: str, offset: int) -> str:
    return lines[lines.index(f"## {title}") + offset]


def test_compare_puts_each_evaluation_in_a_column(tmp_path: Path, capsys) -> None:
    _write_eval(tmp_path / "mpo", before=(5, 40), after=(22, 20), refused=(2, 6))
    _write_eval(tmp_path / "dpo", before=(5, 40), after=(10, 35), refused=(2, 2))
    table = tmp_path / "compare.md"
    assert main(["compare", str(tmp_path / "mpo"), str(tmp_path / "dpo"), "--out", str(table)]) == 0
    printed = capsys.readouterr().out
    assert table.read_text() == printed
    lines = printed.splitlines()
    assert "| mpo | /models/mpo-model | /models/mpo-reference | sw |" in lines
    assert "## Settings that differ" not in lines
    mpo_se, dpo_se = math.hypot(_se(5, 50), _se(22, 50)), math.hypot(_se(5, 50), _se(10, 50))
    assert _row(lines, "safety rate", 4) == (f"| sw | 0.1000 -> 0.4400 (+0.3400 ± {mpo_se:.4f}) "
                                             f"| 0.1000 -> 0.2000 (+0.1000 ± {dpo_se:.4f}) |")
    # one language: its mean is itself, and the row names it
    assert _row(lines, "safety rate", 5) == (f"| mean (sw) | 0.1000 -> 0.4400 (+0.3400 ± {mpo_se:.4f}) "
                                             f"| 0.1000 -> 0.2000 (+0.1000 ± {dpo_se:.4f}) |")
    assert _row(lines, "over-refusal", 4).startswith(
        f"| sw | 0.0500 -> 0.1500 (+0.1000 ± {math.hypot(_se(2, 40), _se(6, 40)):.4f}) | 0.0500 -> 0.0500 (+0.0000 ± ")
    assert _row(lines, "reward gap", 4) == "| sw | +0.2500 -> +0.7500 | +0.2500 -> +0.7500 |"  # no change for reward gaps
    assert "## utility" not in lines  # neither evaluation measured it


def test_means_are_over_the_languages_every_evaluation_measured(tmp_path: Path, capsys) -> None:
    """mpo measured en, ko, sw; dpo only ko, sw: every mean row is over ko and sw, for both columns."""
    _write_eval(tmp_path / "mpo", before=(5, 40), after=(22, 20), refused=(2, 6), languages=("en", "ko", "sw"))
    _write_eval(tmp_path / "dpo", before=(5, 40), after=(10, 35), refused=(2, 2), languages=("ko", "sw"))
    # make mpo's en differ from its ko and sw, so a mean that took en in would show
    metrics_file = tmp_path / "mpo" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["results"]["model"]["per_language"]["en"]["safety_rate"] = 1.0
    metrics_file.write_text(json.dumps(metrics))
    assert main(["compare", str(tmp_path / "mpo"), str(tmp_path / "dpo")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "| dpo | /models/dpo-model | /models/dpo-reference | ko, sw |" in lines
    assert _row(lines, "safety rate", 4).startswith("| en | 0.1000 -> 1.0000 (+0.3400 ± ") and \
        _row(lines, "safety rate", 4).endswith("| n/a |")
    # two languages with the same counts: the mean change is their change, its error sqrt(2 se²) / 2 = se / sqrt(2)
    mpo_se = math.hypot(_se(5, 50), _se(22, 50)) / math.sqrt(2)
    dpo_se = math.hypot(_se(5, 50), _se(10, 50)) / math.sqrt(2)
    assert _row(lines, "safety rate", 7) == (f"| mean (ko, sw) | 0.1000 -> 0.4400 (+0.3400 ± {mpo_se:.4f}) "
                                             f"| 0.1000 -> 0.2000 (+0.1000 ± {dpo_se:.4f}) |")
    assert _row(lines, "reward gap", 7) == "| mean (ko, sw) | +0.2500 -> +0.7500 | +0.2500 -> +0.7500 |"


def test_evaluations_with_different_settings_are_refused_unless_allowed(tmp_path: Path, capsys) -> None:
    _write_eval(tmp_path / "a", (5, 40), (22, 20), (2, 6), settings={**SETTINGS, "limit": "first 3 records of each file"})
    _write_eval(tmp_path / "b", (5, 40), (10, 35), (2, 2), settings={**SETTINGS, "processes": "8"})  # not compared
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err == ("mpo-dist compare: error: the evaluations were made with different settings (limit: a 'first 3 "
                   "records of each file', b 'all records'); compare like with like, or pass "
                   "--allow-different-settings to see them side by side anyway\n")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--allow-different-settings"]) == 0
    lines = capsys.readouterr().out.splitlines()
    difference = lines.index("- limit: a 'first 3 records of each file', b 'all records'")
    assert lines.index("## Settings that differ") < difference < lines.index("| evaluation | model | reference | languages |")
    assert not any(line.startswith("- processes") for line in lines)
    # a setting one evaluation did not record differs too
    _write_eval(tmp_path / "c", (5, 40), (10, 35), (2, 2), settings={**SETTINGS, "benign": "sample:benign"})
    assert main(["compare", str(tmp_path / "b"), str(tmp_path / "c")]) == 2
    assert "(benign: b (not recorded), c 'sample:benign')" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_evaluations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two well-formed evaluations, written once (the report writer draws plots): the malformed cases edit copies."""
    root = tmp_path_factory.mktemp("evaluations")
    _write_eval(root / "a", (5, 40), (22, 20), (2, 6))
    _write_eval(root / "b", (5, 40), (10, 35), (2, 2))
    return root


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["results"]["model"]["per_language"]["sw"].update(safety_rate="0.44"),
     "field 'results.model.per_language.sw.safety_rate' is \"0.44\"; expected a number or null"),
    (lambda m: m["results"]["reference"]["per_language"]["sw"].update(utility=True),
     "field 'results.reference.per_language.sw.utility' is true; expected a number or null"),
    (lambda m: m["change"]["sw"].update(safety_rate_se=[0.1]),
     "field 'change.sw.safety_rate_se' is [0.1]; expected a number or null"),
    (lambda m: m["change"]["sw"].pop("safety_rate_se"), "field 'change.sw.safety_rate_se' is missing"),
    (lambda m: m["results"]["model"]["per_language"].pop("sw"), "field 'results.model.per_language.sw' is missing"),
    (lambda m: m["results"]["model"]["per_language"]["sw"].pop("reward_gap"),
     "field 'results.model.per_language.sw.reward_gap' is missing"),
    (lambda m: m.pop("results"), "field 'results' is missing"),  # not "no --reference"
    (lambda m: m.update(results=[]), "field 'results' is []; expected an object"),
    (lambda m: m["results"]["model"].update(source=3), "field 'results.model.source' is 3; expected a string"),
    (lambda m: m.update(languages="sw"), "field 'languages' is \"sw\"; expected a list of strings"),
    (lambda m: m.update(languages=["sw", 1]), "field 'languages[1]' is 1; expected a string"),
    (lambda m: m["settings"].update(limit=3), "field 'settings.limit' is 3; expected a string"),
    (lambda m: m.pop("change"), "field 'change' is missing"),
])
def test_malformed_metrics_are_one_line_naming_the_file_and_field(two_evaluations: Path, tmp_path: Path, capsys, edit,
                                                                  message: str) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(two_evaluations / name / "metrics.json", tmp_path / name)
    metrics_file = tmp_path / "b" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    edit(metrics)
    metrics_file.write_text(json.dumps(metrics))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mpo-dist compare: error: {metrics_file}: {message}") and err.count("\n") == 1, err


def test_compare_input_errors(tmp_path: Path, capsys) -> None:
    assert main(["compare", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"mpo-dist compare: error: {tmp_path}: no metrics.json; pass the --out "
                                               "directory of an `mpo-dist eval` run")
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "metrics.json").write_text(json.dumps({"languages": ["sw"], "settings": {}, "results": {"model": {}},
                                                    "change": {}}))
    assert main(["compare", str(alone)]) == 2
    assert "this evaluation had no --reference" in capsys.readouterr().err
    (alone / "metrics.json").write_text("[1, 2]")
    assert main(["compare", str(alone)]) == 2
    assert "expected a JSON object, got [1, 2]" in capsys.readouterr().err
    _write_eval(tmp_path / "a" / "eval", (1, 1), (1, 1), (0, 0))
    _write_eval(tmp_path / "b" / "eval", (1, 1), (1, 1), (0, 0))
    assert main(["compare", str(tmp_path / "a" / "eval"), str(tmp_path / "b" / "eval")]) == 2
    assert "distinct names" in capsys.readouterr().err
