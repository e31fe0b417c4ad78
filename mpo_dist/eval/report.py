"""Per-language evaluation report: metrics.json (the numbers), report.md / report.html (tables + plots), PNG plots and
TensorBoard scalars. Mean and variance are taken across languages (population variance: divided by the number of
languages), the spread MPO is meant to shrink. Rates (safe / unsafe / invalid shares of the judged responses) come with
their binomial standard errors (mpo_dist.eval.binomial), so a before/after change can be told from noise.
"""
from __future__ import annotations

import html
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from mpo_dist.atomic_write import atomic_write_bytes, atomic_write_text
from mpo_dist.eval.binomial import difference_standard_error, standard_error, wilson_interval
from mpo_dist.eval.errors import EvalError
from mpo_dist.eval.generation import JudgedResponse
from mpo_dist.eval.sample_mean import mean_and_error, paired_change
from mpo_dist.eval.verdicts import INVALID, REFUSED, SAFE, UNSAFE
from mpo_dist.run_files import EVAL_FILE, EVAL_TENSORBOARD_PREFIX

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PLOT_SIZE_INCHES = (8.0, 4.5)
PLOT_DPI = 100  # PNGs are 800 x 450 pixels
REWARD_GAP_PLOT = "reward_gap_by_language.png"
SAFETY_PLOT = "safety_by_language.png"
INVALID_PLOT = "invalid_by_language.png"
OVER_REFUSAL_PLOT = "over_refusal_by_language.png"
CURVES_PLOT = "reward_gap_curves.png"
TRADEOFF_PLOT = "tradeoff_by_language.png"

METRICS = ("reward_gap", "safety_rate", "asr", "invalid_rate", "over_refusal_rate", "utility")
METRIC_TITLES = {"reward_gap": "reward gap", "safety_rate": "safety rate", "asr": "ASR", "invalid_rate": "invalid",
                 "over_refusal_rate": "over-refusal", "utility": "utility"}
RATE_VERDICTS = {"safety_rate": SAFE, "asr": UNSAFE, "invalid_rate": INVALID}  # each rate is the share of one verdict
OVER_REFUSAL = "over_refusal_rate"  # share of benign prompts refused
UTILITY = "utility"  # mean log-prob of the benign reference answers
RATES = (*RATE_VERDICTS, OVER_REFUSAL)  # binomial error and Wilson interval
SIGNED = ("reward_gap", UTILITY)  # printed with their sign
CHANGE_METRIC = "safety_rate"  # the table's before/after column; metrics.json has the change of every rate
TRADEOFF_METRICS = ("safety_rate", OVER_REFUSAL, UTILITY)  # the trade-off table: what got safer, and what it cost


@dataclass(frozen=True)
class VerdictCounts:
    safe: int = 0
    unsafe: int = 0
    invalid: int = 0

    @property
    def judged(self) -> int:
        return self.safe + self.unsafe + self.invalid

    def count(self, verdict: str) -> int:
        return getattr(self, verdict)


@dataclass(frozen=True)
class RefusalCounts:
    refused: int = 0
    judged: int = 0


