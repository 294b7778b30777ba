"""The report of a run: the experiment table and a plot (throughput per experiment, kept vs discarded, the
running best)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from ..records import metric_matches
from .ledger import arm_means


def experiment_table(rows: list[dict[str, Any]], title: str = "experiments") -> Table:
    table = Table(title=title)
    for col, just in (("id", "left"), ("wave", "right"), ("kind", "left"), ("title", "left"),
                      ("decision", "left"), ("speedup [95% CI]", "right"), ("reason", "left")):
        table.add_column(col, justify=just, overflow="fold")
    for r in rows:
        sp = "" if r.get("speedup") is None else \
            f"{r['speedup']:+.1%} [{r['ci_low']:+.1%}, {r['ci_high']:+.1%}]"
        style = "green" if r["decision"] == "keep" else ""
        table.add_row(r["id"], str(r.get("wave", "")), r["kind"], r["title"], r["decision"], sp,
                      r["reason"][:160], style=style)
    return table


def write_plot(rows: list[dict[str, Any]], state: dict[str, Any], dest: Path, *, metric: str = "tg",
               lower_is_better: bool = False) -> Path | None:
    """The objective's metric of each candidate (kept green, discarded grey), and the running best."""
    measured = [(i, r, arm_means(r, metric)) for i, r in enumerate(rows, 1)]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")  # no display here, and no window in a terminal run
    import matplotlib.pyplot as plt

    baseline_metrics = (state.get("baseline") or {}).get("metrics") or {}
    base_value = next((v for k, v in baseline_metrics.items() if metric_matches(k, metric)), None) or \
        next((m[0] for _, _, m in measured if m[0]), None)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 3), 4))
    best = base_value
    best_line = []
    for i, r, (a, b) in measured:
        if b is not None:
            colour = "tab:green" if r["decision"] == "keep" else "tab:grey"
            ax.scatter([i], [b], color=colour, zorder=3)
        if r["decision"] == "keep" and r.get("speedup") is not None and best is not None:
            # the speedup is an improvement: a lower-is-better metric shrinks by it
            best = best / (1 + r["speedup"]) if lower_is_better else best * (1 + r["speedup"])
        best_line.append(best)
    if base_value is not None:
        ax.step(range(1, len(rows) + 1), best_line, where="post", color="tab:blue", label=f"running best ({metric})")
        ax.axhline(base_value, color="tab:blue", alpha=0.3, linestyle="--", label="baseline")
    ax.set_xticks(range(1, len(rows) + 1), [r["id"] for r in rows], rotation=45, ha="right")
    ax.set_ylabel(f"{metric} ({'lower' if lower_is_better else 'higher'} is better)")
    ax.set_title("readfirst: experiments (green kept, grey discarded)")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(dest, dpi=100)
    plt.close(fig)
    return dest
