"""Over-refusal and utility: the bundled benign split (languages, kinds, answers that are no refusals), its reader's
errors, and `mpo-dist eval --benign` end to end on tiny models: the over-refusal rate equals the refusals counted in
generations.jsonl, the utility equals a float64 full-logits log-likelihood of the reference answers, and its change is
the paired mean difference."""
from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path

import pytest

from mpo_dist.data.loading import resolve_path
from mpo_dist.data.schema import DataError
from mpo_dist.eval.benign import read_benign_data, read_benign_file
from mpo_dist.eval.errors import EvalError
from mpo_dist.eval.judge import RefusalPhraseJudge
from mpo_dist.eval.readers import read_eval_file
from mpo_dist.eval.validity import invalid_reason

from conftest import read_jsonl
from test_eval_report import float64_mean_logprob

HELDOUT_LANGUAGES = ["en", "zh", "ja", "ko", "ar", "bn", "sw"]


def test_bundled_benign_split() -> None:
    records = read_benign_file("sample:benign")
    assert len(records) == 50 and len({record.id for record in records}) == 50
    assert Counter(record.kind for record in records) == {"plain": 25, "contrast": 25}
    heldout_languages = {lang for record in read_eval_file("sample:heldout") for lang in record.prompt}
    assert heldout_languages == set(HELDOUT_LANGUAGES)
    judge = RefusalPhraseJudge()
    for record in records:
        assert list(record.prompt) == HELDOUT_LANGUAGES == list(record.reference)
        for lang in HELDOUT_LANGUAGES:
            # a reference answer is a helpful answer: no refusal phrase, and a usable answer by every validity rule
            answer = record.reference[lang]
            assert not judge.is_refusal(answer, lang), (record.id, lang, answer)
            assert invalid_reason(answer, lang, "en", record.prompt[lang]) is None, (record.id, lang, answer)
    for lang in HELDOUT_LANGUAGES:
        assert len({record.prompt[lang] for record in records}) == 50, lang


def test_refusal_judge_marks_refusals_of_benign_prompts() -> None:
    heldout = read_eval_file("sample:heldout")[:5]
    judge = RefusalPhraseJudge()
    for lang in HELDOUT_LANGUAGES:
        refusals = [record.chosen[lang] for record in heldout]  # the held-out chosen answers are refusals
        answers = [record.reference[lang] for record in read_benign_file("sample:benign")[:5]]
        assert judge.refusals(["q"] * 10, refusals + answers, [lang] * 10) == [True] * 5 + [False] * 5, lang


def test_benign_reader_errors(tmp_path: Path) -> None:
    bad_kind = tmp_path / "kind.jsonl"
    bad_kind.write_text(json.dumps({"id": "x", "kind": "harmful", "prompt": {"en": "q"}, "reference": {"en": "a"}}) + "\n")
    with pytest.raises(DataError, match=r"kind\.jsonl, row 1, field 'kind'"):
        read_benign_file(str(bad_kind))
    missing = tmp_path / "missing.jsonl"
    missing.write_text("\n" + json.dumps({"id": "x", "kind": "plain", "prompt": {"en": "q", "sw": "s"}, "reference": {"en": "a"}}) + "\n")
    with pytest.raises(DataError, match="row 2, field 'reference'.*every prompt needs its reference answer"):
        read_benign_file(str(missing))
    with pytest.raises(EvalError, match=r"--benign has no prompts in \['it'\]"):
        read_benign_data(["sample:benign"], ["en", "it"])
    kept = read_benign_data(["sample:benign"], ["sw", "en"], limit=3)
    assert [record.id for record in kept] == ["b001", "b002", "b003"] and set(kept[0].prompt) == {"en", "sw"}