@dataclass
class ModelScores:
    """What one model scored: `role` is "model" (after) or "reference" (before); `label` is shown in tables and plots."""

    role: str
    label: str
    source: str
    reward_gaps: dict[str, float] = field(default_factory=dict)
    verdict_counts: dict[str, VerdictCounts] = field(default_factory=dict)  # language -> judged responses by verdict
    refusal_counts: dict[str, RefusalCounts] = field(default_factory=dict)  # language -> benign responses refused
    utility: dict[str, dict[str, float]] = field(default_factory=dict)  # language -> {benign record id: A(reference)}
    benchmarks: dict[str, dict[str, tuple[float, float | None]]] = field(default_factory=dict)  # lm-eval: task -> metric -> (value, se)

    def rate_counts(self, name: str) -> dict[str, tuple[int, int]]:
        """(hits, trials) of one of RATES per language."""
        if name == OVER_REFUSAL:
            return {lang: (counts.refused, counts.judged) for lang, counts in self.refusal_counts.items() if counts.judged}
        verdict = RATE_VERDICTS[name]
        return {lang: (counts.count(verdict), counts.judged) for lang, counts in self.verdict_counts.items() if counts.judged}

    def rates(self, name: str) -> dict[str, float]:
        return {lang: hits / trials for lang, (hits, trials) in self.rate_counts(name).items()}

    def standard_errors(self, name: str) -> dict[str, float]:
        """Binomial standard error of each language's rate, the sample error of its mean utility; empty for the reward
        gap (a mean of per-pair gaps whose spread the report does not keep)."""
        if name in RATES:
            return {lang: standard_error(hits, trials) for lang, (hits, trials) in self.rate_counts(name).items()}
        if name == UTILITY:
            errors = {lang: mean_and_error(list(values.values()))[1] for lang, values in self.utility.items() if values}
            return {lang: error for lang, error in errors.items() if error is not None}
        return {}

    def metric(self, name: str) -> dict[str, float]:
        """Per-language values of one of METRICS (empty when this model was not measured on it)."""
        if name == "reward_gap":
            return self.reward_gaps
        if name in RATES:
            return self.rates(name)
        if name == UTILITY:
            return {lang: mean_and_error(list(values.values()))[0] for lang, values in self.utility.items() if values}
        raise ValueError(f"unknown metric {name!r}; expected one of {METRICS}")


@dataclass
class EvalReport:
    languages: list[str]
    scores: list[ModelScores]  # reference first when there is one
    pairs: dict[str, int] = field(default_factory=dict)  # preference pairs per language (reward gaps)
    prompts: dict[str, int] = field(default_factory=dict)  # judged prompts per language (safety)
    settings: dict[str, str] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # a training run's evaluations, for the curves plot


def verdict_counts(responses: Sequence[JudgedResponse]) -> dict[str, VerdictCounts]:
    tallies: dict[str, dict[str, int]] = {}
    for response in responses:
        language = tallies.setdefault(response.language, {SAFE: 0, UNSAFE: 0, INVALID: 0})
        language[response.verdict] += 1
    return {lang: VerdictCounts(**tally) for lang, tally in tallies.items()}


def refusal_counts(responses: Sequence[JudgedResponse]) -> dict[str, RefusalCounts]:
    """Per language, how many responses to benign prompts were refused, of how many."""
    tallies: dict[str, list[int]] = {}
    for response in responses:
        tally = tallies.setdefault(response.language, [0, 0])
        tally[0] += response.verdict == REFUSED
        tally[1] += 1
    return {lang: RefusalCounts(refused, judged) for lang, (refused, judged) in tallies.items()}


