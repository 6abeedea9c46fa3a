"""TOOD training hyper-parameters, read from top-level keys of the model YAML.

Ultralytics rejects unknown train arguments, so the TOOD-specific gains and assigner settings live in the model YAML
(``yolov8-tood.yaml``) and are read once by ``TOODLoss`` through ``TOODHyp.from_yaml(model.yaml)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from ultralytics.utils import LOGGER

__all__ = ("TOODHyp", "check_warmup")

_INT_KEYS = {"tal_topk": 1, "atss_topk": 1, "atss_epochs": 0}  # key -> minimum value
_FLOAT_KEYS = ("tal_alpha", "tal_beta", "qfl_beta", "focal_gamma", "focal_alpha", "box_gain", "cls_gain", "dfl_gain")


@dataclass(frozen=True)
class TOODHyp:
    """Hyper-parameters of Task Alignment Learning (TOOD, ICCV 2021) and of its losses.

    Every field is a top-level key of the model YAML with the same name; a missing key takes the default below, which
    is the paper's / MMDetection's ``tood_r50_fpn_1x_coco`` recipe unless stated otherwise.

    Attributes:
        tal_topk (int): m, the number of anchors with the largest alignment metric t kept per ground truth (mmdet
            TaskAlignedAssigner topk=13). The paper finds AP flat for m in 5..21.
        tal_alpha (float): alpha in t = s^alpha * u^beta (s: score of the GT's class, u: IoU). Default 1.0.
        tal_beta (float): beta in t = s^alpha * u^beta. Default 6.0. Paper ablation (alpha, beta) -> AP:
            (0.5, 2) 42.4, (0.5, 6) 41.7, (1, 6) 42.5, (1.5, 8) 41.5.
        atss_epochs (int): number of warm-up epochs trained with the ATSS assigner and Focal loss before TAL
            (mmdet ``initial_epoch=4``). The authors report 41.8 AP without and 42.3 AP with the warm-up
            (fcjian/TOOD#11). 0 disables the warm-up.
        atss_topk (int): ATSS candidates per level per ground truth during the warm-up (mmdet ATSSAssigner topk=9).
        qfl_beta (float): beta of the Quality Focal Loss used with TAL (mmdet QualityFocalLoss beta=2.0).
        focal_gamma (float): gamma of the warm-up Focal loss (mmdet FocalLoss gamma=2.0).
        focal_alpha (float): alpha of the warm-up Focal loss, in [0, 1] (mmdet FocalLoss alpha=0.25).
        box_gain (float): weight of the GIoU loss (mmdet ``loss_bbox=GIoULoss(loss_weight=2.0)``).
        cls_gain (float): weight of the classification loss (QFL / Focal, mmdet loss_weight=1.0).
        dfl_gain (float): weight of the Distribution Focal Loss; only with ``reg_max > 1`` (with ``reg_max: 1`` it
            weighs ultralytics' L1 distance loss). TOOD itself regresses plain distances and has no DFL; 0.5 is
            PP-YOLOE's weight for DFL next to TAL (topk 13, alpha 1, beta 6) and GIoU (2.5), the closest published
            recipe that combines TAL with DFL.

    Examples:
        >>> hyp = TOODHyp.from_yaml({"tal_topk": 9, "nc": 80})
        >>> hyp.tal_topk, hyp.tal_beta
        (9, 6.0)
    """

    tal_topk: int = 13
    tal_alpha: float = 1.0
    tal_beta: float = 6.0
    atss_epochs: int = 4
    atss_topk: int = 9
    qfl_beta: float = 2.0
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    box_gain: float = 2.0
    cls_gain: float = 1.0
    dfl_gain: float = 0.5

    def __post_init__(self) -> None:
        """Validate every field, raising one ValueError line that names the key, the rule and the bad value."""
        for key, minimum in _INT_KEYS.items():
            value = getattr(self, key)
            # bool is an int subclass, but `tal_topk: true` in a YAML is certainly a mistake
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"TOOD: '{key}' must be an integer >= {minimum}, got {value!r}")
        for key in _FLOAT_KEYS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"TOOD: '{key}' must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, key, float(value))  # frozen: normalise ints such as `tal_beta: 6`
        if self.focal_alpha > 1:
            raise ValueError(f"TOOD: 'focal_alpha' must be in [0, 1], got {self.focal_alpha!r}")

    @classmethod
    def from_yaml(cls, d: dict[str, Any] | None) -> TOODHyp:
        """Build the hyper-parameters from the top-level keys of a model YAML dict; other keys are ignored.

        Args:
            d (dict | None): The model YAML as a dict (``model.yaml``); None or {} gives the defaults.

        Returns:
            (TOODHyp): The validated hyper-parameters.

        Raises:
            ValueError: If a value has the wrong type or range (one line naming the key).

        Examples:
            >>> TOODHyp.from_yaml({"atss_epochs": 0}).atss_epochs
            0
        """
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ValueError(f"TOOD: the model YAML must be a dict, got {type(d).__name__}")
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def check_warmup(hyp: TOODHyp, epochs: int) -> bool:
    """Warn when the ATSS warm-up is as long as or longer than the whole training, so TAL would never run.

    A warm-up shorter than a third of the training (the paper's proportion, 4 of 12 epochs) is logged as information.

    Args:
        hyp (TOODHyp): The TOOD hyper-parameters.
        epochs (int): Number of training epochs.

    Returns:
        (bool): True if the warm-up is shorter than the training (TAL will be used), False if a warning was emitted.

    Examples:
        >>> check_warmup(TOODHyp(), epochs=100)
        True
    """
    if hyp.atss_epochs >= epochs:
        LOGGER.warning(
            f"TOOD: atss_epochs={hyp.atss_epochs} >= epochs={epochs}, so the whole training uses the ATSS warm-up "
            "(Focal loss) and Task Alignment Learning never starts; set 'atss_epochs' in the model YAML below epochs."
        )
        return False
    if 0 < 3 * hyp.atss_epochs < epochs:
        LOGGER.info(
            f"TOOD: ATSS warm-up {hyp.atss_epochs} of {epochs} epochs. The paper warms up for a third of its schedule "
            "(4 of 12); on BCCD a third (20 of 60) beat 4 by ~2 mAP50-95 points (BENCHMARKS.md). Set 'atss_epochs' in "
            "the model YAML to change it."
        )
    return True
