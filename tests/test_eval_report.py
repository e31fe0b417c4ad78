"""`mpo-dist eval` end to end in one process (a Llama model against a Gemma-2 reference, so the soft-capped head is
covered): every report file exists, the reward gaps equal a plain float64 log-softmax computation, the safe / unsafe /
invalid rates equal counts over generations.jsonl, report.md shows those numbers, the PNGs have the promised size,
TensorBoard holds the scalars; binomial errors, Wilson intervals and before/after changes against hand-computed values;
and a report built from a training run's eval.jsonl or TensorBoard scalars alone."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Callable

import pytest
import torch

from mpo_dist.models.tokenizer import load_tokenizer
from mpo_dist.data.loading import resolve_path
from mpo_dist.eval.binomial import standard_error, wilson_interval
from mpo_dist.eval.errors import EvalError
from mpo_dist.eval.report import (
    PLOT_DPI,
    PLOT_SIZE_INCHES,
    EvalReport,
    ModelScores,
    RefusalCounts,
    VerdictCounts,
    load_run_history,
    write_report,
    write_run_report,
)

from conftest import REPO_ROOT, read_jsonl

LANGUAGES = ["en", "ko", "sw"]
RECORDS = 6  # the first held-out records: enough for means and variances, cheap enough for float64 full logits
PNG_SHAPE = (round(PLOT_SIZE_INCHES[1] * PLOT_DPI), round(PLOT_SIZE_INCHES[0] * PLOT_DPI))
RUN_HISTORY = [{"step": 0, "reward_gap": {"en": 0.5, "ko": -0.25, "sw": 0.125}},
               {"step": 10, "reward_gap": {"en": 0.5, "ko": 0.0, "sw": 0.25}},
               {"step": 20, "reward_gap": {"en": 0.5, "ko": 0.375, "sw": 0.5}}]


def float64_mean_logprob(model_dir: Path) -> Callable[[str, str], float]:
    """(prompt, response) -> A, the mean log-prob of the response tokens, from the model's full logits in float64."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()

    def mean_logprob(prompt: str, response: str) -> float:
        messages = [{"role": "user", "content": prompt}]
        prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
        targets = torch.tensor(ids[len(prompt_ids):])
        return logprobs[len(prompt_ids) - 1:-1].gather(1, targets[:, None]).mean().item()

    return mean_logprob


def float64_reward_gaps(model_dir: Path, data: Path) -> dict[str, float]:
    """Mean over held-out pairs of A(chosen) - A(rejected)."""
    mean_logprob = float64_mean_logprob(model_dir)
    gaps: dict[str, list[float]] = {lang: [] for lang in LANGUAGES}
    for line in data.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for lang in LANGUAGES:
            prompt = record["prompt"][lang]
            gaps[lang].append(mean_logprob(prompt, record["chosen"][lang]) - mean_logprob(prompt, record["rejected"][lang]))
    return {lang: sum(values) / len(values) for lang, values in gaps.items()}


def value_of(cell: str) -> float:
    """The number of a table cell such as "0.5000 ± 0.2041"."""
    return float(cell.split(" ± ")[0])


def error_of(cell: str) -> float:
    return float(cell.split(" ± ")[1])


def markdown_table(text: str) -> dict[str, dict[str, str]]:
    """The per-language table of report.md as {row name: {column: cell}}."""
    section = text.split("## Per-language results")[1].split("\n\n")[1]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]
    return {row[0]: dict(zip(header, row)) for row in rows}


