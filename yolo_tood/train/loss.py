"""TOOD training loss for ultralytics: Task Alignment Learning with an ATSS warm-up.

``TOODLoss(model)`` replaces ``v8DetectionLoss`` for a DetectionModel whose last module is a TOOD head
(``TOODDetect``, ``TAPDetect``). As MMDetection's ``TOODHead.loss_by_feat``:

- epochs below the warm-up (``TOODLoss.warmup_epochs``, by default a third of the run, see ``TOODHyp``): ATSS
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

Host syncs: a training step of the loss waits for the device three times, as ultralytics' ``v8DetectionLoss`` does
at least: once to read the label checks (``_check_labels``) and twice in ultralytics' ``preprocess`` (the GT counts
and their max, the padded size). The positives are never indexed (``x[mask]`` and ``nonzero`` wait for the device):
the cls target and the box weights are dense over the (B, A) anchors and 0 at the background; normalisers stay
tensors; the constants that would be built from host values at every step (anchors, the gains), each a
host-to-device copy that waits for the device on CUDA, are made once per shape and device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from ultralytics.utils.loss import DFLoss, v8DetectionLoss
from ultralytics.utils.metrics import bbox_iou
from ultralytics.utils.tal import make_anchors

from ..nn import tap
from .assigner import AssignResult, ATSSAssigner, TOODTaskAlignedAssigner
from .hyp import TOODHyp, train_arg
from .tal_stats import TALStats

__all__ = ("TOODLoss", "centerness", "focal_loss_prob", "quality_focal_loss_prob", "reduce_mean", "side_shift_pairs")

# Probabilities are clamped to [PROB_EPS, 1 - PROB_EPS] before logs: the aligned score sqrt(sig(a) * sig(b)) can
# saturate to exactly 0 or 1 in float32, where the log (and mmdet issue #7747's NaN) would blow up.
PROB_EPS = 1e-6


def _bce_prob(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the element-wise binary cross-entropy of probabilities ``p`` against soft ``target``, clamped."""
    p = p.clamp(PROB_EPS, 1 - PROB_EPS)
    return -(target * p.log() + (1 - target) * (1 - p).log())


