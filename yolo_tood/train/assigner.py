"""Label assignment for TOOD: the Task-aligned assigner (TAL) and the ATSS assigner of the warm-up epochs.

Both follow MMDetection's TOOD (``TaskAlignedAssigner`` / ``ATSSAssigner`` in mmdet 3.x) but work on ultralytics'
padded batch layout (anchor points in pixels, GTs padded to ``(B, n_max, ...)`` with ``mask_gt``), and both are built
to stay small in memory: they loop over images and over chunks of GTs, so no ``(B, n_max, A)`` tensor is ever made.
Only up to ``topk`` candidate pairs per GT survive a chunk; everything after that (centre-in-GT test, the
one-GT-per-anchor rule, per-GT normalisation) works on those pairs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from ultralytics.utils.metrics import bbox_iou

from .hyp import TOPK_MODES

__all__ = (
    "ATSSAssigner",
    "AssignResult",
    "TOODTaskAlignedAssigner",
    "dynamic_topk",
    "gt_sizes",
    "keep_best_per_gt",
    "widen_small_boxes",
)

# An anchor centre must be at least this many pixels inside every side of a GT to be a positive of that GT
# (as MMDetection's TaskAlignedAssigner / ATSSAssigner: min(l, t, r, b) > 0.01).
CENTER_MARGIN = 0.01
# GT sizes sqrt(w * h) in pixels at which the dynamic top-k reaches its largest / smallest k
DYNAMIC_TOPK_SMALL, DYNAMIC_TOPK_LARGE = 8.0, 96.0


def gt_sizes(gt_bboxes: torch.Tensor) -> torch.Tensor:
    """Return sqrt(w * h) of xyxy boxes (..., 4) -> (...), degenerate boxes giving 0."""
    wh = (gt_bboxes[..., 2:] - gt_bboxes[..., :2]).clamp(min=0)
    return (wh[..., 0] * wh[..., 1]).sqrt()


def dynamic_topk(sizes: torch.Tensor, k_min: int, k_max: int) -> torch.Tensor:
    """Return a per-GT number of TAL candidates from the GT size: more for small objects, fewer for large ones.

    Rule (ours; the YOLOv8-TOOD write-up's exact formula could not be found): with s = sqrt(w * h) in pixels,
    k = round(k_max - (k_max - k_min) * r), r = (log s - log 8) / (log 96 - log 8) clipped to [0, 1]. So k = k_max
    for s <= 8 px, k = k_min for s >= 96 px, and k falls linearly in log(size) in between (monotone non-increasing).
    Small objects get more candidates because few anchors of a small GT have their centre inside it, and candidates
    outside are dropped after the top-k; the defaults 5..21 stay within the range where the paper found AP flat.

    Args:
        sizes (torch.Tensor): (n,) GT sizes sqrt(w * h) in pixels.
        k_min (int): k for large GTs.
        k_max (int): k for small GTs.

    Returns:
        (torch.Tensor): (n,) int64 k per GT in [k_min, k_max].

    Examples:
        >>> dynamic_topk(torch.tensor([4.0, 8.0, 96.0, 300.0]), 5, 21)
        tensor([21, 21,  5,  5])
    """
    lo, hi = math.log(DYNAMIC_TOPK_SMALL), math.log(DYNAMIC_TOPK_LARGE)
    r = ((sizes.float().clamp(min=1e-6).log() - lo) / (hi - lo)).clamp(0, 1)
    return (k_max - (k_max - k_min) * r).round().long()


class AssignResult(NamedTuple):
    """Per-anchor assignment of a batch, shared by both assigners.

    Attributes:
        fg_mask (torch.Tensor): (B, A) bool, True for positive (foreground) anchors.
        gt_idx (torch.Tensor): (B, A) int64, index of the assigned GT in the padded GT dimension, -1 for background.
        labels (torch.Tensor): (B, A) int64, class of the assigned GT, ``num_classes`` for background (mmdet's
            convention).
        bboxes (torch.Tensor): (B, A, 4) xyxy box of the assigned GT (same units as the GTs), zeros for background.
        metrics (torch.Tensor): (B, A) float32 soft target. TAL: the normalised alignment metric
            t_hat = t / max(t) * max(IoU) over the GT's positives, in [0, 1]. ATSS: 1.0 (mmdet's TOOD uses the box
            weights of ATSSHead, ones, as the "metric" of the warm-up). 0 for background.
        ious (torch.Tensor): (B, A) float32 IoU with the assigned GT (TAL: of the predicted box; ATSS: of the
            square anchor box), 0 for background.
    """

    fg_mask: torch.Tensor
    gt_idx: torch.Tensor
    labels: torch.Tensor
    bboxes: torch.Tensor
    metrics: torch.Tensor
    ious: torch.Tensor


def _empty_result(bs: int, na: int, nc: int, box_dtype: torch.dtype, device: torch.device) -> AssignResult:
    """Return an all-background AssignResult for ``bs`` images of ``na`` anchors."""
    return AssignResult(
        fg_mask=torch.zeros(bs, na, dtype=torch.bool, device=device),
        gt_idx=torch.full((bs, na), -1, dtype=torch.long, device=device),
        labels=torch.full((bs, na), nc, dtype=torch.long, device=device),
        bboxes=torch.zeros(bs, na, 4, dtype=box_dtype, device=device),
        metrics=torch.zeros(bs, na, dtype=torch.float32, device=device),
        ious=torch.zeros(bs, na, dtype=torch.float32, device=device),
    )


def centers_inside(points: torch.Tensor, boxes: torch.Tensor, margin: float = CENTER_MARGIN) -> torch.Tensor:
    """Return whether each point lies inside its box by more than ``margin`` on every side.

    Args:
        points (torch.Tensor): (..., 2) xy points.
        boxes (torch.Tensor): (..., 4) xyxy boxes, broadcastable against ``points``.
        margin (float): Minimal distance to every side.

    Returns:
        (torch.Tensor): (...) bool.
    """
    lt = points - boxes[..., :2]  # (..., 2) distances to the left/top sides
    rb = boxes[..., 2:] - points  # (..., 2) distances to the right/bottom sides
    return torch.minimum(lt.amin(-1), rb.amin(-1)) > margin


def widen_small_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Return xyxy ``boxes`` (..., 4) with every side shorter than ``min_size`` widened to it about the box centre.

    For the centre-in-GT test only, as ultralytics' STAL (``TaskAlignedAssigner.select_candidates_in_gts`` widens GT
    sides below ``stride[1]`` = 16 px): a GT smaller than a stride can fall between anchor centres and then gets no
    positive under the strict test of MMDetection's TOOD. ``min_size`` 0 returns ``boxes`` unchanged (the reference).

    Examples:
        >>> widen_small_boxes(torch.tensor([[10.0, 10.0, 14.0, 40.0]]), 16.0)
        tensor([[ 4., 10., 20., 40.]])
    """
    if min_size <= 0:
        return boxes
    centre, wh = (boxes[..., :2] + boxes[..., 2:]) / 2, (boxes[..., 2:] - boxes[..., :2]).clamp(min=min_size)
    return torch.cat((centre - wh / 2, centre + wh / 2), -1)


