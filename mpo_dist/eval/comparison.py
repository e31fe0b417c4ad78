"""`mpo-dist compare`: several evaluations side by side, read from each `mpo-dist eval` output's metrics.json. One
table per metric, one column per evaluation, each cell "reference -> model (change ± its error)": several methods
trained from one model and evaluated against it (launch/real.sh) show which bought the most safety for the least
over-refusal and utility (docs/evaluation.md, "Several models, one reference").

Only like is compared with like: evaluations whose recorded settings differ (data, --limit, judge, generation, ...)
are refused unless asked for, and then the differences head the output; the mean rows average the languages every
column measured, and name them, since a mean over other languages is another number.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mpo_dist.eval.errors import EvalError
from mpo_dist.eval.report import METRIC_TITLES, METRICS_FILE, change_cell, format_value, markdown_table, mean_standard_error

COMPARED_METRICS = ("safety_rate", "over_refusal_rate", "utility", "reward_gap", "invalid_rate")
ROLES = ("reference", "model")
# recorded settings that do not change the numbers (1 and N processes give the same responses and rates, reward gaps
# equal to float rounding; the training run only adds curves), so evaluations may differ in them
NOT_COMPARED = ("processes", "training run")
MEAN = "mean"

Values = dict[str, dict[str, float | None]]  # language (or MEAN) -> metric or "<metric>_se" -> value


@dataclass(frozen=True)
class Evaluation:
    name: str  # the eval output directory's name
    languages: list[str]
    settings: dict[str, str]
    sources: dict[str, str]  # role -> model directory
    values: dict[str, Values]  # role -> per-language values
    change: Values  # per language: model - reference and its standard error

    def value(self, role: str, lang: str, metric: str) -> float | None:
        return self.values[role].get(lang, {}).get(metric)


class _MetricsReader:
    """Typed access to one parsed metrics.json: a missing or wrong-typed field is one line naming the file and field."""

    def __init__(self, path: Path):
        self.path = path

    def field(self, parent: dict, key: str, where: str, expected: type, what: str) -> object:
        name = f"{where}.{key}" if where else key
        if key not in parent:
            raise EvalError(f"{self.path}: field '{name}' is missing; expected {what} (the metrics.json of an "
                            "`mpo-dist eval` run)")
        value = parent[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise EvalError(f"{self.path}: field '{name}' is {_short(value)}; expected {what}")
        return value

    def number(self, parent: dict, key: str, where: str) -> float | None:
        value = self.field(parent, key, where, object, "a number or null")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise EvalError(f"{self.path}: field '{where}.{key}' is {_short(value)}; expected a number or null")
        return value

    def texts(self, parent: dict, key: str) -> list[str]:
        values = self.field(parent, key, "", list, "a list of strings")
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise EvalError(f"{self.path}: field '{key}[{index}]' is {_short(value)}; expected a string")
        return values

    def text_map(self, parent: dict, key: str) -> dict[str, str]:
        values = self.field(parent, key, "", dict, "an object of strings")
        for name, value in values.items():
            if not isinstance(value, str):
                raise EvalError(f"{self.path}: field '{key}.{name}' is {_short(value)}; expected a string")
        return values

    def metric_values(self, parent: dict, where: str, required: bool) -> dict[str, float | None]:
        """COMPARED_METRICS (required: the report writes every one, null when not measured) and their errors."""
        values: dict[str, float | None] = {}
        for metric in COMPARED_METRICS:
            if required or metric in parent:
                values[metric] = self.number(parent, metric, where)
                if f"{metric}_se" in parent or not required:
                    values[f"{metric}_se"] = self.number(parent, f"{metric}_se", where)
        return values


def _short(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def read_evaluation(directory: Path) -> Evaluation:
    """An eval output with a reference (the changes are what is compared), every field compare reads checked."""
    path = directory / METRICS_FILE
    if not path.is_file():
        raise EvalError(f"{directory}: no {METRICS_FILE}; pass the --out directory of an `mpo-dist eval` run")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EvalError(f"{path}: not a readable {METRICS_FILE} ({error})") from None
    if not isinstance(metrics, dict):
        raise EvalError(f"{path}: expected a JSON object, got {_short(metrics)}")
    reader = _MetricsReader(path)
    languages = reader.texts(metrics, "languages")
    settings = reader.text_map(metrics, "settings")
    results = reader.field(metrics, "results", "", dict, "an object with the results of 'reference' and 'model'")
    if "reference" not in results:
        raise EvalError(f"{path}: this evaluation had no --reference, so it has no change to compare")
    sources, values = {}, {}
    for role in ROLES:
        role_results = reader.field(results, role, "results", dict, "an object")
        sources[role] = reader.field(role_results, "source", f"results.{role}", str, "a string")
        per_language = reader.field(role_results, "per_language", f"results.{role}", dict, "an object")
        values[role] = {lang: reader.metric_values(
            reader.field(per_language, lang, f"results.{role}.per_language", dict, "an object"),
            f"results.{role}.per_language.{lang}", required=True) for lang in languages}
    changes = reader.field(metrics, "change", "", dict, "an object")
    change = {lang: reader.metric_values(reader.field(changes, lang, "change", dict, "an object"), f"change.{lang}",
                                         required=False)
              for lang in languages if lang in changes}
    return Evaluation(directory.name, languages, settings, sources, values, change)


def settings_differences(evaluations: list[Evaluation]) -> list[str]:
    """One phrase per recorded setting (outside NOT_COMPARED) whose value is not the same in every evaluation."""
    keys = dict.fromkeys(key for evaluation in evaluations for key in evaluation.settings if key not in NOT_COMPARED)
    differences = []
    for key in keys:
        values = [evaluation.settings.get(key) for evaluation in evaluations]
        if len(set(values)) > 1:
            differences.append(f"{key}: " + ", ".join(
                f"{evaluation.name} {'(not recorded)' if value is None else repr(value)}"
                for evaluation, value in zip(evaluations, values)))
    return differences


def shared_languages(evaluations: list[Evaluation], metric: str) -> list[str]:
    """The languages in which every evaluation has `metric` for both models: the ones a comparable mean can average."""
    return [lang for lang in evaluations[0].languages
            if all(evaluation.value(role, lang, metric) is not None for evaluation in evaluations for role in ROLES)]


def _mean_values(evaluation: Evaluation, metric: str, languages: list[str]) -> tuple[dict[str, float | None], Values]:
    """Each model's mean of `metric` over `languages`, and the mean change with its error (sqrt(sum se²) / count, as
    the report's own mean change), in the shapes of Evaluation.values and Evaluation.change."""
    if not languages:
        return {role: None for role in ROLES}, {}
    means = {role: sum(evaluation.value(role, lang, metric) for lang in languages) / len(languages) for role in ROLES}
    changes = [evaluation.change.get(lang, {}) for lang in languages]
    if any(change.get(metric) is None for change in changes):
        return means, {}
    errors = [change.get(f"{metric}_se") for change in changes]
    return means, {MEAN: {metric: sum(change[metric] for change in changes) / len(languages),
                          f"{metric}_se": None if None in errors else mean_standard_error(errors)}}