@pytest.mark.canary
def test_eval_report_numbers_files_and_plots(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from matplotlib.image import imread
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mpo_dist.cli import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "eval.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in RUN_HISTORY))
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(resolve_path("sample:heldout").read_text(encoding="utf-8").splitlines(keepends=True)[:RECORDS]))
    out = tmp_path / "report"
    exit_code = main(["eval", "--model", str(tiny_models["llama"]), "--reference", str(tiny_models["gemma2"]),
                      "--data", str(data), "--languages", ",".join(LANGUAGES), "--max-new-tokens", "5",
                      "--batch-size", "4", "--run-dir", str(run_dir), "--out", str(out)])
    assert exit_code == 0
    for name in ("report.md", "report.html", "metrics.json", "generations.jsonl", "reward_gap_by_language.png",
                 "safety_by_language.png", "invalid_by_language.png", "reward_gap_curves.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    generations = read_jsonl(out / "generations.jsonl")
    table = markdown_table((out / "report.md").read_text())
    assert list(table) == LANGUAGES + ["mean", "variance"]
    for role, model_dir in (("model", tiny_models["llama"]), ("reference", tiny_models["gemma2"])):
        result = metrics["results"][role]
        expected_gaps = float64_reward_gaps(model_dir, data)
        expected_safety, expected_asr = {}, {}
        for lang in LANGUAGES:
            verdicts = [row["verdict"] for row in generations if row["role"] == role and row["language"] == lang]
            assert len(verdicts) == RECORDS and set(verdicts) <= {"safe", "unsafe", "invalid"}
            assert [row["is_safe"] for row in generations if row["role"] == role and row["language"] == lang] == \
                [verdict == "safe" for verdict in verdicts]
            expected_safety[lang] = verdicts.count("safe") / RECORDS
            expected_asr[lang] = verdicts.count("unsafe") / RECORDS
            values = result["per_language"][lang]
            assert (values["safe"], values["unsafe"], values["invalid"], values["judged"]) == \
                (verdicts.count("safe"), verdicts.count("unsafe"), verdicts.count("invalid"), RECORDS)
            assert values["reward_gap"] == pytest.approx(expected_gaps[lang], abs=2e-5)
            assert values["safety_rate"] == expected_safety[lang] and values["asr"] == expected_asr[lang]
            assert values["invalid_rate"] == pytest.approx(1 - expected_safety[lang] - expected_asr[lang])
            p = expected_safety[lang]
            assert values["safety_rate_se"] == pytest.approx(math.sqrt(p * (1 - p) / RECORDS))
            assert float(table[lang][f"reward gap ({role})"]) == pytest.approx(expected_gaps[lang], abs=6e-5)
            assert value_of(table[lang][f"safety rate ({role})"]) == pytest.approx(expected_safety[lang], abs=5e-5)
            assert error_of(table[lang][f"safety rate ({role})"]) == pytest.approx(math.sqrt(p * (1 - p) / RECORDS), abs=5e-5)
            assert value_of(table[lang][f"ASR ({role})"]) == pytest.approx(expected_asr[lang], abs=5e-5)
            assert table[lang]["pairs"] == table[lang]["prompts"] == str(RECORDS)
        gaps = [expected_gaps[lang] for lang in LANGUAGES]
        rates = [expected_safety[lang] for lang in LANGUAGES]
        assert result["mean"]["reward_gap"] == pytest.approx(statistics.fmean(gaps), abs=2e-5)
        assert result["variance"]["reward_gap"] == pytest.approx(statistics.pvariance(gaps), abs=2e-5)
        assert result["mean"]["safety_rate"] == pytest.approx(statistics.fmean(rates))
        assert result["variance"]["asr"] == pytest.approx(statistics.pvariance([expected_asr[lang] for lang in LANGUAGES]))
        assert float(table["mean"][f"reward gap ({role})"]) == pytest.approx(statistics.fmean(gaps), abs=6e-5)
        assert value_of(table["mean"][f"safety rate ({role})"]) == pytest.approx(statistics.fmean(rates), abs=5e-5)
        assert float(table["variance"][f"safety rate ({role})"]) == pytest.approx(statistics.pvariance(rates), abs=5e-5)
    assert metrics["run_history"] == RUN_HISTORY
    for png in out.glob("*.png"):
        assert imread(png).shape[:2] == PNG_SHAPE, png
    html = (out / "report.html").read_text()
    assert "<table>" in html and 'src="safety_by_language.png"' in html
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalar = events.Scalars("eval/model/safety_rate_mean")[0]
    assert scalar.step == RUN_HISTORY[-1]["step"] and scalar.value == pytest.approx(metrics["results"]["model"]["mean"]["safety_rate"])


def test_binomial_errors_against_hand_computed_values() -> None:
    # sqrt(0.14 * 0.86 / 50) = sqrt(0.002408); Wilson 95 % of 7/50 and 5/10 as published calculators give them
    assert standard_error(7, 50) == pytest.approx(0.0490714, abs=1e-7)
    assert wilson_interval(7, 50) == pytest.approx((0.0695083, 0.2618619), abs=1e-7)
    assert wilson_interval(5, 10) == pytest.approx((0.2365931, 0.7634069), abs=1e-7)
    # at 0 of n the standard error is 0 but the interval is not: its upper end is z^2 / (n + z^2)
    assert standard_error(0, 10) == 0.0
    assert wilson_interval(0, 10) == pytest.approx((0.0, 3.8414588 / 13.8414588), abs=1e-7)
    with pytest.raises(ValueError, match="0 <= successes <= trials"):
        standard_error(3, 0)


def test_report_rates_errors_and_change_from_counts(tmp_path: Path) -> None:
    """Hand-set counts: en 5/4/1 -> 8/1/1 (safe/unsafe/invalid of 10), sw 2/2/6 -> 2/0/8."""
    reference = ModelScores("reference", "before", "ref", {}, {"en": VerdictCounts(5, 4, 1), "sw": VerdictCounts(2, 2, 6)})
    model = ModelScores("model", "after", "model", {}, {"en": VerdictCounts(8, 1, 1), "sw": VerdictCounts(2, 0, 8)})
    report = EvalReport(["en", "sw"], [reference, model], prompts={"en": 10, "sw": 10})
    files = write_report(report, tmp_path)
    table = markdown_table(files["markdown"].read_text())
    # se = sqrt(p (1 - p) / 10): 0.5 -> 0.158114, 0.8 -> 0.126491, 0.2 -> 0.126491; change se = sqrt(se1^2 + se2^2)
    assert table["en"]["safety rate (before)"] == "0.5000 ± 0.1581"
    assert table["en"]["safety rate (after)"] == "0.8000 ± 0.1265"
    assert table["en"]["safety rate change"] == "+0.3000 ± 0.2025"  # sqrt(0.025 + 0.016)
    assert table["sw"]["safety rate change"] == "+0.0000 ± 0.1789"  # sqrt(0.016 + 0.016)
    assert table["sw"]["invalid (after)"] == "0.8000 ± 0.1265" and table["sw"]["ASR (after)"] == "0.0000 ± 0.0000"
    # mean over languages: (0.8 + 0.2) / 2, se = sqrt(0.016 + 0.016) / 2
    assert table["mean"]["safety rate (after)"] == "0.5000 ± 0.0894"
    # mean change 0.15; its se combines the two means' errors: sqrt((0.025 + 0.016) / 4 + (0.016 + 0.016) / 4)
    assert table["mean"]["safety rate change"] == "+0.1500 ± 0.1351"
    metrics = json.loads(files["metrics"].read_text())
    en_after = metrics["results"]["model"]["per_language"]["en"]
    assert en_after["invalid_rate"] == pytest.approx(0.1) and en_after["asr"] == pytest.approx(0.1)
    assert en_after["safety_rate_wilson95"] == pytest.approx([0.4901625, 0.9433178], abs=1e-6)
    assert metrics["change"]["en"]["invalid_rate"] == pytest.approx(0.0)
    assert metrics["change"]["sw"]["asr"] == pytest.approx(-0.2)
    assert (tmp_path / "invalid_by_language.png").is_file()
    assert not list(tmp_path.glob("*.partial"))  # written through a sibling file and a rename


def test_over_refusal_and_utility_from_counts(tmp_path: Path) -> None:
    """Hand-set benign results: en refused 3/12 -> 6/12, sw 0/12 -> 3/12; en utility per prompt a, b, c:
    (-2, -1, -3) -> (-1.5, -1, -2); sw has no utility."""
    reference = ModelScores("reference", "before", "ref", {}, {"en": VerdictCounts(1, 0, 0), "sw": VerdictCounts(1, 0, 0)},
                            {"en": RefusalCounts(3, 12), "sw": RefusalCounts(0, 12)}, {"en": {"a": -2.0, "b": -1.0, "c": -3.0}})
    model = ModelScores("model", "after", "model", {}, {"en": VerdictCounts(1, 0, 0), "sw": VerdictCounts(0, 1, 0)},
                        {"en": RefusalCounts(6, 12), "sw": RefusalCounts(3, 12)}, {"en": {"a": -1.5, "c": -2.0, "b": -1.0}})
    files = write_report(EvalReport(["en", "sw"], [reference, model]), tmp_path)
    metrics = json.loads(files["metrics"].read_text())
    en_before = metrics["results"]["reference"]["per_language"]["en"]
    # 3/12 = 0.25, se sqrt(0.25 * 0.75 / 12) = 0.125; Wilson 95 % of 3/12 (published calculators: 0.0889, 0.5323)
    assert en_before["over_refusal_rate"] == 0.25 and en_before["over_refusal_rate_se"] == pytest.approx(0.125)
    assert en_before["over_refusal_rate_wilson95"] == pytest.approx([0.0889417, 0.5323053], abs=1e-6)
    assert (en_before["refused"], en_before["benign_judged"]) == (3, 12)
    # utility: mean of (-2, -1, -3) = -2, sample sd 1, se 1 / sqrt(3)
    assert en_before["utility"] == pytest.approx(-2.0) and en_before["utility_se"] == pytest.approx(0.5773503)
    assert metrics["results"]["reference"]["per_language"]["sw"]["utility"] is None
    change = metrics["change"]
    # 6/12 - 3/12, se sqrt(0.125^2 + (sqrt(0.25 / 12))^2) = sqrt(0.015625 + 0.0208333)
    assert change["en"]["over_refusal_rate"] == pytest.approx(0.25)
    assert change["en"]["over_refusal_rate_se"] == pytest.approx(0.1909407, abs=1e-7)
    # paired by prompt id: differences (0.5, 0, 1) -> mean 0.5, sample sd 0.5, se 0.5 / sqrt(3)
    assert change["en"]["utility"] == pytest.approx(0.5) and change["en"]["utility_se"] == pytest.approx(0.2886751)
    assert "utility" not in change["sw"] and change["mean"]["utility"] == pytest.approx(0.5)
    # mean over-refusal change (0.25 + 0.25) / 2; the mean's error from each side's sqrt(sum se^2) / 2
    assert change["mean"]["over_refusal_rate"] == pytest.approx(0.25)
    tradeoff = (files["markdown"].read_text().split("## Trade-off: what got safer, and what it cost")[1]).split("\n\n")[1]
    rows = {line.split(" | ")[0].strip("| "): [cell.strip(" |") for cell in line.split(" | ")[1:]]
            for line in tradeoff.splitlines() if line.startswith("| ")}
    assert rows["language"] == ["safety rate change", "over-refusal change", "utility change"]
    assert rows["en"] == ["+0.0000 ± 0.0000", "+0.2500 ± 0.1909", "+0.5000 ± 0.2887"]
    assert rows["sw"] == ["-1.0000 ± 0.0000", "+0.2500 ± 0.1250", "n/a"]  # sqrt(0 + 0.25 * 0.75 / 12)
    table = markdown_table(files["markdown"].read_text())
    assert table["en"]["over-refusal (after)"] == "0.5000 ± 0.1443" and table["en"]["utility (before)"] == "-2.0000 ± 0.5774"
    assert (tmp_path / "tradeoff_by_language.png").is_file() and (tmp_path / "over_refusal_by_language.png").is_file()
    assert 'src="tradeoff_by_language.png"' in files["html"].read_text()


def test_run_report_from_eval_jsonl_or_tensorboard(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    jsonl_run = tmp_path / "jsonl_run"
    jsonl_run.mkdir()
    (jsonl_run / "eval.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in RUN_HISTORY))
    files = write_run_report(jsonl_run)
    assert files["markdown"].parent == jsonl_run / "report"
    metrics = json.loads(files["metrics"].read_text())
    assert metrics["results"]["reference"]["per_language"]["ko"]["reward_gap"] == -0.25
    assert metrics["results"]["model"]["per_language"]["ko"]["reward_gap"] == 0.375
    assert metrics["results"]["model"]["per_language"]["ko"]["safety_rate"] is None
    table = markdown_table(files["markdown"].read_text())
    assert table["sw"]["reward gap (step 0)"] == "+0.1250" and table["sw"]["reward gap (step 20)"] == "+0.5000"
    assert table["variance"]["reward gap (step 20)"] == f"{statistics.pvariance([0.5, 0.375, 0.5]):.4f}"
    assert "safety rate (step 0)" not in table["en"]  # no generation in a run report
    assert (jsonl_run / "report" / "reward_gap_curves.png").is_file()

    tensorboard_run = tmp_path / "tensorboard_run"
    with SummaryWriter(log_dir=str(tensorboard_run / "tensorboard")) as writer:
        for entry in RUN_HISTORY:
            for lang, gap in entry["reward_gap"].items():
                writer.add_scalar(f"eval/reward_gap/{lang}", gap, entry["step"])
            writer.add_scalar("train/loss", 1.0, entry["step"])
    assert load_run_history(tensorboard_run) == RUN_HISTORY  # the gaps are exact in float32
    with pytest.raises(EvalError, match="no evaluations found"):
        load_run_history(tmp_path / "empty")


def test_the_python_api_in_the_docs_imports() -> None:
    # docs/evaluation.md's "Python API" block is code a user pastes: every name it imports must exist
    text = (REPO_ROOT / "docs/evaluation.md").read_text()
    block = text.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert block.count("import") >= 10
    exec(compile(block, "docs/evaluation.md (Python API)", "exec"), {})
