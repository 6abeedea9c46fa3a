"""TOOD training loss for ultralytics: Task Alignment Learning with an ATSS warm-up.

``TOODLoss(model)`` replaces ``v8DetectionLoss`` for a DetectionModel whose last module is ``TOODDetect``. As
MMDetection's ``TOODHead.loss_by_feat``:

- epochs below the resolved warm-up (``head.atss_epochs``, by default a third of the run, see ``TOODHyp``): ATSS
  assignment, Focal loss on the probabilities against hard labels, box loss
  weighted by the centerness of the anchor point in its GT; cls loss / number of positives, box loss / sum of
  centerness.
- afterwards (and when ``head.epoch`` is None): TAL assignment, Quality Focal Loss on the probabilities against
  (label, t_hat), box loss weighted by t_hat; cls loss / sum(t_hat), box loss / sum(t_hat).

Both normalisers are averaged over the ranks of a distributed run and then clamped at a minimum of 1
(``reduce_mean``). The box loss is GIoU (loss
weight ``box_gain``), plus ultralytics' DFL weighted like the GIoU when ``reg_max > 1`` (an addition for YOLOv8's
DFL head; TOOD regresses plain distances).

Mixed precision: the loss is computed in float32 whatever the autocast state (ultralytics' ``amp=True`` runs the
forward and the loss inside fp16 autocast), with autocast disabled and the predictions cast to float, as YOLOv6 does
for its VFL. In fp16 the centerness guard 1e-9 is 0 (NaN for sub-pixel GTs) and in bf16 the DFL target clamp
``reg_max - 1 - 0.01`` rounds up to ``reg_max - 1`` (an out-of-bounds bin index, a device-side assert on CUDA).

Bad labels fail with one ValueError naming the label (class ids outside [0, nc) or not integers, non-finite boxes,
image indices outside the batch), before anything is indexed with them; boxes of zero or negative width or height
are dropped and counted in ``TOODLoss.dropped_boxes``, which a callback logs and resets once per epoch.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from ultralytics.utils.loss import DFLoss, v8DetectionLoss
from ultralytics.utils.metrics import bbox_iou
from ultralytics.utils.tal import bbox2dist, make_anchors

from ..nn.head import side_shifts
from .assigner import AssignResult, ATSSAssigner, TOODTaskAlignedAssigner
from .hyp import TOODHyp
from .tal_stats import TALStats

__all__ = ("TOODLoss", "centerness", "focal_loss_prob", "quality_focal_loss_prob", "reduce_mean")

# Probabilities are clamped to [PROB_EPS, 1 - PROB_EPS] before logs: the aligned score sqrt(sig(a) * sig(b)) can
# saturate to exactly 0 or 1 in float32, where the log (and mmdet issue #7747's NaN) would blow up.
PROB_EPS = 1e-6


def _bce_prob(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the element-wise binary cross-entropy of probabilities ``p`` against soft ``target``, clamped."""
    p = p.clamp(PROB_EPS, 1 - PROB_EPS)
    return -(target * p.log() + (1 - target) * (1 - p).log())


