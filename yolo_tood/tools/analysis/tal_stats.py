"""Reading and plotting ``tal_stats.jsonl``, the per-epoch label-assignment statistics of a TOOD run.

The statistics are accumulated by ``yolo_tood.train.tal_stats.TALStats`` inside the loss and written by the trainer
callbacks in ``yolo_tood.integration.callbacks``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ...train.tal_stats import SIZE_LABELS, STATS_FILE

__all__ = ("CLS_KEYS", "PLOT_FILE", "STATS_FILE", "plot_tal_stats", "read_tal_stats")

PLOT_FILE = "tal_stats.png"
CLS_KEYS = {  # the classification-signal keys of a line's "cls" (TALStats.cls_summary) and their plot labels
    "target_mean": "positives: mean target (1 or t_hat)",
    "score_pos_mean": "positives: mean score",
    "score_neg_mean": "negatives: mean best-class score",
    "loss_pos_share": "positives' share of the cls loss",
}


def read_tal_stats(path: str | Path) -> list[dict[str, Any]]:
    """Read ``tal_stats.jsonl``; for an epoch written twice (a resumed run), the last line wins."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["epoch"]] = row
    return [rows[e] for e in sorted(rows)]


def plot_tal_stats(path: str | Path, out: str | Path) -> dict[str, list]:
    """Plot positives per GT and the share of GTs without positives against epoch, overall and per size bucket.

    When the lines carry the classification signal (``cls``), a third panel plots it: the positives' mean target
    and score, the negatives' mean best-class score, and the positives' share of the classification loss.

    Args:
        path (str | Path): ``tal_stats.jsonl``.
        out (str | Path): Output PNG.

    Returns:
        (dict[str, list]): The plotted series: ``epoch``, ``phase``, and per series name (``all`` and the size labels)
            ``pos_per_gt/<name>`` and ``zero_pos_share/<name>`` (NaN where a bucket had no GT), and ``cls/<key>`` for
            the keys of ``CLS_KEYS`` (NaN where a line has none).
    """
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = read_tal_stats(path)
    nan = float("nan")
    data: dict[str, list] = {"epoch": [r["epoch"] for r in rows], "phase": [r.get("phase") for r in rows]}
    for name in ("all", *SIZE_LABELS):
        for key in ("pos_per_gt", "zero_pos_share"):
            values = [(r if name == "all" else r["by_size"][name]).get(key) for r in rows]
            data[f"{key}/{name}"] = [nan if v is None else v for v in values]
    for key in CLS_KEYS:
        values = [(r.get("cls") or {}).get(key) for r in rows]
        data[f"cls/{key}"] = [nan if v is None else v for v in values]
    has_cls = any(not math.isnan(v) for key in CLS_KEYS for v in data[f"cls/{key}"])

    fig, axes = plt.subplots(1, 3 if has_cls else 2, figsize=(16 if has_cls else 11, 4.2), dpi=120)
    titles = {"pos_per_gt": "positive anchors per GT", "zero_pos_share": "share of GTs with no positive"}
    for ax, key in zip(axes[:2], titles):
        ax.plot(data["epoch"], data[f"{key}/all"], "k-o", lw=2, ms=3, label="all GTs")
        for name in SIZE_LABELS:
            if not all(math.isnan(v) for v in data[f"{key}/{name}"]):
                ax.plot(data["epoch"], data[f"{key}/{name}"], "-o", ms=2, label=f"{name} px")
        tal = [e for e, p in zip(data["epoch"], data["phase"]) if p == "TAL"]
        if tal and len(tal) < len(data["epoch"]):  # shade the ATSS warm-up
            ax.axvspan(data["epoch"][0] - 0.5, tal[0] - 0.5, color="0.9", zorder=0, label="ATSS warm-up")
        ax.set_title(titles[key])
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[1].set_ylim(bottom=0)
    if has_cls:
        ax = axes[2]
        for key, label in CLS_KEYS.items():
            ax.plot(data["epoch"], data[f"cls/{key}"], "-o", ms=2, label=label)
        ax.set_yscale("log")
        ax.set_title("classification signal")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].legend(fontsize=7, title="GT size sqrt(w*h)", title_fontsize=7)
    phases = " then ".join(dict.fromkeys(p for p in data["phase"] if p))  # e.g. "ATSS then TAL"
    fig.suptitle(f"TOOD label assignment per epoch (training batches; {phases or 'no batch'})")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return data