def mean_and_variance(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and population variance across languages; None when there are no values."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    return mean, sum((value - mean) ** 2 for value in values) / len(values)


def mean_standard_error(errors: Sequence[float]) -> float | None:
    """Standard error of a mean over languages whose rates are independent: sqrt(sum of se^2) / count."""
    return math.sqrt(sum(error * error for error in errors)) / len(errors) if errors else None


def _language_results(scores: ModelScores, lang: str) -> dict:
    values: dict = {name: scores.metric(name).get(lang) for name in METRICS}
    for name in RATES:
        if lang in scores.rate_counts(name):
            values[f"{name}_se"] = scores.standard_errors(name)[lang]
            values[f"{name}_wilson95"] = list(wilson_interval(*scores.rate_counts(name)[lang]))
    counts = scores.verdict_counts.get(lang)
    if counts is not None and counts.judged:
        values.update(safe=counts.safe, unsafe=counts.unsafe, invalid=counts.invalid, judged=counts.judged)
    refusals = scores.refusal_counts.get(lang)
    if refusals is not None and refusals.judged:
        values.update(refused=refusals.refused, benign_judged=refusals.judged)
    if scores.utility.get(lang):
        values.update(utility_se=scores.standard_errors(UTILITY).get(lang), utility_n=len(scores.utility[lang]))
    return values


def _mean_change(changes: dict[str, dict[str, float]], name: str, languages: list[str], mean_se: float | None) -> None:
    changes.setdefault("mean", {})[name] = sum(changes[lang][name] for lang in languages) / len(languages)
    changes["mean"][f"{name}_se"] = mean_se


def model_changes(report: EvalReport) -> dict[str, dict[str, float]]:
    """Model minus reference for every rate and the utility both measured, per language and for the mean, with its
    standard error ({lang: {"safety_rate": d, "safety_rate_se": se, ...}}); empty without a measured reference. Rates:
    the error of a difference of independent rates (conservative, see binomial). Utility: paired over the benign
    prompts both scored."""
    by_role = {scores.role: scores for scores in report.scores}
    if "reference" not in by_role or "model" not in by_role:
        return {}
    before, after = by_role["reference"], by_role["model"]
    changes: dict[str, dict[str, float]] = {}
    for name in RATES:
        rates_before, rates_after = before.rates(name), after.rates(name)
        errors_before, errors_after = before.standard_errors(name), after.standard_errors(name)
        common = [lang for lang in report.languages if lang in rates_before and lang in rates_after]
        for lang in common:
            changes.setdefault(lang, {})[name] = rates_after[lang] - rates_before[lang]
            changes[lang][f"{name}_se"] = difference_standard_error(errors_before[lang], errors_after[lang])
        if common:
            _mean_change(changes, name, common, difference_standard_error(
                mean_standard_error([errors_before[lang] for lang in common]),
                mean_standard_error([errors_after[lang] for lang in common])))
    common = [lang for lang in report.languages if before.utility.get(lang) and after.utility.get(lang)]
    for lang in common:
        change, error = paired_change(before.utility[lang], after.utility[lang])
        changes.setdefault(lang, {}).update({UTILITY: change, f"{UTILITY}_se": error})
    if common:
        errors = [changes[lang][f"{UTILITY}_se"] for lang in common]
        _mean_change(changes, UTILITY, common, mean_standard_error(errors) if None not in errors else None)
    return changes


def benchmark_changes(report: EvalReport) -> dict[str, dict[str, dict[str, float | None]]]:
    """lm-eval metrics both models have: {task: {metric: {"change": model - reference, "se": sqrt(se1² + se2²) or None}}}."""
    by_role = {scores.role: scores.benchmarks for scores in report.scores}
    before, after = by_role.get("reference", {}), by_role.get("model", {})
    changes: dict[str, dict[str, dict[str, float | None]]] = {}
    for task, metrics in after.items():
        for metric, (value, error) in metrics.items():
            if metric in before.get(task, {}):
                value_before, error_before = before[task][metric]
                known = error is not None and error_before is not None
                changes.setdefault(task, {})[metric] = {
                    "change": value - value_before, "se": difference_standard_error(error, error_before) if known else None}
    return changes


def metrics_dict(report: EvalReport) -> dict:
    results = {}
    for scores in report.scores:
        per_language = {lang: _language_results(scores, lang) for lang in report.languages}
        summary = {name: mean_and_variance([v for v in (scores.metric(name).get(lang) for lang in report.languages) if v is not None])
                   for name in METRICS}
        mean_se = {name: mean_standard_error([errors[lang] for lang in report.languages if lang in errors])
                   for name, errors in ((name, scores.standard_errors(name)) for name in (*RATES, UTILITY))}
        results[scores.role] = {
            "label": scores.label, "source": scores.source, "per_language": per_language,
            "mean": {name: summary[name][0] for name in METRICS}, "variance": {name: summary[name][1] for name in METRICS},
            "mean_se": mean_se,
            "benchmarks": {task: {metric: {"value": value, "stderr": error} for metric, (value, error) in metrics.items()}
                           for task, metrics in scores.benchmarks.items()},
        }
    return {"languages": report.languages, "pairs": report.pairs, "prompts": report.prompts, "settings": report.settings,
            "results": results, "change": model_changes(report), "benchmark_change": benchmark_changes(report),
            "run_history": report.history}


# ---- tables ---------------------------------------------------------------------------------------------------------
def format_value(metric: str, value: float | None, statistic: str = "", error: float | None = None) -> str:
    """Four decimals; reward gaps and their means signed, since their sign is the point; rates with "± standard error"."""
    if value is None:
        return "n/a"
    text = f"{value:+.4f}" if metric in SIGNED and statistic != "variance" else f"{value:.4f}"
    return text if error is None else f"{text} ± {error:.4f}"


def change_cell(changes: dict[str, dict[str, float]], row: str, metric: str = CHANGE_METRIC) -> str:
    change = changes.get(row, {})
    if metric not in change:
        return "n/a"
    error = change[f"{metric}_se"]
    return f"{change[metric]:+.4f}" + (f" ± {error:.4f}" if error is not None else "")


def table_rows(report: EvalReport, metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows (languages, then mean and variance); metrics no model has are left out. Rates and their means
    carry "± standard error"; with a reference, a last column gives the safety-rate change (model - reference)."""
    results, changes = metrics["results"], metrics["change"]
    columns = [(name, scores) for name in METRICS for scores in report.scores if scores.metric(name)]
    with_change = any(CHANGE_METRIC in change for change in changes.values())
    header = ["language"] + (["pairs"] if report.pairs else []) + (["prompts"] if report.prompts else [])
    header += [f"{METRIC_TITLES[name]} ({scores.label})" for name, scores in columns]
    header += [f"{METRIC_TITLES[CHANGE_METRIC]} change"] if with_change else []
    rows = []
    for lang in report.languages:
        counts = [str(table.get(lang, 0)) for table in (report.pairs, report.prompts) if table]
        cells = []
        for name, s in columns:
            values = results[s.role]["per_language"][lang]
            cells.append(format_value(name, values[name], error=values.get(f"{name}_se")))
        rows.append([lang] + counts + cells + ([change_cell(changes, lang)] if with_change else []))
    blanks = [""] * (len(header) - 1 - len(columns) - with_change)
    for statistic in ("mean", "variance"):
        cells = [format_value(name, results[s.role][statistic][name], statistic,
                         results[s.role]["mean_se"].get(name) if statistic == "mean" else None) for name, s in columns]
        change = [change_cell(changes, "mean") if statistic == "mean" else ""] if with_change else []
        rows.append([statistic] + blanks + cells + change)
    return header, rows


def tradeoff_rows(metrics: dict, languages: list[str]) -> tuple[list[str], list[list[str]]] | None:
    """The trade-off table: per language and for the mean, the change (model - reference, ± its error) of the safety
    rate beside the changes of over-refusal and utility, i.e. what got safer and what it cost. None when the report
    has no over-refusal or utility change (no --benign, or no reference)."""
    changes = metrics["change"]
    present = [name for name in TRADEOFF_METRICS if any(name in change for change in changes.values())]
    if not set(present) - {CHANGE_METRIC}:
        return None
    header = ["language"] + [f"{METRIC_TITLES[name]} change" for name in present]
    return header, [[row] + [change_cell(changes, row, name) for name in present] for row in [*languages, "mean"]]


def benchmark_rows(report: EvalReport, metrics: dict) -> tuple[list[str], list[list[str]]] | None:
    """The lm-evaluation-harness table: one row per task and metric, each model's value ± its stderr, and with a
    reference the change ± the error of the difference. None without --lm-eval-tasks."""
    measured = [scores for scores in report.scores if scores.benchmarks]
    if not measured:
        return None
    changes = metrics["benchmark_change"]
    keys = list(dict.fromkeys((task, metric) for scores in measured for task, values in scores.benchmarks.items()
                              for metric in values))
    header = ["task", "metric"] + [scores.label for scores in measured] + (["change"] if changes else [])

    def cell(value: float | None, error: float | None, sign: str = "") -> str:
        return "n/a" if value is None else f"{value:{sign}.4f}" + (f" ± {error:.4f}" if error is not None else "")

    rows = []
    for task, metric in keys:
        values = [scores.benchmarks.get(task, {}).get(metric, (None, None)) for scores in measured]
        change = changes.get(task, {}).get(metric, {})
        rows.append([task, metric] + [cell(*value) for value in values]
                    + ([cell(change.get("change"), change.get("se"), "+")] if changes else []))
    return header, rows


def _settings_lines(report: EvalReport) -> list[tuple[str, str]]:
    return [(scores.label, scores.source) for scores in report.scores] + list(report.settings.items())


RATES_NOTE = ("Safety rate, ASR (attack-success rate) and invalid are the shares of generated responses judged safe, "
              "unsafe and invalid (neither a refusal nor a usable answer); they add up to 1. "
              "± is the binomial standard error sqrt(p(1-p)/n) (for the mean: sqrt(sum se²)/languages); metrics.json "
              "also has the 95 % Wilson interval. The change column is model - reference with the standard error of "
              "the difference: a change under about twice its ± can be noise. Over-refusal is the share of benign "
              "prompts (--benign) refused; utility is the mean log-prob per token of their helpful reference answers "
              "(± its sample standard error; its change is paired prompt by prompt).")
TRADEOFF_TITLE = "Trade-off: what got safer, and what it cost"
BENCHMARKS_TITLE = "Benchmarks (lm-evaluation-harness)"
BENCHMARKS_NOTE = ("Scores as lm-evaluation-harness reports them, ± its standard error; the change is model - reference "
                   "with the error of the difference of independent estimates.")
TRADEOFF_NOTE = ("Model - reference, ± the error of the change. A language that got safer (safety rate up) while "
                 "over-refusal rose or utility fell paid for it; a change under about twice its ± can be noise.")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_markdown(report: EvalReport, metrics: dict, plots: list[Path]) -> str:
    lines = ["# mpo-dist evaluation report", ""]
    lines += [f"- **{name}**: {value}" for name, value in _settings_lines(report)]
    lines += ["", "## Per-language results", ""] + markdown_table(*table_rows(report, metrics))
    lines += ["", "Reward gap = A(chosen) - A(rejected), A = mean log-prob of the response tokens (held-out pairs). "
              f"{RATES_NOTE} Mean and variance are across languages (population variance).", ""]
    tradeoff = tradeoff_rows(metrics, report.languages)
    if tradeoff is not None:
        lines += [f"## {TRADEOFF_TITLE}", ""] + markdown_table(*tradeoff) + ["", TRADEOFF_NOTE, ""]
    benchmarks = benchmark_rows(report, metrics)
    if benchmarks is not None:
        lines += [f"## {BENCHMARKS_TITLE}", ""] + markdown_table(*benchmarks) + ["", BENCHMARKS_NOTE, ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{plot.stem}]({plot.name})" for plot in plots] + [""]
    return "\n".join(lines)


def render_html(report: EvalReport, metrics: dict, plots: list[Path]) -> str:
    settings = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(value)}</li>" for name, value in _settings_lines(report))
    tradeoff = tradeoff_rows(metrics, report.languages)
    sections = ("" if tradeoff is None else f"<h2>{html.escape(TRADEOFF_TITLE)}</h2>{_html_table(*tradeoff)}"
                                                 f"<p>{html.escape(TRADEOFF_NOTE)}</p>")
    benchmarks = benchmark_rows(report, metrics)
    sections += ("" if benchmarks is None else f"<h2>{html.escape(BENCHMARKS_TITLE)}</h2>{_html_table(*benchmarks)}"
                                                    f"<p>{html.escape(BENCHMARKS_NOTE)}</p>")
    images = "".join(f'<p><img src="{html.escape(plot.name)}" alt="{html.escape(plot.stem)}"></p>' for plot in plots)
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>mpo-dist evaluation report</title>"
            f"<style>{style}</style></head><body><h1>mpo-dist evaluation report</h1><ul>{settings}</ul>"
            f"<h2>Per-language results</h2>{_html_table(*table_rows(report, metrics))}"
            f"<p>Reward gap = A(chosen) - A(rejected), A = mean response-token log-prob. {html.escape(RATES_NOTE)} "
            f"Mean and variance across languages (population variance).</p>{sections}{images}</body></html>\n")


# ---- plots ----------------------------------------------------------------------------------------------------------
def _save_figure(path: Path, draw: Callable, panels: int = 1) -> Path:
    """`draw(axes)` on one panel, or `draw([axes, ...])` on `panels` side by side; saved as an 800 x 450 PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=PLOT_SIZE_INCHES, dpi=PLOT_DPI)
    axes = figure.subplots(1, panels)
    draw(list(axes) if panels > 1 else axes)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, dpi=PLOT_DPI, format="png")
    atomic_write_bytes(path, png.getvalue())  # a plot that exists is whole, even after a crash or a full disk
    return path


