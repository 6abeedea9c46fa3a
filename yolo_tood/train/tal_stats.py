"""Label-assignment statistics of a TOOD run, epoch by epoch: how many positives each ground truth gets.

TAL's top-k over the alignment metric t = s^alpha * u^beta, then the centre-in-GT test, can leave a small object with
few or no positives (its top-k anchors may all have their centre outside it). ``TOODLoss`` feeds every training-mode
``AssignResult`` to a ``TALStats`` accumulator (a few dense ops per batch on the loss's device, no host sync: no
``bincount``, which reads its input's min and max on the host on CUDA, and no tensor built from host values, a
host-to-device copy that waits for the device); the trainer
callbacks (``yolo_tood.integration.callbacks``) read it at the end of each epoch, append one JSON line to
``<save_dir>/tal_stats.jsonl`` (``STATS_FILE``) and reset it. With ``plots=True`` they draw it at the end of training,
``tal_stats.png`` (``PLOT_FILE``, ``plot_tal_stats``) beside ultralytics' ``results.png``; ``yolo-tood tal-stats RUN``
draws it from any run's file.

The classification signal of the same batches is kept beside it (``TALStats.update_cls``): the mean target of the
positives (1 in the ATSS warm-up, t_hat with TAL, whose sum is the loss normaliser), the mean predicted score of the
positives for their class and of the negatives (best class), and the share of the classification loss that comes
from the positives (the rest pushes negatives down). How fast these move in the first epochs is what tells a head
that learns to classify slowly from one whose targets are small.

A line of ``tal_stats.jsonl``::

    {"epoch": 1, "phase": "ATSS", "gts": 1843, "pos_per_gt": 6.1, "zero_pos_share": 0.02,
     "by_size": {"<8": {"gts": 210, "pos_per_gt": 2.3, "zero_pos_share": 0.11}, "8-16": {...}, ...},
     "by_class": {"0": {"gts": 950, "pos_per_gt": 6.4, "zero_pos_share": 0.01}, ...},
     "cls": {"target_mean": 1.0, "score_pos_mean": 0.21, "score_neg_mean": 0.012, "loss_pos_share": 0.35}}

``epoch`` is 1-based like ``results.csv``; sizes are sqrt(w * h) of the GT box in input (letterboxed) pixels;
``by_class`` is keyed by class index (as a string) and lists the classes seen.
Under DDP only the rank-0 process's batches are counted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .assigner import AssignResult, gt_sizes

__all__ = (
    "CLS_KEYS",
    "PLOT_FILE",
    "SIZE_EDGES",
    "SIZE_LABELS",
    "STATS_FILE",
    "TALStats",
    "gt_sizes",
    "plot_tal_stats",
    "read_tal_stats",
)

STATS_FILE = "tal_stats.jsonl"  # in the run's save_dir, one line per epoch
PLOT_FILE = "tal_stats.png"  # its picture, beside it
CLS_KEYS = {  # the classification-signal keys of a line's "cls" (TALStats.cls_summary) and their plot labels
    "target_mean": "positives: mean target (1 or t_hat)",
    "score_pos_mean": "positives: mean score",
    "score_neg_mean": "negatives: mean best-class score",
    "loss_pos_share": "positives' share of the cls loss",
}

SIZE_EDGES = (8.0, 16.0, 32.0, 96.0)  # bucket edges of sqrt(w * h) in input pixels
SIZE_LABELS = ("<8", "8-16", "16-32", "32-96", ">=96")


class TALStats:
    """Accumulate positives per GT, overall and by GT size bucket, over the assignments of one epoch.

    Attributes:
        size_counts (torch.Tensor | None): (3, 5) GTs seen, positive anchors assigned to them and GTs that got no
            positive, per size bucket.
        class_counts (torch.Tensor | None): (3, nc) the same per class (when the loss passes the GT labels).
        phases (set[str]): Assignment phases seen ("ATSS", "TAL").
        cls_sums (torch.Tensor | None): (2, 7) sums of the classification signal over the positive (row 0) and the
            negative (row 1) anchors (see ``update_cls``).

    Examples:
        >>> stats = TALStats()
        >>> stats.update(res, gt_bboxes, mask_gt, "TAL")  # once per training batch, from TOODLoss
        >>> stats.summary()["pos_per_gt"]
    """

    def __init__(self):
        """Start empty."""
        self._consts = None  # device constants, kept across resets (see _constants)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.size_counts = None
        self.class_counts = None
        self.cls_sums = None
        self.phases: set[str] = set()

    def _constants(self, device: torch.device, nc: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the size-bucket edges (4,) and a float arange (>= max(5, nc),) on ``device``, made once: built from
        host values at every step they would be a host-to-device copy, which waits for the device on CUDA."""
        n = max(len(SIZE_LABELS), nc)
        if self._consts is None or self._consts[0].device != device or len(self._consts[1]) < n:
            self._consts = torch.tensor(SIZE_EDGES, device=device), torch.arange(n, device=device, dtype=torch.float)
        return self._consts

    @torch.no_grad()
    def update(
        self,
        res: AssignResult,
        gt_bboxes: torch.Tensor,
        mask_gt: torch.Tensor,
        phase: str,
        gt_labels: torch.Tensor | None = None,
        nc: int = 0,
    ) -> None:
        """Add one batch's assignment.

        Args:
            res (AssignResult): The assignment; ``gt_idx`` (B, A) indexes the padded GT dimension, -1 for background.
            gt_bboxes (torch.Tensor): (B, n_max, 4) padded xyxy GT boxes in input pixels.
            mask_gt (torch.Tensor): (B, n_max, 1) or (B, n_max), nonzero for real GTs.
            phase (str): "ATSS" or "TAL".
            gt_labels (torch.Tensor, optional): (B, n_max, 1) GT classes, for the per-class counts.
            nc (int): Number of classes (the per-class counts' width); needed with ``gt_labels``.
        """
        bs, n_max = gt_bboxes.shape[:2]
        device, nb = gt_bboxes.device, len(SIZE_LABELS)
        with_classes = gt_labels is not None and nc > 0
        edges, bins = self._constants(device, nc if with_classes else 0)
        if self.size_counts is None:
            self.size_counts = torch.zeros(3, nb, device=device)
        self.phases.add(phase)
        if n_max == 0:
            return
        # positives per GT slot (B, n_max): background (-1) adds to an extra column, -1 % (n_max + 1) = n_max
        ones = torch.ones(res.gt_idx.shape, device=device)
        pos = torch.zeros(bs, n_max + 1, device=device).scatter_add_(1, res.gt_idx % (n_max + 1), ones)[:, :n_max]
        valid = mask_gt.reshape(bs, n_max) > 0
        weights = (torch.stack((valid, pos, pos == 0)) * valid).view(3, -1)  # (3, B * n_max) GT, positives, none
        bucket = torch.bucketize(gt_sizes(gt_bboxes.float()).reshape(-1, 1), edges, right=True)  # (B * n_max, 1)
        onehot = bucket == bins[:nb]  # (B * n_max, 5)
        if with_classes:  # padding slots may carry any class: their weights are 0
            onehot = torch.cat((onehot, gt_labels.reshape(-1, 1) == bins[:nc]), 1)  # (B * n_max, 5 + nc)
        counts = weights @ onehot.float()  # (3, 5 [+ nc]), one product for every count
        self.size_counts += counts[:, :nb]
        if with_classes:
            self.class_counts = counts[:, nb:] if self.class_counts is None else self.class_counts + counts[:, nb:]

    @torch.no_grad()
    def update_cls(
        self,
        scores: torch.Tensor,
        target: torch.Tensor,
        loss: torch.Tensor,
        fg_mask: torch.Tensor,
        labels: torch.Tensor,
    ) -> None:
        """Add one batch's classification signal.

        Per anchor, the columns (anchor is positive, is negative, target, score and loss at its GT's class, best
        score, loss over the classes) are summed over the positives (row 0 of ``cls_sums``) and over the negatives
        (row 1) in one product with the (2, B * A) foreground / background weights: no index of the positives (a
        host sync).

        Args:
            scores (torch.Tensor): (B, A, nc) predicted scores (probabilities).
            target (torch.Tensor): (B, A, nc) classification targets: the positive's target at its class, 0 elsewhere.
            loss (torch.Tensor): (B, A, nc) element-wise classification loss, before normalisation.
            fg_mask (torch.Tensor): (B, A) True for positive anchors.
            labels (torch.Tensor): (B, A) class of each anchor's GT (read at the positives only).
        """
        fg = fg_mask.to(scores.dtype)
        weights = torch.stack((fg, 1 - fg))  # (2, B, A)
        cls = labels.long().clamp(0, scores.shape[-1] - 1)[..., None]  # (B, A, 1); negatives read a class, weight 0
        columns = (target.gather(-1, cls), scores.gather(-1, cls), loss.gather(-1, cls))  # 3 x (B, A, 1)
        best, total = scores.amax(-1, keepdim=True), loss.sum(-1, keepdim=True)  # (B, A, 1)
        per_anchor = torch.cat((weights.permute(1, 2, 0), *columns, best, total), -1).to(scores.dtype)  # (B, A, 7)
        sums = weights.view(2, -1) @ per_anchor.view(-1, 7)  # (2, 7)
        self.cls_sums = sums if self.cls_sums is None else self.cls_sums + sums

    def cls_summary(self) -> dict[str, float | None] | None:
        """Return the classification signal so far (means over the epoch's batches), or None if nothing was added."""
        if self.cls_sums is None:
            return None
        pos, neg = self.cls_sums.tolist()  # the columns of update_cls, summed over the positives / the negatives
        n_pos, t_sum, s_pos, l_pos, l_all = pos[0], pos[2], pos[3], pos[4], pos[6] + neg[6]
        n_neg, s_neg = neg[1], neg[5]
        return {
            "target_mean": t_sum / n_pos if n_pos else None,
            "score_pos_mean": s_pos / n_pos if n_pos else None,
            "score_neg_mean": s_neg / n_neg if n_neg else None,
            "loss_pos_share": l_pos / l_all if l_all else None,
        }

    def summary(self) -> dict[str, Any]:
        """Return the statistics so far: GTs, mean positives per GT and share of GTs without positives, by size too.

        Means over no GT are None (JSON null).
        """
        zeros = [0.0] * len(SIZE_LABELS)
        gt, pos, zero = (zeros,) * 3 if self.size_counts is None else self.size_counts.tolist()

        def stats(g: float, p: float, z: float) -> dict[str, Any]:
            return {"gts": int(g), "pos_per_gt": p / g if g else None, "zero_pos_share": z / g if g else None}

        return {
            "phase": "/".join(sorted(self.phases)) or None,
            **stats(sum(gt), sum(pos), sum(zero)),
            "by_size": {label: stats(*v) for label, v in zip(SIZE_LABELS, zip(gt, pos, zero))},
            "by_class": {}
            if self.class_counts is None
            else {str(c): stats(*v) for c, v in enumerate(zip(*self.class_counts.tolist())) if v[0] > 0},
            "cls": self.cls_summary(),
        }


