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

_INT_KEYS = {"tal_topk": 1, "tal_topk_min": 1, "tal_topk_max": 1, "atss_topk": 1, "atss_epochs": 0}  # key -> minimum
_OPTIONAL_KEYS = frozenset({"atss_epochs"})  # None (YAML null) allowed: the warm-up then follows atss_fraction
TOPK_MODES = ("fixed", "dynamic")
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
        atss_fraction (float): length of the ATSS + Focal loss warm-up before TAL as a fraction of the run's
            ``epochs``, in [0, 1); resolved as round(atss_fraction * epochs), halves up (1/3: 1 epoch -> 0, 10 -> 3,
            12 -> 4, 60 -> 20). Default one third, the proportion of every TAL detector with an ATSS warm-up: TOOD 4 of
            12 epochs (mmdet ``initial_epoch=4``), PP-YOLOE 100 of 300, PP-YOLOE+ 30 of 80. A literal 4 epochs is a
            few dozen iterations on a small set (52 on BCCD) and measured the same as none. 0 disables the warm-up.
        atss_epochs (int | None): an explicit number of warm-up epochs, overriding ``atss_fraction``; None (the
            default) uses the fraction. The authors report 41.8 AP without and 42.3 AP with the warm-up
            (fcjian/TOOD#11). 0 disables the warm-up.
        tal_topk_mode (str): "fixed" (default, the paper's: m = tal_topk for every GT) or "dynamic": m per GT from its
            size, from tal_topk_max for small GTs down to tal_topk_min for large ones (an opt-in addition, see
            ``yolo_tood.assigner.dynamic_topk`` for the rule).
        tal_topk_min (int): smallest m of the dynamic mode (for GTs of sqrt(w*h) >= 96 px). Default 5.
        tal_topk_max (int): largest m of the dynamic mode (for GTs of sqrt(w*h) <= 8 px). Default 21; 5..21 is the
            range over which the paper found AP flat.
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
    tal_topk_mode: str = "fixed"
    tal_topk_min: int = 5
    tal_topk_max: int = 21
    atss_fraction: float = 1 / 3
    atss_epochs: int | None = None
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
            if value is None and key in _OPTIONAL_KEYS:
                continue
            # bool is an int subclass, but `tal_topk: true` in a YAML is certainly a mistake
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"TOOD: '{key}' must be an integer >= {minimum}, got {value!r}")
        for key in _FLOAT_KEYS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"TOOD: '{key}' must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, key, float(value))  # frozen: normalise ints such as `tal_beta: 6`
        if self.tal_topk_mode not in TOPK_MODES:
            raise ValueError(f"TOOD: 'tal_topk_mode' must be one of {TOPK_MODES}, got {self.tal_topk_mode!r}")
        if self.tal_topk_min > self.tal_topk_max:
            raise ValueError(
                f"TOOD: 'tal_topk_min' ({self.tal_topk_min}) must not exceed 'tal_topk_max' ({self.tal_topk_max})"
            )
        if self.focal_alpha > 1:
            raise ValueError(f"TOOD: 'focal_alpha' must be in [0, 1], got {self.focal_alpha!r}")
        value = self.atss_fraction
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            # < 1: a warm-up of the whole run would never reach TAL; use atss_epochs for an explicit count
            raise ValueError(f"TOOD: 'atss_fraction' must be a number in [0, 1), got {value!r}")
        object.__setattr__(self, "atss_fraction", float(value))

    def warmup_epochs(self, epochs: int) -> int:
        """Return the number of ATSS warm-up epochs of a run of ``epochs`` epochs.

        ``atss_epochs`` when given, else round(atss_fraction * epochs) with halves rounded up (Python's ``round``
        would round 2.5 down to 2 but 3.5 up to 4).

        Args:
            epochs (int): The run's number of epochs (the trainer's ``epochs``, which ``resume`` restores).

        Returns:
            (int): Warm-up epochs; the epochs with 0-based index below it use ATSS.

        Examples:
            >>> [TOODHyp().warmup_epochs(e) for e in (1, 10, 12, 60)]
            [0, 3, 4, 20]
            >>> TOODHyp(atss_epochs=4).warmup_epochs(60)
            4
        """
        if self.atss_epochs is not None:
            return self.atss_epochs
        return math.floor(self.atss_fraction * epochs + 0.5)

    def describe_warmup(self, epochs: int) -> str:
        """Return the resolved warm-up as one log line, e.g. "ATSS warm-up for epochs 1-20 of 60 (...), then TAL".

        Examples:
            >>> TOODHyp(atss_fraction=0.333).describe_warmup(60)
            'TOOD: ATSS warm-up for epochs 1-20 of 60 (atss_fraction 0.333), then TAL'
        """
        n = self.warmup_epochs(epochs)
        source = (
            f"atss_epochs {self.atss_epochs}"
            if self.atss_epochs is not None
            else (f"atss_fraction {self.atss_fraction:.3g}")
        )
        if n == 0:
            return f"TOOD: no ATSS warm-up ({source} of {epochs} epochs), TAL from epoch 1"
        span = "epoch 1" if n == 1 else f"epochs 1-{n}"
        return f"TOOD: ATSS warm-up for {span} of {epochs} ({source}), then TAL"

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
            >>> TOODHyp.from_yaml({"atss_epochs": None, "atss_fraction": 0.5}).warmup_epochs(60)
            30
        """
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ValueError(f"TOOD: the model YAML must be a dict, got {type(d).__name__}")
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def check_warmup(hyp: TOODHyp, epochs: int) -> bool:
    """Warn when the resolved ATSS warm-up is as long as or longer than the whole training, so TAL would never run.

    An explicit ``atss_epochs`` shorter than a third of the training (the default ``atss_fraction``, the paper's
    proportion) is logged as information.

    Args:
        hyp (TOODHyp): The TOOD hyper-parameters.
        epochs (int): Number of training epochs.

    Returns:
        (bool): True if the warm-up is shorter than the training (TAL will be used), False if a warning was emitted.

    Examples:
        >>> check_warmup(TOODHyp(), epochs=100)
        True
    """
    warmup = hyp.warmup_epochs(epochs)
    if warmup >= epochs:
        key = "atss_epochs" if hyp.atss_epochs is not None else "atss_fraction"
        value = hyp.atss_epochs if hyp.atss_epochs is not None else f"{hyp.atss_fraction:.3g}"
        LOGGER.warning(
            f"TOOD: {key}={value} gives an ATSS warm-up of {warmup} epochs >= epochs={epochs}, so the whole training "
            f"uses the ATSS warm-up (Focal loss) and Task Alignment Learning never starts; lower '{key}' in the model "
            "YAML."
        )
        return False
    if hyp.atss_epochs is not None and 0 < 3 * warmup < epochs:
        LOGGER.info(
            f"TOOD: atss_epochs={warmup} is an ATSS warm-up of {warmup} of {epochs} epochs. The paper warms up for a "
            "third of its schedule (4 of 12), which the default atss_fraction does when 'atss_epochs' is removed from "
            "the model YAML; on BCCD a third (20 of 60) beat 4 by ~2 mAP50-95 points (BENCHMARKS.md)."
        )
    return True
