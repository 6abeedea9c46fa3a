"""Every ultralytics internal the tools rely on, named in one place (the plug-in's are in ``integration/compat.py``).

The same contract as the plug-in's list: each entry of ``RELIED_ON`` is an ``Internal`` with the parameters or
attributes it is expected to have and the tools module that relies on it, and ``tests/test_compat.py`` checks every
entry against the installed ultralytics. The helpers below are the only code of the tools that calls an ultralytics
internal directly; the tools' subclasses of ultralytics' validator are listed here all the same.
"""

from __future__ import annotations

import types
from typing import Any

from ..integration.compat import Internal

__all__ = ("RELIED_ON", "match_predictions", "prepare_batch")

RELIED_ON: tuple[Internal, ...] = (
    # analysis/nms_guard.py
    Internal(
        "ultralytics.utils.nms:non_max_suppression",
        None,
        ("__code__",),
        "tools/analysis/nms_guard.py",
        "stops after 2.0 + max_time_img * batch seconds and only logs 'NMS time limit ... exceeded' on the "
        "'ultralytics' logger; NMSTimeLimitGuard watches for that message (tests/test_nms_pre.py forces it)",
    ),
    # analysis/alignment.py
    Internal(
        "ultralytics.engine.validator:BaseValidator.match_predictions",
        ("self", "pred_classes", "true_classes", "iou", "use_scipy"),
        (),
        "tools/analysis/alignment.py",
        "called with a stand-in self that has only `iouv` (see match_predictions below)",
    ),
    Internal(
        "ultralytics.utils.nms:non_max_suppression",
        None,
        (),
        "tools/analysis/alignment.py",
        "called with return_idxs=True and max_time_img",
    ),
    # analysis/validator.py: AlignmentValidator subclasses DetectionValidator
    Internal(
        "ultralytics.models.yolo.detect:DetectionValidator._prepare_batch",
        ("self", "si", "batch"),
        (),
        "tools/analysis/validator.py",
        "GT boxes of one image in letterboxed input pixels (see prepare_batch below)",
    ),
    Internal(
        "ultralytics.models.yolo.detect:DetectionValidator.postprocess",
        ("self", "preds"),
        (),
        "tools/analysis/validator.py",
        "overridden to keep the raw (B, 4 + nc, A) output before NMS; reads self.end2end",
    ),
    Internal(
        "ultralytics.models.yolo.detect:DetectionValidator.update_metrics",
        ("self", "preds", "batch"),
        (),
        "tools/analysis/validator.py",
    ),
    Internal(
        "ultralytics.models.yolo.detect:DetectionValidator.init_metrics",
        ("self", "model"),
        (),
        "tools/analysis/validator.py",
        "overridden; reads args.iou, args.max_det, args.single_cls, args.agnostic_nms",
    ),
)


def match_predictions(pred_classes: Any, true_classes: Any, iou: Any, iou_threshold: float) -> Any:
    """Ultralytics' validator matching of detections to GTs at one IoU threshold.

    ``BaseValidator.match_predictions`` reads only ``self.iouv``; calling it with a stand-in ``self`` reuses
    ultralytics' one-to-one matching exactly, without building a validator.

    Args:
        pred_classes (torch.Tensor): Detection classes (N,), detections in descending score.
        true_classes (torch.Tensor): GT classes (G,).
        iou (torch.Tensor): IoU of GTs with detections (G, N).
        iou_threshold (float): The one IoU threshold.

    Returns:
        (torch.Tensor): (N, 1) bool, True where a detection matched a GT.
    """
    import torch
    from ultralytics.engine.validator import BaseValidator

    matcher = types.SimpleNamespace(iouv=torch.tensor([iou_threshold]))
    return BaseValidator.match_predictions(matcher, pred_classes, true_classes, iou)


def prepare_batch(validator: Any, si: int, batch: dict[str, Any]) -> dict[str, Any]:
    """Return image ``si``'s GTs of a validation batch, boxes xyxy in letterboxed input pixels (``_prepare_batch``)."""
    return validator._prepare_batch(si, batch)