def read_tal_stats(path: str | Path) -> list[dict[str, Any]]:
    """Read ``tal_stats.jsonl``; for an epoch written twice (a resumed run), the last line wins."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["epoch"]] = row
    return [rows[e] for e in sorted(rows)]


def _series(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Return the series ``plot_tal_stats`` plots from the lines of ``tal_stats.jsonl`` (NaN for a missing value)."""
    nan = float("nan")
    data: dict[str, list] = {"epoch": [r["epoch"] for r in rows], "phase": [r.get("phase") for r in rows]}
    for name in ("all", *SIZE_LABELS):
        for key in ("pos_per_gt", "zero_pos_share"):
            values = [(r if name == "all" else r["by_size"][name]).get(key) for r in rows]
            data[f"{key}/{name}"] = [nan if v is None else v for v in values]
    for key in CLS_KEYS:
        values = [(r.get("cls") or {}).get(key) for r in rows]
        data[f"cls/{key}"] = [nan if v is None else v for v in values]
    return data


def _plot_assignment(ax: Any, data: dict[str, list], key: str, title: str) -> None:
    """Draw one assignment series (``pos_per_gt`` or ``zero_pos_share``) overall and per size bucket on ``ax``."""
    epochs = data["epoch"]
    ax.plot(epochs, data[f"{key}/all"], "k-o", lw=2, ms=3, label="all GTs")
    for i, name in enumerate(SIZE_LABELS):  # a bucket keeps its colour when others have no GT
        if not all(math.isnan(v) for v in data[f"{key}/{name}"]):  # buckets without a GT in any epoch stay out
            ax.plot(epochs, data[f"{key}/{name}"], "-o", color=f"C{i}", ms=2, label=f"{name} px")
    tal = [e for e, p in zip(epochs, data["phase"]) if p == "TAL"]
    if tal and len(tal) < len(epochs):  # shade the ATSS warm-up
        ax.axvspan(epochs[0] - 0.5, tal[0] - 0.5, color="0.9", zorder=0, label="ATSS warm-up")
    ax.set_title(title)


