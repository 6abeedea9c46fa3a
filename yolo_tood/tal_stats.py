"""Label-assignment statistics of a TOOD run, epoch by epoch: how many positives each ground truth gets.

TAL's top-k over the alignment metric t = s^alpha * u^beta, then the centre-in-GT test, can leave a small object with
few or no positives (its top-k anchors may all have their centre outside it). ``TOODLoss`` feeds every training-mode
``AssignResult`` to a ``TALStats`` accumulator (a bincount per batch, on the loss's device, no host sync); the trainer
callbacks below read it at the end of each epoch, append one JSON line to ``<save_dir>/tal_stats.jsonl`` and reset it,
and plot ``<save_dir>/tal_stats.png`` beside ``results.png`` at the end of training.

A line of ``tal_stats.jsonl``::

    {"epoch": 1, "phase": "ATSS", "gts": 1843, "pos_per_gt": 6.1, "zero_pos_share": 0.02,
     "by_size": {"<8": {"gts": 210, "pos_per_gt": 2.3, "zero_pos_share": 0.11}, "8-16": {...}, ...}}

``epoch`` is 1-based like ``results.csv``; sizes are sqrt(w * h) of the GT box in input (letterboxed) pixels.
Under DDP only the rank-0 process's batches are counted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .assigner import AssignResult

__all__ = ("SIZE_EDGES", "SIZE_LABELS", "TALStats", "gt_sizes", "on_train_end", "on_train_epoch_end", "plot_tal_stats")

SIZE_EDGES = (8.0, 16.0, 32.0, 96.0)  # bucket edges of sqrt(w * h) in input pixels
SIZE_LABELS = ("<8", "8-16", "16-32", "32-96", ">=96")
STATS_FILE = "tal_stats.jsonl"
PLOT_FILE = "tal_stats.png"


def gt_sizes(gt_bboxes: torch.Tensor) -> torch.Tensor:
    """Return sqrt(w * h) of xyxy boxes (..., 4) -> (...), degenerate boxes giving 0."""
    wh = (gt_bboxes[..., 2:] - gt_bboxes[..., :2]).clamp(min=0)
    return (wh[..., 0] * wh[..., 1]).sqrt()


class TALStats:
    """Accumulate positives per GT, overall and by GT size bucket, over the assignments of one epoch.

    Attributes:
        num_gt (torch.Tensor): (5,) GTs seen per size bucket.
        num_pos (torch.Tensor): (5,) positive anchors assigned to them.
        num_zero (torch.Tensor): (5,) GTs that got no positive.
        phases (set[str]): Assignment phases seen ("ATSS", "TAL").

    Examples:
        >>> stats = TALStats()
        >>> stats.update(res, gt_bboxes, mask_gt, "TAL")  # once per training batch, from TOODLoss
        >>> stats.summary()["pos_per_gt"]
    """

    def __init__(self):
        """Start empty."""
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.num_gt = self.num_pos = self.num_zero = None
        self.phases: set[str] = set()

    @torch.no_grad()
    def update(self, res: AssignResult, gt_bboxes: torch.Tensor, mask_gt: torch.Tensor, phase: str) -> None:
        """Add one batch's assignment.

        Args:
            res (AssignResult): The assignment; ``gt_idx`` (B, A) indexes the padded GT dimension, -1 for background.
            gt_bboxes (torch.Tensor): (B, n_max, 4) padded xyxy GT boxes in input pixels.
            mask_gt (torch.Tensor): (B, n_max, 1) or (B, n_max), nonzero for real GTs.
            phase (str): "ATSS" or "TAL".
        """
        bs, n_max = gt_bboxes.shape[:2]
        device = gt_bboxes.device
        if self.num_gt is None:
            self.num_gt, self.num_pos, self.num_zero = (torch.zeros(len(SIZE_LABELS), device=device) for _ in "abc")
        self.phases.add(phase)
        if n_max == 0:
            return
        # flat GT id b * n_max + j of every anchor, background (-1) sent to an extra bin that is dropped
        offset = torch.arange(bs, device=device)[:, None] * n_max
        flat = torch.where(res.gt_idx >= 0, res.gt_idx + offset, bs * n_max).view(-1)
        pos = torch.bincount(flat, minlength=bs * n_max + 1)[:-1].float()  # (B * n_max,) positives per GT
        valid = mask_gt.reshape(-1) > 0  # (B * n_max,)
        bucket = torch.bucketize(
            gt_sizes(gt_bboxes.float()).reshape(-1), torch.tensor(SIZE_EDGES, device=device), right=True
        )
        bucket = torch.where(valid, bucket, len(SIZE_LABELS))  # padding goes to a dropped bin
        nb = len(SIZE_LABELS) + 1
        self.num_gt += torch.bincount(bucket, minlength=nb)[:-1]
        self.num_pos += torch.bincount(bucket, weights=pos, minlength=nb)[:-1]
        self.num_zero += torch.bincount(bucket, weights=(pos == 0).float(), minlength=nb)[:-1]

    def summary(self) -> dict[str, Any]:
        """Return the statistics so far: GTs, mean positives per GT and share of GTs without positives, by size too.

        Means over no GT are None (JSON null).
        """
        zeros = [0.0] * len(SIZE_LABELS)
        gt, pos, zero = (
            (zeros,) * 3 if self.num_gt is None else (x.tolist() for x in (self.num_gt, self.num_pos, self.num_zero))
        )

        def stats(g: float, p: float, z: float) -> dict[str, Any]:
            return {"gts": int(g), "pos_per_gt": p / g if g else None, "zero_pos_share": z / g if g else None}

        return {
            "phase": "/".join(sorted(self.phases)) or None,
            **stats(sum(gt), sum(pos), sum(zero)),
            "by_size": {label: stats(*v) for label, v in zip(SIZE_LABELS, zip(gt, pos, zero))},
        }


def _tood_criterion(trainer: Any) -> Any:
    """Return the trainer model's TOODLoss (created at the first training step), or None for other models."""
    from ultralytics.utils.torch_utils import unwrap_model

    from .loss import TOODLoss

    criterion = getattr(unwrap_model(trainer.model), "criterion", None)
    return criterion if isinstance(criterion, TOODLoss) else None


