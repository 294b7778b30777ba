"""The report of a run: the experiment table and its plots (the objective per experiment with the running best,
each experiment's A/B samples, where the time went). The plots are matplotlib figures, written as report.png
beside the ledger or as inline SVG for the HTML report (graph/report_html.py)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from rich.table import Table

from ..records import metric_matches
from .ledger import arm_means
from .report_data import experiment_llm, llm_costs, source_kind

# Wins are coloured by where the idea came from (a row's source_kind); older ledgers have none ("").
SOURCE_COLOURS = {"paper": "tab:purple", "fork": "tab:orange", "backend-gap": "tab:red", "profile": "tab:cyan",
                  "llm": "tab:pink", "": "tab:green"}
# The parts of an experiment's time, as the ledger's durations name them, in the order they happen.
EXPERIMENT_PARTS = (("implement", "tab:purple"), ("build", "tab:orange"), ("checks", "tab:olive"),
                    ("bench", "tab:blue"), ("wait", "lightgrey"))
# A part's name in a legend, where its key would not say it: the machine lock's waits are no work of the step's.
PART_LABELS = {"wait": "waiting for the machine"}


def experiment_table(rows: list[dict[str, Any]], title: str = "experiments",
                     llm: dict[str, Any] | None = None) -> Table:
    """The ledger as a table; with a model, each experiment's dollars and tokens, and the run's per experiment
    and per kept win below it (`llm`: report_data.llm_costs, else the experiments' own spend)."""
    llm = llm if llm is not None else llm_costs(rows)
    table = Table(title=title, caption=llm_caption(llm) if llm else None)
    # the id is what a user copies (`trace show --experiment`): it never wraps; the prose columns do
    table.add_column("id", no_wrap=True)
    columns = [("wave", "right"), ("kind", "left"), ("source", "left"), ("title", "left"), ("decision", "left"),
               ("speedup [95% CI]", "right"), ("reason", "left")]
    if llm:
        columns.insert(6, ("LLM $ / tokens", "right"))
    for col, just in columns:
        table.add_column(col, justify=just, overflow="fold")
    for r in rows:
        style = "green" if r["decision"] == "keep" else ""
        cells = [r["id"], str(r.get("wave", "")), r["kind"], source_kind(r), r["title"], r["decision"],
                 speedup_text(r), short_reason(r["reason"])]
        if llm:
            spent = experiment_llm(r)
            cells.insert(7, f"${spent['usd']:.3f} / {spent['tokens']:,}" if spent["tokens"] else "")
        table.add_row(*cells, style=style)
    return table


SHORT_REASON = 90


def short_reason(reason: str, limit: int = SHORT_REASON) -> str:
    """A reason's first sentence for a table cell, ended at a word and marked when it goes on: a cell of 200
    characters wraps into twenty lines at 80 columns. The whole reason is below the table (full_reasons)."""
    text = " ".join(str(reason or "").split())
    first = text.split(". ", 1)[0]
    if len(first) <= limit:
        return first + (" ..." if len(first) < len(text) else "")
    cut = first[:limit].rsplit(" ", 1)[0]
    return cut + " ..."


def full_reasons(rows: list[dict[str, Any]]) -> list[str]:
    """Each experiment whose reason the table shortened, with its whole reason: printed wrapped, never cut."""
    wholes = ((r["id"], " ".join(str(r.get("reason") or "").split())) for r in rows)
    return [f"{id_}: {whole}" for id_, whole in wholes if short_reason(whole) != whole]


def llm_caption(llm: dict[str, Any]) -> str:
    """The run's model spend in one line: total, per experiment, per kept win."""
    text = (f"LLM: ${llm['usd_total']:.2f} and {llm['tokens_total']:,} tokens in all; "
            f"${llm['usd_per_experiment'] or 0:.3f} and {llm['tokens_per_experiment'] or 0:,} tokens per experiment "
            f"(implementing: ${llm['usd_implementing']:.2f})")
    return text + (f"; ${llm['usd_per_kept_win']:.2f} per kept win" if llm.get("usd_per_kept_win") is not None
                   else "; no kept win")


def confirmation_text(confirmation: dict[str, Any] | None) -> str:
    """One line: what the final stack measured against the baseline, on which builds, beside the estimate."""
    if not confirmation:
        return ""
    estimated = confirmation.get("estimated")
    beside = f" against the estimated {estimated:+.1%}" if estimated is not None else ""
    if confirmation.get("error"):
        return f"confirmation: {confirmation['error']}{beside}"
    if confirmation.get("speedup") is None:
        return f"confirmation: no measurement ({confirmation.get('reason') or 'no pairs'}){beside}"
    spent = [f"{confirmation['pairs']} pairs"]
    if confirmation.get("build_minutes"):
        spent.append(f"{confirmation['build_minutes']:.1f} min building")
    if confirmation.get("bench_minutes") is not None:
        spent.append(f"{confirmation['bench_minutes']:.1f} min measuring")
    builds = confirmation.get("builds") or "the run's builds"
    return (f"confirmation ({confirmation['decision']}): {speedup_text(confirmation)}{beside}, on {builds} "
            f"({', '.join(spent)})")


def speedup_text(row: dict[str, Any]) -> str:
    if row.get("speedup") is None:
        return ""
    return f"{row['speedup']:+.1%} [{row['ci_low']:+.1%}, {row['ci_high']:+.1%}]"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # no display here, and no window in a terminal run
    import matplotlib.pyplot as plt
    return plt


def baseline_value(rows: list[dict[str, Any]], baseline_metrics: dict[str, float], metric: str) -> float | None:
    """The objective's baseline value: the profile's measurement, else the first experiment's baseline arm."""
    return next((v for k, v in baseline_metrics.items() if metric_matches(k, metric)), None) or \
        next((a for a, _ in (arm_means(r, r.get("objective") or metric) for r in rows) if a), None)


def running_best(rows: list[dict[str, Any]], base_value: float | None, *, lower_is_better: bool) -> list:
    best, line = base_value, []
    for r in rows:
        if r["decision"] == "keep" and r.get("speedup") is not None and best is not None:
            # the speedup is an improvement: a lower-is-better metric shrinks by it
            best = best / (1 + r["speedup"]) if lower_is_better else best * (1 + r["speedup"])
        line.append(best)
    return line


def best_figure(rows: list[dict[str, Any]], baseline_metrics: dict[str, float], *, metric: str,
                lower_is_better: bool):
    """The objective's metric of each candidate (wins coloured by source kind, discards grey) and the running
    best; None without experiments."""
    if not rows:
        return None
    plt = _pyplot()
    base_value = baseline_value(rows, baseline_metrics, metric)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 3), 4))
    labelled = set()
    for i, r in enumerate(rows, 1):
        _, b = arm_means(r, r.get("objective") or metric)
        if b is None:
            continue
        kind = source_kind(r) if r["decision"] == "keep" else None
        label = None
        if kind is not None and kind not in labelled:  # one legend entry per source kind
            label = f"kept ({kind or 'source not recorded'})"
            labelled.add(kind)
        ax.scatter([i], [b], color=SOURCE_COLOURS.get(kind, "tab:green") if kind is not None else "tab:grey",
                   zorder=3, label=label)
    if base_value is not None:
        ax.step(range(1, len(rows) + 1), running_best(rows, base_value, lower_is_better=lower_is_better),
                where="post", color="tab:blue", label=f"running best ({metric})")
        ax.axhline(base_value, color="tab:blue", alpha=0.3, linestyle="--", label="baseline")
    ax.set_xticks(range(1, len(rows) + 1), [r["id"] for r in rows], rotation=45, ha="right")
    ax.set_ylabel(f"{metric} ({'lower' if lower_is_better else 'higher'} is better)")
    ax.set_title("readfirst: experiments (kept in colour by source, discarded grey)")
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def write_plot(rows: list[dict[str, Any]], state: dict[str, Any], dest: Path, *, metric: str = "tg",
               lower_is_better: bool = False) -> Path | None:
    """report.png: the best_figure of the run."""
    fig = best_figure(rows, (state.get("baseline") or {}).get("metrics") or {}, metric=metric,
                      lower_is_better=lower_is_better)
    if fig is None:
        return None
    fig.savefig(dest, dpi=100)
    _pyplot().close(fig)
    return dest


