"""What a ``tune`` search found, and its report: ``tune.csv``, ``tune.md`` (ranking, paired 95%
intervals against today's defaults), the figures and ``best.json`` for ``train --config``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from posterlens import safeio
from posterlens.models.fitted import PARAM_RULES
from posterlens.workflows.config import TrainConfig

__all__ = ["RANK", "GENRE_METRICS", "SCORE_METRICS", "Finding", "findings", "best_config", "metric_names", "shown",
           "write_outputs"]

GENRE_METRICS = ("macro_map", "macro_f1", "micro_f1", "samples_f1")
SCORE_METRICS = ("spearman", "mae")
RANK = {"genre": "macro_map", "score": "spearman", "cnn": "macro_map"}  # higher is better for each
TOP_ROWS = 10  # configurations shown per model in tune.md
FIGURE_COLUMNS = 4  # settings per row of a tune_<model>.png
CONFIDENCE = 0.95
ESTIMATORS = {"genre": "GenreClassifier", "score": "ScoreRegressor"}  # the sections best.json carries


def metric_names(model: str) -> tuple[str, ...]:
    return SCORE_METRICS if model == "score" else GENRE_METRICS


def shown(value) -> str:
    """A parameter value as a table cell."""
    return "+".join(value) if isinstance(value, (list, tuple)) else str(value)


# --- what the search found ---------------------------------------------------------------------

def folds_of(row: pd.Series, metric: str) -> np.ndarray:
    return row.filter(regex=rf"^{metric}_fold\d+$").to_numpy(dtype=float)


def t_interval(values: np.ndarray) -> tuple[float, float]:
    """``CONFIDENCE`` t-interval of the mean of ``values`` (one per fold)."""
    from scipy import stats

    half = stats.t.ppf((1 + CONFIDENCE) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


@dataclass
class Finding:
    """One model's best configuration against today's defaults, on its ranking metric."""

    model: str
    metric: str
    best: pd.Series
    default: pd.Series

    @property
    def interval(self) -> tuple[float, float]:
        return t_interval(folds_of(self.best, self.metric))

    @property
    def gain(self) -> float:
        return float(self.best[f"{self.metric}_mean"] - self.default[f"{self.metric}_mean"])

    @property
    def gain_interval(self) -> tuple[float, float]:
        """Paired t-interval of best - defaults over the same folds."""
        return t_interval(folds_of(self.best, self.metric) - folds_of(self.default, self.metric))

    @property
    def beyond_spread(self) -> bool:
        """Better than the defaults by more than the defaults' spread over folds."""
        return self.gain > self.spread

    @property
    def spread(self) -> float:
        """The larger standard deviation over folds of the best and the defaults."""
        return float(max(self.best[f"{self.metric}_std"], self.default[f"{self.metric}_std"]))


def findings(frame: pd.DataFrame) -> list[Finding]:
    result = []
    for model, rows in frame.groupby("model", sort=False):
        result.append(Finding(model, RANK[model], rows.loc[rows["rank"].idxmin()], rows.loc[rows["default"]].iloc[0]))
    return result


def best_config(found: list[Finding]) -> dict:
    """The best settings in ``TrainConfig`` form: estimator settings that differ from the defaults, backbones."""
    config: dict = {}
    for finding in found:
        if finding.model not in ("genre", "score"):
            continue
        params = json.loads(finding.best["params"])
        known = PARAM_RULES[ESTIMATORS[finding.model]]
        config[finding.model] = {k: v for k, v in params.items() if k in known}
        if finding.model == "genre":
            config["backbones"] = list(params.get("backbones", TrainConfig().backbones))
    return config



# --- output --------------------------------------------------------------------------------------

def searched(frame: pd.DataFrame) -> list[str]:
    """The parameter columns of ``frame`` (the settings that some configuration changed)."""
    fixed = {"model", "rank", "config", "default", "settings", "fit_s", "parameters", "params"}
    return [c for c in frame.columns if c not in fixed and not c.startswith(tuple(f"{m}_" for m in (*GENRE_METRICS, *SCORE_METRICS)))
            and frame[c].notna().any()]