def quality_focal_loss_prob(pred: torch.Tensor, target: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Return the element-wise Quality Focal Loss (GFL, Li et al. 2020) on probabilities.

    As MMDetection's ``QualityFocalLoss(activated=True)`` used by TOOD: BCE(p, q) * |q - p|^beta, with q = t_hat at
    the GT class of positive anchors and 0 everywhere else (so negatives get BCE(p, 0) * p^beta).

    Args:
        pred (torch.Tensor): (..., nc) probabilities.
        target (torch.Tensor): (..., nc) soft targets q in [0, 1].
        beta (float): Exponent of the modulating factor.

    Returns:
        (torch.Tensor): (..., nc) loss, not reduced.
    """
    # the clamp keeps the gradient of |q - p|^beta finite at q == p when beta < 1 (its value changes by <= 1e-6^beta)
    return _bce_prob(pred, target) * (target - pred).abs().clamp(min=PROB_EPS).pow(beta)


def focal_loss_prob(pred: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25) -> torch.Tensor:
    """Return the element-wise sigmoid-free Focal loss (Lin et al. 2017) on probabilities.

    As MMDetection's ``FocalLoss(activated=True)`` of TOOD's warm-up: BCE(p, y) * w * (1 - p_t)^gamma, with
    w = alpha for y = 1 and 1 - alpha for y = 0.

    Args:
        pred (torch.Tensor): (..., nc) probabilities.
        target (torch.Tensor): (..., nc) binary targets.
        gamma (float): Focusing exponent.
        alpha (float): Weight of the positives.

    Returns:
        (torch.Tensor): (..., nc) loss, not reduced.
    """
    one_minus_pt = ((1 - pred) * target + pred * (1 - target)).clamp(min=PROB_EPS)  # 1 - p_t; clamp as in QFL
    weight = (alpha * target + (1 - alpha) * (1 - target)) * one_minus_pt.pow(gamma)
    return _bce_prob(pred, target) * weight


def centerness(points: torch.Tensor, boxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Return the FCOS centerness of points in their boxes, sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)).

    As MMDetection's ``ATSSHead.centerness_target``, the box-loss weight of TOOD's warm-up.

    Args:
        points (torch.Tensor): (N, 2) points, inside their boxes.
        boxes (torch.Tensor): (N, 4) xyxy boxes.
        eps (float): Guards the division for degenerate boxes.

    Returns:
        (torch.Tensor): (N,) float32 centerness in [0, 1].
    """
    points, boxes = points.float(), boxes.float()  # eps would be 0 in fp16
    lt = points - boxes[:, :2]  # (N, 2) l, t
    rb = boxes[:, 2:] - points  # (N, 2) r, b
    ratio = torch.minimum(lt, rb).clamp(min=0) / torch.maximum(lt, rb).clamp(min=eps)  # (N, 2)
    return ratio.prod(-1).sqrt()


def reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Return the mean of ``x`` over the ranks of an initialised process group; ``x`` itself with one rank or none.

    As MMDetection's TOOD head (``mmdet/models/dense_heads/tood_head.py``, ``TOODHead.loss_by_feat``:
    ``cls_avg_factor = reduce_mean(sum(cls_avg_factors)).clamp_(min=1).item()``, the same for ``bbox_avg_factor``):
    ultralytics' DDP multiplies each rank's loss by the world size and averages the gradients, so with the mean
    normaliser the gradient equals one rank's on the global batch (tests/test_ddp_normaliser.py says why). The value
    is detached, as the reference's ``.item()``: a normaliser is a constant of the loss.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x.div_(dist.get_world_size()))
    return x


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Return a context that disables autocast on ``device`` (a no-op context where autocast does not exist)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class TOODLoss(v8DetectionLoss):
    """TOOD criterion for ultralytics: ATSS + Focal warm-up, then TAL + Quality Focal Loss; GIoU (+ DFL) boxes.

    It reuses ``v8DetectionLoss`` for output parsing, GT padding (``preprocess``) and box decoding, and replaces the
    assignment and the losses. The phase is read from ``head.epoch`` at every call (0-based; ``None`` = TAL), so a
    resumed run and validation losses use the right phase.

    On an end-to-end head (YOLO26) it is ultralytics' ``E2ELoss``'s ``loss_fn``, one instance per branch (``E2ELoss``
    passes ``tal_topk=10`` for the one-to-many branch and ``tal_topk=7, tal_topk2=1`` for the one-to-one):

    - one-to-many: TOOD's loss as above, with TOOD's ``tal_topk`` (the schema's m), not E2ELoss's 10;
    - one-to-one: TAL by TOOD's metric (``tal_alpha`` / ``tal_beta``) over ``tal_topk`` candidates, then each GT's
      single best positive (``tal_topk2``); never the ATSS warm-up (the warm-up is the one-to-many branch's).

    Args:
        model (torch.nn.Module): De-paralleled ultralytics DetectionModel whose ``model[-1]`` is the TOOD head (with
            ``nc``, ``reg_max``, ``stride`` and ``epoch``); the hyper-parameters come from ``model.yaml``, overridden
            by the TOOD keys set in ``model.args`` (the train arguments the trainer attaches, as v8DetectionLoss
            reads its gains there).
        tal_topk (int | None): Candidates per GT of the one-to-one branch (with ``tal_topk2``); ignored without it.
        tal_topk2 (int | None): Positives kept per GT: set for a one-to-one branch, None for TOOD's one-to-many loss.

    Examples:
        >>> criterion = TOODLoss(model)
        >>> loss, items = criterion(model(batch["img"]), batch)
        >>> sorted(items)
        ['box_loss', 'cls_loss', 'dfl_loss']
    """

    def __init__(self, model: torch.nn.Module, tal_topk: int | None = None, tal_topk2: int | None = None):
        """Initialise from the model's head, YAML and train arguments.

        ``v8DetectionLoss.__init__`` is not called (it builds ultralytics' own assigner and reads its gains from
        ``model.args``); only the attributes its ``preprocess`` and ``bbox_decode`` read are set, under their names,
        and ``hyp`` (the train arguments, whose ``epochs`` ``E2ELoss`` reads for its one-to-many weight decay).
        TOOD's own state has names of its own (``tood_hyp``, ``tal_assigner``, ``atss_assigner``).
        """
        param = next(model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.head = model.model[-1]
        # model.args: the trainer's arguments (the EMA copy carries them too, for the validation losses); a model
        # used outside a trainer may have none, then the YAML alone applies
        self.tood_hyp = TOODHyp.from_yaml(getattr(model, "yaml", None), getattr(model, "args", None))
        self.hyp = getattr(model, "args", None)
        self.one_to_one = tal_topk2 is not None
        self.stride = self.head.stride
        self.nc = self.head.nc
        self.reg_max = self.head.reg_max
        self.no = self.nc + self.reg_max * 4
        self.use_dfl = self.reg_max > 1
        self.loss_names = "box_loss", "cls_loss", "dfl_loss" if self.use_dfl else "l1_loss"
        self.tal_assigner = TOODTaskAlignedAssigner(
            tal_topk if self.one_to_one else self.tood_hyp.tal_topk,
            self.tood_hyp.tal_alpha,
            self.tood_hyp.tal_beta,
            topk_mode="fixed" if self.one_to_one else self.tood_hyp.tal_topk_mode,
            topk_min=self.tood_hyp.tal_topk_min,
            topk_max=self.tood_hyp.tal_topk_max,
            min_size=self.tood_hyp.tal_min_size,
            topk2=tal_topk2,
        )
        self.atss_assigner = ATSSAssigner(
            self.tood_hyp.atss_topk, min_size=self.tood_hyp.tal_min_size, min_pos=self.tood_hyp.atss_min_pos
        )
        self.dfl_loss = DFLoss(self.reg_max) if self.use_dfl else None
        self.proj = torch.arange(self.reg_max, dtype=torch.float, device=self.device)  # used by bbox_decode
        self.tal_stats = TALStats()  # positives per GT of the training batches; integration.callbacks writes them
        self.dropped_boxes = 0  # GTs of zero or negative size dropped since the last reset (logged per epoch)

    def take_tal_stats(self) -> dict[str, Any]:
        """Return the assignment statistics of the training batches since the last call (``TALStats.summary``), and
        start new ones: the trainer callbacks write one line of ``tal_stats.jsonl`` per epoch from it."""
        summary = self.tal_stats.summary()
        self.tal_stats.reset()
        return summary

    def warmup_epochs(self) -> int:
        """Return the ATSS warm-up length in epochs: the head's ``atss_epochs``, resolved by the training callbacks.

        The default warm-up is a fraction of the run's ``epochs``, which only the trainer knows, so the callbacks
        resolve it and set it on the head (and its EMA copy) like ``head.epoch``. Without them (a head whose
        ``epoch`` was set by hand), an explicit ``atss_epochs`` from the YAML is used.

        Raises:
            RuntimeError: If the head has an epoch but neither a resolved warm-up nor an explicit ``atss_epochs``.
        """
        warmup = getattr(self.head, "atss_epochs", None)
        if warmup is None:
            warmup = self.tood_hyp.atss_epochs
        if warmup is None:
            raise RuntimeError(
                "TOOD: head.epoch is set but the ATSS warm-up length is not resolved; set head.atss_epochs "
                "(the training callbacks do, from the trainer's epochs) or 'atss_epochs' in the model YAML"
            )
        return warmup

    def in_warmup(self) -> bool:
        """Return True while the head's current epoch is inside the ATSS warm-up (``epoch < warm-up epochs``); always
        False for a one-to-one branch."""
        epoch = getattr(self.head, "epoch", None)
        return not getattr(self, "one_to_one", False) and epoch is not None and epoch < self.warmup_epochs()

    def loss(self, preds: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """Return (sum of the gain-scaled losses * batch size, dict of the detached items) like v8DetectionLoss.

        Args:
            preds (dict): The head's training output: "boxes" (B, 4*reg_max, A) re-sampled box prediction,
                "offsets" (B, 8, A) TAP's offsets ((dy, dx) per side, grid units), "scores" (B, nc, A) probabilities,
                "feats" list of (B, C, H_l, W_l).
            batch (dict): Ultralytics batch with "batch_idx" (N,), "cls" (N, 1), "bboxes" (N, 4) normalised xywh.

        Returns:
            (tuple): loss (3,) * batch size and {"box_loss", "cls_loss", "dfl_loss" | "l1_loss"} detached.
        """
        with _no_autocast(preds["boxes"].device):
            return self._loss(preds, batch)

    def _loss(self, preds: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """Return ``loss(preds, batch)``, autocast being disabled: every input is cast to float32 here."""
        warmup = self.in_warmup()
        pred_distri = preds["boxes"].permute(0, 2, 1).float().contiguous()  # (B, A, 4*reg_max)
        pred_scores = preds["scores"].permute(0, 2, 1).float()  # (B, A, nc) probabilities
        feats = preds["feats"]
        anchor_points, stride_tensor = make_anchors(feats, self.stride, 0.5)  # (A, 2) grid units, (A, 1)
        batch_size = pred_scores.shape[0]
        imgsz = torch.tensor(feats[0].shape[2:], device=self.device, dtype=torch.float32) * self.stride[0]

        gt_labels, gt_bboxes, mask_gt = self._targets(batch, batch_size, imgsz)
        # TAP measures side k from (anchor + O_k): decode around the anchor, then move each edge with its point
        shifts = side_shifts(preds["offsets"]).float().permute(0, 2, 1)  # (B, A, 4) dx_l, dy_t, dx_r, dy_b, grid
        pred_bboxes = self.bbox_decode(anchor_points, pred_distri) + shifts  # (B, A, 4) xyxy grid units

        if warmup:
            res = self.atss_assigner(
                anchor_points * stride_tensor, stride_tensor, gt_labels, gt_bboxes, mask_gt, self.nc
            )
        else:
            res = self.tal_assigner(
                pred_scores.detach(),
                (pred_bboxes.detach() * stride_tensor).to(gt_bboxes.dtype),
                anchor_points * stride_tensor,
                gt_labels,
                gt_bboxes,
                mask_gt,
            )

        if self.head.training:  # validation losses (EMA head in eval mode) stay out of the training statistics
            self.tal_stats.update(res, gt_bboxes, mask_gt, "ATSS" if warmup else "TAL", gt_labels, self.nc)

        loss = torch.zeros(3, device=self.device)  # box, cls, dfl
        loss[1] = self._cls_loss(pred_scores, res, warmup, pred_bboxes, stride_tensor)
        loss[0], loss[2] = self._box_loss(
            pred_distri, pred_bboxes, shifts, anchor_points, stride_tensor, imgsz, res, warmup
        )
        loss[0] *= self.tood_hyp.box_gain
        loss[1] *= self.tood_hyp.cls_gain
        loss[2] *= self.tood_hyp.dfl_gain
        return loss * batch_size, dict(zip(self.loss_names, loss.detach()))

    def _targets(
        self, batch: dict[str, torch.Tensor], batch_size: int, imgsz: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return padded GT labels (B, n, 1), pixel xyxy boxes (B, n, 4) and the real-GT mask (B, n, 1).

        The mask comes from the per-image GT counts, not from ultralytics' ``box.sum() > 0``, which would drop a real
        box whose coordinates sum to <= 0 (a box partly outside the top-left of the image).
        """
        batch_idx = batch["batch_idx"].view(-1, 1).to(self.device, torch.float32)
        cls = batch["cls"].view(-1, 1).to(self.device, torch.float32)
        bboxes = batch["bboxes"].view(-1, 4).to(self.device, torch.float32)
        targets = self._check_labels(torch.cat((batch_idx, cls, bboxes), 1), batch_size)
        batch_idx = targets[:, :1]
        targets = self.preprocess(targets, batch_size, scale_tensor=imgsz[[1, 0, 1, 0]].float())
        gt_labels, gt_bboxes = targets.split((1, 4), 2)  # (B, n, 1) cls, (B, n, 4) xyxy pixels
        counts = torch.bincount(batch_idx.view(-1).long(), minlength=batch_size)[:batch_size]  # (B,)
        mask_gt = torch.arange(gt_bboxes.shape[1], device=self.device)[None] < counts[:, None]  # (B, n)
        return gt_labels, gt_bboxes, mask_gt[..., None].float()

    def _check_labels(self, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Raise a one-line ValueError for a bad label; return ``targets`` without its zero-size boxes (counted).

        Checked before any indexing, so a bad label never becomes an IndexError or a CUDA device-side assert, nor
        trains silently as another class (a class id of -1 or 2.5). Boxes of zero or negative width or height are
        dropped and added to ``self.dropped_boxes``.

        Args:
            targets (torch.Tensor): (N, 6) float32 labels: image index, class, normalised x, y, w, h.
            batch_size (int): Number of images in the batch.

        Returns:
            (torch.Tensor): (M, 6) the labels with a positive width and height, M <= N.
        """
        img, cls, box = targets[:, 0], targets[:, 1], targets[:, 2:]
        bad_img = ~((img >= 0) & (img < batch_size) & (img == img.round()))  # NaN compares False: bad
        bad_cls = ~((cls >= 0) & (cls < self.nc) & (cls == cls.round()))
        bad_box = ~box.isfinite().all(1)
        empty = (box[:, 2] <= 0) | (box[:, 3] <= 0)
        flags = torch.stack((bad_img.any(), bad_cls.any(), bad_box.any(), empty.any())).tolist()  # one device sync
        if flags[0]:
            i = int(bad_img.nonzero()[0])
            raise ValueError(
                f"TOOD: batch label {i} has image index {img[i].item()}, expected an integer in [0, {batch_size})"
            )
        if flags[1]:
            i = int(bad_cls.nonzero()[0])
            raise ValueError(
                f"TOOD: batch label {i} (image {int(img[i])}) has class {cls[i].item()}, "
                f"expected an integer in [0, {self.nc})"
            )
        if flags[2]:
            i = int(bad_box.nonzero()[0])
            raise ValueError(
                f"TOOD: batch label {i} (image {int(img[i])}) has a non-finite box (x, y, w, h) = "
                f"({', '.join(f'{v:g}' for v in box[i].tolist())})"
            )
        if flags[3]:
            self.dropped_boxes += int(empty.sum())
            targets = targets[~empty]
        return targets

    def _normaliser(self, total: torch.Tensor) -> torch.Tensor:
        """Return a loss normaliser: ``total`` averaged over the ranks while training (``reduce_mean``), clamped at 1.

        Validation losses run on rank 0 alone (the EMA head in eval mode): a collective there would wait for ranks
        that never call it, so they keep the rank's own total.
        """
        return (reduce_mean(total) if self.head.training else total).clamp(min=1)

    def _cls_loss(
        self,
        pred_scores: torch.Tensor,
        res: AssignResult,
        warmup: bool,
        pred_bboxes: torch.Tensor,
        stride_tensor: torch.Tensor,
    ) -> torch.Tensor:
        """Return the classification loss: Focal (warm-up) or QFL, summed over all anchors and classes, normalised.

        The normaliser is sum(res.metrics) clamped at 1: the number of positives in the warm-up (metrics are ones)
        and sum(t_hat) with TAL, as mmdet's ``cls_avg_factor``. With ``atss_cls_target: iou`` the warm-up uses QFL
        towards the IoU of each positive's predicted box (``pred_bboxes`` (B, A, 4) xyxy in grid units, scaled by
        ``stride_tensor`` (A, 1) to the GT's pixels) with its GT, still normalised by the number of positives (GFL).
        """
        target = torch.zeros_like(pred_scores)  # (B, A, nc)
        fg = res.fg_mask.nonzero(as_tuple=True)  # (b, a) indices of the positives
        quality = res.metrics[fg].to(target.dtype)  # 1 (warm-up) or t_hat
        iou_targets = warmup and self.tood_hyp.atss_cls_target == "iou"
        if iou_targets:  # GFL's target: the IoU of the (detached) predicted box with its GT
            boxes = pred_bboxes[fg].detach() * stride_tensor[fg[1]]  # (P, 4) pixels
            quality = bbox_iou(boxes, res.bboxes[fg].to(boxes.dtype), xywh=False).squeeze(-1).clamp(min=0)
        target[fg[0], fg[1], res.labels[fg]] = quality
        if warmup and not iou_targets:
            cls = focal_loss_prob(pred_scores, target, self.tood_hyp.focal_gamma, self.tood_hyp.focal_alpha)
        else:
            cls = quality_focal_loss_prob(pred_scores, target, self.tood_hyp.qfl_beta)
        if self.head.training:  # as the assignment statistics: training batches only
            self.tal_stats.update_cls(pred_scores.detach(), target, cls.detach(), res.fg_mask, res.labels)
        return cls.sum() / self._normaliser(res.metrics.sum())

    def _box_loss(
        self,
        pred_distri: torch.Tensor,
        pred_bboxes: torch.Tensor,
        shifts: torch.Tensor,
        anchor_points: torch.Tensor,
        stride_tensor: torch.Tensor,
        imgsz: torch.Tensor,
        res: AssignResult,
        warmup: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the (GIoU, DFL or L1) losses of the positives, weighted and normalised by the sum of box weights.

        Box weights are the centerness of the anchor point in its GT (warm-up) or t_hat (TAL), as mmdet's
        ``pos_bbox_weight``; both terms are divided by sum(weights) clamped at 1 (mmdet's ``bbox_avg_factor``).
        Boxes are in grid (stride) units, where GIoU is unchanged and the DFL bins live. The distance of side k is
        predicted from the point (anchor + O_k) (TAP), so its DFL / L1 target is the distance from that point to the
        GT edge: ``shifts`` (B, A, 4) move the points. They are detached there: a target is a constant, and the
        offsets learn from the GIoU of the decoded boxes, as in the reference, and through the re-sampling.
        """
        fg = res.fg_mask.nonzero(as_tuple=True)  # index once
        points = anchor_points[fg[1]]  # (P, 2) grid units
        stride = stride_tensor[fg[1]]  # (P, 1)
        target = res.bboxes[fg].float() / stride  # (P, 4) grid units
        weight = centerness(points, target) if warmup else res.metrics[fg]  # (P,) float32
        norm = self._normaliser(weight.sum())

        giou = bbox_iou(pred_bboxes[fg], target, xywh=False, GIoU=True).squeeze(-1)  # (P,)
        loss_box = ((1.0 - giou) * weight).sum() / norm

        shift = shifts[fg].detach().to(points.dtype)  # (P, 4)
        points_lt, points_rb = points + shift[:, :2], points + shift[:, 2:]  # (P, 2): where l, t and r, b start
        if self.dfl_loss is not None:
            reg_max = self.reg_max - 1  # clamped into the bins as bbox2dist does for v8DetectionLoss
            lt, rb = bbox2dist(points_lt, target, reg_max)[:, :2], bbox2dist(points_rb, target, reg_max)[:, 2:]
            target_ltrb = torch.cat((lt, rb), 1)  # (P, 4)
            dfl = self.dfl_loss(pred_distri[fg].view(-1, self.reg_max), target_ltrb).squeeze(-1)  # (P,)
            loss_dfl = (dfl * weight).sum() / norm
        else:  # reg_max == 1: ultralytics' L1 on the (l, t, r, b) distances normalised by the image size
            scale = stride / imgsz[[1, 0, 1, 0]]  # (P, 4)
            target_ltrb = torch.cat((bbox2dist(points_lt, target)[:, :2], bbox2dist(points_rb, target)[:, 2:]), 1)
            target_ltrb = target_ltrb * scale
            l1 = F.l1_loss(pred_distri[fg] * scale, target_ltrb, reduction="none").mean(-1)  # (P,)
            loss_dfl = (l1 * weight).sum() / norm
        return loss_box, loss_dfl
