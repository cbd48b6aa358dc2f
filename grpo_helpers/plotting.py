"""The figures: reward and held-out accuracy while training, before/after bars with intervals, the results card."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

REWARD_PREFIX = "rewards/"
WATCH_COLUMNS = {"eval/strict_accuracy": "strict", "eval/lenient_accuracy": "lenient", "eval/format_rate": "format"}


def metrics_table(long_rows: "pd.DataFrame") -> "pd.DataFrame":
    """metrics.csv's long rows (step, name, value) as one row per step, one column per metric."""
    if long_rows.empty:
        return long_rows
    return long_rows.pivot_table(index="step", columns="name", values="value", aggfunc="last").sort_index()


def smooth(values: "pd.Series", window: int) -> "pd.Series":
    """A trailing rolling mean (window >= 1), so early steps still show."""
    return values.rolling(window=max(1, window), min_periods=1).mean()


def plot_watch(ax: "Any", table: "pd.DataFrame") -> None:
    """The watch's held-out accuracy (strict, lenient, format) per step, as measured (no smoothing)."""
    drawn = [c for c in WATCH_COLUMNS if c in table.columns]
    for column in drawn:
        series = table[column].dropna()
        ax.plot(series.index, series, marker="o", label=WATCH_COLUMNS[column])
    ax.set_ylim(-0.03, 1.03)
    if drawn:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no watch rows in metrics.csv", ha="center", va="center", transform=ax.transAxes)