def param_figure(rows: pd.DataFrame, metric: str):
    """The ranking metric of every configuration against each searched setting (mean per value as a line)."""
    from matplotlib.figure import Figure

    names = searched(rows)
    cols = min(FIGURE_COLUMNS, len(names))
    lines = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.2 * cols, 3.2 * lines))
    axes = fig.subplots(lines, cols, sharey=True, squeeze=False)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.ravel(), names):
        values = rows[name].astype(str)
        levels = sorted(values.unique(), key=_sort_key)
        x = values.map({v: i for i, v in enumerate(levels)}).to_numpy(dtype=float)
        ax.errorbar(x, rows[f"{metric}_mean"], rows[f"{metric}_std"], fmt="o", alpha=0.5)
        ax.plot(range(len(levels)), [rows.loc[values == v, f"{metric}_mean"].mean() for v in levels], "k-")
        ax.set(xticks=range(len(levels)), xlabel=name)
        ax.set_xticklabels(levels, rotation=30, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{metric} (CV mean ± std)")
    fig.suptitle(f"{rows['model'].iloc[0]}: {metric} against each setting")
    fig.tight_layout()
    return fig


def _sort_key(value: str):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def sensitivity(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model and setting: the spread (max - min) of the ranking metric's mean over the setting's values."""
    rows = []
    for model, group in frame.groupby("model", sort=False):
        metric = f"{RANK[model]}_mean"
        for name in searched(group):
            means = group.groupby(group[name].astype(str))[metric].mean()
            rows.append({"model": model, "setting": name, "metric": RANK[model], "spread": float(means.max() - means.min())})
    return pd.DataFrame(rows, columns=["model", "setting", "metric", "spread"])


def sensitivity_figure(table: pd.DataFrame):
    """How much each setting moves its model's ranking metric."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 0.35 * len(table) + 1.5))
    ax = fig.subplots()
    labels = [f"{r.model}.{r.setting}" for r in table.itertuples()]
    ax.barh(range(len(table)), table["spread"])
    ax.set(yticks=range(len(table)), xlabel="spread of the ranking metric's mean over the setting's values",
           title="Sensitivity")
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def ranking_table(rows: pd.DataFrame) -> str:
    """The top configurations (and the defaults) as Markdown."""
    model = rows["model"].iloc[0]
    top = rows[(rows["rank"] <= TOP_ROWS) | rows["default"]]
    shown_rows = pd.DataFrame({"rank": top["rank"], "settings": top["settings"]})
    for m in metric_names(model):
        shown_rows[m] = [f"{a:.3f} ± {b:.3f}" for a, b in zip(top[f"{m}_mean"], top[f"{m}_std"])]
    shown_rows["fit s"] = top["fit_s"].map("{:.1f}".format)
    shown_rows["parameters"] = top["parameters"].map("{:,}".format)
    return shown_rows.to_markdown(index=False)


def finding_lines(finding: Finding, folds: int) -> list[str]:
    m, best, default = finding.metric, finding.best, finding.default
    low, high = finding.interval
    g_low, g_high = finding.gain_interval
    if not finding.beyond_spread:
        verdict = f"within the fold spread (± {finding.spread:.3f}): no reason to change them"
    elif g_low <= 0:
        verdict = f"more than the fold spread (± {finding.spread:.3f}), but the paired interval includes 0: not conclusive"
    else:
        verdict = f"more than the fold spread (± {finding.spread:.3f}) and the paired interval excludes 0: worth considering as new defaults"
    lines = []
    if finding.model == "genre" and {"width", "mirror"} & json.loads(best["params"]).keys():
        lines.append("- best.json keeps the backbones only: `TrainConfig` has no input width or mirror setting.")
    return lines + [f"- Best: `{best['settings']}`: {m} {best[f'{m}_mean']:.3f}, {CONFIDENCE:.0%} t-interval over {folds} "
            f"folds [{low:.3f}, {high:.3f}].",
            f"- Defaults: {m} {default[f'{m}_mean']:.3f} ± {default[f'{m}_std']:.3f}. Best - defaults: "
            f"{finding.gain:+.3f} (paired {CONFIDENCE:.0%} t-interval [{g_low:+.3f}, {g_high:+.3f}]); {verdict}."]


def report(frame: pd.DataFrame, found: list[Finding], notes: list[str], figures: list[str]) -> str:
    folds = len(folds_of(frame.iloc[0], RANK[frame["model"].iloc[0]]))
    text = ["# Hyper-parameter search", "", *notes, ""]
    for finding in found:
        rows = frame[frame["model"] == finding.model]
        text += [f"## {finding.model}: ranked by {finding.metric}", "", ranking_table(rows), "",
                 *finding_lines(finding, folds), ""]
    text += ["Choosing the best of many configurations on the same folds flatters it: read small gains "
             "against the paired interval, not the ranking alone.", ""]
    text += [f"![{name}]({name})" for name in figures] + [""]
    return "\n".join(text)


def write_outputs(frame: pd.DataFrame, notes: list[str], out: Path) -> list[Finding]:
    """tune.csv, tune.md, the figures and best.json in ``out``."""
    safeio.make_dir(out)
    found = findings(frame)
    safeio.write_csv(frame, out / "tune.csv")
    figures = []
    for model, rows in frame.groupby("model", sort=False):
        if searched(rows):
            figures.append(f"tune_{model}.png")
            param_figure(rows, RANK[model]).savefig(out / figures[-1], dpi=90)
    table = sensitivity(frame)
    if len(table):
        figures.append("tune_sensitivity.png")
        sensitivity_figure(table).savefig(out / figures[-1], dpi=90)
    safeio.write_text(out / "tune.md", report(frame, found, notes, figures))
    safeio.write_json(out / "best.json", best_config(found))
    return found
