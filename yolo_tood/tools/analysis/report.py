"""Report tables and plots of the analysis: number formatting, markdown tables, mean ± std, curves.

Shared by the diagnostics and ``yolo-tood compare`` (yolo_tood/tools/commands), so a figure is formatted one way
everywhere.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .alignment import AlignmentResult

__all__ = (
    "ALIGNMENT_COLUMNS",
    "BUDGET_COLUMNS",
    "alignment_table",
    "curve_gap",
    "fmt",
    "json_clean",
    "markdown_table",
    "mean_std",
    "plot_curves",
    "pm",
)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Render a markdown table from a header and rows of cells (strings).

    Examples:
        >>> print(markdown_table(["a", "b"], [["1", "2"]]))
        | a | b |
        |---|---|
        | 1 | 2 |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def mean_std(values: list[float | None]) -> dict[str, float | int | None]:
    """Return ``{"mean", "std", "n"}`` of the finite values; std is the sample std (ddof=1), None for n < 2."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def pm(ms: dict[str, Any] | None, digits: int = 3) -> str:
    """Format a ``mean_std`` dict as ``mean ± std`` (just the mean for one value, a dash for none)."""
    if not ms or ms["mean"] is None:
        return "-"
    m, s = ms["mean"], ms["std"]
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def json_clean(obj: Any) -> Any:
    """Replace NaN floats by None recursively so the JSON output is standard JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    return obj


def plot_curves(path: str | Path, curves: dict[str, list[list[float]]], ylabel: str = "val mAP50-95") -> None:
    """Plot a per-epoch metric per model: the mean over seeds and a shaded ±1 std band.

    Args:
        path (str | Path): Output PNG.
        curves (dict[str, list[list[float]]]): Per model, one list of per-epoch values per seed (from results.csv).
        ylabel (str): Label of the metric.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, seeds in curves.items():
        n = min(len(c) for c in seeds)  # runs stopped early are truncated to the common length
        y = np.array([c[:n] for c in seeds])
        x = np.arange(1, n + 1)
        mean = y.mean(0)
        runs = f"{len(seeds)} seeds, mean and std" if len(seeds) > 1 else "1 seed"
        (line,) = ax.plot(x, mean, marker="o" if n < 20 else None, label=f"{label} ({runs})")
        if len(seeds) > 1:
            std = y.std(0, ddof=1)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def curve_gap(
    base: list[list[float]], other: list[list[float]], after: int = 10, margin: float = 0.01
) -> dict[str, Any]:
    """Compare two per-epoch curves (mean over seeds): where ``other`` falls more than ``margin`` below ``base``.

    The generalisation issue's curve goal ("never more than 1 point below stock after the first 10 epochs") as a
    number: the seed means are compared epoch by epoch, from epoch ``after + 1`` to the last epoch both have.

    Args:
        base (list[list[float]]): Per seed, the reference model's per-epoch values (e.g. stock's val mAP50-95).
        other (list[list[float]]): Per seed, the compared model's per-epoch values.
        after (int): Epochs excluded from the start (1-based epochs ``1..after``).
        margin (float): Allowed deficit (0.01 = 1 point of mAP).

    Returns:
        (dict[str, Any]): ``below`` the 1-based epochs where mean(other) < mean(base) - margin, ``worst`` the most
            negative mean(other) - mean(base) after ``after`` (None without such epochs), ``worst_epoch`` its epoch,
            ``epochs`` the epochs compared, ``seeds`` the seed counts (base, other).

    Examples:
        >>> curve_gap([[0.5, 0.5, 0.5]], [[0.25, 0.375, 0.75]], after=1)
        {'below': [2], 'worst': -0.125, 'worst_epoch': 2, 'epochs': 3, 'seeds': (1, 1)}
    """
    n = min(len(c) for c in (*base, *other)) if base and other else 0
    diffs = [
        statistics.fmean(c[e] for c in other) - statistics.fmean(c[e] for c in base) for e in range(after, n)
    ]  # index e is epoch e + 1
    worst = min(diffs) if diffs else None
    return {
        "below": [after + 1 + i for i, d in enumerate(diffs) if d < -margin],
        "worst": worst,
        "worst_epoch": after + 1 + diffs.index(worst) if diffs else None,
        "epochs": n,
        "seeds": (len(base), len(other)),
    }


ALIGNMENT_COLUMNS = ("model", "PCC top-50", "IoU top-10", "correct", "duplicate", "error", "redundant", "objects")
BUDGET_COLUMNS = ("model", "conf", "detections", "correct", "duplicate", "error", "redundant", "objects")


def fmt(x: float | None, digits: int = 3) -> str:
    """Format a float for a table; NaN and None become a dash."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def alignment_table(results: Mapping[str, AlignmentResult], map_column: bool = True, budget: bool = False) -> str:
    """Render alignment results of several models side by side as a markdown table, like the paper's Table 7.

    Args:
        results (Mapping[str, AlignmentResult]): Results keyed by model name.
        map_column (bool): Add the validator's mAP50-95 where ``metrics`` has it.
        budget (bool): Render the equal-budget counts (threshold leaving one detection per object) instead of the
            rank statistics and the counts at the fixed threshold.

    Returns:
        (str): The markdown table.

    Examples:
        >>> print(alignment_table({"stock": evaluate_alignment(...), "tood": evaluate_alignment(...)}))
    """
    columns = BUDGET_COLUMNS if budget else ALIGNMENT_COLUMNS
    header = [*columns, "mAP50-95"] if map_column else list(columns)
    rows = []
    for name, r in results.items():
        if budget:
            b = r.budget
            cells = [name, fmt(b.get("conf"), 4), *(str(b.get(k, "-")) for k in BUDGET_COLUMNS[2:-1])]
            cells.append(str(r.num_objects))
        else:
            cells = [name, fmt(r.pcc_top50), fmt(r.iou_top10)]
            cells += [str(x) for x in (r.correct, r.duplicate, r.error, r.redundant, r.num_objects)]
        if map_column:
            cells.append(fmt(r.metrics.get("metrics/mAP50-95(B)")))
        rows.append(cells)
    return markdown_table(header, rows)