def quality_focal_loss_prob(pred: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
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


def focal_loss_prob(pred: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
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
        points (torch.Tensor): (..., 2) points, inside their boxes.
        boxes (torch.Tensor): (..., 4) xyxy boxes, broadcastable against ``points``.
        eps (float): Guards the division for degenerate boxes.

    Returns:
        (torch.Tensor): (...) float32 centerness in [0, 1].
    """
    points, boxes = points.float(), boxes.float()  # eps would be 0 in fp16
    lt = points - boxes[..., :2]  # (..., 2) l, t
    rb = boxes[..., 2:] - points  # (..., 2) r, b
    ratio = torch.minimum(lt, rb).clamp(min=0) / torch.maximum(lt, rb).clamp(min=eps)  # (..., 2)
    return ratio.prod(-1).sqrt()


def side_shift_pairs(offsets: torch.Tensor) -> torch.Tensor:
    """Return TAP's side shifts per anchor as a view (B, A, 2, 2): (dx_l, dy_t), (dx_r, dy_b), the shifts of
    (x1, y1) and (x2, y2) (``yolo_tood.nn.tap.side_shift_pairs``, anchors first).

    Args:
        offsets (torch.Tensor): (B, 8, A) TAP's offsets, (dy, dx) per side, grid units.

    Returns:
        (torch.Tensor): (B, A, 2, 2) view of ``offsets``.
    """
    return tap.side_shift_pairs(offsets).permute(0, 3, 1, 2)


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
        # The one-to-one branch: E2ELoss's own candidates, each GT's tal_topk2 best; TOOD's metric (alpha, beta)
        one_to_one = {"topk": tal_topk, "topk_mode": "fixed", "topk2": tal_topk2} if self.one_to_one else {}
        self.tal_assigner = TOODTaskAlignedAssigner.from_hyp(self.tood_hyp, **one_to_one)
        self.atss_assigner = ATSSAssigner.from_hyp(self.tood_hyp)
        self.dfl_loss = DFLoss(self.reg_max) if self.use_dfl else None
        self.proj = torch.arange(self.reg_max, dtype=torch.float, device=self.device)  # used by bbox_decode
        self.tal_stats = TALStats()  # positives per GT of the training batches; integration.callbacks writes them
        self.dropped_boxes = 0  # GTs of zero or negative size dropped since the last reset (logged per epoch)
        self._cache: dict[tuple, Any] = {}  # constants of the step on its device (see _cached)

    def take_tal_stats(self) -> dict[str, Any]:
        """Return the assignment statistics of the training batches since the last call (``TALStats.summary``), and
        start new ones: the trainer callbacks write one line of ``tal_stats.jsonl`` per epoch from it."""
        summary = self.tal_stats.summary()
        self.tal_stats.reset()
        return summary

    def warmup_epochs(self) -> int:
        """Return the run's ATSS warm-up length in epochs: ``TOODHyp.warmup_epochs`` of the run's ``epochs``.

        The run's length is the train arguments' ``epochs`` (``self.hyp``, ``model.args``), which ``resume`` restores
        and ``time=`` updates: the value ``E2ELoss`` reads for its own schedule. An explicit ``atss_epochs``, or an
        ``atss_fraction`` of 0, needs no run length.

        Raises:
            RuntimeError: If neither the run's ``epochs`` nor an explicit ``atss_epochs`` is known (a model used
                outside a trainer whose head's ``epoch`` was set by hand).
        """
        epochs = train_arg(self.hyp, "epochs")
        if epochs is None and self.tood_hyp.atss_epochs is None and self.tood_hyp.atss_fraction:
            raise RuntimeError(
                "TOOD: head.epoch is set but the run's length is unknown, so the ATSS warm-up (a fraction of it) "
                "cannot be resolved; give the model train arguments with 'epochs' (model.args, as the trainer "
                "does) or set 'atss_epochs'"
            )
        return self.tood_hyp.warmup_epochs(epochs or 0)  # a fraction of 0 is no warm-up at any length

    def in_warmup(self) -> bool:
        """Return True while the head's current epoch is inside the ATSS warm-up; always False for a one-to-one branch.

        The epoch is ``head.epoch`` (0-based; None outside training means TAL), which the training callbacks set on
        the head and its EMA copy each epoch: trainer state on the module, as MMDetection's ``SetEpochInfoHook`` sets
        it on TOOD's head.
        """
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
        # (A, 2) grid units, (A, 1), input size (2,) h, w and its (4,) w, h, w, h scale, in pixels
        anchor_points, stride_tensor, imgsz, scale = self._anchors(feats)
        batch_size = pred_scores.shape[0]

        gt_labels, gt_bboxes, mask_gt = self._targets(batch, batch_size, imgsz, scale)
        # TAP measures side k from (anchor + O_k): decode around the anchor, then move each edge with its point
        shifts = side_shift_pairs(preds["offsets"]).float()  # (B, A, 2, 2) (dx_l, dy_t), (dx_r, dy_b), grid units
        decoded = self.bbox_decode(anchor_points, pred_distri)  # (B, A, 4) xyxy grid units, around the anchors
        pred_bboxes = (decoded.unflatten(-1, (2, 2)) + shifts).flatten(2)  # (B, A, 4) xyxy grid units

        if warmup:
            res = self.atss_assigner(
                anchor_points * stride_tensor,
                stride_tensor,
                gt_labels,
                gt_bboxes,
                mask_gt,
                self.nc,
                level_sizes=[f.shape[2] * f.shape[3] for f in feats],  # python ints: no host sync for the levels
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

        cls_norm = self._normaliser(res.metrics.sum())  # mmdet's cls_avg_factor: #positives or sum(t_hat)
        loss_cls = self._cls_loss(pred_scores, res, warmup, pred_bboxes, stride_tensor) / cls_norm
        loss_box, loss_dfl = self._box_loss(
            pred_distri, pred_bboxes, shifts, anchor_points, stride_tensor, imgsz, res, warmup
        )
        gains = (self.tood_hyp.box_gain, self.tood_hyp.cls_gain, self.tood_hyp.dfl_gain)
        gains_t = self._cached(("gains", *gains, loss_cls.device), lambda: torch.tensor(gains, device=loss_cls.device))
        loss = torch.stack((loss_box, loss_cls, loss_dfl)) * gains_t  # (3,) box, cls, dfl
        # the items stay tensors (no .item()): the trainer averages them on the device and reads them for its logs
        return loss * batch_size, dict(zip(self.loss_names, loss.detach()))

    def _cached(self, key: tuple, make: Callable[[], Any]) -> Any:
        """Return ``make()``, made once per ``key``: constants of the step on its device.

        Built from host values at every step, each would be a host-to-device copy, which on CUDA waits for the
        device (a host sync). The cache is bounded: validation with ``rect`` batches brings many input shapes.
        """
        cache = self.__dict__.setdefault("_cache", {})  # absent from a criterion pickled before it
        if key not in cache:
            if len(cache) >= 64:
                cache.pop(next(iter(cache)))
            cache[key] = make()
        return cache[key]

    def _anchors(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the anchor points (A, 2) in grid units, their strides (A, 1), the input size (2,) h, w and its scale
        (4,) w, h, w, h in pixels, for the feature maps ``feats`` (B, C, H_l, W_l).

        Cached per feature-map shapes, dtype and device, on which alone they depend: ``make_anchors`` reads every
        level's stride on the host (a sync per level, which stock ultralytics pays at every step).
        """
        key = ("anchors", tuple(tuple(f.shape[2:]) for f in feats), feats[0].dtype, feats[0].device)

        def make() -> tuple[torch.Tensor, ...]:
            anchor_points, stride_tensor = make_anchors(feats, self.stride, 0.5)
            imgsz = torch.tensor(feats[0].shape[2:], device=self.device, dtype=torch.float32) * self.stride[0]
            return anchor_points, stride_tensor, imgsz, imgsz[[1, 0, 1, 0]]

        return self._cached(key, make)

    def _targets(
        self, batch: dict[str, torch.Tensor], batch_size: int, imgsz: torch.Tensor, scale: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return padded GT labels (B, n, 1), pixel xyxy boxes (B, n, 4) and the real-GT mask (B, n, 1).

        Every label carries a last column of ones through ultralytics' ``preprocess``, which pads with zeros and
        scales only the box columns: that column is the mask. So the mask follows the per-image GT counts, not
        ultralytics' ``box.sum() > 0``, which would drop a real box whose coordinates sum to <= 0 (a box partly outside
        the top-left of the image), at no cost of its own: ``preprocess``'s two host syncs (the GT counts, and their
        max as the padded size) are the ones stock pays.

        Args:
            batch (dict): Ultralytics batch with "batch_idx" (N,), "cls" (N, 1), "bboxes" (N, 4) normalised xywh.
            batch_size (int): Number of images.
            imgsz (torch.Tensor): (2,) input h, w in pixels.
            scale (torch.Tensor, optional): (4,) w, h, w, h in pixels (``_anchors`` caches it); from ``imgsz`` if None.
        """
        batch_idx = batch["batch_idx"].view(-1, 1).to(self.device, torch.float32)
        cls = batch["cls"].view(-1, 1).to(self.device, torch.float32)
        bboxes = batch["bboxes"].view(-1, 4).to(self.device, torch.float32)
        targets = torch.cat((batch_idx, cls, bboxes, torch.ones_like(batch_idx)), 1)  # (N, 7), last: real GT
        targets = self._check_labels(targets, batch_size)
        scale = imgsz[[1, 0, 1, 0]].float() if scale is None else scale
        gt_labels, gt_bboxes, mask_gt = self.preprocess(targets, batch_size, scale_tensor=scale).split((1, 4, 1), 2)
        return gt_labels, gt_bboxes, mask_gt

    def _check_labels(self, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Raise a one-line ValueError for a bad label; return ``targets`` without its zero-size boxes (counted).

        Checked before any indexing, so a bad label never becomes an IndexError or a CUDA device-side assert, nor
        trains silently as another class (a class id of -1 or 2.5). Boxes of zero or negative width or height are
        dropped and added to ``self.dropped_boxes``. A good batch costs one host sync: the counts of every check
        are read together; finding the bad label, and dropping boxes, take more (rare paths).

        Args:
            targets (torch.Tensor): (N, 6 + k) float32 labels: image index, class, normalised x, y, w, h (then k
                columns of any kind, kept).
            batch_size (int): Number of images in the batch.

        Returns:
            (torch.Tensor): (M, 6 + k) the labels with a positive width and height, M <= N.
        """
        if not len(targets):
            return targets
        idx, box = targets[:, :2], targets[:, 2:6]
        top = self._cached(  # largest image index and class
            ("label_max", batch_size, self.nc, targets.device),
            lambda: torch.tensor((batch_size - 1, self.nc - 1), dtype=targets.dtype, device=targets.device),
        )
        bad = torch.cat(
            (
                idx != idx.clamp(min=0).minimum(top).round(),  # (N, 2) not an integer in range (NaN != NaN)
                box * 0 != 0,  # (N, 4) inf or NaN
                box[:, 2:].amin(1, keepdim=True) <= 0,  # (N, 1) zero size
            ),
            1,
        )
        counts = bad.sum(0).tolist()  # (7,): the one host sync of a good batch
        if any(counts[:6]):
            self._raise_bad_label(targets, batch_size, bad)
        if counts[6]:
            self.dropped_boxes += counts[6]
            targets = targets[~bad[:, 6]]
        return targets

    def _raise_bad_label(self, targets: torch.Tensor, batch_size: int, bad: torch.Tensor) -> None:
        """Raise the ValueError of the first bad label, the image indices checked first, then the classes, then the
        boxes; ``bad`` (N, 7) flags them (see ``_check_labels``)."""
        img, cls, box = targets[:, 0], targets[:, 1], targets[:, 2:6]
        if bad[:, 0].any():
            i = int(bad[:, 0].nonzero()[0])
            raise ValueError(
                f"TOOD: batch label {i} has image index {img[i].item()}, expected an integer in [0, {batch_size})"
            )
        if bad[:, 1].any():
            i = int(bad[:, 1].nonzero()[0])
            raise ValueError(
                f"TOOD: batch label {i} (image {int(img[i])}) has class {cls[i].item()}, "
                f"expected an integer in [0, {self.nc})"
            )
        i = int(bad[:, 2:6].any(1).nonzero()[0])
        raise ValueError(
            f"TOOD: batch label {i} (image {int(img[i])}) has a non-finite box (x, y, w, h) = "
            f"({', '.join(f'{v:g}' for v in box[i].tolist())})"
        )

    def _normaliser(self, total: torch.Tensor) -> torch.Tensor:
        """Return a loss normaliser: ``total`` averaged over the ranks while training (``reduce_mean``), clamped at 1.

        It stays a tensor (no ``.item()``, unlike the reference): the division waits for nothing on the host.
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
        """Return the classification loss, Focal (warm-up) or QFL, summed over all anchors and classes.

        The caller divides it by sum(res.metrics) clamped at 1: the number of positives in the warm-up (metrics are
        ones) and sum(t_hat) with TAL, as mmdet's ``cls_avg_factor``. With ``atss_cls_target: iou`` the warm-up uses
        QFL towards the IoU of each positive's predicted box (``pred_bboxes`` (B, A, 4) xyxy in grid units, scaled by
        ``stride_tensor`` (A, 1) to the GT's pixels) with its GT (GFL).

        The target (B, A, nc) is built densely: the positive's quality at its GT's class (a comparison of
        ``res.labels`` (B, A) with the classes: the background label nc matches none), 0 elsewhere; indexing the
        positives would be a host sync.
        """
        quality = res.metrics  # (B, A): 1 (warm-up) or t_hat at the positives, 0 at the background
        iou_targets = warmup and self.tood_hyp.atss_cls_target == "iou"
        if iou_targets:  # GFL's target: the IoU of the (detached) predicted box with its GT
            boxes = pred_bboxes.detach() * stride_tensor  # (B, A, 4) pixels
            iou = bbox_iou(boxes, res.bboxes.to(boxes.dtype), xywh=False).squeeze(-1).clamp(min=0)  # (B, A)
            quality = torch.where(res.fg_mask, iou, 0.0)  # the background's zero boxes may give NaN
        classes = self._cached(
            ("classes", self.nc, quality.device), lambda: torch.arange(self.nc, device=quality.device)
        )
        target = (res.labels.unsqueeze(-1) == classes) * quality.unsqueeze(-1)  # (B, A, nc) float32
        if warmup and not iou_targets:
            cls = focal_loss_prob(pred_scores, target, self.tood_hyp.focal_gamma, self.tood_hyp.focal_alpha)
        else:
            cls = quality_focal_loss_prob(pred_scores, target, self.tood_hyp.qfl_beta)
        if self.head.training:  # as the assignment statistics: training batches only
            self.tal_stats.update_cls(pred_scores.detach(), target, cls.detach(), res.fg_mask, res.labels)
        return cls.sum()

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
        ``pos_bbox_weight``; both terms are divided by sum(weights) clamped at 1 (mmdet's ``bbox_avg_factor``). With TAL
        that is the cls loss's normaliser again, computed again: sharing it would save a sum and, under DDP, an
        all-reduce, but tests/test_ddp_normaliser.py holds the two reductions of the reference. Boxes are in grid
        (stride) units, where GIoU is unchanged and the DFL bins live. The distance of side k is predicted from the
        point (anchor + O_k) (TAP), so its DFL / L1 target is the distance from that point to the GT edge: ``shifts``
        (B, A, 4) or (B, A, 2, 2) move the points. They are detached there: a target is a constant, and the offsets
        learn from the GIoU of the decoded boxes, as in the reference, and through the re-sampling.

        Every anchor is computed, its weight 0 at the background (indexing the positives would be a host sync); there
        the target is a box of side 2 about the anchor point, so that no NaN or inf reaches the sums (0 * NaN = NaN).
        """
        bs, na = res.fg_mask.shape
        harmless = torch.cat((anchor_points - 1, anchor_points + 1), -1)  # (A, 4) grid units
        target = torch.where(res.fg_mask[..., None], res.bboxes.float() / stride_tensor, harmless)  # (B, A, 4) grid
        if warmup:
            weight = torch.where(res.fg_mask, centerness(anchor_points, target), 0.0)  # (B, A) float32
        else:
            weight = res.metrics  # (B, A) t_hat, 0 at the background
        norm = self._normaliser(weight.sum())

        giou = bbox_iou(pred_bboxes, target, xywh=False, GIoU=True).squeeze(-1)  # (B, A)
        loss_box = ((1.0 - giou) * weight).sum() / norm

        # where (l, t) and (r, b) are measured from: (B, A, 2, 2), rows (x, y) of the top-left / bottom-right points
        points = anchor_points.unsqueeze(-2) + shifts.reshape(bs, na, 2, 2).detach().to(anchor_points.dtype)
        sign = self._cached(("ltrb_sign", points.device), lambda: torch.tensor([[-1.0], [1.0]], device=points.device))
        target_ltrb = (target.view(bs, na, 2, 2) - points) * sign  # (B, A, 2, 2): (l, t), (r, b), contiguous
        if self.dfl_loss is not None:  # DFLoss clamps the distances into the bins, as bbox2dist for v8DetectionLoss
            dfl = self.dfl_loss(pred_distri.reshape(-1, self.reg_max), target_ltrb.reshape(-1, 4)).view(bs, na)
            loss_dfl = (dfl * weight).sum() / norm
        else:  # reg_max == 1: ultralytics' L1 on the (l, t, r, b) distances normalised by the image size
            scale = stride_tensor.unsqueeze(-1) / imgsz.flip(0)  # (A, 1, 2): stride / (w, h)
            pred_ltrb = pred_distri.view(bs, na, 2, 2)
            l1 = F.l1_loss(pred_ltrb * scale, target_ltrb * scale, reduction="none").mean((-2, -1))  # (B, A)
            loss_dfl = (l1 * weight).sum() / norm
        return loss_box, loss_dfl
