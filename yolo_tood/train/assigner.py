"""Label assignment for TOOD: the Task-aligned assigner (TAL) and the ATSS assigner of the warm-up epochs.

Both follow MMDetection's TOOD (``TaskAlignedAssigner`` / ``ATSSAssigner`` in mmdet 3.x) but work on ultralytics'
padded batch layout (anchor points in pixels, GTs padded to ``(B, n_max, ...)`` with ``mask_gt``). Both are vectorised
over the batch and make no host sync (no ``.item()``, ``nonzero``, ``unique`` or boolean-mask indexing), so a GPU never
waits on them: every GT keeps a fixed number k of candidate anchors in ``(B, n_max, k)`` tensors with a mask, and
everything after the candidate search (centre-in-GT test, the one-GT-per-anchor rule, per-GT normalisation) works
along that k axis or by scatters over the anchors. The dense ``(B, n_max, A)`` part (IoU and metric, or centre
distances) is built in chunks of GTs so that it stays under ``chunk_elems`` elements.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple

import torch
from torch import nn
from ultralytics.utils.metrics import bbox_iou

from .hyp import TOPK_MODES, TOODHyp

__all__ = (
    "ATSSAssigner",
    "AssignResult",
    "TOODTaskAlignedAssigner",
    "dynamic_topk",
    "flat_anchor_ids",
    "gt_sizes",
    "keep_best_per_gt",
    "resolve_claims",
    "widen_small_boxes",
)

# An anchor centre must be at least this many pixels inside every side of a GT to be a positive of that GT
# (as MMDetection's TaskAlignedAssigner / ATSSAssigner: min(l, t, r, b) > 0.01).
CENTER_MARGIN = 0.01
# ATSS's square anchor box side in strides, as MMDetection's TOOD (octave_base_scale=8); not a training key
ATSS_ANCHOR_SCALE = 8.0
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


def keep_best_per_gt(metrics: torch.Tensor, k: int) -> torch.Tensor:
    """Keep, for every GT, only its ``k`` candidates of largest metric (ties to the earlier candidate).

    The second top-k of ultralytics' ``TaskAlignedAssigner(topk2=...)`` (``select_highest_overlaps``), which YOLO26's
    one-to-one branch trains with (``E2ELoss``: ``tal_topk=7, tal_topk2=1``): applied to the positives left after the
    multi-GT resolution, as there. A stable sort rather than ``topk``, whose order among equal values is unspecified.

    Args:
        metrics (torch.Tensor): (..., K) alignment metric t of each GT's K candidates; candidates that are not
            positives must hold a value below every positive's (e.g. -1), and then they are never kept before one.
        k (int): Candidates kept per GT.

    Returns:
        (torch.Tensor): (..., K) bool, True for the candidates ranked below ``k`` in their GT.

    Examples:
        >>> keep_best_per_gt(torch.tensor([[0.2, 0.9, 0.4], [0.5, 0.5, -1.0]]), 1)
        tensor([[False,  True, False],
                [ True, False, False]])
    """
    order = metrics.argsort(dim=-1, descending=True, stable=True)  # (..., K) candidates by decreasing metric
    ranks = torch.arange(metrics.shape[-1], device=metrics.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ranks) < k  # (..., K) rank of every candidate in its GT


def flat_anchor_ids(anchor_ids: torch.Tensor, na: int) -> torch.Tensor:
    """Return anchor indices (B, ...) of B images numbered across the batch, b * ``na`` + a."""
    offset = torch.arange(anchor_ids.shape[0], device=anchor_ids.device) * na  # (B,)
    return anchor_ids + offset.view(-1, *([1] * (anchor_ids.dim() - 1)))


def resolve_claims(anchor_ids: torch.Tensor, ious: torch.Tensor, pos: torch.Tensor, size: int) -> torch.Tensor:
    """Keep, for every anchor claimed by several GTs, only the pair with the GT of highest IoU.

    As MMDetection's assigners ("if an anchor box is assigned to multiple gts, the one with the highest iou will be
    selected"); only the GTs that claim the anchor (``pos``) compete. Exact IoU ties go to the lowest GT index,
    deterministically. Two ``scatter_reduce`` over the anchors, no loop and no sync.

    Args:
        anchor_ids (torch.Tensor): (B, n, k) int64 anchor of each GT's k candidates, numbered across the batch
            (``flat_anchor_ids``: b * A + a), so that GTs of different images never compete. The GT index is dim 1.
        ious (torch.Tensor): (B, n, k) IoU (>= 0) of each candidate with its GT.
        pos (torch.Tensor): (B, n, k) bool, True for the candidates that claim their anchor.
        size (int): Number of anchor indices, B * A.

    Returns:
        (torch.Tensor): (B, n, k) bool, True for the claims kept; every anchor appears at most once among them.
    """
    flat = anchor_ids.reshape(-1)
    u = torch.where(pos, ious, -1.0)  # (B, n, k) non-claims below every IoU
    best = u.new_full((size,), -1.0).scatter_reduce_(0, flat, u.reshape(-1), "amax")  # (B*A,) best claiming IoU
    keep = pos & (u == best.gather(0, flat).view_as(u))
    n = anchor_ids.shape[1]
    gt = torch.arange(n, device=anchor_ids.device).view(1, n, 1)  # the GT index of every candidate
    first = anchor_ids.new_full((size,), n).scatter_reduce_(0, flat, torch.where(keep, gt, n).reshape(-1), "amin")
    return keep & (gt == first.gather(0, flat).view_as(anchor_ids))  # lowest GT index among IoU ties


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate the per-chunk tensors (B, c, ...) along the GT axis (no copy for a single chunk)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def _scatter_result(
    keep: torch.Tensor,
    flat_ids: torch.Tensor,
    metrics: torch.Tensor,
    ious: torch.Tensor,
    labels: torch.Tensor,
    gt_bboxes: torch.Tensor,
    na: int,
    nc: int,
) -> AssignResult:
    """Write the kept candidates (B, n, k) into a per-anchor AssignResult (B, A).

    After ``resolve_claims`` every anchor has at most one kept candidate, so a plain ``scatter_`` is exact; the other
    candidates all go to one dummy element past the B * A anchors, which is dropped (no boolean indexing, no sync).

    Args:
        keep (torch.Tensor): (B, n, k) bool, the final positives.
        flat_ids (torch.Tensor): (B, n, k) int64 anchor of each candidate numbered across the batch (b * A + a).
        metrics (torch.Tensor): (B, n, k) float32 soft target of each candidate (read where ``keep`` only).
        ious (torch.Tensor): (B, n, k) float32 IoU of each candidate (read where ``keep`` only).
        labels (torch.Tensor): (B, n) int64 GT classes.
        gt_bboxes (torch.Tensor): (B, n, 4) xyxy GT boxes.
        na (int): Anchors per image, A.
        nc (int): Number of classes (the background label).
    """
    bs, n, k = keep.shape
    dest = torch.where(keep, flat_ids, bs * na).view(-1)  # (B*n*k,) dropped candidates -> the dummy element
    gt = torch.arange(n, device=keep.device).view(1, n, 1).expand(bs, n, k).reshape(-1)

    def scatter(fill: float, src: torch.Tensor) -> torch.Tensor:
        return src.new_full((bs * na + 1,), fill).scatter_(0, dest, src.reshape(-1))[:-1].view(bs, na)

    gt_idx = scatter(-1, gt)  # (B, A)
    fg = gt_idx >= 0
    idx = gt_idx.clamp(min=0)
    return AssignResult(
        fg_mask=fg,
        gt_idx=gt_idx,
        labels=torch.where(fg, labels.gather(1, idx), nc),
        bboxes=torch.where(fg[..., None], gt_bboxes.gather(1, idx[..., None].expand(-1, -1, 4)), 0.0),
        metrics=scatter(0.0, metrics.float()),
        ious=scatter(0.0, ious.float()),
    )


class _ChunkedAssigner(nn.Module):
    """Common part of the two assigners: the GT chunks of the dense (B, n_max, A) stage."""

    # Largest number of (image, GT, anchor) elements handled at once per chunk; a chunk needs at most about six float32
    # buffers of that size, so 2**20 elements keep the peak of the dense part near 25 MB whatever the number of GTs.
    chunk_elems: int = 1 << 20

    def _gt_chunks(self, bs: int, n: int, na: int) -> list[slice]:
        """Return the GT slices of ``n`` GTs such that a chunk of ``bs`` images has about ``chunk_elems`` pairs or fewer
        (at least one GT per chunk); a loop over shapes only, never over values."""
        step = max(1, self.chunk_elems // max(bs * na, 1))
        return [slice(s, s + step) for s in range(0, n, step)]


class TOODTaskAlignedAssigner(_ChunkedAssigner):
    """Task-aligned assigner of TOOD (Task Alignment Learning), with MMDetection's semantics, batched and sync-free.

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

    Memory: the IoU and metric are built for all images at once in chunks of c GTs, B * c * A <= ``chunk_elems``
    (at least one GT), about six (B, c, A) float32 buffers at a time (ultralytics' ``bbox_iou`` and its temporaries,
    then the metric); only each GT's top-k survive a chunk, so the rest needs (B, n_max, k) tensors and the (B, A)
    result.
    Padding GTs go through the same arithmetic and are masked out (no positive), so the cost follows n_max.

    Dynamic top-k (opt-in, ``topk_mode="dynamic"``, not in the paper): each GT keeps its own k = ``dynamic_topk``
    (size) candidates. A chunk still takes one top-``topk_max`` over the anchors, then drops each GT's candidates
    ranked beyond its k, so memory stays that of the fixed mode.

    Args:
        topk (int): Candidates per GT (m in the paper) in the fixed mode.
        alpha (float): Exponent of the classification score in the metric.
        beta (float): Exponent of the IoU in the metric.
        topk_mode (str): "fixed" (m = ``topk`` for every GT) or "dynamic" (m per GT from its size).
        topk_min (int): Smallest m of the dynamic mode.
        topk_max (int): Largest m of the dynamic mode.
        min_size (float): GT sides shorter than this (pixels) are widened to it for the centre-in-GT test only
            (``widen_small_boxes``, as ultralytics' STAL); 0 is the reference's strict test.
        topk2 (int | None): After the multi-GT resolution, keep each GT's ``topk2`` positives of largest t
            (``keep_best_per_gt``, ultralytics' ``topk2``; 1 for YOLO26's one-to-one branch); None keeps them all.

    Examples:
        >>> assigner = TOODTaskAlignedAssigner.from_hyp(TOODHyp(tal_topk=13))
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
        topk: int,
        alpha: float,
        beta: float,
        topk_mode: str,
        topk_min: int,
        topk_max: int,
        min_size: float,
        topk2: int | None = None,
    ):
        """Initialise the assigner with the metric exponents and the number of candidates per GT (``from_hyp`` takes
        them from the TOOD hyper-parameters, where their defaults live)."""
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

    @classmethod
    def from_hyp(cls, hyp: TOODHyp | None = None, **overrides: Any) -> TOODTaskAlignedAssigner:
        """Build the assigner from the ``tal_*`` keys of ``hyp`` (``TOODHyp()``'s defaults when None); constructor
        arguments in ``overrides`` (e.g. ``topk2=1``) replace theirs."""
        hyp = hyp or TOODHyp()
        args = {
            "topk": hyp.tal_topk,
            "alpha": hyp.tal_alpha,
            "beta": hyp.tal_beta,
            "topk_mode": hyp.tal_topk_mode,
            "topk_min": hyp.tal_topk_min,
            "topk_max": hyp.tal_topk_max,
            "min_size": hyp.tal_min_size,
        }
        return cls(**{**args, **overrides})

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
        n_max = gt_bboxes.shape[1]
        if n_max == 0 or na == 0:
            return _empty_result(bs, na, nc, gt_bboxes.dtype, pd_scores.device)
        k = min(self.topk_max if self.topk_mode == "dynamic" else self.topk, na)  # top-k width of every chunk
        valid = mask_gt[..., 0] != 0  # (B, n_max) real GTs
        labels = torch.where(valid, gt_labels[..., 0].long(), 0)  # (B, n_max) padding reads class 0, then is masked
        scores_t = pd_scores.float().transpose(1, 2)  # (B, nc, A) view: one row per class, gathered per GT
        pboxes = pd_bboxes.float()
        boxes, anc = gt_bboxes.float(), anc_points.float()
        chunks = self._gt_chunks(bs, n_max, na)
        parts = [self._candidates(scores_t, pboxes, anc, labels[:, s], boxes[:, s], k) for s in chunks]
        cand, cand_t, cand_u, pos = (_cat(list(x)) for x in zip(*parts))  # (B, n_max, k) each
        pos &= valid[..., None]
        flat = flat_anchor_ids(cand, na)
        keep = resolve_claims(flat, cand_u, pos, bs * na)
        if getattr(self, "topk2", None) is not None:  # absent from assigners pickled before it
            keep &= keep_best_per_gt(torch.where(keep, cand_t, -1.0), self.topk2)
        # per-GT normalisation over its final positives: t_hat = t / max(t) * max(u); max(t) >= t > 0 where kept
        max_t = torch.where(keep, cand_t, 0.0).amax(-1, keepdim=True)  # (B, n_max, 1)
        max_u = torch.where(keep, cand_u, 0.0).amax(-1, keepdim=True)
        t_hat = cand_t / max_t * max_u  # 0 / 0 for a GT without positives: never written (not kept)
        return _scatter_result(keep, flat, t_hat, cand_u, labels, gt_bboxes, na, nc)

    def _candidates(
        self,
        scores_t: torch.Tensor,
        pboxes: torch.Tensor,
        anc: torch.Tensor,
        labels: torch.Tensor,
        boxes: torch.Tensor,
        k: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the top-k candidates of a GT chunk of every image, before the padding mask and the resolution.

        Args:
            scores_t (torch.Tensor): (B, nc, A) class probabilities.
            pboxes (torch.Tensor): (B, A, 4) predicted xyxy boxes.
            anc (torch.Tensor): (A, 2) anchor centres.
            labels (torch.Tensor): (B, c) int64 GT classes, in range.
            boxes (torch.Tensor): (B, c, 4) xyxy GT boxes.
            k (int): Candidates per GT.

        Returns:
            (tuple): anchor ids (B, c, k) int64, metric t (B, c, k), IoU u (B, c, k), positive mask (B, c, k) bool.
        """
        iou = bbox_iou(boxes[:, :, None], pboxes[:, None], xywh=False).squeeze_(-1)  # (B, c, A) plain IoU
        images = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)  # (B, c)
        metric = scores_t[images, labels]  # (B, c, A) score of each GT's class (an index: faster than gather on CPU)
        if self.alpha != 1:
            metric.pow_(self.alpha)
        metric.mul_(iou.pow(self.beta) if self.beta != 1 else iou)  # s^alpha * u^beta
        cand_t, cand = metric.topk(k, dim=-1)  # (B, c, k) over all anchors of all levels
        cand_u = iou.gather(-1, cand)  # (B, c, k)
        del iou, metric
        pos = (cand_t > 0) & centers_inside(anc[cand], widen_small_boxes(boxes, self.min_size)[:, :, None])
        if self.topk_mode == "dynamic":  # topk is sorted: a GT keeps its first k_g columns
            k_g = dynamic_topk(gt_sizes(boxes), self.topk_min, self.topk_max)  # (B, c)
            pos &= torch.arange(k, device=boxes.device) < k_g[..., None]  # (B, c, k)
        return cand, cand_t, cand_u, pos


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

    Memory: the centre distances of one level are built for all images at once in chunks of c GTs,
    B * c * A <= ``chunk_elems`` (at least one GT); the rest needs (B, n_max, K) tensors, K = sum over levels of
    min(topk, level size), and the (B, A) result.

    Args:
        topk (int): Candidates per level per GT.
        anchor_scale (float): Side of the square anchor box in strides (mmdet's octave_base_scale).
        min_size (float): GT sides shorter than this (pixels) are widened to it for the centre-in-GT test only, as in
            ``TOODTaskAlignedAssigner``; 0 is the reference's strict test.
        min_pos (int): Every GT keeps at least its ``min_pos`` best candidates (by IoU) whose centre is inside it,
            however high mean + std is; 0 is the reference. Why: the threshold statistics were made
            for 5 pyramid levels (45 candidates); with YOLO's 3 levels (27) a large GT's candidate IoUs are bimodal
            (P3 low, P4/P5 high) and mean + std can exceed every candidate, leaving the GT with no positive, so it is
            trained as background (``yolo-tood coverage`` counts them).

    Examples:
        >>> assigner = ATSSAssigner.from_hyp(TOODHyp(atss_topk=9))
        >>> anc = torch.tensor([[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]])
        >>> strides = torch.full((4, 1), 8.0)
        >>> gt_bboxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
        >>> res = assigner(anc, strides, torch.zeros(1, 1, 1), gt_bboxes, torch.ones(1, 1, 1), num_classes=1)
        >>> res.fg_mask
        tensor([[ True, False, False, False]])
    """

    def __init__(self, topk: int, *, min_size: float, min_pos: int, anchor_scale: float = ATSS_ANCHOR_SCALE):
        """Initialise the assigner with the number of candidates per level and the anchor box scale (``from_hyp``
        takes the first three from the TOOD hyper-parameters, where their defaults live)."""
        super().__init__()
        self.topk = topk
        self.anchor_scale = anchor_scale
        self.min_size = min_size
        self.min_pos = min_pos

    @classmethod
    def from_hyp(cls, hyp: TOODHyp | None = None, **overrides: Any) -> ATSSAssigner:
        """Build the assigner from ``atss_topk``, ``tal_min_size`` and ``atss_min_pos`` of ``hyp`` (``TOODHyp()``'s
        defaults when None); constructor arguments in ``overrides`` (e.g. ``anchor_scale``) replace theirs."""
        hyp = hyp or TOODHyp()
        args = {"topk": hyp.atss_topk, "min_size": hyp.tal_min_size, "min_pos": hyp.atss_min_pos}
        return cls(**{**args, **overrides})

    @torch.no_grad()
    def forward(
        self,
        anc_points: torch.Tensor,
        stride_tensor: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_bboxes: torch.Tensor,
        mask_gt: torch.Tensor,
        num_classes: int,
        level_sizes: list[int] | None = None,
    ) -> AssignResult:
        """Assign GTs to anchors with ATSS.

        Args:
            anc_points (torch.Tensor): (A, 2) anchor centres in pixels, level by level (as ``make_anchors``).
            stride_tensor (torch.Tensor): (A, 1) or (A,) stride of each anchor; consecutive equal strides form a level.
            gt_labels (torch.Tensor): (B, n_max, 1) GT classes.
            gt_bboxes (torch.Tensor): (B, n_max, 4) xyxy GT boxes in pixels.
            mask_gt (torch.Tensor): (B, n_max, 1) 1 for real GTs, 0 for padding.
            num_classes (int): Number of classes (the background label).
            level_sizes (list[int] | None): Anchors of each level (H_l * W_l), python ints; None reads them from
                ``stride_tensor``, which costs a host sync (``anchor_layout``).

        Returns:
            (AssignResult): Per-anchor assignment; ``metrics`` is 1.0 for positives, ``ious`` the anchor-box IoU.
        """
        bs, n_max, na = gt_bboxes.shape[0], gt_bboxes.shape[1], anc_points.shape[0]
        if n_max == 0 or na == 0:
            return _empty_result(bs, na, num_classes, gt_bboxes.dtype, gt_bboxes.device)
        anc, anchor_boxes, levels = self.anchor_layout(anc_points, stride_tensor, level_sizes)
        boxes = gt_bboxes.float()
        parts = [self._positives(boxes[:, s], anc, anchor_boxes, levels) for s in self._gt_chunks(bs, n_max, na)]
        cand, iou, pos = (_cat(list(x)) for x in zip(*parts))  # (B, n_max, K) each
        pos &= (mask_gt[..., 0] != 0)[..., None]  # padding GTs never claim an anchor
        flat = flat_anchor_ids(cand, na)
        keep = resolve_claims(flat, iou, pos, bs * na)
        labels = gt_labels[..., 0].long()
        return _scatter_result(keep, flat, keep.float(), iou, labels, gt_bboxes, na, num_classes)

    def anchor_layout(
        self, anc_points: torch.Tensor, stride_tensor: torch.Tensor, level_sizes: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """Return the anchor points (A, 2) as float, their square anchor boxes (A, 4) and each level's (start, size).

        Args:
            anc_points (torch.Tensor): (A, 2) anchor centres in pixels, level by level.
            stride_tensor (torch.Tensor): (A, 1) or (A,) stride of each anchor; consecutive equal strides form a level.
            level_sizes (list[int] | None): Anchors of each level; None reads them from ``stride_tensor`` (a host
                sync: ``unique_consecutive`` and ``tolist``).
        """
        anc = anc_points.float()
        strides = stride_tensor.view(-1).float()
        half = strides[:, None] * (self.anchor_scale / 2)  # (A, 1)
        anchor_boxes = torch.cat((anc - half, anc + half), 1)  # (A, 4) square anchors
        if level_sizes is None:
            level_sizes = torch.unique_consecutive(strides, return_counts=True)[1].tolist()
        elif sum(level_sizes) != anc.shape[0]:
            raise ValueError(f"level_sizes {level_sizes} sum to {sum(level_sizes)}, not the {anc.shape[0]} anchors")
        starts = itertools.accumulate(level_sizes[:-1], initial=0)
        return anc, anchor_boxes, list(zip(starts, level_sizes))

    def candidates(
        self, g: torch.Tensor, anc: torch.Tensor, anchor_boxes: torch.Tensor, levels: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ATSS's candidates of GTs ``g`` (..., 4): anchor ids (..., K), their anchor-box IoUs (..., K) and the
        reference's threshold mean + std (...), before the centre test and ``min_pos`` (``anchor_layout`` gives the
        other arguments)."""
        centre = (g[..., :2] + g[..., 2:]) / 2  # (..., 2)
        cands = []
        for first, size in levels:  # a loop over the 3 levels (shapes), whatever the data
            pts = anc[first : first + size]  # (a_l, 2)
            # squared centre distance ranks like the distance (mmdet's bbox_center_distance)
            dist = (centre[..., None, 0] - pts[:, 0]).square_().add_((centre[..., None, 1] - pts[:, 1]).square_())
            idx = dist.topk(min(self.topk, size), dim=-1, largest=False).indices  # (..., k_l)
            cands.append(idx + first if first else idx)
        cand = torch.cat(cands, -1)  # (..., K), K = sum_l min(topk, a_l)
        iou = bbox_iou(g[..., None, :], anchor_boxes[cand], xywh=False).squeeze_(-1)  # (..., K)
        std = iou.std(-1) if iou.shape[-1] > 1 else torch.zeros_like(iou[..., 0])  # unbiased, as mmdet
        return cand, iou, iou.mean(-1) + std

    def _positives(
        self, g: torch.Tensor, anc: torch.Tensor, anchor_boxes: torch.Tensor, levels: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the candidates of the GT chunk ``g`` (B, c, 4): anchor ids, IoUs and positive mask, (B, c, K) each,
        before the padding mask and the multi-GT resolution."""
        cand, iou, thr = self.candidates(g, anc, anchor_boxes, levels)
        inside = centers_inside(anc[cand], widen_small_boxes(g, self.min_size)[..., None, :])  # (B, c, K)
        if self.min_pos:  # lower a GT's threshold to its min_pos-th best inside IoU (-1: fewer inside, all of them)
            kth = iou.masked_fill(~inside, -1.0).topk(min(self.min_pos, iou.shape[-1]), dim=-1).values[..., -1]
            thr = torch.minimum(thr, kth)
        return cand, iou, (iou >= thr[..., None]) & inside