def svg(fig, prefix: str) -> str:
    """A figure as an <svg> element to inline in a page. Its ids (clip paths, tick markers) are prefixed, so that
    figures in one page never share one; text stays text; no date and a fixed hash salt, so the same run gives
    the same page."""
    import matplotlib
    plt = _pyplot()
    out = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "readfirst"}):
        fig.savefig(out, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = out.getvalue()
    text = text[text.index("<svg"):]
    for name in set(re.findall(r'\bid="([^"]+)"', text)):
        text = re.sub(rf'(id="|#){re.escape(name)}(?=[")])', rf"\g<1>{prefix}-{name}", text)
    return text


def samples_figure(row: dict[str, Any], metric: str):
    """One experiment's A/B samples of the objective: each run a dot (warm-ups hollow), baseline and candidate
    side by side, their means as bars; None when it was never measured."""
    runs = (row.get("verdict") or {}).get("runs") or []
    arms: dict[str, list[tuple[float, bool]]] = {"baseline": [], "candidate": []}
    name = ""
    for run in runs:
        for k, v in (run.get("values") or {}).items():
            if metric_matches(k, row.get("objective") or metric) and run.get("which") in arms:
                arms[run["which"]].append((v, bool(run.get("warmup"))))
                name = k
    if not any(arms.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.6, 2.6))
    for x, (which, colour) in enumerate((("baseline", "tab:blue"), ("candidate", "tab:orange"))):
        points = arms[which]
        for j, (v, warm) in enumerate(points):
            offset = (j % 7 - 3) * 0.03  # spread the dots so equal values stay visible
            ax.scatter([x + offset], [v], s=18, zorder=3, edgecolors=colour,
                       facecolors="none" if warm else colour)
        measured = [v for v, warm in points if not warm]
        if measured:
            mean = sum(measured) / len(measured)
            ax.hlines(mean, x - 0.25, x + 0.25, color=colour, linewidth=2)
    ax.set_xticks([0, 1], ["baseline", "candidate"])
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylabel(name)
    ax.set_title(f"{row['id']}: samples (hollow: warm-up)", fontsize=9)
    fig.tight_layout()
    return fig