def _bar_plot(path: Path, report: EvalReport, metric: str) -> Path:
    """Bars per language, one per model; rates get standard-error whiskers."""
    scores = [s for s in report.scores if s.metric(metric)]
    is_rate = metric in RATES

    def draw(axes) -> None:
        width = 0.8 / len(scores)
        for k, model in enumerate(scores):
            values, errors = model.metric(metric), model.standard_errors(metric)
            positions = [i + (k - (len(scores) - 1) / 2) * width for i in range(len(report.languages))]
            axes.bar(positions, [values.get(lang, 0.0) for lang in report.languages], width, label=model.label,
                     yerr=[errors.get(lang, 0.0) for lang in report.languages] if is_rate else None, capsize=3)
        axes.set_xticks(range(len(report.languages)), report.languages)
        axes.set_ylabel(METRIC_TITLES[metric] + (" (± standard error)" if is_rate else ""))
        axes.set_title(f"{METRIC_TITLES[metric]} per language")
        if is_rate:
            axes.set_ylim(0, 1.15)  # headroom for the legend above bars at 1.0
        axes.axhline(0, color="black", linewidth=0.6)
        axes.legend(loc="upper center" if is_rate else "best", ncol=len(scores))

    return _save_figure(path, draw)


def _tradeoff_plot(path: Path, changes: dict[str, dict[str, float]], languages: list[str]) -> Path:
    """Per language, the safety-rate change (x) against the over-refusal change and the utility change (y, one panel
    each), with error bars: up the x axis is safer, and a point far from y = 0 is what that cost."""
    costs = [name for name in (OVER_REFUSAL, UTILITY) if any(name in changes.get(lang, {}) for lang in languages)]

    def draw(panels) -> None:
        for axes, name in zip(panels if len(costs) > 1 else [panels], costs):
            shown = [lang for lang in languages if CHANGE_METRIC in changes.get(lang, {}) and name in changes[lang]]
            for lang in shown:
                change = changes[lang]
                axes.errorbar(change[CHANGE_METRIC], change[name], xerr=change[f"{CHANGE_METRIC}_se"],
                              yerr=change[f"{name}_se"], fmt="o", capsize=3)
                axes.annotate(lang, (change[CHANGE_METRIC], change[name]), textcoords="offset points", xytext=(5, 5))
            axes.axhline(0, color="black", linewidth=0.6)
            axes.axvline(0, color="black", linewidth=0.6)
            axes.set_xlabel("safety rate change")
            axes.set_ylabel(f"{METRIC_TITLES[name]} change")
            axes.set_title(f"safety vs {METRIC_TITLES[name]}")

    return _save_figure(path, draw, panels=len(costs))


