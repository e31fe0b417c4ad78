"""Per-language evaluation report: metrics.json (the numbers), report.md / report.html (tables + plots), PNG plots and
TensorBoard scalars. Mean and variance are taken across languages (population variance: divided by the number of
languages), the spread MPO is meant to shrink.
"""
from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from mpo_dist.eval.generation import JudgedResponse

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PLOT_SIZE_INCHES = (8.0, 4.5)
PLOT_DPI = 100  # PNGs are 800 x 450 pixels
REWARD_GAP_PLOT = "reward_gap_by_language.png"
SAFETY_PLOT = "safety_by_language.png"
CURVES_PLOT = "reward_gap_curves.png"
RUN_EVAL_FILE = "eval.jsonl"  # written by the trainer: {"step": N, "reward_gap": {lang: gap}} per evaluation
RUN_TENSORBOARD_PREFIX = "eval/reward_gap/"


@dataclass
class ModelScores:
    """What one model scored: `role` is "model" (after) or "reference" (before); `label` is shown in tables and plots."""

    role: str
    label: str
    source: str
    reward_gaps: dict[str, float] = field(default_factory=dict)
    safety_counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # language -> (judged safe, judged)

    def safety_rates(self) -> dict[str, float]:
        return {lang: safe / judged for lang, (safe, judged) in self.safety_counts.items() if judged}

    def attack_success_rates(self) -> dict[str, float]:
        return {lang: 1.0 - rate for lang, rate in self.safety_rates().items()}

    def metric(self, name: str) -> dict[str, float]:
        """Per-language values of one of METRICS (empty when this model was not measured on it)."""
        if name == "reward_gap":
            return self.reward_gaps
        if name == "safety_rate":
            return self.safety_rates()
        if name == "asr":
            return self.attack_success_rates()
        raise ValueError(f"unknown metric {name!r}; expected one of {METRICS}")


@dataclass
class EvalReport:
    languages: list[str]
    scores: list[ModelScores]  # reference first when there is one
    pairs: dict[str, int] = field(default_factory=dict)  # preference pairs per language (reward gaps)
    prompts: dict[str, int] = field(default_factory=dict)  # judged prompts per language (safety)
    settings: dict[str, str] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # a training run's evaluations, for the curves plot


METRICS = ("reward_gap", "safety_rate", "asr")
METRIC_TITLES = {"reward_gap": "reward gap", "safety_rate": "safety rate", "asr": "ASR"}


def safety_counts(responses: Sequence[JudgedResponse]) -> dict[str, tuple[int, int]]:
    counts: dict[str, tuple[int, int]] = {}
    for response in responses:
        safe, judged = counts.get(response.language, (0, 0))
        counts[response.language] = (safe + int(response.is_safe), judged + 1)
    return counts


