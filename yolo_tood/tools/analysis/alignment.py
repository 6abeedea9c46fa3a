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
    >>> from yolo_tood.tools.analysis import evaluate_alignment
    >>> result = evaluate_alignment("runs/detect/train/weights/best.pt", "data.yaml", split="val", imgsz=320)
    >>> print(result.pcc_top50, result.iou_top10, result.correct, result.duplicate, result.error)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from ultralytics.utils.metrics import box_iou
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import xyxy2xywh

from ..compat import match_predictions

# Thresholds of the post-NMS counts, from the paper's definitions
MATCH_IOU = 0.5  # correct / duplicate / redundant
ERROR_IOU = 0.1  # error boxes: ERROR_IOU < IoU < MATCH_IOU
# NMS threshold of the records the equal-budget counts are recomputed from (ultralytics' validator conf)
BUDGET_BASE_CONF = 0.001
COUNT_KEYS = ("correct", "duplicate", "error", "redundant", "detections")  # the post-NMS counts of one threshold

__all__ = (
    "AlignmentResult",
    "AlignmentAccumulator",
    "NMSRecord",
    "NMSSettings",
    "alignment_stats",
    "budget_threshold",
    "nms_record",
    "object_alignment",
    "rank_correlation",
    "scores_from_conf_cls",
)