def plot_training_curves(table: "pd.DataFrame", window: int = 5, title: str = "GRPO training") -> "Figure":
    """Total reward, held-out accuracy (the watch), each reward function, completion length and KL, smoothed."""
    import matplotlib.pyplot as plt

    reward_cols = [c for c in table.columns if c.startswith(REWARD_PREFIX) and c.endswith("/mean")]
    panels = [("reward", "total reward (weighted)")]
    if any(c in table.columns for c in WATCH_COLUMNS):  # beside the reward: a climb with falling accuracy shows
        panels.append(("__watch__", "held-out accuracy (greedy)"))
    panels += [("__per_reward__", "each reward function")] if reward_cols else []
    panels += [("completions/mean_length", "completion length (tokens)")]
    if "kl" in table.columns and table["kl"].notna().any():
        panels.append(("kl", "KL to the starting model"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.3), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels):
        if column == "__per_reward__":
            for name in reward_cols:
                series = table[name].dropna()
                ax.plot(series.index, smooth(series, window), label=name[len(REWARD_PREFIX):-len("/mean")])
            ax.legend(fontsize=7)
        elif column == "__watch__":
            plot_watch(ax, table)
        elif column in table.columns:
            series = table[column].dropna()
            ax.plot(series.index, series, color="0.8", linewidth=1)
            ax.plot(series.index, smooth(series, window), linewidth=2)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} (smoothed over {window} steps)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_before_after(scores: Mapping[str, Mapping[str, float]], metrics: Sequence[str],
                      title: str = "Before vs after GRPO", ax: "Any" = None,
                      intervals: Mapping[str, Mapping[str, tuple[float, float]]] | None = None) -> "Figure":
    """Grouped bars: one group per metric, one bar per model; `intervals[model][metric]` adds error bars."""
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(scores)
    x = np.arange(len(metrics))
    width = 0.8 / max(1, len(models))
    if ax is None:
        _, ax = plt.subplots(figsize=(1.8 + 1.6 * len(metrics), 3.6))
    for i, model in enumerate(models):
        values = [scores[model].get(m, float("nan")) for m in metrics]
        errors = None
        if intervals is not None:
            bounds = [intervals[model][m] for m in metrics]
            errors = [[max(0.0, v - low) for v, (low, _) in zip(values, bounds)],
                      [max(0.0, high - v) for v, (_, high) in zip(values, bounds)]]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=model, yerr=errors, capsize=3)
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2 if errors is None else 9)
    ax.set_xticks(x, metrics)
    ax.set_title(title if intervals is None else f"{title}\n(bars: 95% Wilson intervals)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure


def plot_results(table: "pd.DataFrame", scores: Mapping[str, Mapping[str, float]],
                 intervals: Mapping[str, Mapping[str, tuple[float, float]]], metrics: Sequence[str],
                 title: str, window: int = 5) -> "Figure":
    """The results card's figure: reward while training, held-out accuracy while training, before/after."""
    import matplotlib.pyplot as plt

    fig, (reward_ax, watch_ax, bars_ax) = plt.subplots(1, 3, figsize=(14, 3.8))
    if "reward" in table.columns:
        series = table["reward"].dropna()
        reward_ax.plot(series.index, series, color="0.8", linewidth=1)
        reward_ax.plot(series.index, smooth(series, window), linewidth=2)
    reward_ax.set_title(f"total reward (smoothed over {window} steps)", fontsize=10)
    plot_watch(watch_ax, table)
    watch_ax.set_title("held-out accuracy while training (greedy)", fontsize=10)
    for ax in (reward_ax, watch_ax):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    plot_before_after(scores, metrics, "GSM8K test, before vs after", ax=bars_ax, intervals=intervals)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def side_by_side_html(panels: Sequence[tuple[str, str, Mapping[str, object]]], max_chars: int = 4000) -> str:
    """HTML with one column per (title, text, facts): the text verbatim (escaped), then a table of facts."""
    import html

    columns = []
    for title, text, facts in panels:
        text = text if len(text) <= max_chars else text[:max_chars] + "\n[... cut ...]"
        rows = "".join(f"<tr><td style='text-align:left;padding-right:1em'>{html.escape(str(k))}</td>"
                       f"<td style='text-align:left'><b>{html.escape(str(v))}</b></td></tr>" for k, v in facts.items())
        columns.append(f"<div style='flex:1;min-width:0'><h4>{html.escape(title)}</h4>"
                       f"<table style='margin-bottom:0.5em'>{rows}</table>"
                       f"<pre style='white-space:pre-wrap;font-size:12px;border:1px solid #ccc;padding:6px'>"
                       f"{html.escape(text) or '(empty reply)'}</pre></div>")
    return f"<div style='display:flex;gap:1em'>{''.join(columns)}</div>"


def flip_browser(flips: Sequence[Mapping[str, object]]) -> object:
    """An ipywidgets Dropdown over flipped questions showing before/after replies side by side."""
    import html

    import ipywidgets as widgets

    if not flips:
        return widgets.HTML("<i>No question changed outcome.</i>")
    options = [(f"[{f['change']}] #{f['index']}: {str(f['question'])[:70]}", i) for i, f in enumerate(flips)]
    dropdown = widgets.Dropdown(options=options, description="question", layout=widgets.Layout(width="95%"))
    view = widgets.HTML()

    def show(index: int) -> None:
        flip = flips[index]
        before, after = ("wrong", "right") if flip["change"] == "fixed" else ("right", "wrong")
        view.value = f"<p>{html.escape(str(flip['question']))}</p>" + side_by_side_html(
            [("before (base model)", str(flip["before_reply"]), {"gold": flip["gold"], "scored": before}),
             ("after (GRPO adapter)", str(flip["after_reply"]), {"gold": flip["gold"], "scored": after})])

    dropdown.observe(lambda change: show(change["new"]), names="value")
    show(0)
    return widgets.VBox([dropdown, view])


def plot_group_advantages(advantages: "pd.Series", title: str = "One group: which answers GRPO pushes up, which down") -> "Figure":
    """Horizontal bars of each answer's advantage in one group: green pushed up, red pushed down."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    ax.barh(advantages.index, advantages, color=["tab:green" if a > 0 else "tab:red" for a in advantages])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("advantage = (reward - group mean) / (group std + 1e-4)")
    ax.set_title(title)
    fig.tight_layout()
    return fig