def keep_best_per_gt(gt_ids: torch.Tensor, metrics: torch.Tensor, k: int) -> torch.Tensor:
    """Keep, for every GT, only its ``k`` pairs of largest metric (ties to the earlier pair).

    The second top-k of ultralytics' ``TaskAlignedAssigner(topk2=...)`` (``select_highest_overlaps``), which YOLO26's
    one-to-one branch trains with (``E2ELoss``: ``tal_topk=7, tal_topk2=1``): applied to the positives left after the
    multi-GT resolution, as there.

    Args:
        gt_ids (torch.Tensor): (P,) int64 GT index of each positive pair.
        metrics (torch.Tensor): (P,) alignment metric t of each pair.
        k (int): Pairs kept per GT.

    Returns:
        (torch.Tensor): (P,) bool, True for the pairs kept.
    """
    order = torch.argsort(metrics, descending=True, stable=True)
    order = order[torch.argsort(gt_ids[order], stable=True)]  # grouped by GT, each group by decreasing metric
    sorted_ids = gt_ids[order]
    group_start = torch.searchsorted(sorted_ids, sorted_ids)  # (P,) index of the first pair of the same GT
    rank = torch.arange(len(order), device=gt_ids.device) - group_start
    keep = torch.zeros_like(gt_ids, dtype=torch.bool)
    keep[order] = rank < k
    return keep