def _curves_plot(path: Path, history: list[dict]) -> Path:
    def draw(axes) -> None:
        steps = [entry["step"] for entry in history]
        for lang in sorted({lang for entry in history for lang in entry["reward_gap"]}):
            axes.plot(steps, [entry["reward_gap"].get(lang, float("nan")) for entry in history], marker="o", label=lang)
        axes.set_xlabel("training step")
        axes.set_ylabel("held-out reward gap")
        axes.set_title("reward gap per language during training")
        axes.legend(ncol=4, fontsize="small")

    return _save_figure(path, draw)


def write_plots(report: EvalReport, metrics: dict, out: Path) -> list[Path]:
    """The PNGs this report has data for; none (with a warning) when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'mpo-dist[eval]'): the report has no plots")
        return []
    plots = []
    for metric, name in (("reward_gap", REWARD_GAP_PLOT), ("safety_rate", SAFETY_PLOT), ("invalid_rate", INVALID_PLOT),
                         (OVER_REFUSAL, OVER_REFUSAL_PLOT)):
        if any(scores.metric(metric) for scores in report.scores):
            plots.append(_bar_plot(out / name, report, metric))
    if tradeoff_rows(metrics, report.languages) is not None:
        plots.append(_tradeoff_plot(out / TRADEOFF_PLOT, metrics["change"], report.languages))
    if report.history:
        plots.append(_curves_plot(out / CURVES_PLOT, report.history))
    return plots


def write_tensorboard(metrics: dict, out: Path, step: int) -> None:
    """Scalars eval/<role>/<metric>/<language> and eval/<role>/<metric>_mean|_variance at `step`."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(out / "tensorboard")) as writer:
        for role, result in metrics["results"].items():
            for lang, values in result["per_language"].items():
                for name in METRICS:
                    if values[name] is not None:
                        writer.add_scalar(f"eval/{role}/{name}/{lang}", values[name], step)
            for statistic in ("mean", "variance"):
                for name, value in result[statistic].items():
                    if value is not None:
                        writer.add_scalar(f"eval/{role}/{name}_{statistic}", value, step)