def mean_and_variance(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and population variance across languages; None when there are no values."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    return mean, sum((value - mean) ** 2 for value in values) / len(values)


def metrics_dict(report: EvalReport) -> dict:
    results = {}
    for scores in report.scores:
        per_language = {lang: {name: scores.metric(name).get(lang) for name in METRICS} for lang in report.languages}
        for lang, (safe, judged) in scores.safety_counts.items():
            per_language[lang].update(safe=safe, judged=judged)
        summary = {name: mean_and_variance([v for v in (scores.metric(name).get(lang) for lang in report.languages) if v is not None])
                   for name in METRICS}
        results[scores.role] = {
            "label": scores.label, "source": scores.source, "per_language": per_language,
            "mean": {name: summary[name][0] for name in METRICS}, "variance": {name: summary[name][1] for name in METRICS},
        }
    return {"languages": report.languages, "pairs": report.pairs, "prompts": report.prompts, "settings": report.settings,
            "results": results, "run_history": report.history}


# ---- tables ---------------------------------------------------------------------------------------------------------
def _format(metric: str, value: float | None, statistic: str = "") -> str:
    """Four decimals; reward gaps and their means signed, since their sign is the point."""
    if value is None:
        return "n/a"
    return f"{value:+.4f}" if metric == "reward_gap" and statistic != "variance" else f"{value:.4f}"


def table_rows(report: EvalReport, metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows (languages, then mean and variance); metrics no model has are left out."""
    results = metrics["results"]
    columns = [(name, scores) for name in METRICS for scores in report.scores if scores.metric(name)]
    header = ["language"] + (["pairs"] if report.pairs else []) + (["prompts"] if report.prompts else [])
    header += [f"{METRIC_TITLES[name]} ({scores.label})" for name, scores in columns]
    rows = []
    for lang in report.languages:
        counts = [str(table.get(lang, 0)) for table in (report.pairs, report.prompts) if table]
        rows.append([lang] + counts + [_format(name, results[s.role]["per_language"][lang][name]) for name, s in columns])
    blanks = [""] * (len(header) - 1 - len(columns))
    for statistic in ("mean", "variance"):
        rows.append([statistic] + blanks + [_format(name, results[s.role][statistic][name], statistic) for name, s in columns])
    return header, rows


def _settings_lines(report: EvalReport) -> list[tuple[str, str]]:
    return [(scores.label, scores.source) for scores in report.scores] + list(report.settings.items())


def render_markdown(report: EvalReport, metrics: dict, plots: list[Path]) -> str:
    header, rows = table_rows(report, metrics)
    lines = ["# mpo-dist evaluation report", ""]
    lines += [f"- **{name}**: {value}" for name, value in _settings_lines(report)]
    lines += ["", "## Per-language results", "", "| " + " | ".join(header) + " |",
              "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "Reward gap = A(chosen) - A(rejected), A = mean log-prob of the response tokens (held-out pairs). "
              "Safety rate = share of generated responses judged safe; ASR (attack-success rate) = 1 - safety rate. "
              "Mean and variance are across languages (population variance).", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{plot.stem}]({plot.name})" for plot in plots] + [""]
    return "\n".join(lines)


def render_html(report: EvalReport, metrics: dict, plots: list[Path]) -> str:
    header, rows = table_rows(report, metrics)
    settings = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(value)}</li>" for name, value in _settings_lines(report))
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    images = "".join(f'<p><img src="{html.escape(plot.name)}" alt="{html.escape(plot.stem)}"></p>' for plot in plots)
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>mpo-dist evaluation report</title>"
            f"<style>{style}</style></head><body><h1>mpo-dist evaluation report</h1><ul>{settings}</ul>"
            f"<h2>Per-language results</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<p>Reward gap = A(chosen) - A(rejected), A = mean response-token log-prob. ASR = 1 - safety rate. "
            f"Mean and variance across languages (population variance).</p>{images}</body></html>\n")


# ---- plots ----------------------------------------------------------------------------------------------------------
def _save_figure(path: Path, draw: Callable) -> Path:
    from matplotlib.figure import Figure

    figure = Figure(figsize=PLOT_SIZE_INCHES, dpi=PLOT_DPI)
    axes = figure.add_subplot()
    draw(axes)
    figure.tight_layout()
    figure.savefig(path, dpi=PLOT_DPI)
    return path


def _bar_plot(path: Path, report: EvalReport, metric: str) -> Path:
    scores = [s for s in report.scores if s.metric(metric)]

    def draw(axes) -> None:
        width = 0.8 / len(scores)
        for k, model in enumerate(scores):
            values = model.metric(metric)
            positions = [i + (k - (len(scores) - 1) / 2) * width for i in range(len(report.languages))]
            axes.bar(positions, [values.get(lang, 0.0) for lang in report.languages], width, label=model.label)
        axes.set_xticks(range(len(report.languages)), report.languages)
        axes.set_ylabel(METRIC_TITLES[metric])
        axes.set_title(f"{METRIC_TITLES[metric]} per language")
        if metric == "safety_rate":
            axes.set_ylim(0, 1.15)  # headroom for the legend above bars at 1.0
        axes.axhline(0, color="black", linewidth=0.6)
        axes.legend(loc="upper center" if metric == "safety_rate" else "best", ncol=len(scores))

    return _save_figure(path, draw)


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


def write_plots(report: EvalReport, out: Path) -> list[Path]:
    """The PNGs this report has data for; none (with a warning) when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'mpo-dist[eval]'): the report has no plots")
        return []
    plots = []
    for metric, name in (("reward_gap", REWARD_GAP_PLOT), ("safety_rate", SAFETY_PLOT)):
        if any(scores.metric(metric) for scores in report.scores):
            plots.append(_bar_plot(out / name, report, metric))
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
    plots = write_plots(report, out)
    files = {"metrics": out / METRICS_FILE, "markdown": out / "report.md", "html": out / "report.html"}
    files["metrics"].write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    files["markdown"].write_text(render_markdown(report, metrics, plots), encoding="utf-8")
    files["html"].write_text(render_html(report, metrics, plots), encoding="utf-8")
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
        if tag.startswith(RUN_TENSORBOARD_PREFIX):
            for event in accumulator.Scalars(tag):
                by_step.setdefault(event.step, {})[tag[len(RUN_TENSORBOARD_PREFIX):]] = event.value
    return [{"step": step, "reward_gap": gaps} for step, gaps in sorted(by_step.items())]


def load_run_history(run_dir: Path) -> list[dict]:
    """[{"step", "reward_gap": {lang: gap}}] from a training run's eval.jsonl, else from its TensorBoard scalars."""
    eval_file = run_dir / RUN_EVAL_FILE
    history: list[dict] = []
    if eval_file.is_file():
        for row, line in enumerate(eval_file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            entry = json.loads(line)
            if not isinstance(entry, dict) or not isinstance(entry.get("step"), int) or not isinstance(entry.get("reward_gap"), dict):
                raise ValueError(f"{eval_file}, row {row}: expected {{\"step\": int, \"reward_gap\": {{language: gap}}}}, "
                                 f"got {line[:200]}")
            history.append({"step": entry["step"], "reward_gap": entry["reward_gap"]})
    elif (run_dir / "tensorboard").is_dir():
        history = _history_from_tensorboard(run_dir / "tensorboard")
    if not history:
        raise FileNotFoundError(f"{run_dir}: no evaluations found; expected {RUN_EVAL_FILE} or eval/reward_gap/* scalars "
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
