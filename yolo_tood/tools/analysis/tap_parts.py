"""Switch one part of TOOD's task-aligned predictor off in a trained model, to see what each part does at inference.

TAP has two parts (paper section 3.1): the probability map M, which re-weights the cls score into the aligned score
sqrt(sigmoid(cls) * sigmoid(M)), and the offsets O, which re-sample each box side at location + O_k. A trained
TOOD or TAP model evaluated with one of them switched off, and nothing else changed, tells which part its ranking
(PCC) and its mAP owe to, without training again:

- ``m``: M's last conv gives a constant logit ``M_OFF_LOGIT`` (sigmoid 1 in float32), so the score is
  sqrt(sigmoid(cls)), ranked as the cls branch alone ranks;
- ``offsets``: no offset branch (``reg_offset = None``, as ``tap="none"``), so every side is measured from its
  anchor with the un-resampled box prediction;
- ``quality``: M's distribution path (``DGQP``, ``quality="distribution"`` or ``"both"``) adds nothing, so M reads
  the features alone (``both``) or is the constant of ``m`` (``distribution``).

On an end-to-end head (YOLO26) the part is switched off in both branches, so NMS and NMS-free inference see the same
head.

Examples:
    >>> from ultralytics import YOLO
    >>> yolo = YOLO("runs/tap_s0/weights/best.pt")
    >>> switch_off(yolo.model, "m")  # in place; evaluate_alignment(yolo, ...) then ranks by the cls branch only
"""

from __future__ import annotations

import torch.nn as nn

__all__ = ("M_OFF_LOGIT", "TAP_PARTS", "predictors", "switch_off", "tap_head")

TAP_PARTS = ("m", "offsets", "quality")
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
        name (str): ``cls_prob`` or ``reg_offset``, with the branch's prefix on an end-to-end head
            (``one2one_cls_prob``).

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
        part (str): ``m``, ``offsets`` or ``quality`` (``TAP_PARTS``).

    Returns:
        (nn.Module): ``model`` itself.

    Raises:
        ValueError: For an unknown part, a model without a task-aligned head, or ``quality`` on a head whose M does
            not read the distribution.
    """
    if part not in TAP_PARTS:
        raise ValueError(f"unknown TAP part {part!r}: use one of {', '.join(TAP_PARTS)}")
    head = tap_head(model)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no task-aligned head (TOODDetect or TAPDetect)")
    head.check_unfused("switching a TAP part off")  # the merged predictors were built from the weights before
    if part == "quality" and all(getattr(head, f"{p}dgqp", None) is None for p in head.branch_prefixes()):
        raise ValueError("quality: this head's M reads the features only (quality 'features'); nothing to switch off")
    for prefix in head.branch_prefixes():  # both branches of an end-to-end head: NMS and NMS-free inference alike
        _switch_off_branch(head, prefix, part)
    return model


def _switch_off_branch(head: nn.Module, prefix: str, part: str) -> None:
    """Switch ``part`` off in the branch of ``head`` whose attributes carry ``prefix`` (``switch_off``)."""
    if part == "offsets":
        setattr(head, f"{prefix}reg_offset", None)  # every side then measured from its anchor (the tap="none" path)
        return
    dgqp = getattr(head, f"{prefix}dgqp", None)
    if part == "quality" and getattr(head, f"{prefix}cls_prob") is not None:  # "both": M is the features' logit alone
        setattr(head, f"{prefix}dgqp", None)
        return
    # M constant M_OFF_LOGIT: the features' predictors (one per level for TAPDetect) give it, the distribution's 0;
    # with quality="distribution" the distribution's predictor is all of M and gives it
    features = [p[-1] for p in predictors(head, f"{prefix}cls_prob")]
    lasts = [(last, M_OFF_LOGIT) for last in features]
    if dgqp is not None:
        lasts.append((dgqp.reg_conf[-1], 0.0 if features else M_OFF_LOGIT))
    for last, bias in lasts:
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, bias)
