"""The report's figures, drawn on plain matplotlib Figures (Agg canvas, no pyplot state), so they
are safe to draw from a worker thread and never open a window."""

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# outcome -> (axis label, divisor applied before plotting)
VIOLINS: dict[str, tuple[str, float]] = {
    "document_quality": ("Document quality (1-10)", 1.0),
    "overall_interaction": ("Overall interaction (1-10)", 1.0),
    "wall_seconds": ("Time, consent to completion (minutes)", 60.0),
    "active_seconds": ("Active time (minutes)", 60.0),
}
DPI = 100


def _new_figure(width: float = 6.4, height: float = 4.0) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def violin(participants: pd.DataFrame, outcome: str, arms: list[str], path: Path) -> bool:
    """Violin per arm of one outcome with its mean marked; False if no arm has two values."""
    label, divisor = VIOLINS.get(outcome, (outcome, 1.0))
    groups = [
        participants.loc[participants["arm"] == arm, outcome].dropna().to_numpy(float) / divisor
        for arm in arms
    ]
    # A KDE needs two distinct values; arms without them are shown as empty slots.
    drawable = [i for i, g in enumerate(groups) if g.size > 1 and np.ptp(g) > 0]
    if not drawable:
        return False
    figure = _new_figure()
    axes = figure.add_subplot()
    positions = np.arange(1, len(arms) + 1)
    axes.violinplot(
        [groups[i] for i in drawable],
        positions=positions[drawable],
        showmedians=True,
        showextrema=False,
    )
    means = [g.mean() if g.size else np.nan for g in groups]
    axes.scatter(positions, means, marker="D", color="black", zorder=3, label="mean")
    axes.set_xticks(
        positions, [f"{arm}\n(n={g.size})" for arm, g in zip(arms, groups, strict=True)]
    )
    axes.set_ylabel(label)
    axes.set_title(label)
    axes.legend(loc="best")
    figure.savefig(path)
    return True


def trajectories(means: pd.DataFrame, arms: list[str], path: Path, level: float) -> bool:
    """Mean turn rating per checkpoint per arm with its confidence band; False if no ratings."""
    if means.empty:
        return False
    figure = _new_figure()
    axes = figure.add_subplot()
    for arm in arms:
        rows = means[means["arm"] == arm].sort_values("after_turn")
        if rows.empty:
            continue
        x = rows["after_turn"].to_numpy(float)
        line = axes.plot(x, rows["mean"].to_numpy(float), marker="o", label=str(arm))[0]
        axes.fill_between(
            x,
            rows["ci_low"].to_numpy(float),
            rows["ci_high"].to_numpy(float),
            color=line.get_color(),
            alpha=0.2,
        )
    axes.set_xlabel("Rating given after turn")
    axes.set_ylabel(f"Mean rating (1-10), {level:.0%} bootstrap CI")
    axes.set_title("Turn ratings over the conversation")
    axes.set_xticks(sorted(means["after_turn"].unique()))
    axes.legend(loc="best")
    figure.savefig(path)
    return True
