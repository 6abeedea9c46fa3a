"""Task-alignment diagnostics: the analysis of TOOD (Feng et al., ICCV 2021, section 4, Table 7) as a tool.

The paper measures how well a detector's classification score agrees with its localisation quality:

- **PCC top-50**: for each object, the Pearson correlation between the *ranks* of the classification scores and the
  *ranks* of the IoUs of its 50 most confident predictions (a Spearman rank correlation), averaged over objects.
- **IoU top-10**: the mean IoU of each object's 10 most confident predictions, averaged over objects.
- **correct / redundant / error**: correct boxes (IoU >= 0.5, kept by NMS), redundant boxes (IoU >= 0.5, removed by
  NMS) and error boxes (0.1 < IoU < 0.5), as ../shared/REFERENCE.md and the issue define them.

Both rank statistics are computed on the raw, pre-NMS predictions of every anchor. Definitions used here (the paper
leaves them informal):

- A prediction *relates* to the object with which it has the highest IoU among all GT boxes of the image
  (class-agnostic), provided that IoU is > 0. Each prediction relates to at most one object.
- An object's predictions are ranked by the predicted probability of **the object's class**.
- PCC: ties get average ranks; objects with fewer than 2 related predictions, or whose scores or IoUs are all equal
  (a correlation is undefined), are skipped. ``pcc_objects`` counts the objects that entered the mean.
- IoU top-10: an object with fewer than 10 related predictions uses those it has; an object with none contributes an
  IoU of 0 (no prediction localises it at all).
- After NMS (ultralytics' ``non_max_suppression``, multi-label like the validator, ``conf`` default 0.05 as the
  paper's mmdet score threshold, ``iou`` 0.7 and ``max_det`` 300 as ultralytics' validator), detections are visited in
  descending score and matched greedily to GTs of the same class by ultralytics' ``match_predictions`` at IoU 0.5:
    - ``correct``: matched to a not-yet-matched GT with IoU >= 0.5 (at most one per object);
    - ``duplicate``: IoU >= 0.5 with a GT of its class, but every such GT was already matched (a duplicate that
      survived NMS);
    - ``error``: best IoU with a GT of its class in (0.1, 0.5);
    - everything else (IoU <= 0.1 with every GT of its class) is background and only counted in ``detections``.
    - ``redundant``: candidates above ``conf`` with IoU >= 0.5 with a GT of their class that NMS (or ``max_det``)
      removed: the redundant boxes NMS has to clean up, which task alignment should reduce.
  The paper says its counts are taken "after NMS", and its redundant count (25k for ATSS on 36.8k COCO minival
  objects) may instead be of duplicates that survive NMS; those are reported as ``duplicate`` as well, so both
  readings are available.

Examples:
    >>> from yolo_tood.analysis.diagnostics import evaluate_alignment
    >>> result = evaluate_alignment("runs/detect/train/weights/best.pt", "data.yaml", split="val", imgsz=320)
    >>> print(result.pcc_top50, result.iou_top10, result.correct, result.duplicate, result.error)
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from ultralytics.engine.validator import BaseValidator
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.utils import LOGGER
from ultralytics.utils.metrics import box_iou
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import xywh2xyxy, xyxy2xywh

# Thresholds of the post-NMS counts, from the paper's definitions
MATCH_IOU = 0.5  # correct / duplicate / redundant
ERROR_IOU = 0.1  # error boxes: ERROR_IOU < IoU < MATCH_IOU
# NMS threshold of the records the equal-budget counts are recomputed from (ultralytics' validator conf)
BUDGET_BASE_CONF = 0.001
COUNT_KEYS = ("correct", "duplicate", "error", "redundant", "detections")  # the post-NMS counts of one threshold

__all__ = (
    "AlignmentResult",
    "AlignmentAccumulator",
    "AlignmentValidator",
    "alignment_stats",
    "alignment_table",
    "budget_threshold",
    "evaluate_alignment",
    "nms_counts",
    "nms_record",
    "object_alignment",
    "rank_correlation",
    "scores_from_conf_cls",
)


@dataclass
class AlignmentResult:
    """Task-alignment statistics of a detector over a set of images.

    Attributes:
        pcc_top50 (float): Mean over objects of the rank correlation between score and IoU of the top-k (50)
            predictions; NaN if no object qualified.
        iou_top10 (float): Mean over objects of the mean IoU of the top-k (10) predictions; NaN without objects.
        correct (int): Detections after NMS matched one-to-one to a GT of their class with IoU >= 0.5.
        duplicate (int): Detections after NMS with IoU >= 0.5 to a GT of their class that was already matched.
        error (int): Detections after NMS whose best IoU with a GT of their class is in (0.1, 0.5).
        redundant (int): Candidates above ``conf`` with IoU >= 0.5 to a GT of their class that NMS removed.
        detections (int): All detections after NMS.
        num_objects (int): GT objects seen.
        pcc_objects (int): Objects that entered ``pcc_top50``.
        num_images (int): Images seen.
        budget (dict): The same counts at an equal detection budget: the score threshold (``conf``) that leaves as
            many detections as there are objects, and ``correct``/``duplicate``/``error``/``redundant``/``detections``
            above it. A fixed threshold favours a detector whose negatives score low (calibration); an equal budget
            compares what each detector's most confident boxes are.
        metrics (dict): Optional extra metrics (e.g. the validator's mAP) filled by ``evaluate_alignment``.
    """

    pcc_top50: float
    iou_top10: float
    correct: int
    duplicate: int
    error: int
    redundant: int
    detections: int
    num_objects: int
    pcc_objects: int
    num_images: int
    budget: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-serialisable dict (NaN becomes None)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def rank_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation between the ranks of two 1-D tensors (Spearman's rho), with average ranks for ties.

    Args:
        x (torch.Tensor): First sample, shape (n,).
        y (torch.Tensor): Second sample, shape (n,).

    Returns:
        (float): Correlation in [-1, 1], or NaN if n < 2 or either sample is constant.

    Examples:
        >>> rank_correlation(torch.tensor([0.1, 0.5, 0.9]), torch.tensor([1.0, 2.0, 30.0]))
        1.0
    """
    if x.numel() < 2:
        return float("nan")
    rx, ry = _average_ranks(x.double()), _average_ranks(y.double())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.square().sum() * ry.square().sum()).sqrt()
    if denom == 0:  # constant ranks: correlation undefined
        return float("nan")
    return float((rx * ry).sum() / denom)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Return 1-based ranks of x with ties sharing their average rank (O(n^2), fine for the top-50 used here)."""
    less = (x[None, :] < x[:, None]).sum(1)
    equal = (x[None, :] == x[:, None]).sum(1)
    return less + (equal + 1) / 2


def scores_from_conf_cls(conf: torch.Tensor, cls: torch.Tensor, nc: int) -> torch.Tensor:
    """Expand per-anchor (score, class) predictions to an (A, nc) score matrix that is zero off the predicted class.

    Args:
        conf (torch.Tensor): Scores, shape (A,).
        cls (torch.Tensor): Class indices, shape (A,).
        nc (int): Number of classes.

    Returns:
        (torch.Tensor): Score matrix of shape (A, nc).
    """
    scores = conf.new_zeros((conf.shape[0], nc))
    scores[torch.arange(conf.shape[0], device=conf.device), cls.long()] = conf
    return scores


def object_alignment(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_cls: torch.Tensor,
    topk_pcc: int = 50,
    topk_iou: int = 10,
) -> tuple[list[float], list[float]]:
    """Compute per-object rank correlation (top-k PCC) and top-k mean IoU on pre-NMS predictions of one image.

    Args:
        boxes (torch.Tensor): Predicted boxes xyxy, shape (A, 4).
        scores (torch.Tensor): Per-class probabilities, shape (A, nc).
        gt_boxes (torch.Tensor): GT boxes xyxy in the same coordinates, shape (G, 4).
        gt_cls (torch.Tensor): GT classes, shape (G,).
        topk_pcc (int): Number of most confident predictions per object for the rank correlation.
        topk_iou (int): Number of most confident predictions per object for the mean IoU.

    Returns:
        pcc (list[float]): One rank correlation per object, NaN where undefined (see module docstring).
        iou (list[float]): One top-k mean IoU per object (0.0 for an object without related predictions).
    """
    num_gt = gt_boxes.shape[0]
    if num_gt == 0:
        return [], []
    if boxes.shape[0] == 0:
        return [float("nan")] * num_gt, [0.0] * num_gt
    iou = box_iou(boxes, gt_boxes)  # (A, G)
    best_iou, best_gt = iou.max(1)  # each prediction relates to its best-overlapping object only
    pcc, mean_iou = [], []
    for g in range(num_gt):
        related = ((best_gt == g) & (best_iou > 0)).nonzero().view(-1)
        if related.numel() == 0:
            pcc.append(float("nan"))
            mean_iou.append(0.0)
            continue
        cls_scores = scores[related, int(gt_cls[g])]
        order = cls_scores.argsort(descending=True)  # most confident first
        top = order[:topk_pcc]
        pcc.append(rank_correlation(cls_scores[top], best_iou[related[top]]))
        mean_iou.append(float(best_iou[related[order[:topk_iou]]].mean()))
    return pcc, mean_iou


@dataclass
class NMSRecord:
    """One image's post-NMS detections and GT-overlapping candidates, enough to recount at any higher threshold.

    Greedy NMS visits candidates in descending score and a lower-scored box never suppresses a higher-scored one, so
    the detections kept at a threshold ``c`` are exactly those kept at a lower threshold whose score is > ``c`` (the
    ``max_det`` cap keeps the top scores either way). Counts at any ``c >= conf`` can therefore be recomputed from one
    NMS pass at ``conf``.

    Attributes:
        det (torch.Tensor): Detections (N, 6) ``x1, y1, x2, y2, score, class``, in descending score.
        det_boxes (torch.Tensor): The original (pre-NMS) boxes of the detections, shape (N, 4).
        candidate_scores (torch.Tensor): Scores (> ``conf``) of the (anchor, class) candidates with IoU >= 0.5 to a GT
            of that class, shape (M,).
        gt_boxes (torch.Tensor): GT boxes xyxy, shape (G, 4).
        gt_cls (torch.Tensor): GT classes, shape (G,).
        conf (float): The threshold NMS ran at.
    """

    det: torch.Tensor
    det_boxes: torch.Tensor
    candidate_scores: torch.Tensor
    gt_boxes: torch.Tensor
    gt_cls: torch.Tensor
    conf: float

    def counts(self, conf: float | None = None) -> dict[str, int]:
        """Count correct, duplicate, error and redundant boxes among detections scoring above ``conf``.

        Args:
            conf (float, optional): Score threshold, at least the record's own ``conf`` (the default).

        Returns:
            (dict[str, int]): Keys ``correct``, ``duplicate``, ``error``, ``redundant``, ``detections``.
        """
        conf = self.conf if conf is None else conf
        if conf < self.conf:
            raise ValueError(f"cannot recount at conf {conf} below the NMS threshold {self.conf}")
        keep = self.det[:, 4] > conf
        det, det_boxes = self.det[keep], self.det_boxes[keep]
        counts = {**dict.fromkeys(COUNT_KEYS, 0), "detections": int(det.shape[0])}
        if self.gt_boxes.shape[0] == 0:
            return counts
        same_class = self.gt_cls[:, None] == det[:, 5].long()[None]  # (G, N)
        # IoU of the original boxes (not NMS's xywh round trip) so the redundant count below is exactly consistent
        iou_gd = box_iou(self.gt_boxes, det_boxes) * same_class  # (G, N), IoU with GTs of the detection's class
        # NMS output is sorted by descending score, as match_predictions requires. It is a BaseValidator method that
        # reads only self.iouv; calling it with a stand-in self reuses ultralytics' one-to-one matching exactly.
        matcher = SimpleNamespace(iouv=torch.tensor([MATCH_IOU]))
        matched = BaseValidator.match_predictions(matcher, det[:, 5], self.gt_cls.to(det.dtype), iou_gd)[:, 0]
        best = iou_gd.max(0).values if det.shape[0] else iou_gd.new_zeros(0)
        counts["correct"] = int(matched.sum())
        counts["duplicate"] = int(((best >= MATCH_IOU) & ~matched.to(best.device)).sum())
        counts["error"] = int(((best > ERROR_IOU) & (best < MATCH_IOU)).sum())
        candidates = int((self.candidate_scores > conf).sum())
        counts["redundant"] = candidates - counts["correct"] - counts["duplicate"]
        return counts


def nms_record(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_cls: torch.Tensor,
    conf: float = 0.05,
    iou: float = 0.7,
    max_det: int = 300,
    agnostic: bool = False,
) -> NMSRecord:
    """Run ultralytics NMS on one image's predictions and keep what the post-NMS counts need.

    Args:
        boxes (torch.Tensor): Predicted boxes xyxy, shape (A, 4).
        scores (torch.Tensor): Per-class probabilities, shape (A, nc).
        gt_boxes (torch.Tensor): GT boxes xyxy, shape (G, 4).
        gt_cls (torch.Tensor): GT classes, shape (G,).
        conf (float): Score threshold of NMS candidates.
        iou (float): NMS IoU threshold.
        max_det (int): Maximum detections kept per image.
        agnostic (bool): Class-agnostic NMS.

    Returns:
        (NMSRecord): Detections and GT-overlapping candidate scores of the image.
    """
    nc = scores.shape[1]
    # ultralytics' NMS takes the raw model layout (B, 4 + nc, A) with xywh boxes
    prediction = torch.cat((xyxy2xywh(boxes.float()), scores.float()), 1).T[None]
    # One image per call: ultralytics' time limit could only stop the loop after it, so lift it (no spurious warning)
    out, keep = non_max_suppression(
        prediction,
        conf,
        iou,
        nc=nc,
        multi_label=True,
        agnostic=agnostic,
        max_det=max_det,
        return_idxs=True,
        max_time_img=3600.0,
    )
    det, keep = out[0], keep[0].view(-1).long()  # keep: anchor index of each detection
    gt_cls = gt_cls.view(-1).long()
    # Candidates NMS saw (score > conf per class, as in its multi-label branch) that overlap a GT of that class
    positive = torch.zeros_like(scores, dtype=torch.bool)
    if gt_boxes.shape[0]:
        iou_ag = box_iou(boxes, gt_boxes) >= MATCH_IOU  # (A, G)
        for c in gt_cls.unique():
            positive[:, c] = iou_ag[:, gt_cls == c].any(1)
    candidate_scores = scores[(scores > conf) & positive]
    return NMSRecord(det, boxes[keep], candidate_scores, gt_boxes, gt_cls, conf)


def nms_counts(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_cls: torch.Tensor,
    conf: float = 0.05,
    **nms_kwargs: Any,
) -> dict[str, int]:
    """Run ultralytics NMS on one image's predictions and count correct, duplicate, error and redundant boxes.

    Args:
        boxes, scores, gt_boxes, gt_cls, conf: As ``nms_record``.
        **nms_kwargs (Any): ``iou``, ``max_det`` and ``agnostic`` of ``nms_record``.

    Returns:
        (dict[str, int]): Keys ``correct``, ``duplicate``, ``error``, ``redundant``, ``detections``.
    """
    return nms_record(boxes, scores, gt_boxes, gt_cls, conf, **nms_kwargs).counts()


def budget_threshold(records: Iterable[NMSRecord], budget: int) -> float:
    """Return the score threshold that leaves ``budget`` detections over all records (fewer if they have fewer).

    Args:
        records (Iterable[NMSRecord]): Per-image NMS records.
        budget (int): Number of detections to keep over all images.

    Returns:
        (float): Threshold ``c`` such that the detections scoring > ``c`` are the ``budget`` most confident ones
            (ties at the boundary may admit fewer); the records' own ``conf`` if they hold at most ``budget``.
    """
    records = list(records)
    base = max((r.conf for r in records), default=0.0)
    scores = torch.cat([r.det[:, 4].float().cpu() for r in records]) if records else torch.zeros(0)
    if scores.numel() <= budget:
        return base
    return max(float(scores.sort(descending=True).values[budget]), base)


class AlignmentAccumulator:
    """Accumulate task-alignment statistics image by image.

    Attributes:
        topk_pcc (int): Predictions per object for the rank correlation.
        topk_iou (int): Predictions per object for the mean IoU.
        conf (float): NMS score threshold for the post-NMS counts.
        iou (float): NMS IoU threshold.
        max_det (int): Maximum detections per image after NMS.
        agnostic (bool): Class-agnostic NMS.

    Examples:
        >>> acc = AlignmentAccumulator()
        >>> acc.update(boxes, scores, gt_boxes, gt_cls)  # once per image
        >>> result = acc.result()
    """

    def __init__(
        self,
        topk_pcc: int = 50,
        topk_iou: int = 10,
        conf: float = 0.05,
        iou: float = 0.7,
        max_det: int = 300,
        agnostic: bool = False,
    ):
        """Initialise an empty accumulator with the analysis settings (see module docstring for the defaults)."""
        self.topk_pcc, self.topk_iou = topk_pcc, topk_iou
        self.conf, self.iou, self.max_det, self.agnostic = conf, iou, max_det, agnostic
        self.pcc: list[float] = []
        self.mean_iou: list[float] = []
        self.records: list[NMSRecord] = []  # at min(conf, BUDGET_BASE_CONF), so counts can be taken at any budget
        self.num_images = 0

    def update(
        self,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_cls: torch.Tensor,
        pred_cls: torch.Tensor | None = None,
        nc: int | None = None,
    ) -> None:
        """Add one image.

        Args:
            boxes (torch.Tensor): Pre-NMS predicted boxes xyxy, shape (A, 4).
            scores (torch.Tensor): Per-class probabilities (A, nc), or per-anchor scores (A,) with ``pred_cls``.
            gt_boxes (torch.Tensor): GT boxes xyxy in the same coordinates, shape (G, 4).
            gt_cls (torch.Tensor): GT classes, shape (G,) or (G, 1).
            pred_cls (torch.Tensor, optional): Predicted class per anchor (A,) when ``scores`` is (A,).
            nc (int, optional): Number of classes when ``pred_cls`` is given; defaults to the largest class + 1.
        """
        if scores.ndim == 1:
            if pred_cls is None:
                raise ValueError("scores of shape (A,) need pred_cls")
            gt_max = int(gt_cls.max()) + 1 if gt_cls.numel() else 0
            nc = nc or max(int(pred_cls.max()) + 1 if pred_cls.numel() else 1, gt_max)
            scores = scores_from_conf_cls(scores, pred_cls, nc)
        gt_cls = gt_cls.view(-1)
        self.num_images += 1
        pcc, mean_iou = object_alignment(boxes, scores, gt_boxes, gt_cls, self.topk_pcc, self.topk_iou)
        self.pcc += pcc
        self.mean_iou += mean_iou
        base_conf = min(self.conf, BUDGET_BASE_CONF)
        record = nms_record(boxes, scores, gt_boxes, gt_cls, base_conf, self.iou, self.max_det, self.agnostic)
        self.records.append(record)

    def counts(self, conf: float) -> dict[str, int]:
        """Return the post-NMS counts over all images at score threshold ``conf``."""
        total = dict.fromkeys(COUNT_KEYS, 0)
        for record in self.records:
            for k, v in record.counts(conf).items():
                total[k] += v
        return total

    def result(self) -> AlignmentResult:
        """Return the statistics accumulated so far."""
        valid = [p for p in self.pcc if not math.isnan(p)]
        budget_conf = budget_threshold(self.records, len(self.mean_iou))
        budget = {"conf": budget_conf, **self.counts(budget_conf)}
        return AlignmentResult(
            pcc_top50=sum(valid) / len(valid) if valid else float("nan"),
            iou_top10=sum(self.mean_iou) / len(self.mean_iou) if self.mean_iou else float("nan"),
            num_objects=len(self.mean_iou),
            pcc_objects=len(valid),
            num_images=self.num_images,
            budget=budget,
            **self.counts(self.conf),
        )


def alignment_stats(
    preds: Iterable[Mapping[str, torch.Tensor]],
    gts: Iterable[Mapping[str, torch.Tensor]],
    conf: float = 0.05,
    iou: float = 0.7,
    max_det: int = 300,
    topk_pcc: int = 50,
    topk_iou: int = 10,
    agnostic: bool = False,
) -> AlignmentResult:
    """Compute the paper's task-alignment statistics over images of pre-NMS predictions and GT boxes.

    Args:
        preds (Iterable[Mapping[str, torch.Tensor]]): Per image, ``bboxes`` (A, 4) xyxy and either ``scores``
            (A, nc) class probabilities or ``conf`` (A,) with ``cls`` (A,).
        gts (Iterable[Mapping[str, torch.Tensor]]): Per image, ``bboxes`` (G, 4) xyxy and ``cls`` (G,).
        conf (float): NMS score threshold for the post-NMS counts (the paper's mmdet test setting is 0.05).
        iou (float): NMS IoU threshold (ultralytics' validator default 0.7).
        max_det (int): Maximum detections per image after NMS (ultralytics' default 300).
        topk_pcc (int): Predictions per object for the rank correlation.
        topk_iou (int): Predictions per object for the mean IoU.
        agnostic (bool): Class-agnostic NMS.

    Returns:
        (AlignmentResult): The statistics; see the module docstring for the exact definitions.

    Examples:
        >>> gt = {"bboxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "cls": torch.tensor([0])}
        >>> pred = {"bboxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 8.0]]),
        ...         "scores": torch.tensor([[0.9], [0.3]])}
        >>> alignment_stats([pred], [gt]).pcc_top50
        1.0
    """
    acc = AlignmentAccumulator(topk_pcc, topk_iou, conf, iou, max_det, agnostic)
    for pred, gt in zip(preds, gts):
        scores = pred["scores"] if "scores" in pred else pred["conf"]
        acc.update(pred["bboxes"], scores, gt["bboxes"], gt["cls"], pred_cls=pred.get("cls"))
    return acc.result()


class AlignmentValidator(DetectionValidator):
    """DetectionValidator that also accumulates task-alignment statistics from the raw, pre-NMS predictions.

    ``postprocess`` keeps the raw (B, 4 + nc, A) inference output before the usual NMS, and ``update_metrics`` feeds
    it with the batch's GT boxes (both in letterboxed input pixels) to an ``AlignmentAccumulator``. The normal mAP
    metrics are computed unchanged, with the validator's own ``conf`` (0.001 by default).

    Attributes:
        alignment (AlignmentAccumulator): The accumulated statistics.
        alignment_conf (float): NMS score threshold of the post-NMS counts.

    Examples:
        >>> validator = AlignmentValidator(args=dict(model="best.pt", data="data.yaml", imgsz=320))
        >>> validator(model=YOLO("best.pt").model)
        >>> validator.alignment.result()
    """

    def __init__(self, dataloader=None, save_dir=None, args=None, _callbacks=None, alignment_conf: float = 0.05):
        """Initialise the validator; ``alignment_conf`` is the score threshold of the post-NMS counts."""
        super().__init__(dataloader, save_dir, args, _callbacks)
        self.alignment_conf = alignment_conf
        self.alignment: AlignmentAccumulator | None = None
        self._raw: torch.Tensor | None = None

    def init_metrics(self, model: torch.nn.Module) -> None:
        """Initialise the mAP metrics and a fresh accumulator (after max_det may have been raised by the base)."""
        super().init_metrics(model)
        self.alignment = AlignmentAccumulator(
            conf=self.alignment_conf,
            iou=self.args.iou,
            max_det=self.args.max_det,
            agnostic=bool(self.args.single_cls or self.args.agnostic_nms),
        )

    def postprocess(self, preds: torch.Tensor | list | tuple) -> list[dict[str, torch.Tensor]]:
        """Keep the raw inference output, then apply the usual NMS."""
        raw = preds[0] if isinstance(preds, (list, tuple)) else preds  # eval forward returns (y, preds_dict)
        if self.end2end or raw.ndim != 3 or raw.shape[-1] == 6:
            raise NotImplementedError("task-alignment analysis needs the dense pre-NMS output of an NMS-based head")
        self._raw = raw.float()
        return super().postprocess(preds)

    def update_metrics(self, preds: list[dict[str, torch.Tensor]], batch: dict[str, Any]) -> None:
        """Update mAP metrics and the alignment statistics of each image of the batch."""
        super().update_metrics(preds, batch)
        nc = self._raw.shape[1] - 4
        for si in range(self._raw.shape[0]):
            pbatch = self._prepare_batch(si, batch)  # GT xyxy in input-image pixels, like the raw boxes
            raw = self._raw[si]  # (4 + nc, A)
            self.alignment.update(xywh2xyxy(raw[:4].T), raw[4 : 4 + nc].T, pbatch["bboxes"], pbatch["cls"])


def evaluate_alignment(
    model: str | Path | Any,
    data: str | Path,
    split: str = "val",
    imgsz: int = 640,
    batch: int = 16,
    conf: float = 0.05,
    device: str = "cpu",
    save_dir: str | Path | None = None,
    **kwargs: Any,
) -> AlignmentResult:
    """Run a detector over a dataset split and return its task-alignment statistics.

    The dataloader, letterboxing, model loading (``.pt`` or ``.yaml``) and the NMS IoU/max_det settings all come from
    ultralytics' DetectionValidator; only the raw predictions are additionally analysed (see ``AlignmentValidator``).

    Args:
        model (str | Path | YOLO | DetectionModel): Checkpoint or model YAML path, a ``YOLO`` object or a model.
        data (str | Path): Dataset YAML.
        split (str): Dataset split, e.g. ``val`` or ``test``.
        imgsz (int): Inference image size.
        batch (int): Batch size.
        conf (float): NMS score threshold of the post-NMS counts (mAP keeps the validator's 0.001).
        device (str): Device, e.g. ``cpu``.
        save_dir (str | Path, optional): Where the validator may write; a temporary directory by default.
        **kwargs (Any): Further validator arguments, e.g. ``iou=0.6``, ``max_det=100``, ``rect=False``, ``workers=0``.

    Returns:
        (AlignmentResult): Statistics, with the validator's ``metrics/mAP50(B)`` and ``metrics/mAP50-95(B)`` in
            ``metrics``.

    Examples:
        >>> result = evaluate_alignment("best.pt", "bccd.yaml", split="val", imgsz=320)
        >>> result.pcc_top50, result.correct
    """
    from ultralytics import YOLO

    yolo = model if isinstance(model, YOLO) else YOLO(model) if isinstance(model, (str, Path)) else None
    net = yolo.model if yolo is not None else model
    overrides = dict(yolo.overrides) if yolo is not None else {}
    # Same argument precedence as Model.val: model overrides < method defaults < caller arguments
    args = {**overrides, "rect": True, "plots": False, "verbose": False}
    args.update(kwargs)
    args.update(data=str(data), split=split, imgsz=imgsz, batch=batch, device=device, mode="val", task="detect")
    with tempfile.TemporaryDirectory(prefix="alignment_") as tmp:
        callbacks = yolo.callbacks if yolo is not None else None  # as Model.val does
        validator = AlignmentValidator(
            save_dir=Path(save_dir or tmp), args=args, _callbacks=callbacks, alignment_conf=conf
        )
        validator(model=net)
    result = validator.alignment.result()
    result.metrics = {k: float(v) for k, v in validator.metrics.results_dict.items()}
    LOGGER.info(
        f"Task alignment ({split}): PCC top-50 {result.pcc_top50:.3f}, IoU top-10 {result.iou_top10:.3f}, "
        f"correct {result.correct}, duplicate {result.duplicate}, error {result.error} "
        f"({result.num_objects} objects, {result.num_images} images)"
    )
    return result


ALIGNMENT_COLUMNS = ("model", "PCC top-50", "IoU top-10", "correct", "duplicate", "error", "redundant", "objects")
BUDGET_COLUMNS = ("model", "conf", "detections", "correct", "duplicate", "error", "redundant", "objects")


def _fmt(x: float | None, digits: int = 3) -> str:
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
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, r in results.items():
        if budget:
            b = r.budget
            cells = [name, _fmt(b.get("conf"), 4), *(str(b.get(k, "-")) for k in BUDGET_COLUMNS[2:-1])]
            cells.append(str(r.num_objects))
        else:
            cells = [name, _fmt(r.pcc_top50), _fmt(r.iou_top10)]
            cells += [str(x) for x in (r.correct, r.duplicate, r.error, r.redundant, r.num_objects)]
        if map_column:
            cells.append(_fmt(r.metrics.get("metrics/mAP50-95(B)")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
