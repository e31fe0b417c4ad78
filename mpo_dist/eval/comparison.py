"""`mpo-dist compare`: several evaluations side by side, read from each `mpo-dist eval` output's metrics.json. One
table per metric, one column per evaluation, each cell "reference -> model (change ± its error)": several methods
trained from one model and evaluated against it (launch/real.sh) show which bought the most safety for the least
over-refusal and utility (docs/evaluation.md, "Several models, one reference")."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mpo_dist.eval.errors import EvalError
from mpo_dist.eval.report import METRIC_TITLES, METRICS_FILE, change_cell, format_value, markdown_table

COMPARED_METRICS = ("safety_rate", "over_refusal_rate", "utility", "reward_gap", "invalid_rate")
MEAN = "mean"


@dataclass(frozen=True)
class Evaluation:
    name: str  # the eval output directory's name
    metrics: dict

    def value(self, role: str, row: str, metric: str) -> float | None:
        results = self.metrics["results"][role]
        return results[MEAN].get(metric) if row == MEAN else results["per_language"].get(row, {}).get(metric)

    def cell(self, row: str, metric: str) -> str:
        before, after = self.value("reference", row, metric), self.value("model", row, metric)
        if before is None and after is None:
            return "n/a"
        change = change_cell(self.metrics["change"], row, metric)
        return (f"{format_value(metric, before)} -> {format_value(metric, after)}"
                + ("" if change == "n/a" else f" ({change})"))


def read_evaluation(directory: Path) -> Evaluation:
    """An eval output with a reference (the changes are what is compared)."""
    path = directory / METRICS_FILE
    if not path.is_file():
        raise EvalError(f"{directory}: no {METRICS_FILE}; pass the --out directory of an `mpo-dist eval` run")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EvalError(f"{path}: not a readable {METRICS_FILE} ({error})") from None
    if "reference" not in metrics.get("results", {}):
        raise EvalError(f"{path}: this evaluation had no --reference, so it has no change to compare")
    return Evaluation(directory.name, metrics)


def comparison_markdown(evaluations: list[Evaluation]) -> str:
    """What each evaluation compared, then one table per metric any of them measured (languages, then the mean)."""
    names = [evaluation.name for evaluation in evaluations]
    if len(set(names)) != len(names):
        raise EvalError(f"evaluation directories need distinct names to head the columns, got {names}")
    languages = list(dict.fromkeys(lang for evaluation in evaluations for lang in evaluation.metrics["languages"]))
    lines = ["# Comparison", ""]
    lines += markdown_table(["evaluation", "model", "reference"], [
        [e.name, e.metrics["results"]["model"]["source"], e.metrics["results"]["reference"]["source"]] for e in evaluations])
    lines += ["", "Each cell: reference -> model (change ± its standard error); rates ± are binomial, utility's paired "
                  "over the benign prompts (docs/evaluation.md)."]
    for metric in COMPARED_METRICS:
        rows = [[row] + [evaluation.cell(row, metric) for evaluation in evaluations] for row in [*languages, MEAN]]
        if all(cell == "n/a" for row in rows for cell in row[1:]):
            continue
        lines += ["", f"## {METRIC_TITLES[metric]}", ""] + markdown_table(["language", *names], rows)
    return "\n".join(lines) + "\n"