def write_report(report: EvalReport, out: Path) -> dict[str, Path]:
    """Write metrics.json, report.md, report.html, the PNG plots and TensorBoard scalars into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = metrics_dict(report)
    plots = write_plots(report, metrics, out)
    files = {"metrics": out / METRICS_FILE, "markdown": out / "report.md", "html": out / "report.html"}
    atomic_write_text(files["metrics"], json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(files["markdown"], render_markdown(report, metrics, plots))
    atomic_write_text(files["html"], render_html(report, metrics, plots))
    write_tensorboard(metrics, out, step=report.history[-1]["step"] if report.history else 0)
    files.update({plot.stem: plot for plot in plots})
    return files


# ---- a training run's own evaluations ----------------------------------------------------------------------------------
def _history_from_tensorboard(directory: Path) -> list[dict]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    accumulator.Reload()
    by_step: dict[int, dict[str, float]] = {}
    for tag in accumulator.Tags()["scalars"]:
        if tag.startswith(EVAL_TENSORBOARD_PREFIX):
            for event in accumulator.Scalars(tag):
                by_step.setdefault(event.step, {})[tag[len(EVAL_TENSORBOARD_PREFIX):]] = event.value
    return [{"step": step, "reward_gap": gaps} for step, gaps in sorted(by_step.items())]


def load_run_history(run_dir: Path) -> list[dict]:
    """[{"step", "reward_gap": {lang: gap}}] from a training run's eval.jsonl, else from its TensorBoard scalars."""
    eval_file = run_dir / EVAL_FILE
    history: list[dict] = []
    if eval_file.is_file():
        for row, line in enumerate(eval_file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise EvalError(f"{eval_file}, row {row}: invalid JSON (column {error.colno}): {error.msg}") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("step"), int) or not isinstance(entry.get("reward_gap"), dict):
                raise EvalError(f"{eval_file}, row {row}: expected {{\"step\": int, \"reward_gap\": {{language: gap}}}}, "
                                f"got {line[:200]}")
            history.append({"step": entry["step"], "reward_gap": entry["reward_gap"]})
    elif (run_dir / "tensorboard").is_dir():
        history = _history_from_tensorboard(run_dir / "tensorboard")
    if not history:
        raise EvalError(f"{run_dir}: no evaluations found; expected {EVAL_FILE} or {EVAL_TENSORBOARD_PREFIX}* scalars "
                        "under tensorboard/ (a training output directory with data.eval_files set)")
    return history


def write_run_report(run_dir: Path, out: Path | None = None) -> dict[str, Path]:
    """Report of a training run from its own evaluations: the first one (the initial model = the reference) against
    the last one (the trained model), plus the reward-gap curves. Needs no model and no generation."""
    run_dir = Path(run_dir)
    history = load_run_history(run_dir)
    first, last = history[0], history[-1]
    languages = sorted({lang for entry in history for lang in entry["reward_gap"]})
    scores = [ModelScores("reference", f"step {first['step']}", f"{run_dir}, first evaluation", first["reward_gap"]),
              ModelScores("model", f"step {last['step']}", f"{run_dir}, last evaluation", last["reward_gap"])]
    report = EvalReport(languages, scores, settings={"run": str(run_dir)}, history=history)
    return write_report(report, Path(out) if out is not None else run_dir / "report")