def _plot_cls(ax: Any, data: dict[str, list]) -> None:
    """Draw the classification signal (``CLS_KEYS``) on a log scale on ``ax``."""
    for key, label in CLS_KEYS.items():
        ax.plot(data["epoch"], data[f"cls/{key}"], "-o", ms=2, label=label)
    ax.set_yscale("log")
    ax.set_title("classification signal")
    ax.legend(fontsize=7)


def plot_tal_stats(path: str | Path, out: str | Path) -> dict[str, list]:
    """Plot positives per GT and the share of GTs without positives against epoch, overall and per size bucket.

    When the lines carry the classification signal (``cls``), a third panel plots it: the positives' mean target
    and score, the negatives' mean best-class score, and the positives' share of the classification loss. The figure
    is drawn without pyplot, so the caller's matplotlib backend and open figures are left alone (it runs inside
    training).

    Args:
        path (str | Path): ``tal_stats.jsonl``.
        out (str | Path): Output PNG.

    Returns:
        (dict[str, list]): The plotted series: ``epoch``, ``phase``, and per series name (``all`` and the size labels)
            ``pos_per_gt/<name>`` and ``zero_pos_share/<name>`` (NaN where a bucket had no GT), and ``cls/<key>`` for
            the keys of ``CLS_KEYS`` (NaN where a line has none).

    Examples:
        >>> data = plot_tal_stats("runs/detect/train/tal_stats.jsonl", "runs/detect/train/tal_stats.png")
        >>> data["pos_per_gt/all"]  # one value per epoch
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    data = _series(read_tal_stats(path))
    has_cls = any(not math.isnan(v) for key in CLS_KEYS for v in data[f"cls/{key}"])
    fig = Figure(figsize=(16 if has_cls else 11, 4.2), dpi=120)
    axes = fig.subplots(1, 3 if has_cls else 2)
    _plot_assignment(axes[0], data, "pos_per_gt", "positive anchors per GT")
    _plot_assignment(axes[1], data, "zero_pos_share", "share of GTs with no positive")
    axes[0].legend(fontsize=7, title="GT size sqrt(w*h)", title_fontsize=7)
    axes[1].set_ylim(bottom=0)
    if has_cls:
        _plot_cls(axes[2], data)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
    phases = " then ".join(dict.fromkeys(p for p in data["phase"] if p))  # e.g. "ATSS then TAL"
    fig.suptitle(f"TOOD label assignment per epoch (training batches; {phases or 'no batch'})")
    fig.tight_layout()
    fig.savefig(out)
    return data