def time_figure(bars: list[tuple[str, dict[str, float]]], colours: dict[str, str], title: str):
    """Horizontal bars of seconds, one per item, stacked by part: where the time went, seen at a glance."""
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(bars) + 1.4))
    labelled = set()
    for y, (_, parts) in enumerate(bars):
        left = 0.0
        for part, seconds in parts.items():
            if not seconds:
                continue
            ax.barh([y], [seconds], left=left, color=colours.get(part, "tab:grey"),
                    label=None if part in labelled else PART_LABELS.get(part, part))
            labelled.add(part)
            left += seconds
    ax.set_yticks(range(len(bars)), [label for label, _ in bars], fontsize=8)
    ax.invert_yaxis()  # first item on top, as in the tables
    ax.set_xlabel("seconds")
    ax.set_title(title, fontsize=10)
    if labelled:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def host_load_text(load: dict[str, Any] | None) -> str:
    """What other processes did to the run's measurements, in one sentence; empty when they did nothing."""
    load = load or {}
    if not (load.get("retaken") or load.get("contaminated")):
        return ""
    return (f"{load.get('retaken', 0)} runs retaken because other processes used the benchmark's CPUs; "
            f"{load.get('contaminated', 0)} of {load.get('measured', 0)} measurements stayed busy and are marked "
            f"contaminated")
