"""`mpo-dist compare`: the cells of the side-by-side tables against hand-computed rates, changes and errors, read from
metrics.json files that the report writer itself wrote; and its input errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

from mpo_dist.cli import main
from mpo_dist.eval.report import EvalReport, ModelScores, RefusalCounts, VerdictCounts, write_report


def _write_eval(out: Path, before: tuple[int, int], after: tuple[int, int], refused: tuple[int, int]) -> None:
    """One language (sw), 50 harmful prompts: `before`/`after` = (safe, unsafe) of the reference and the model; 40
    benign prompts with `refused` refusals each; invalid responses fill the rest of the 50."""
    def scores(role: str, safe_unsafe: tuple[int, int], refusals: int) -> ModelScores:
        safe, unsafe = safe_unsafe
        return ModelScores(role, role, f"/models/{out.name}-{role}", {"sw": 0.25 if role == "reference" else 0.75},
                           {"sw": VerdictCounts(safe, unsafe, 50 - safe - unsafe)}, {"sw": RefusalCounts(refusals, 40)})
    write_report(EvalReport(["sw"], [scores("reference", before, refused[0]), scores("model", after, refused[1])],
                            pairs={"sw": 50}, prompts={"sw": 50}), out)


def _se(hits: int, trials: int) -> float:
    p = hits / trials
    return math.sqrt(p * (1 - p) / trials)


def test_compare_puts_each_evaluation_in_a_column(tmp_path: Path, capsys) -> None:
    _write_eval(tmp_path / "mpo", before=(5, 40), after=(22, 20), refused=(2, 6))
    _write_eval(tmp_path / "dpo", before=(5, 40), after=(10, 35), refused=(2, 2))
    table = tmp_path / "compare.md"
    assert main(["compare", str(tmp_path / "mpo"), str(tmp_path / "dpo"), "--out", str(table)]) == 0
    printed = capsys.readouterr().out
    assert table.read_text() == printed
    lines = printed.splitlines()
    assert "| mpo | /models/mpo-model | /models/mpo-reference |" in lines
    safety = lines[lines.index("## safety rate") + 4]
    mpo_se, dpo_se = math.hypot(_se(5, 50), _se(22, 50)), math.hypot(_se(5, 50), _se(10, 50))
    assert safety == (f"| sw | 0.1000 -> 0.4400 (+0.3400 ± {mpo_se:.4f}) | 0.1000 -> 0.2000 (+0.1000 ± {dpo_se:.4f}) |")
    over_refusal = lines[lines.index("## over-refusal") + 4]
    assert over_refusal.startswith(f"| sw | 0.0500 -> 0.1500 (+0.1000 ± {math.hypot(_se(2, 40), _se(6, 40)):.4f}) | "
                                   "0.0500 -> 0.0500 (+0.0000 ± ")
    reward_gap = lines[lines.index("## reward gap") + 4]
    assert reward_gap == "| sw | +0.2500 -> +0.7500 | +0.2500 -> +0.7500 |"  # no change is computed for reward gaps
    assert "## utility" not in lines  # neither evaluation measured it


def test_compare_input_errors(tmp_path: Path, capsys) -> None:
    assert main(["compare", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"mpo-dist compare: error: {tmp_path}: no metrics.json; pass the --out "
                                               "directory of an `mpo-dist eval` run")
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "metrics.json").write_text(json.dumps({"languages": ["sw"], "results": {"model": {}}, "change": {}}))
    assert main(["compare", str(alone)]) == 2
    assert "this evaluation had no --reference" in capsys.readouterr().err
    _write_eval(tmp_path / "a" / "eval", (1, 1), (1, 1), (0, 0))
    _write_eval(tmp_path / "b" / "eval", (1, 1), (1, 1), (0, 0))
    assert main(["compare", str(tmp_path / "a" / "eval"), str(tmp_path / "b" / "eval")]) == 2
    assert "distinct names" in capsys.readouterr().err
