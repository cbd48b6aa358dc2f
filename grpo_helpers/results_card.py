"""The results card: what a run learned, as <artifacts>/<profile>/results.md and results.png beside it.

The card holds the model, the steps and the training time, the held-out accuracy the watch measured
while training, the GSM8K before/after table (95% Wilson intervals, the paired change with its
interval, the flips and the exact McNemar p) with its verdict sentence, the same for pass@k and
maj@k when notebook 05 sampled, and the pi table. It is built only from the files the notebooks
saved (adapter_info.json, metrics.csv, the results JSONs), so it can be rebuilt, and `check_card`
verifies a card on disk against them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from . import evaluation, paths, pi_eval
from .callbacks import METRICS_FILE, read_metrics
from .modeling import ADAPTER_INFO_FILE
from .plotting import metrics_table, plot_results
from .profiles import Profile
from .watch import WATCH_METRICS, WATCH_SECONDS

if TYPE_CHECKING:
    import pandas as pd

CARD_FILE = "results.md"
FIGURE_FILE = "results.png"
RUN_HEADING = "## Run"
WATCH_HEADING = "## Held-out accuracy while training"
GSM8K_HEADING = "## GSM8K before and after"
SAMPLED_HEADING = "### Sampled answers"
PI_HEADING = "## Pi prompts"
SECTIONS = (RUN_HEADING, WATCH_HEADING, GSM8K_HEADING, PI_HEADING)
TABLE_HEADER = ("metric", "base", "95% CI", "trained", "95% CI", "change", "95% CI", "fixed", "broken", "McNemar p")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRAIN_WRITER, EVAL_WRITER = ("notebook 04 (or `python -m grpo_helpers train`)",
                              "notebook 05 (or `python -m grpo_helpers evaluate`)")
WRITERS = {ADAPTER_INFO_FILE: TRAIN_WRITER, METRICS_FILE: TRAIN_WRITER,
           evaluation.GSM8K_RESULTS_FILE: EVAL_WRITER, pi_eval.PI_RESULTS_FILE: EVAL_WRITER}


class CardError(ValueError):
    """A results card, or a file it is built from, is missing or malformed; the message says which and what to run."""


def card_path(profile: Profile) -> Path:
    """<artifacts>/<profile>/results.md."""
    return paths.profile_dir(profile.name) / CARD_FILE


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows])


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def significance_frame(result: Mapping[str, Any]) -> "pd.DataFrame":
    """The before/after table of a compare_before_after result as the card shows it (intervals, flips, p)."""
    import pandas as pd

    table = pd.DataFrame(significance_rows(evaluation.significance_table(result)), columns=TABLE_HEADER)
    return table.set_index("metric")


def significance_rows(table: "pd.DataFrame") -> list[list[str]]:
    """evaluation.significance_table as the card's table rows (TABLE_HEADER's columns)."""
    return [[metric, _pct(r["base"]), f"{_pct(r['base_low'])}-{_pct(r['base_high'])}", _pct(r["trained"]),
             f"{_pct(r['trained_low'])}-{_pct(r['trained_high'])}", f"{100 * r['change']:+.1f} pts",
             f"{100 * r['change_low']:+.1f} to {100 * r['change_high']:+.1f}", int(r["fixed"]), int(r["broken"]),
             f"{r['p_value']:.3g}"] for metric, r in table.iterrows()]


def _read_json(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    if not path.is_file():
        raise CardError(f"No {path}: run {WRITERS.get(name, EVAL_WRITER)} first (same profile and artifacts folder).")
    return json.loads(path.read_text())


def load_inputs(profile: Profile, adapter_dir: Path | str | None = None) -> dict[str, Any]:
    """What the card is built from: the adapter's card and its run's metrics.csv (in the adapter's parent folder,
    where training writes them; default: the profile's adapter), and the profile's results JSONs."""
    folder = paths.profile_dir(profile.name)
    adapter = Path(adapter_dir) if adapter_dir is not None else paths.adapter_dir(profile.name)
    metrics = adapter.parent / METRICS_FILE
    if not metrics.is_file():
        raise CardError(f"No {metrics}: run {TRAIN_WRITER} first (same profile and artifacts folder).")
    sampled = folder / evaluation.GSM8K_SAMPLED_FILE
    return {"info": _read_json(adapter, ADAPTER_INFO_FILE),
            "metrics": read_metrics(metrics),
            "gsm8k": _read_json(folder, evaluation.GSM8K_RESULTS_FILE),
            "sampled": json.loads(sampled.read_text()) if sampled.is_file() else None,
            "pi": _read_json(folder, pi_eval.PI_RESULTS_FILE)}


def _run_rows(info: Mapping[str, Any], metrics: "pd.DataFrame") -> list[list[Any]]:
    runtimes = metrics.loc[metrics["name"] == "train_runtime", "value"] if len(metrics) else []
    trained_for = (f"{sum(runtimes):.0f} s (the Trainer's train_runtime, {len(runtimes)} session(s))"
                   if len(runtimes) else "not recorded")
    lora = info.get("run", {}).get("lora", {})
    return [["profile", info.get("profile")], ["model", f"{info.get('base_model')} + LoRA r={lora.get('rank')}"],
            ["GRPO steps", f"{info.get('global_step')} of {info.get('max_steps')}"], ["training time", trained_for],
            ["run id", info.get("run_id")], ["adapter saved", info.get("saved_at")]]


def _watch_section(table: "pd.DataFrame", window: int) -> str:
    if not all(m in table.columns for m in WATCH_METRICS):
        return "The watch did not run (profile.watch_questions = 0, or metrics.csv predates it)."
    reward = table["reward"].rolling(window, min_periods=1).mean() if "reward" in table.columns else None
    watched = table.dropna(subset=list(WATCH_METRICS))
    rows = [[int(step), "-" if reward is None or step not in reward.dropna().index else f"{reward[step]:.3f}",
             *(_pct(row[m]) for m in WATCH_METRICS)] for step, row in watched.iterrows()]
    cost = table[WATCH_SECONDS].dropna() if WATCH_SECONDS in table.columns else []
    return (f"Greedy, notebook 05's scoring, at each watched step ({len(cost)} watches, "
            f"{sum(cost):.0f} s in all); the reward is its mean over the last {window} logged steps.\n\n"
            + markdown_table(["step", "reward", "strict", "lenient", "format"], rows))


def _gsm8k_section(result: Mapping[str, Any]) -> str:
    table = evaluation.significance_table(result)
    settings = result["settings"]
    how = ("greedy" if settings["num_samples"] == 1 else
           f"{settings['num_samples']} samples per question at temperature {settings['temperature']}")
    return (f"{result['n_questions']} test questions, {how}, up to {settings['max_new_tokens']} new tokens, the "
            "same questions, prompt and seeds for both models.\n\n"
            + markdown_table(TABLE_HEADER, significance_rows(table)) + "\n\n" + evaluation.verdict(result))


def _pi_section(pi: Mapping[str, Any]) -> str:
    summary = pi_eval.pi_summary(pi["rows"])
    if summary.empty:
        return "No pi samples were scored."
    columns = list(summary.columns)
    return markdown_table(["prompt", "model", *columns],
                          [[prompt, model, *(row[c] for c in columns)] for (prompt, model), row in summary.iterrows()])


def build_card(profile: Profile, inputs: Mapping[str, Any] | None = None, window: int = 5) -> str:
    """The card's Markdown, from the saved files (or `inputs` as load_inputs returns them)."""
    inputs = inputs or load_inputs(profile)
    table = metrics_table(inputs["metrics"])
    parts = [f"# GRPO results: `{profile.name}` profile", RUN_HEADING,
             markdown_table(["", ""], _run_rows(inputs["info"], inputs["metrics"])),
             f"![reward and held-out accuracy while training, GSM8K before and after]({FIGURE_FILE})",
             WATCH_HEADING, _watch_section(table, window), GSM8K_HEADING, _gsm8k_section(inputs["gsm8k"])]
    if inputs["sampled"] is not None:
        parts += [SAMPLED_HEADING, _gsm8k_section(inputs["sampled"])]
    parts += [PI_HEADING, f"{len(pi_eval.PI_PROMPTS)} prompts asking for a pi program, each program run in the "
              "sandbox; digits are the leading digits of pi printed, honest ones from programs that did not "
              "cheat.\n\n" + _pi_section(inputs["pi"])]
    return "\n\n".join(parts) + "\n"


def write_card(profile: Profile, window: int = 5, adapter_dir: Path | str | None = None) -> Path:
    """Write results.md and results.png into <artifacts>/<profile> for the adapter (default: the profile's)."""
    import matplotlib.pyplot as plt

    inputs = load_inputs(profile, adapter_dir)
    path = card_path(profile)
    result = inputs["gsm8k"]
    significance = evaluation.significance_table(result)
    scores = {side: significance[side].to_dict() for side in evaluation.SIDES}
    intervals = {side: {m: (r[f"{side}_low"], r[f"{side}_high"]) for m, r in significance.iterrows()}
                 for side in evaluation.SIDES}
    fig = plot_results(metrics_table(inputs["metrics"]), scores, intervals, list(significance.index),
                       f"GRPO, {profile.name} profile: {inputs['info'].get('global_step')} steps, "
                       f"{result['n_questions']} test questions", window)
    fig.savefig(path.with_name(FIGURE_FILE), dpi=100)
    plt.close(fig)
    path.write_text(build_card(profile, inputs, window))
    return path


def _section(text: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level."""
    start = text.index(heading) + len(heading)
    level = heading.split(" ")[0]
    ends = [i for i in (text.find(f"\n{'#' * n} ", start) for n in range(1, len(level) + 1)) if i >= 0]
    return text[start:min(ends, default=len(text))].strip()


def check_card(profile: Profile, adapter_dir: Path | str | None = None) -> None:
    """Raise CardError unless results.md and results.png are complete and agree with the saved results."""
    path = card_path(profile)
    if not path.is_file():
        raise CardError(f"No results card at {path}: run {EVAL_WRITER} to the end (it writes the card).")
    text, figure = path.read_text(), path.with_name(FIGURE_FILE)
    missing = [h for h in SECTIONS if f"\n{h}\n" not in text]
    if missing:
        raise CardError(f"{path} has no section {missing}: rebuild it with results_card.write_card(profile).")
    if not figure.is_file() or figure.read_bytes()[:8] != PNG_SIGNATURE or figure.stat().st_size < 10_000:
        raise CardError(f"{figure} is missing or not a drawn PNG: rebuild the card with results_card.write_card.")
    if f"]({FIGURE_FILE})" not in text:
        raise CardError(f"{path} does not show {FIGURE_FILE}.")
    inputs = load_inputs(profile, adapter_dir)
    expected = {RUN_HEADING: markdown_table(["", ""], _run_rows(inputs["info"], inputs["metrics"])),
                GSM8K_HEADING: _gsm8k_section(inputs["gsm8k"]), PI_HEADING: _pi_section(inputs["pi"])}
    if inputs["sampled"] is not None:
        expected[SAMPLED_HEADING] = _gsm8k_section(inputs["sampled"])
    for heading, body in expected.items():
        if heading not in text or body not in _section(text, heading):
            raise CardError(f"{path}: the section {heading!r} does not match the saved results (stale or edited): "
                            "rebuild it with results_card.write_card(profile).")


def card_summary(path: Path | str) -> str:
    """The card's run table and GSM8K before/after section (no figure link), for the suite's closing print."""
    text = "\n".join(line for line in Path(path).read_text().splitlines() if not line.startswith("!["))
    return "\n\n".join(f"{h}\n\n{_section(text, h)}" for h in (RUN_HEADING, GSM8K_HEADING) if h in text)