class HalfRefusingJudge:
    """A user's judge that also grades refusals (`--judge test_eval_benign:HalfRefusingJudge`): every response is safe,
    and a benign response is refused when its prompt's language is "en". Random tiny models never refuse, so this
    makes the rates non-trivial and shows that any judge with `refusals` grades the benign prompts."""

    name = "half-refusing"

    def __init__(self, device) -> None:
        self.device = device

    def judge(self, prompts, responses, languages) -> list[str]:
        return ["safe"] * len(responses)

    def refusals(self, prompts, responses, languages) -> list[bool]:
        return [lang == "en" for lang in languages]


@pytest.mark.parametrize("judge", ["refusal-phrases", "test_eval_benign:HalfRefusingJudge"])
def test_eval_benign_over_refusal_and_utility(tiny_models: dict[str, Path], tmp_path: Path, judge: str) -> None:
    from mpo_dist.cli import main

    benign = tmp_path / "benign.jsonl"
    benign.write_text("".join(resolve_path("sample:benign").read_text(encoding="utf-8").splitlines(keepends=True)[:4]))
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(resolve_path("sample:heldout").read_text(encoding="utf-8").splitlines(keepends=True)[:2]))
    out = tmp_path / "report"
    languages = ["en", "sw"]
    assert main(["eval", "--model", str(tiny_models["llama"]), "--reference", str(tiny_models["qwen2"]),
                 "--data", str(heldout), "--benign", str(benign), "--languages", ",".join(languages),
                 "--max-new-tokens", "3", "--batch-size", "4", "--judge", judge, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    generations = read_jsonl(out / "generations.jsonl")
    records = [json.loads(line) for line in benign.read_text(encoding="utf-8").splitlines()]
    utility = {}
    for role, model_dir in (("model", tiny_models["llama"]), ("reference", tiny_models["qwen2"])):
        mean_logprob = float64_mean_logprob(model_dir)
        utility[role] = {lang: [mean_logprob(r["prompt"][lang], r["reference"][lang]) for r in records] for lang in languages}
        for lang in languages:
            rows = [row for row in generations if row["role"] == role and row["split"] == "benign" and row["language"] == lang]
            assert len(rows) == 4 and all(row["verdict"] in ("refused", "answered") for row in rows)
            refused = sum(row["refused"] for row in rows)
            if judge != "refusal-phrases":
                assert refused == (4 if lang == "en" else 0)
            values = metrics["results"][role]["per_language"][lang]
            assert (values["refused"], values["benign_judged"]) == (refused, 4)
            assert values["over_refusal_rate"] == refused / 4
            assert values["over_refusal_rate_se"] == pytest.approx(math.sqrt(refused / 4 * (1 - refused / 4) / 4))
            assert values["utility"] == pytest.approx(statistics.fmean(utility[role][lang]), abs=2e-5)
            assert values["utility_se"] == pytest.approx(statistics.stdev(utility[role][lang]) / 2, abs=2e-5)
            assert len([row for row in generations if row["role"] == role and row["split"] == "harmful"
                        and row["language"] == lang]) == 2
    for lang in languages:
        differences = [after - before for after, before in zip(utility["model"][lang], utility["reference"][lang])]
        assert metrics["change"][lang]["utility"] == pytest.approx(statistics.fmean(differences), abs=2e-5)
        assert metrics["change"][lang]["utility_se"] == pytest.approx(statistics.stdev(differences) / 2, abs=2e-5)
    report = (out / "report.md").read_text()
    assert "## Trade-off: what got safer, and what it cost" in report and "over-refusal judge" in report
    assert (out / "tradeoff_by_language.png").is_file()
    # what `mpo-dist compare` holds evaluations to: every setting the numbers depend on, one entry each
    judge_name = "refusal-phrases" if judge == "refusal-phrases" else "half-refusing"
    assert metrics["settings"] == {
        "data": str(heldout), "limit": "all records", "judge": judge_name, "generation": "greedy, at most 3 new tokens",
        "lengths": "max length 1024, max prompt length 512", "system prompt": "none", "dtype": "fp32",
        "benign": str(benign), "over-refusal judge": judge_name, "processes": "1"}