@dataclass(frozen=True)
class NMSSettings:
    """The NMS the post-NMS counts are taken after, as ultralytics' ``non_max_suppression`` arguments.

    Attributes:
        conf (float): Score threshold of NMS candidates (0.05, the paper's mmdet test setting).
        iou (float): NMS IoU threshold (ultralytics' validator default 0.7).
        max_det (int): Maximum detections kept per image (ultralytics' default 300).
        agnostic (bool): Class-agnostic NMS.
    """

    conf: float = 0.05
    iou: float = 0.7
    max_det: int = 300
    agnostic: bool = False

    def at(self, conf: float) -> NMSSettings:
        """Return the same settings with score threshold ``conf``."""
        return replace(self, conf=conf)


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
        score_iou (torch.Tensor, optional): (N, 2) class score and IoU of each object's top-k (50) predictions, the
            pairs ``pcc_top50`` is computed from (for ``yolo_tood.tools.analysis.plots``); not serialised by
            ``to_dict``.
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
    score_iou: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-serialisable dict (NaN becomes None), without ``score_iou``."""
        d = asdict(replace(self, score_iou=None))
        d.pop("score_iou")
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


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
    pairs: list[torch.Tensor] | None = None,
) -> tuple[list[float], list[float]]:
    """Compute per-object rank correlation (top-k PCC) and top-k mean IoU on pre-NMS predictions of one image.

    Args:
        boxes (torch.Tensor): Predicted boxes xyxy, shape (A, 4).
        scores (torch.Tensor): Per-class probabilities, shape (A, nc).
        gt_boxes (torch.Tensor): GT boxes xyxy in the same coordinates, shape (G, 4).
        gt_cls (torch.Tensor): GT classes, shape (G,).
        topk_pcc (int): Number of most confident predictions per object for the rank correlation.
        topk_iou (int): Number of most confident predictions per object for the mean IoU.
        pairs (list[torch.Tensor], optional): If given, the (k, 2) score and IoU of each object's ``topk_pcc``
            predictions (the data of its correlation) are appended to it.

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
        if pairs is not None:
            pairs.append(torch.stack((cls_scores[top], best_iou[related[top]]), 1).float().cpu())
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
        # NMS output is sorted by descending score, as ultralytics' validator matching requires
        matched = match_predictions(det[:, 5], self.gt_cls.to(det.dtype), iou_gd, MATCH_IOU)[:, 0]
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
    nms: NMSSettings | None = None,
) -> NMSRecord:
    """Run ultralytics NMS on one image's predictions and keep what the post-NMS counts need.

    Args:
        boxes (torch.Tensor): Predicted boxes xyxy, shape (A, 4).
        scores (torch.Tensor): Per-class probabilities, shape (A, nc).
        gt_boxes (torch.Tensor): GT boxes xyxy, shape (G, 4).
        gt_cls (torch.Tensor): GT classes, shape (G,).
        nms (NMSSettings, optional): The NMS; ``NMSSettings()`` by default.

    Returns:
        (NMSRecord): Detections and GT-overlapping candidate scores of the image.
    """
    nms = nms or NMSSettings()
    conf = nms.conf
    nc = scores.shape[1]
    # ultralytics' NMS takes the raw model layout (B, 4 + nc, A) with xywh boxes
    prediction = torch.cat((xyxy2xywh(boxes.float()), scores.float()), 1).T[None]
    # One image per call: ultralytics' time limit could only stop the loop after it, so lift it (no spurious warning)
    out, keep = non_max_suppression(
        prediction,
        conf,
        nms.iou,
        nc=nc,
        multi_label=True,
        agnostic=nms.agnostic,
        max_det=nms.max_det,
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
        nms (NMSSettings): The NMS of the post-NMS counts.

    Examples:
        >>> acc = AlignmentAccumulator()
        >>> acc.update(boxes, scores, gt_boxes, gt_cls)  # once per image
        >>> result = acc.result()
    """

    def __init__(
        self,
        topk_pcc: int = 50,
        topk_iou: int = 10,
        nms: NMSSettings | None = None,
    ):
        """Initialise an empty accumulator with the analysis settings (see module docstring for the defaults)."""
        self.topk_pcc, self.topk_iou = topk_pcc, topk_iou
        self.nms = nms or NMSSettings()
        self.pcc: list[float] = []
        self.mean_iou: list[float] = []
        self.pairs: list[torch.Tensor] = []  # (k, 2) score and IoU of each object's top-k_pcc predictions
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
        pcc, mean_iou = object_alignment(
            boxes, scores, gt_boxes, gt_cls, self.topk_pcc, self.topk_iou, pairs=self.pairs
        )
        self.pcc += pcc
        self.mean_iou += mean_iou
        base = self.nms.at(min(self.nms.conf, BUDGET_BASE_CONF))
        record = nms_record(boxes, scores, gt_boxes, gt_cls, base)
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
            score_iou=torch.cat(self.pairs) if self.pairs else torch.zeros(0, 2),
            **self.counts(self.nms.conf),
        )


def alignment_stats(
    preds: Iterable[Mapping[str, torch.Tensor]],
    gts: Iterable[Mapping[str, torch.Tensor]],
    nms: NMSSettings | None = None,
    topk_pcc: int = 50,
    topk_iou: int = 10,
) -> AlignmentResult:
    """Compute the paper's task-alignment statistics over images of pre-NMS predictions and GT boxes.

    Args:
        preds (Iterable[Mapping[str, torch.Tensor]]): Per image, ``bboxes`` (A, 4) xyxy and either ``scores``
            (A, nc) class probabilities or ``conf`` (A,) with ``cls`` (A,).
        gts (Iterable[Mapping[str, torch.Tensor]]): Per image, ``bboxes`` (G, 4) xyxy and ``cls`` (G,).
        nms (NMSSettings, optional): The NMS of the post-NMS counts; ``NMSSettings()`` by default.
        topk_pcc (int): Predictions per object for the rank correlation.
        topk_iou (int): Predictions per object for the mean IoU.

    Returns:
        (AlignmentResult): The statistics; see the module docstring for the exact definitions.

    Examples:
        >>> gt = {"bboxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "cls": torch.tensor([0])}
        >>> pred = {"bboxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 8.0]]),
        ...         "scores": torch.tensor([[0.9], [0.3]])}
        >>> alignment_stats([pred], [gt]).pcc_top50
        1.0
    """
    acc = AlignmentAccumulator(topk_pcc, topk_iou, nms)
    for pred, gt in zip(preds, gts):
        scores = pred["scores"] if "scores" in pred else pred["conf"]
        acc.update(pred["bboxes"], scores, gt["bboxes"], gt["cls"], pred_cls=pred.get("cls"))
    return acc.result()
