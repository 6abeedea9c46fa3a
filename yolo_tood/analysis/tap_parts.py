"""Switch one part of TOOD's task-aligned predictor off in a trained model, to see what each part does at inference.

TAP has two parts (paper section 3.1): the probability map M, which re-weights the cls score into the aligned score
sqrt(sigmoid(cls) * sigmoid(M)), and the offsets O, which re-sample each box side at location + O_k. A trained
TOOD or TAP model evaluated with one of them switched off, and nothing else changed, tells which part its ranking
(PCC) and its mAP owe to, without training again:

- ``m``: M's last conv gives a constant logit ``M_OFF_LOGIT`` (sigmoid 1 in float32), so the score is
  sqrt(sigmoid(cls)), ranked as the cls branch alone ranks;
- ``offsets``: no offset branch (``reg_offset = None``, as ``tap="none"``), so every side is measured from its
  anchor with the un-resampled box prediction.

Examples:
    >>> from ultralytics import YOLO
    >>> yolo = YOLO("runs/tap_s0/weights/best.pt")
    >>> switch_off(yolo.model, "m")  # in place; evaluate_alignment(yolo, ...) then ranks by the cls branch only
"""

from __future__ import annotations

import torch.nn as nn

__all__ = ("M_OFF_LOGIT", "TAP_PARTS", "predictors", "switch_off", "tap_head")

TAP_PARTS = ("m", "offsets")
# M's logit when switched off: sigmoid(30) = 1 - 9e-14, which rounds to 1.0 in float32 (and fp16)
M_OFF_LOGIT = 30.0


def tap_head(model: nn.Module) -> nn.Module | None:
    """Return the TOOD head (TOODDetect or TAPDetect) of a DetectionModel, or None when it has another head."""
    from yolo_tood.integration.heads import is_tood_head

    head = model.model[-1] if hasattr(model, "model") else None
    return head if head is not None and is_tood_head(head) and hasattr(head, "cls_prob") else None


def predictors(head: nn.Module, name: str) -> list[nn.Sequential]:
    """The ``cls_prob`` (M) or ``reg_offset`` (O) predictors of a task-aligned head, as a list.

    Args:
        head (nn.Module): A TAPDetect (one predictor per level, an ``nn.ModuleList``) or a TOODDetect (one shared).
        name (str): ``cls_prob`` or ``reg_offset``.

    Returns:
        (list[nn.Sequential]): One per level for TAPDetect, the shared one for TOODDetect; empty when the head has
            no such predictor (``reg_offset`` of a ``tap="none"`` head).
    """
    predictor = getattr(head, name)
    if predictor is None:
        return []
    return list(predictor) if isinstance(predictor, nn.ModuleList) else [predictor]


def switch_off(model: nn.Module, part: str) -> nn.Module:
    """Switch ``part`` of the task-aligned predictor of ``model`` off, in place (see the module docstring).

    Args:
        model (nn.Module): A DetectionModel whose last module is TOODDetect or TAPDetect.
        part (str): ``m`` or ``offsets`` (``TAP_PARTS``).

    Returns:
        (nn.Module): ``model`` itself.

    Raises:
        ValueError: For an unknown part, or a model without a task-aligned head.
    """
    if part not in TAP_PARTS:
        raise ValueError(f"unknown TAP part {part!r}: use one of {', '.join(TAP_PARTS)}")
    head = tap_head(model)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no task-aligned head (TOODDetect or TAPDetect)")
    if part == "offsets":
        head.reg_offset = None  # both heads then measure every side from its anchor (their tap="none" path)
        return model
    for predictor in predictors(head, "cls_prob"):
        last = predictor[-1]
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, M_OFF_LOGIT)
    return model