def _cell(before: float | None, after: float | None, changes: Values, row: str, metric: str) -> str:
    if before is None and after is None:
        return "n/a"
    change = change_cell(changes, row, metric)
    return f"{format_value(metric, before)} -> {format_value(metric, after)}" + ("" if change == "n/a" else f" ({change})")


def metric_rows(evaluations: list[Evaluation], metric: str) -> list[list[str]]:
    """Per language (every language any evaluation has), then the mean over the languages all of them share."""
    languages = list(dict.fromkeys(lang for evaluation in evaluations for lang in evaluation.languages))
    rows = [[lang] + [_cell(e.value("reference", lang, metric), e.value("model", lang, metric), e.change, lang, metric)
                      for e in evaluations] for lang in languages]
    shared = shared_languages(evaluations, metric)
    means = [_mean_values(evaluation, metric, shared) for evaluation in evaluations]
    label = f"{MEAN} ({', '.join(shared)})" if shared else f"{MEAN} (no language every evaluation measured)"
    return rows + [[label] + [_cell(role_means["reference"], role_means["model"], change, MEAN, metric)
                              for role_means, change in means]]


def comparison_markdown(evaluations: list[Evaluation], allow_different_settings: bool = False) -> str:
    """What each evaluation compared, then one table per metric any of them measured (languages, then the mean).
    Evaluations made with different settings are refused, or with `allow_different_settings` listed first."""
    names = [evaluation.name for evaluation in evaluations]
    if len(set(names)) != len(names):
        raise EvalError(f"evaluation directories need distinct names to head the columns, got {names}")
    differences = settings_differences(evaluations)
    if differences and not allow_different_settings:
        raise EvalError(f"the evaluations were made with different settings ({'; '.join(differences)}); compare like "
                        "with like, or pass --allow-different-settings to see them side by side anyway")
    lines = ["# Comparison", ""]
    if differences:
        lines += ["## Settings that differ", "", "These evaluations were not made the same way; their numbers are not "
                  "directly comparable:", ""] + [f"- {difference}" for difference in differences] + [""]
    lines += markdown_table(["evaluation", "model", "reference", "languages"], [
        [e.name, e.sources["model"], e.sources["reference"], ", ".join(e.languages)] for e in evaluations])
    lines += ["", "Each cell: reference -> model (change ± its standard error); rates ± are binomial, utility's paired "
                  "over the benign prompts (docs/evaluation.md). Each mean is over the languages every evaluation "
                  "measured, named in its row."]
    for metric in COMPARED_METRICS:
        rows = metric_rows(evaluations, metric)
        if all(cell == "n/a" for row in rows for cell in row[1:]):
            continue
        lines += ["", f"## {METRIC_TITLES[metric]}", ""] + markdown_table(["language", *names], rows)
    return "\n".join(lines) + "\n"