def resolve_claims(gt_ids: torch.Tensor, anchor_ids: torch.Tensor, ious: torch.Tensor, na: int) -> torch.Tensor:
    """Keep, for every anchor claimed by several GTs, only the pair with the GT of highest IoU.

    As MMDetection's assigners ("if an anchor box is assigned to multiple gts, the one with the highest iou will be
    selected"); only the GTs that claim the anchor compete. Exact IoU ties go to the lowest GT index, deterministically.

    Args:
        gt_ids (torch.Tensor): (P,) int64 GT index of each candidate pair.
        anchor_ids (torch.Tensor): (P,) int64 anchor index of each pair.
        ious (torch.Tensor): (P,) IoU of each pair.
        na (int): Number of anchors.

    Returns:
        (torch.Tensor): (P,) bool, True for the pairs kept; every anchor appears at most once among them.
    """
    best = ious.new_full((na,), -1.0).scatter_reduce_(0, anchor_ids, ious, "amax")  # (A,) best claiming IoU
    keep = ious == best[anchor_ids]
    first = gt_ids.new_full((na,), torch.iinfo(torch.long).max)
    first.scatter_reduce_(0, anchor_ids[keep], gt_ids[keep], "amin")  # (A,) lowest GT index among IoU ties
    return keep & (gt_ids == first[anchor_ids])