def on_train_epoch_end(trainer: Any) -> None:
    """Append the epoch's assignment statistics to ``<save_dir>/tal_stats.jsonl`` and reset the accumulator."""
    from ultralytics.utils import RANK

    criterion = _tood_criterion(trainer)
    if criterion is None:
        return
    if RANK in {-1, 0}:
        line = {"epoch": trainer.epoch + 1, **criterion.tal_stats.summary()}
        path = Path(trainer.save_dir) / STATS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")
    criterion.tal_stats.reset()


def on_train_end(trainer: Any) -> None:
    """Plot ``tal_stats.png`` from the run's ``tal_stats.jsonl`` when the trainer makes plots (``plots=True``)."""
    path = Path(trainer.save_dir) / STATS_FILE
    if getattr(trainer.args, "plots", False) and path.exists():
        plot_tal_stats(path, path.with_name(PLOT_FILE))


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

    Args:
        path (str | Path): ``tal_stats.jsonl``.
        out (str | Path): Output PNG.

    Returns:
        (dict[str, list]): The plotted series: ``epoch``, ``phase``, and per series name (``all`` and the size labels)
            ``pos_per_gt/<name>`` and ``zero_pos_share/<name>`` (NaN where a bucket had no GT).
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

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    titles = {"pos_per_gt": "positive anchors per GT", "zero_pos_share": "share of GTs with no positive"}
    for ax, key in zip(axes, titles):
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
    axes[0].legend(fontsize=7, title="GT size sqrt(w*h)", title_fontsize=7)
    phases = " then ".join(dict.fromkeys(p for p in data["phase"] if p))  # e.g. "ATSS then TAL"
    fig.suptitle(f"TOOD label assignment per epoch (training batches; {phases or 'no batch'})")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return data
