"""Label-assignment statistics of a TOOD run, epoch by epoch: how many positives each ground truth gets.

TAL's top-k over the alignment metric t = s^alpha * u^beta, then the centre-in-GT test, can leave a small object with
few or no positives (its top-k anchors may all have their centre outside it). ``TOODLoss`` feeds every training-mode
``AssignResult`` to a ``TALStats`` accumulator (a bincount per batch, on the loss's device, no host sync); the trainer
callbacks (``yolo_tood.integration.callbacks``) read it at the end of each epoch, append one JSON line to
``<save_dir>/tal_stats.jsonl`` (``STATS_FILE``) and reset it. Its picture is the tools' (``yolo-tood tal-stats RUN``,
``yolo_tood.tools.analysis.tal_stats``).

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

from typing import Any

import torch

from .assigner import AssignResult, gt_sizes


def weighted_count(index: torch.Tensor, weights: torch.Tensor, bins: int) -> torch.Tensor:
    """``torch.bincount(index, weights, minlength=bins)`` as a one-hot product, deterministic on CUDA.

    CUDA's weighted bincount adds floats atomically, so ``deterministic=True`` makes torch warn at every step; here
    ``index`` holds one entry per GT slot (B * n_max), so the one-hot matrix is small.

    Args:
        index (torch.Tensor): (N,) bin of each entry, in [0, bins).
        weights (torch.Tensor): (N,) float weight of each entry.
        bins (int): number of bins.

    Returns:
        (torch.Tensor): (bins,) the summed weights per bin.
    """
    return weights @ torch.nn.functional.one_hot(index, bins).to(weights.dtype)


__all__ = ("SIZE_EDGES", "SIZE_LABELS", "STATS_FILE", "TALStats", "gt_sizes")

STATS_FILE = "tal_stats.jsonl"  # in the run's save_dir, one line per epoch

SIZE_EDGES = (8.0, 16.0, 32.0, 96.0)  # bucket edges of sqrt(w * h) in input pixels
SIZE_LABELS = ("<8", "8-16", "16-32", "32-96", ">=96")


class TALStats:
    """Accumulate positives per GT, overall and by GT size bucket, over the assignments of one epoch.

    Attributes:
        num_gt (torch.Tensor): (5,) GTs seen per size bucket.
        num_pos (torch.Tensor): (5,) positive anchors assigned to them.
        num_zero (torch.Tensor): (5,) GTs that got no positive.
        class_counts (torch.Tensor | None): (3, nc) GTs, positives and zero-positive GTs per class (when the loss passes
            the GT labels).
        phases (set[str]): Assignment phases seen ("ATSS", "TAL").
        cls_sums (torch.Tensor | None): (7,) sums of the classification signal: positives, their targets, their scores,
            negatives, their best-class scores, the positives' loss, the whole loss (see ``update_cls``).

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
        self.class_counts = None
        self.cls_sums = None
        self.phases: set[str] = set()

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
        self.num_pos += weighted_count(bucket, pos, nb)[:-1]
        self.num_zero += weighted_count(bucket, (pos == 0).float(), nb)[:-1]
        if gt_labels is not None and nc > 0:
            cls = torch.where(valid, gt_labels.reshape(-1).long(), nc)  # padding to a dropped bin
            counts = torch.stack(
                [weighted_count(cls, w, nc + 1)[:-1] for w in (valid.float(), pos, (pos == 0).float())]
            )  # (3, nc)
            self.class_counts = counts if self.class_counts is None else self.class_counts + counts

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

        Args:
            scores (torch.Tensor): (B, A, nc) predicted scores (probabilities).
            target (torch.Tensor): (B, A, nc) classification targets: the positive's target at its class, 0 elsewhere.
            loss (torch.Tensor): (B, A, nc) element-wise classification loss, before normalisation.
            fg_mask (torch.Tensor): (B, A) True for positive anchors.
            labels (torch.Tensor): (B, A) class of each anchor's GT (read at the positives only).
        """
        fg = fg_mask.bool()
        cls = labels[fg].long()[:, None]  # (P, 1) class of each positive's GT
        pos_scores = scores[fg].gather(1, cls)  # (P, 1) score of the assigned class
        pos_target = target[fg].gather(1, cls)  # (P, 1)
        pos_loss = loss[fg].gather(1, cls)  # (P, 1)
        neg_best = scores[~fg].amax(-1) if scores.shape[-1] else scores.new_zeros(0)  # (N,) best class of negatives
        sums = torch.stack(
            [
                fg.sum().float(),
                pos_target.sum().float(),
                pos_scores.sum().float(),
                (~fg).sum().float(),
                neg_best.sum().float(),
                pos_loss.sum().float(),
                loss.sum().float(),
            ]
        )
        self.cls_sums = sums if self.cls_sums is None else self.cls_sums + sums

    def cls_summary(self) -> dict[str, float | None] | None:
        """Return the classification signal so far (means over the epoch's batches), or None if nothing was added."""
        if self.cls_sums is None:
            return None
        n_pos, t_sum, s_pos, n_neg, s_neg, l_pos, l_all = self.cls_sums.tolist()
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
        gt, pos, zero = (
            (zeros,) * 3 if self.num_gt is None else (x.tolist() for x in (self.num_gt, self.num_pos, self.num_zero))
        )

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