class _ChunkedAssigner(nn.Module):
    """Common parts of the two assigners: chunk sizing and writing the kept pairs of one image into the result."""

    # Largest number of (GT, anchor) float32 elements handled at once per chunk; the IoU of a chunk needs about six
    # such buffers, so 2**20 elements keep the peak of the dense part near 25 MB whatever the number of GTs.
    chunk_elems: int = 1 << 20

    def _gt_chunks(self, n: int, na: int) -> range:
        """Return the start indices of the GT chunks of an image with ``n`` GTs and ``na`` anchors."""
        return range(0, n, self._chunk_size(na))

    def _chunk_size(self, na: int) -> int:
        """Return the number of GTs per chunk for ``na`` anchors."""
        return max(1, self.chunk_elems // max(na, 1))

    @staticmethod
    def _write(
        out: AssignResult,
        b: int,
        valid: torch.Tensor,
        gt_ids: torch.Tensor,
        anchor_ids: torch.Tensor,
        labels: torch.Tensor,
        boxes: torch.Tensor,
        metrics: torch.Tensor,
        ious: torch.Tensor,
    ) -> None:
        """Write the final pairs (one per anchor) of image ``b`` into ``out``; ``gt_ids`` index the valid GTs."""
        out.fg_mask[b, anchor_ids] = True
        out.gt_idx[b, anchor_ids] = valid[gt_ids]
        out.labels[b, anchor_ids] = labels[gt_ids]
        out.bboxes[b, anchor_ids] = boxes[gt_ids].to(out.bboxes.dtype)
        out.metrics[b, anchor_ids] = metrics
        out.ious[b, anchor_ids] = ious


class TOODTaskAlignedAssigner(_ChunkedAssigner):
    """Task-aligned assigner of TOOD (Task Alignment Learning), with MMDetection's semantics and low memory.

    As MMDetection's TOOD ``TaskAlignedAssigner``:

    1. alignment metric t = s^alpha * u^beta on DETACHED predictions, s the predicted probability of the GT's class,
       u the plain IoU of the predicted box with the GT (ultralytics ``bbox_iou``);
    2. for every GT, the ``topk`` anchors with the largest t over ALL anchors of all levels are candidates;
    3. a candidate is positive if t > 0 and its anchor centre lies inside the GT (margin 0.01 px);
    4. an anchor that is positive for several GTs goes to the GT with the highest IoU;
    5. per GT, t_hat = t / max(t) * max(u), max over that GT's final positives (the soft classification target and
       the box-loss weight). Positives have t > 0, so max(t) > 0 and no epsilon is added: mmdet adds 1e-7 and
       ultralytics 1e-9 to max(t), which shrinks t_hat when beta = 6 makes t tiny (u = 0.05 gives t <= 1.6e-8), so
       the largest target of a GT would no longer equal its largest IoU.

    Differences from ultralytics' ``TaskAlignedAssigner`` (which follows PP-YOLOE): ultralytics takes the top-k only
    among anchors whose centre is inside the GT (here anchors outside it still take top-k slots, then are dropped, so
    a GT can have fewer than k positives), uses CIoU, enlarges GTs smaller than a stride before the centre test, and
    resolves multi-GT anchors by the highest IoU among all GTs containing the anchor rather than among the claimants.

    Memory: images are processed one at a time and GTs in chunks of about ``chunk_elems / A``; a chunk needs a few
    (chunk, A) float32 buffers (IoU, metric and the temporaries of ``bbox_iou``), and only its top-k pairs are kept.

    Dynamic top-k (opt-in, ``topk_mode="dynamic"``, not in the paper): each GT keeps its own k = ``dynamic_topk``
    (size) candidates. A chunk still takes one top-``topk_max`` over the anchors, then drops each GT's candidates
    ranked beyond its k, so memory stays (chunk, A) and no (B, n_max, A) tensor is made.

    Args:
        topk (int): Candidates per GT (m in the paper) in the fixed mode.
        alpha (float): Exponent of the classification score in the metric.
        beta (float): Exponent of the IoU in the metric.
        topk_mode (str): "fixed" (m = ``topk`` for every GT) or "dynamic" (m per GT from its size).
        topk_min (int): Smallest m of the dynamic mode.
        topk_max (int): Largest m of the dynamic mode.
        min_size (float): GT sides shorter than this (pixels) are widened to it for the centre-in-GT test only
            (``widen_small_boxes``, as ultralytics' STAL); 0, the default, is the reference's strict test.
        topk2 (int | None): After the multi-GT resolution, keep each GT's ``topk2`` positives of largest t
            (``keep_best_per_gt``, ultralytics' ``topk2``; 1 for YOLO26's one-to-one branch); None keeps them all.

    Examples:
        >>> assigner = TOODTaskAlignedAssigner(topk=13, alpha=1.0, beta=6.0)
        >>> anc = torch.tensor([[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]])
        >>> pd_scores = torch.full((1, 4, 2), 0.5)
        >>> pd_bboxes = torch.tensor([[[0.0, 0, 8, 8], [8, 0, 16, 8], [0, 8, 8, 16], [8, 8, 16, 16]]])
        >>> gt_bboxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
        >>> res = assigner(pd_scores, pd_bboxes, anc, torch.zeros(1, 1, 1), gt_bboxes, torch.ones(1, 1, 1))
        >>> res.fg_mask
        tensor([[ True, False, False, False]])
    """

    def __init__(
        self,
        topk: int = 13,
        alpha: float = 1.0,
        beta: float = 6.0,
        topk_mode: str = "fixed",
        topk_min: int = 5,
        topk_max: int = 21,
        min_size: float = 0.0,
        topk2: int | None = None,
    ):
        """Initialise the assigner with the metric exponents and the number of candidates per GT."""
        super().__init__()
        if topk2 is not None and topk2 < 1:
            raise ValueError(f"topk2 must be None or >= 1, got {topk2}")
        if topk_mode not in TOPK_MODES:
            raise ValueError(f"topk_mode must be one of {TOPK_MODES}, got {topk_mode!r}")
        if not 1 <= topk_min <= topk_max:
            raise ValueError(f"need 1 <= topk_min <= topk_max, got {topk_min} and {topk_max}")
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.topk_mode = topk_mode
        self.topk_min, self.topk_max = topk_min, topk_max
        self.min_size = min_size
        self.topk2 = topk2

    @torch.no_grad()
    def forward(
        self,
        pd_scores: torch.Tensor,
        pd_bboxes: torch.Tensor,
        anc_points: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_bboxes: torch.Tensor,
        mask_gt: torch.Tensor,
    ) -> AssignResult:
        """Assign GTs to anchors by the task-alignment metric.

        Args:
            pd_scores (torch.Tensor): (B, A, nc) predicted class PROBABILITIES (TOOD's aligned scores), detached.
            pd_bboxes (torch.Tensor): (B, A, 4) predicted xyxy boxes, in the units of the GTs (pixels).
            anc_points (torch.Tensor): (A, 2) anchor centres, same units.
            gt_labels (torch.Tensor): (B, n_max, 1) GT classes.
            gt_bboxes (torch.Tensor): (B, n_max, 4) xyxy GT boxes.
            mask_gt (torch.Tensor): (B, n_max, 1) 1 for real GTs, 0 for padding.

        Returns:
            (AssignResult): Per-anchor assignment; ``metrics`` holds t_hat.
        """
        bs, na, nc = pd_scores.shape
        out = _empty_result(bs, na, nc, gt_bboxes.dtype, pd_scores.device)
        if gt_bboxes.shape[1] == 0 or na == 0:
            return out
        k = min(self.topk_max if self.topk_mode == "dynamic" else self.topk, na)  # top-k width of every chunk
        anc = anc_points.float()
        for b in range(bs):
            valid = mask_gt[b, :, 0].nonzero().squeeze(1)  # (n,) real GTs of this image
            n = valid.numel()
            if n == 0:
                continue
            boxes = gt_bboxes[b, valid].float()  # (n, 4)
            labels = gt_labels[b, valid, 0].long()  # (n,)
            scores_t = pd_scores[b].t().float()  # (nc, A): one row per class, gathered per GT below
            pboxes = pd_bboxes[b].float()  # (A, 4)
            pairs = [self._topk_pairs(s, boxes, labels, scores_t, pboxes, anc, k) for s in self._gt_chunks(n, na)]
            gt_ids, anchor_ids, ious, metrics = (torch.cat(x) for x in zip(*pairs))
            keep = resolve_claims(gt_ids, anchor_ids, ious, na)
            if getattr(self, "topk2", None) is not None:  # absent from assigners pickled before it
                keep &= keep_best_per_gt(gt_ids, torch.where(keep, metrics, -1.0), self.topk2)
            gt_ids, anchor_ids, ious, metrics = gt_ids[keep], anchor_ids[keep], ious[keep], metrics[keep]
            # per-GT normalisation over its final positives: t_hat = t / max(t) * max(u); max(t) >= t > 0
            max_t = metrics.new_zeros(n).scatter_reduce_(0, gt_ids, metrics, "amax")
            max_u = ious.new_zeros(n).scatter_reduce_(0, gt_ids, ious, "amax")
            t_hat = metrics / max_t[gt_ids] * max_u[gt_ids]
            self._write(out, b, valid, gt_ids, anchor_ids, labels, gt_bboxes[b, valid], t_hat, ious)
        return out

    def _topk_pairs(
        self,
        start: int,
        boxes: torch.Tensor,
        labels: torch.Tensor,
        scores_t: torch.Tensor,
        pboxes: torch.Tensor,
        anc: torch.Tensor,
        k: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the positive (GT, anchor) pairs of the GT chunk starting at ``start``: gt ids, anchor ids, u, t."""
        g = boxes[start : start + self._chunk_size(pboxes.shape[0])]  # (c, 4)
        c = g.shape[0]
        iou = bbox_iou(g[:, None], pboxes[None], xywh=False).squeeze_(-1)  # (c, A) plain IoU
        metric = iou.pow(self.beta) if self.beta != 1 else iou.clone()  # (c, A)
        s = scores_t[labels[start : start + c]]  # (c, A) score of each GT's class at every anchor
        metric.mul_(s if self.alpha == 1 else s.pow_(self.alpha))
        del s
        cand_t, cand = metric.topk(k, dim=1)  # (c, k) over all anchors of all levels
        cand_u = iou.gather(1, cand)  # (c, k)
        del iou, metric
        pos = (cand_t > 0) & centers_inside(anc[cand], widen_small_boxes(g, self.min_size)[:, None])  # (c, k)
        if self.topk_mode == "dynamic":  # topk is sorted: a GT keeps its first k_g columns
            k_g = dynamic_topk(gt_sizes(g), self.topk_min, self.topk_max)
            pos &= torch.arange(k, device=g.device)[None] < k_g[:, None]  # (c, k)
        gt_ids = torch.arange(start, start + c, device=g.device)[:, None].expand(c, k)
        return gt_ids[pos], cand[pos], cand_u[pos], cand_t[pos]


class ATSSAssigner(_ChunkedAssigner):
    """ATSS assigner (Zhang et al., CVPR 2020) for TOOD's warm-up epochs, from anchor points and strides.

    As MMDetection's ``ATSSAssigner`` used by TOOD's ``initial_assigner``: per level, the ``topk`` anchors whose
    centres are closest to the GT centre are candidates; the IoU threshold of a GT is mean + std (unbiased) of its
    candidates' IoUs; a candidate is positive if its IoU >= threshold and its centre lies inside the GT (margin
    0.01 px); an anchor positive for several GTs goes to the GT of highest IoU.

    IoUs are between the GT and a square anchor box of side ``anchor_scale * stride`` centred on the anchor point:
    MMDetection's TOOD, even in its ``anchor_free`` mode, keeps ``AnchorGenerator(octave_base_scale=8,
    scales_per_octave=1, ratios=[1.0])`` and runs ATSS on those boxes. (mmdet's anchors are centred on the
    cell corner, ``i * stride``; here they are centred on ultralytics' anchor points, ``(i + 0.5) * stride``.)

    Args:
        topk (int): Candidates per level per GT.
        anchor_scale (float): Side of the square anchor box in strides (mmdet's octave_base_scale).
        min_size (float): GT sides shorter than this (pixels) are widened to it for the centre-in-GT test only, as in
            ``TOODTaskAlignedAssigner``; 0, the default, is the reference's strict test.
        min_pos (int): Every GT keeps at least its ``min_pos`` best candidates (by IoU) whose centre is inside it,
            however high mean + std is; 0, the default, is the reference. Why: the threshold statistics were made
            for 5 pyramid levels (45 candidates); with YOLO's 3 levels (27) a large GT's candidate IoUs are bimodal
            (P3 low, P4/P5 high) and mean + std can exceed every candidate, leaving the GT with no positive, so it is
            trained as background (``yolo-tood coverage`` counts them).

    Examples:
        >>> assigner = ATSSAssigner(topk=9)
        >>> anc = torch.tensor([[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]])
        >>> strides = torch.full((4, 1), 8.0)
        >>> gt_bboxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
        >>> res = assigner(anc, strides, torch.zeros(1, 1, 1), gt_bboxes, torch.ones(1, 1, 1), num_classes=1)
        >>> res.fg_mask
        tensor([[ True, False, False, False]])
    """

    def __init__(self, topk: int = 9, anchor_scale: float = 8.0, min_size: float = 0.0, min_pos: int = 0):
        """Initialise the assigner with the number of candidates per level and the anchor box scale."""
        super().__init__()
        self.topk = topk
        self.anchor_scale = anchor_scale
        self.min_size = min_size
        self.min_pos = min_pos

    @torch.no_grad()
    def forward(
        self,
        anc_points: torch.Tensor,
        stride_tensor: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_bboxes: torch.Tensor,
        mask_gt: torch.Tensor,
        num_classes: int,
    ) -> AssignResult:
        """Assign GTs to anchors with ATSS.

        Args:
            anc_points (torch.Tensor): (A, 2) anchor centres in pixels, level by level (as ``make_anchors``).
            stride_tensor (torch.Tensor): (A, 1) or (A,) stride of each anchor; consecutive equal strides form a level.
            gt_labels (torch.Tensor): (B, n_max, 1) GT classes.
            gt_bboxes (torch.Tensor): (B, n_max, 4) xyxy GT boxes in pixels.
            mask_gt (torch.Tensor): (B, n_max, 1) 1 for real GTs, 0 for padding.
            num_classes (int): Number of classes (the background label).

        Returns:
            (AssignResult): Per-anchor assignment; ``metrics`` is 1.0 for positives, ``ious`` the anchor-box IoU.
        """
        bs, na = gt_bboxes.shape[0], anc_points.shape[0]
        out = _empty_result(bs, na, num_classes, gt_bboxes.dtype, gt_bboxes.device)
        if gt_bboxes.shape[1] == 0 or na == 0:
            return out
        anc, anchor_boxes, levels = self.anchor_layout(anc_points, stride_tensor)
        for b in range(bs):
            valid = mask_gt[b, :, 0].nonzero().squeeze(1)  # (n,)
            n = valid.numel()
            if n == 0:
                continue
            boxes = gt_bboxes[b, valid].float()  # (n, 4)
            pairs = [self._candidate_pairs(s, boxes, anc, anchor_boxes, levels) for s in self._gt_chunks(n, na)]
            gt_ids, anchor_ids, ious = (torch.cat(x) for x in zip(*pairs))
            keep = resolve_claims(gt_ids, anchor_ids, ious, na)
            gt_ids, anchor_ids, ious = gt_ids[keep], anchor_ids[keep], ious[keep]
            labels = gt_labels[b, valid, 0].long()
            self._write(out, b, valid, gt_ids, anchor_ids, labels, gt_bboxes[b, valid], torch.ones_like(ious), ious)
        return out

    def anchor_layout(
        self, anc_points: torch.Tensor, stride_tensor: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """Return the anchor points (A, 2) as float, their square anchor boxes (A, 4) and each level's (start, size).

        Args:
            anc_points (torch.Tensor): (A, 2) anchor centres in pixels, level by level.
            stride_tensor (torch.Tensor): (A, 1) or (A,) stride of each anchor; consecutive equal strides form a level.
        """
        anc = anc_points.float()
        strides = stride_tensor.view(-1).float()
        half = strides[:, None] * (self.anchor_scale / 2)  # (A, 1)
        anchor_boxes = torch.cat((anc - half, anc + half), 1)  # (A, 4) square anchors
        _, counts = torch.unique_consecutive(strides, return_counts=True)
        levels = list(zip(torch.cumsum(counts, 0).sub(counts).tolist(), counts.tolist()))  # (start, size) per level
        return anc, anchor_boxes, levels

    def candidates(
        self, g: torch.Tensor, anc: torch.Tensor, anchor_boxes: torch.Tensor, levels: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ATSS's candidates of GTs ``g`` (c, 4): anchor ids (c, K), their anchor-box IoUs (c, K) and the
        reference's threshold mean + std (c,), before the centre test and ``min_pos`` (``anchor_layout`` gives the
        other arguments)."""
        centre = (g[:, :2] + g[:, 2:]) / 2  # (c, 2)
        cands = []
        for first, size in levels:
            pts = anc[first : first + size]  # (a_l, 2)
            # squared centre distance ranks like the distance (mmdet's bbox_center_distance)
            dist = (centre[:, None, 0] - pts[None, :, 0]).square_() + (centre[:, None, 1] - pts[None, :, 1]).square_()
            cands.append(dist.topk(min(self.topk, size), dim=1, largest=False).indices + first)  # (c, k_l)
        cand = torch.cat(cands, 1)  # (c, K), K = sum_l min(topk, a_l)
        iou = bbox_iou(g[:, None], anchor_boxes[cand], xywh=False).squeeze_(-1)  # (c, K)
        std = iou.std(1) if iou.shape[1] > 1 else torch.zeros_like(iou[:, 0])  # unbiased, as mmdet
        return cand, iou, iou.mean(1) + std

    def _candidate_pairs(
        self,
        start: int,
        boxes: torch.Tensor,
        anc: torch.Tensor,
        anchor_boxes: torch.Tensor,
        levels: list[tuple[int, int]],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the positive (GT, anchor) pairs of the GT chunk starting at ``start``: gt ids, anchor ids, IoU."""
        g = boxes[start : start + self._chunk_size(anc.shape[0])]  # (c, 4)
        c = g.shape[0]
        cand, iou, thr = self.candidates(g, anc, anchor_boxes, levels)
        inside = centers_inside(anc[cand], widen_small_boxes(g, self.min_size)[:, None])  # (c, K)
        if self.min_pos:  # lower a GT's threshold to its min_pos-th best inside IoU (-1: fewer inside, all of them)
            kth = iou.masked_fill(~inside, -1.0).topk(min(self.min_pos, iou.shape[1]), dim=1).values[:, -1]  # (c,)
            thr = torch.minimum(thr, kth)
        pos = (iou >= thr[:, None]) & inside  # (c, K)
        gt_ids = torch.arange(start, start + c, device=g.device)[:, None].expand_as(cand)
        return gt_ids[pos], cand[pos], iou[pos]
